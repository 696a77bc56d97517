package neighbor

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
)

// observation is what the kernel says about one address at one moment.
type observation struct {
	entry Entry
	found bool  // a neighbour entry exists
	nud   int   // its NUD state bits
	err   error // the route rules the address out, whatever the neighbours say
}

// watch is the record of one address: what is reported for it and what
// resolution has been asked for. Only one goroutine steps a watch (Run's
// loop, or one Resolve call for its private watch); the Resolver's mutex
// guards cur for readers.
type watch struct {
	cur      Event     // what Lookup, Status and Events report
	decided  bool      // cur holds an outcome, resolved or not, not a pending state
	asked    bool      // resolution was asked for since the last outcome: a failure now counts
	failures int       // consecutive unresolved outcomes, for the backoff
	nextAsk  time.Time // no new request to resolve before this
}

func newWatch(a netip.Addr) *watch {
	return &watch{cur: Event{Entry: Entry{Addr: a}, Err: pendingError(Entry{Addr: a})}}
}

// step folds an observation into w. It returns ask when the kernel should be
// asked to resolve the address now, and changed when the reported outcome
// changed in a way an Event must report: resolved or not, MAC, interface or
// reason.
func (w *watch) step(o observation, now time.Time, retry time.Duration) (ask, changed bool) {
	switch {
	case o.err != nil:
		// Nothing to ask for; ask at once when the route is fixed.
		w.nextAsk = time.Time{}
		return false, w.settle(o.entry, o.err)

	case o.entry.Resolved:
		w.failures = 0
		w.nextAsk = time.Time{}
		// A stale entry is usable but unverified: have the kernel verify
		// it (stale -> delay -> probe), as it would for its own traffic.
		return o.nud&netlink.NUD_STALE != 0, w.settle(o.entry, nil)

	case o.nud&netlink.NUD_FAILED != 0 && w.asked:
		// The kernel tried because we asked, and nobody answered.
		w.failures++
		w.nextAsk = now.Add(backoff(retry, w.failures))
		return false, w.settle(o.entry, unresolvedError(o.entry))

	case !o.found || o.nud == netlink.NUD_NONE || o.nud&netlink.NUD_FAILED != 0:
		// No entry, or a failure we did not cause (an old one, or a
		// resolved server whose unicast probes went unanswered: it may
		// have changed its MAC, so broadcast before declaring it lost).
		w.pending(o.entry)
		if now.Before(w.nextAsk) {
			return false, false
		}
		w.asked = true
		w.nextAsk = now.Add(retry)
		return true, false

	case o.nud&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0:
		// A static entry without a MAC: nothing to ask the kernel.
		return false, w.settle(o.entry, &addrError{kind: ErrUnusable,
			msg: fmt.Sprintf("server %s has a %s neighbour entry on %s without a MAC address", o.entry.Addr, o.entry.State, o.entry.Ifname)})

	default:
		// incomplete: the kernel is asking.
		w.pending(o.entry)
		return false, false
	}
}

// askFailed records that the kernel refused a request to resolve: the
// address becomes unresolved with err, and is asked about again later.
func (w *watch) askFailed(e Entry, err error, now time.Time, retry time.Duration) (changed bool) {
	w.failures++
	w.nextAsk = now.Add(backoff(retry, w.failures))
	return w.settle(e, err)
}

// settle makes e, with err, the reported outcome and reports whether that
// changed the outcome.
func (w *watch) settle(e Entry, err error) (changed bool) {
	if !e.Resolved {
		e.MAC = nil
	}
	prev := w.cur
	changed = !w.decided || !prev.Entry.sameOutcome(e) || errText(prev.Err) != errText(err)
	w.cur = Event{Entry: e, Err: err}
	w.decided = true
	w.asked = false
	return changed
}

// pending records an in-between state. Once an outcome is known it stands
// until the next one: a resolved server being re-verified stays resolved.
func (w *watch) pending(e Entry) {
	if w.decided {
		return
	}
	e.MAC = nil
	e.Resolved = false
	w.cur = Event{Entry: e, Err: pendingError(e)}
}

// backoff returns the interval before attempt n+1 after n consecutive
// failures: retry, doubling, up to maxBackoff (or retry if that is longer).
func backoff(retry time.Duration, n int) time.Duration {
	limit := max(retry, maxBackoff)
	d := retry
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// addrError is an error about one address whose message stands alone and
// which matches a sentinel (kind) with errors.Is.
type addrError struct {
	kind error
	msg  string
}

func (e *addrError) Error() string { return e.msg }
func (e *addrError) Unwrap() error { return e.kind }

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// protocol names the resolution protocol for a's family.
func protocol(a netip.Addr) string {
	if a.Is4() {
		return "ARP"
	}
	return "NDP"
}

func unresolvedError(e Entry) error {
	return &addrError{kind: ErrUnresolved,
		msg: fmt.Sprintf("server %s did not answer %s on %s (neighbour state %s)", e.Addr, protocol(e.Addr), e.Ifname, e.State)}
}

func pendingError(e Entry) error {
	msg := fmt.Sprintf("resolution of server %s in progress", e.Addr)
	if e.Ifname != "" {
		msg = fmt.Sprintf("resolution of server %s on %s in progress (neighbour state %s)", e.Addr, e.Ifname, e.State)
	}
	return &addrError{kind: ErrResolving, msg: msg}
}

// stateName names a NUD state as ip-neighbour(8) does, in lower case.
func stateName(found bool, nud int) string {
	if !found {
		return "none"
	}
	switch {
	case nud&netlink.NUD_PERMANENT != 0:
		return "permanent"
	case nud&netlink.NUD_NOARP != 0:
		return "noarp"
	case nud&netlink.NUD_REACHABLE != 0:
		return "reachable"
	case nud&netlink.NUD_STALE != 0:
		return "stale"
	case nud&netlink.NUD_DELAY != 0:
		return "delay"
	case nud&netlink.NUD_PROBE != 0:
		return "probe"
	case nud&netlink.NUD_INCOMPLETE != 0:
		return "incomplete"
	case nud&netlink.NUD_FAILED != 0:
		return "failed"
	case nud == netlink.NUD_NONE:
		return "none"
	}
	return fmt.Sprintf("nud(%#x)", nud)
}

// nudValid is the kernel's NUD_VALID: states in which the entry's MAC may be
// used.
const nudValid = netlink.NUD_PERMANENT | netlink.NUD_NOARP | netlink.NUD_REACHABLE |
	netlink.NUD_PROBE | netlink.NUD_STALE | netlink.NUD_DELAY
