// Package neighbor finds, for each real server given by IP address, the MAC
// address and the egress interface the dispatcher needs to forward frames to
// it by direct server return, and keeps that answer current.
//
// The kernel does the work; the Resolver asks and listens. For each watched
// address it looks up the route (the server must be on a directly connected
// network: a route via a gateway is reported as ErrViaGateway) and reads the
// neighbour entry on the route's interface. When the entry is missing,
// failed or stale it asks the kernel to resolve it, as if a packet were
// waiting (RTM_NEWNEIGH with NTF_USE), so ARP and NDP behave exactly as for
// the host's own traffic and no packet is sent to the server's ports. A
// netlink subscription to neighbour updates follows changes as they happen,
// and every Retry interval each address is checked again in case an update
// was missed or a route changed.
//
// What counts: an entry in a valid state (reachable, stale, delay, probe,
// permanent) with a MAC makes an address resolved. A failed entry counts only
// after the Resolver itself asked for resolution: when a resolved server's
// entry fails (its unicast probes went unanswered) the Resolver asks once
// more, which broadcasts, so that a server whose MAC changed reports just the
// new MAC and a server that is gone reports ErrUnresolved. Unresolved servers
// are asked about again with a backoff from Retry up to 30 s.
//
// How fast changes show: a server that announces itself (gratuitous ARP,
// unsolicited neighbour advertisement, e.g. with net.ipv4.conf.*.arp_notify
// and net.ipv6.conf.*.ndisc_notify) is followed at once. A silent change
// shows when the kernel next verifies the entry: an entry stays reachable for
// 0.5 to 1.5 times base_reachable_time (30 s by default), then the Resolver
// has it re-verified, which takes delay_first_probe_time (5 s) and
// ucast_solicit probes of retrans_time (3 x 1 s). Tune those per interface
// under net.ipv4.neigh.IF and net.ipv6.neigh.IF to bound it more tightly.
//
// The Resolver works in the network namespace of the thread that calls New:
// its netlink sockets are created there and stay there, so New must run
// inside the dispatcher's namespace (in tests, inside netns.NS.Do); Run and
// the other methods may then be called from any goroutine.
package neighbor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// DefaultRetry is the interval between checks of every watched address
// when Options.Retry is zero.
const DefaultRetry = time.Second

// maxBackoff bounds the interval between attempts to resolve an address
// that does not answer, unless Retry is longer.
const maxBackoff = 30 * time.Second

// Errors reported for addresses, in Event.Err, Status and Resolve; match
// them with errors.Is. The messages name the address and the reason.
var (
	// ErrViaGateway: the route to the server goes through a gateway. Direct
	// server return needs the server on a directly connected network.
	ErrViaGateway = errors.New("server not on a directly connected network")
	// ErrNoRoute: the kernel has no usable route to the server.
	ErrNoRoute = errors.New("no route to server")
	// ErrInterface: the route leaves through an interface that
	// Options.Interfaces does not list.
	ErrInterface = errors.New("server reached via an interface not allowed")
	// ErrUnusable: the address cannot be a real server: an address of this
	// host, multicast, link-local, a non-Ethernet interface, and so on.
	ErrUnusable = errors.New("address unusable as a real server")
	// ErrUnresolved: the kernel asked by ARP or NDP and got no answer.
	ErrUnresolved = errors.New("neighbour unresolved")
	// ErrResolving: resolution is still in progress.
	ErrResolving = errors.New("neighbour resolution in progress")
	// ErrClosed: the Resolver was closed.
	ErrClosed = errors.New("neighbour resolver closed")
	// ErrRunTwice: Run was called more than once.
	ErrRunTwice = errors.New("neighbour resolver: Run called more than once")
)

// Entry is what the Resolver knows about one server address.
type Entry struct {
	Addr netip.Addr
	// MAC, Ifindex and Ifname say where to send frames for Addr. They are
	// meaningful only when Resolved; Ifindex and Ifname may be set without
	// it, naming the interface where resolution was tried.
	MAC     net.HardwareAddr
	Ifindex int
	Ifname  string
	// State is the kernel's neighbour state: reachable, stale, delay,
	// probe, permanent, noarp, incomplete, failed, or none when there is no
	// entry; empty when the route ruled the address out before any
	// neighbour entry was read.
	State string
	// Resolved says that MAC, Ifindex and Ifname can be used.
	Resolved bool
}

func (e Entry) String() string {
	if e.Resolved {
		return fmt.Sprintf("%s is %s on %s (%s)", e.Addr, e.MAC, e.Ifname, e.State)
	}
	if e.State == "" {
		return fmt.Sprintf("%s unresolved", e.Addr)
	}
	return fmt.Sprintf("%s unresolved (%s)", e.Addr, e.State)
}

// sameOutcome reports whether e and f would be programmed into the data
// plane the same way.
func (e Entry) sameOutcome(f Entry) bool {
	return e.Resolved == f.Resolved && bytes.Equal(e.MAC, f.MAC) &&
		e.Ifindex == f.Ifindex && e.Ifname == f.Ifname
}

// Event reports a change of one watched address: it became resolved, its
// MAC or interface changed, or it became unresolved, in which case Err says
// why. It carries the address's whole current state, so a consumer can apply
// the latest event for an address and ignore earlier ones.
type Event struct {
	Entry Entry
	Err   error
}

func (e Event) String() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	return e.Entry.String()
}

