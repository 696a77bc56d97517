package neighbor

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Run keeps the watched addresses resolved until ctx is done or the
// Resolver is closed, and then returns nil after its goroutines have ended
// and the Events channel is closed. It fails at once if the neighbour
// subscription cannot be made; a subscription lost later is made again
// while periodic checks continue. Run may be called once.
func (r *Resolver) Run(ctx context.Context) error {
	r.mu.Lock()
	switch {
	case r.closed:
		r.mu.Unlock()
		return ErrClosed
	case r.ran:
		r.mu.Unlock()
		return ErrRunTwice
	}
	r.ran = true
	ctx, cancel := context.WithCancel(ctx)
	r.stop, r.runDone = cancel, make(chan struct{})
	r.mu.Unlock()

	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		r.closeEvents()
		close(r.runDone)
	}()

	sub, err := r.subscribe()
	if err != nil {
		return fmt.Errorf("neighbour resolver: subscribe to neighbour updates: %w", err)
	}
	defer func() { sub.stop() }()

	wg.Go(func() { r.out.pump(ctx, r.events) })

	r.refreshAll()
	tick := time.NewTicker(r.retry)
	defer tick.Stop()
	var resubscribe <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-sub.updates:
			if !ok {
				sub.stop()
				r.log.Warn("neighbour updates lost; subscribing again", "err", sub.err(), "after", r.retry)
				sub = &subscription{} // nil channel: no more updates until resubscribed
				resubscribe = time.After(r.retry)
				continue
			}
			r.onUpdate(u)
		case <-resubscribe:
			resubscribe = nil
			s, err := r.subscribe()
			if err != nil {
				r.log.Warn("subscribe to neighbour updates", "err", err, "retry in", r.retry)
				resubscribe = time.After(r.retry)
				continue
			}
			sub = s
			r.refreshAll()
		case <-r.kick:
			r.refreshAll()
		case <-tick.C:
			r.refreshAll()
		}
	}
}

// onUpdate re-checks a watched address that a neighbour update is about.
// The update only says where to look: the state is read afresh, so updates
// that arrive late or out of order do no harm.
func (r *Resolver) onUpdate(u netlink.NeighUpdate) {
	if u.Family != unix.AF_INET && u.Family != unix.AF_INET6 {
		return // bridge FDB entries and the like
	}
	a, ok := netip.AddrFromSlice(u.IP)
	if !ok {
		return
	}
	a = a.Unmap()
	r.mu.Lock()
	_, watched := r.watched[a]
	r.mu.Unlock()
	if watched {
		r.refresh(a)
	}
}

func (r *Resolver) refreshAll() {
	for _, a := range r.sortedAddrs() {
		r.refresh(a)
	}
}

// refresh observes a, folds the observation into its watch, publishes a
// changed outcome and asks the kernel to resolve a when the watch says so.
func (r *Resolver) refresh(a netip.Addr) {
	r.mu.Lock()
	w := r.watched[a]
	r.mu.Unlock()
	if w == nil {
		return
	}
	o, err := r.k.observe(a, r.allow)
	if err != nil {
		if !errors.Is(err, ErrClosed) {
			r.log.Warn("neighbour check failed", "addr", a, "err", err)
		}
		return
	}
	now := time.Now()
	r.mu.Lock()
	if r.watched[a] != w { // unwatched meanwhile
		r.mu.Unlock()
		return
	}
	ask, changed := w.step(o, now, r.retry)
	ev := w.cur
	r.mu.Unlock()
	if changed {
		r.publish(ev)
	}
	if !ask {
		return
	}
	err = r.k.ask(o.entry.Ifindex, a)
	if err == nil || errors.Is(err, ErrClosed) {
		return
	}
	r.mu.Lock()
	if r.watched[a] != w || !w.asked {
		// Re-verifying a resolved entry: it stays resolved meanwhile.
		r.mu.Unlock()
		r.log.Warn("neighbour check failed", "addr", a, "err", err)
		return
	}
	changed = w.askFailed(o.entry, err, now, r.retry)
	ev = w.cur
	r.mu.Unlock()
	if changed {
		r.publish(ev)
	}
}

// subscription is one neighbour subscription.
type subscription struct {
	updates chan netlink.NeighUpdate
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	lastErr error
}

func (r *Resolver) subscribe() (*subscription, error) {
	s := &subscription{
		updates: make(chan netlink.NeighUpdate, 64),
		done:    make(chan struct{}),
	}
	if err := r.k.subscribe(s.updates, s.done, s.setErr); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *subscription) setErr(err error) {
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		return // the periodic check reads every address afresh anyway
	}
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

func (s *subscription) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// stop ends the subscription and waits for its goroutine, draining updates
// so that it is not left blocked on a send.
func (s *subscription) stop() {
	if s.done == nil {
		return
	}
	s.once.Do(func() {
		close(s.done)
		for range s.updates {
		}
	})
}

// outbox holds the events not yet delivered, at most one per address (the
// latest), in the order their addresses first became pending.
type outbox struct {
	mu      sync.Mutex
	pending map[netip.Addr]Event
	order   []netip.Addr
	ready   chan struct{} // signalled when pending becomes non-empty
}

func newOutbox() *outbox {
	return &outbox{pending: make(map[netip.Addr]Event), ready: make(chan struct{}, 1)}
}

func (o *outbox) put(ev Event) {
	a := ev.Entry.Addr
	o.mu.Lock()
	if _, ok := o.pending[a]; !ok {
		o.order = append(o.order, a)
	}
	o.pending[a] = ev
	o.mu.Unlock()
	select {
	case o.ready <- struct{}{}:
	default:
	}
}

// drop forgets the pending event for a.
func (o *outbox) drop(a netip.Addr) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.pending[a]; !ok {
		return
	}
	delete(o.pending, a)
	for i, b := range o.order {
		if b == a {
			o.order = append(o.order[:i], o.order[i+1:]...)
			break
		}
	}
}

// take removes and returns the oldest pending event.
func (o *outbox) take() (Event, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.order) == 0 {
		return Event{}, false
	}
	a := o.order[0]
	o.order = o.order[1:]
	ev := o.pending[a]
	delete(o.pending, a)
	return ev, true
}

// pump delivers pending events to out until ctx is done.
func (o *outbox) pump(ctx context.Context, out chan<- Event) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.ready:
		}
		for {
			ev, ok := o.take()
			if !ok {
				break
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}
}
