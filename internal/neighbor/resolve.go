package neighbor

import (
	"context"
	"fmt"
	"net/netip"
	"time"
)

// resolvePoll is how often Resolve reads the neighbour entry while the
// kernel resolves it.
const resolvePoll = 50 * time.Millisecond

// Resolve resolves one address now, whether or not it is watched and
// whether or not Run is running. It returns the entry once the address is
// resolved, or an error as soon as the answer is known to be no: the route
// rules it out (ErrViaGateway, ErrNoRoute, ErrInterface, ErrUnusable) or the
// kernel asked and got no answer (ErrUnresolved). If ctx ends first the
// error matches both ErrResolving and ctx.Err().
func (r *Resolver) Resolve(ctx context.Context, a netip.Addr) (Entry, error) {
	if !a.IsValid() {
		return Entry{}, &addrError{kind: ErrUnusable, msg: "invalid server address"}
	}
	a = a.Unmap()
	w := newWatch(a)
	poll := min(resolvePoll, r.retry)
	timer := time.NewTimer(poll)
	defer timer.Stop()
	for {
		o, err := r.k.observe(a, r.allow)
		if err != nil {
			return Entry{Addr: a}, fmt.Errorf("resolve %s: %w", a, err)
		}
		ask, _ := w.step(o, time.Now(), r.retry)
		if ask {
			if err := r.k.ask(o.entry.Ifindex, a); err != nil && w.asked {
				return o.entry, fmt.Errorf("resolve %s: %w", a, err)
			}
		}
		if w.decided {
			return w.cur.Entry, w.cur.Err
		}
		timer.Reset(poll)
		select {
		case <-ctx.Done():
			return w.cur.Entry, fmt.Errorf("%w: %w", w.cur.Err, ctx.Err())
		case <-timer.C:
		}
	}
}