// Options configure New.
type Options struct {
	// Logger receives resolution changes and kernel errors; nil means
	// slog.Default().
	Logger *slog.Logger
	// Retry is the interval between checks of every watched address and
	// the first interval between attempts to resolve an unanswering one;
	// 0 means DefaultRetry.
	Retry time.Duration
	// Interfaces, if set, lists the only interfaces servers may be reached
	// through; a server routed via another gets ErrInterface.
	Interfaces []string
}

// Resolver keeps a set of addresses resolved to MACs and interfaces. Its
// methods are safe for concurrent use.
type Resolver struct {
	log   *slog.Logger
	retry time.Duration
	allow map[string]bool
	k     *kernel

	events    chan Event
	closeOnce sync.Once // closes events
	out       *outbox
	kick      chan struct{} // tells Run that the watched set changed

	mu      sync.Mutex
	watched map[netip.Addr]*watch
	ran     bool
	stop    context.CancelFunc // cancels a running Run
	runDone chan struct{}      // closed when Run returns
	closed  bool
}

// New returns a Resolver bound to the calling thread's network namespace.
// The caller must Close it.
func New(o Options) (*Resolver, error) {
	if o.Retry < 0 {
		return nil, fmt.Errorf("neighbour resolver: negative retry interval %s", o.Retry)
	}
	if o.Retry == 0 {
		o.Retry = DefaultRetry
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	var allow map[string]bool
	for _, name := range o.Interfaces {
		if name == "" {
			return nil, errors.New("neighbour resolver: empty interface name")
		}
		if allow == nil {
			allow = make(map[string]bool)
		}
		allow[name] = true
	}
	k, err := openKernel()
	if err != nil {
		return nil, fmt.Errorf("neighbour resolver: %w", err)
	}
	return &Resolver{
		log:     o.Logger,
		retry:   o.Retry,
		allow:   allow,
		k:       k,
		events:  make(chan Event),
		out:     newOutbox(),
		kick:    make(chan struct{}, 1),
		watched: make(map[netip.Addr]*watch),
	}, nil
}

// Close stops a running Run, waits for it to return, and releases the
// Resolver's netlink sockets and its reference to the namespace. Resolve
// and later calls fail with ErrClosed. Close is idempotent.
func (r *Resolver) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	stop, done := r.stop, r.runDone
	r.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	r.k.close()
	r.closeEvents()
	return nil
}

func (r *Resolver) closeEvents() { r.closeOnce.Do(func() { close(r.events) }) }

// Watch replaces the set of addresses to keep resolved. Addresses already
// watched keep their state; new ones are resolved at once by a running Run;
// dropped ones are forgotten, with any undelivered event. IPv4-mapped IPv6
// addresses are watched as IPv4; invalid (zero) addresses are logged and
// ignored.
func (r *Resolver) Watch(addrs []netip.Addr) {
	r.mu.Lock()
	next := make(map[netip.Addr]*watch, len(addrs))
	for _, a := range addrs {
		if !a.IsValid() {
			r.log.Error("neighbour resolver: ignoring an invalid address in the watch list")
			continue
		}
		a = a.Unmap()
		if w, ok := r.watched[a]; ok {
			next[a] = w
		} else if next[a] == nil {
			next[a] = newWatch(a)
		}
	}
	for a := range r.watched {
		if next[a] == nil {
			r.out.drop(a)
		}
	}
	r.watched = next
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Lookup returns the entry for a watched address. ok is true only when the
// address is watched and resolved; otherwise the entry holds what is known
// and Status tells why it is unresolved.
func (r *Resolver) Lookup(a netip.Addr) (e Entry, ok bool) {
	a = a.Unmap()
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.watched[a]
	if w == nil {
		return Entry{Addr: a}, false
	}
	e = w.cur.Entry
	e.MAC = slices.Clone(e.MAC)
	return e, e.Resolved
}

// Status returns the current state of every watched address, ordered by
// address. Unresolved addresses carry the reason in Err (ErrResolving while
// the first answer is awaited).
func (r *Resolver) Status() []Event {
	r.mu.Lock()
	out := make([]Event, 0, len(r.watched))
	for _, w := range r.watched {
		ev := w.cur
		ev.Entry.MAC = slices.Clone(ev.Entry.MAC)
		out = append(out, ev)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(x, y Event) int { return x.Entry.Addr.Compare(y.Entry.Addr) })
	return out
}

// Events returns the channel of changes. Delivery never blocks the
// Resolver: while the reader lags, events for the same address coalesce to
// the latest, so nothing is lost but intermediate states. The channel is
// closed when Run returns (or at Close if Run never ran).
func (r *Resolver) Events() <-chan Event { return r.events }

// publish logs a change and queues it for Events.
func (r *Resolver) publish(ev Event) {
	e := ev.Entry
	if ev.Err != nil {
		r.log.Warn("neighbour unresolved", "addr", e.Addr, "dev", e.Ifname, "state", e.State, "err", ev.Err)
	} else {
		r.log.Info("neighbour resolved", "addr", e.Addr, "mac", e.MAC.String(), "dev", e.Ifname, "state", e.State)
	}
	ev.Entry.MAC = slices.Clone(ev.Entry.MAC)
	r.out.put(ev)
}

// sortedAddrs returns the watched addresses in order.
func (r *Resolver) sortedAddrs() []netip.Addr {
	r.mu.Lock()
	out := make([]netip.Addr, 0, len(r.watched))
	for a := range r.watched {
		out = append(out, a)
	}
	r.mu.Unlock()
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}
