package neighbor_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/neighbor"
	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// Addresses of the lab's networks that no host holds.
var (
	unused4  = netip.MustParseAddr("198.51.100.250") // on-link, nobody answers
	unused6  = netip.MustParseAddr("2001:db8::250")
	offLink4 = netip.MustParseAddr("203.0.113.50") // routed via the client
	offLink6 = netip.MustParseAddr("2001:db8:2::50")
	noRoute6 = netip.MustParseAddr("2001:db8:ffff::1")
	gateway4 = netip.MustParseAddr("198.51.100.2") // the client
	gateway6 = netip.MustParseAddr("2001:db8::2")
)

// nsPrefix starts the names of this package's own namespaces (see
// netns.OwnedName), so that a killed run's leftovers can be swept.
const nsPrefix = "ndnb"

// Bounds of the waits below. The dispatcher's neighbour timers are
// shortened (see fastTimers), so the kernel gives up on an address within
// about a second and re-verifies an entry within about three.
const (
	resolveWithin = 10 * time.Second
	changeWithin  = 20 * time.Second
)

func TestResolver(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	if _, err := lab.SweepStale(t.Logf); err != nil {
		t.Fatal(err)
	}
	l, err := lab.New(ctx, lab.Options{Servers: 2, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	d := &l.Dispatcher
	fastTimers(t, d.NS, d.Ifname)
	addOffLinkRoutes(t, d)
	flushNeighbours(t, d)

	r := newResolver(t, d.NS, neighbor.Options{Retry: 200 * time.Millisecond})
	rec := record(r)
	runResolver(t, r)

	s1, s2 := &l.Servers[0], &l.Servers[1]
	servers := []netip.Addr{s1.Addr4, s1.Addr6, s2.Addr4, s2.Addr6}
	r.Watch(append(servers, unused4, unused6, offLink4, offLink6, noRoute6))

	t.Run("servers resolve without prior traffic", func(t *testing.T) {
		for _, s := range []*lab.Host{s1, s2} {
			for _, a := range []netip.Addr{s.Addr4, s.Addr6} {
				ev := rec.wait(t, 0, resolveWithin, fmt.Sprintf("%s resolved", a), func(ev neighbor.Event) bool {
					return ev.Entry.Addr == a && ev.Entry.Resolved
				})
				checkEntry(t, ev.Entry, a, s.MAC, d)
				if ev.Err != nil {
					t.Errorf("%s: resolved with error %v", a, ev.Err)
				}
				e, ok := r.Lookup(a)
				if !ok {
					t.Errorf("Lookup(%s) not resolved: %v", a, e)
				}
				checkEntry(t, e, a, s.MAC, d)
			}
		}
	})

	t.Run("unused on-link address is unresolved", func(t *testing.T) {
		for _, a := range []netip.Addr{unused4, unused6} {
			ev := rec.wait(t, 0, resolveWithin, fmt.Sprintf("%s unresolved", a), func(ev neighbor.Event) bool {
				return ev.Entry.Addr == a
			})
			if ev.Entry.Resolved || !errors.Is(ev.Err, neighbor.ErrUnresolved) {
				t.Fatalf("%s: %v, want unresolved with ErrUnresolved", a, ev)
			}
			t.Logf("%s: %v", a, ev.Err)
			if !strings.Contains(ev.Err.Error(), a.String()) || ev.Entry.Ifname != d.Ifname {
				t.Errorf("%s: error %q or interface %q does not say what failed where", a, ev.Err, ev.Entry.Ifname)
			}
			if _, ok := r.Lookup(a); ok {
				t.Errorf("Lookup(%s) resolved", a)
			}
		}
	})

	t.Run("off-link address is refused", func(t *testing.T) {
		for _, tc := range []struct{ addr, gw netip.Addr }{{offLink4, gateway4}, {offLink6, gateway6}} {
			ev := rec.wait(t, 0, resolveWithin, fmt.Sprintf("%s refused", tc.addr), func(ev neighbor.Event) bool {
				return ev.Entry.Addr == tc.addr
			})
			if ev.Entry.Resolved || !errors.Is(ev.Err, neighbor.ErrViaGateway) {
				t.Fatalf("%s: %v, want ErrViaGateway", tc.addr, ev)
			}
			want := fmt.Sprintf("server %s is reached via gateway %s on eth0, not on a directly connected network", tc.addr, tc.gw)
			if ev.Err.Error() != want {
				t.Errorf("error %q, want %q", ev.Err, want)
			}
		}
		ev := rec.wait(t, 0, resolveWithin, "no route", func(ev neighbor.Event) bool {
			return ev.Entry.Addr == noRoute6
		})
		if !errors.Is(ev.Err, neighbor.ErrNoRoute) {
			t.Errorf("%s: %v, want ErrNoRoute", noRoute6, ev)
		}
		t.Logf("%s: %v", noRoute6, ev.Err)
	})

	t.Run("status lists every address", func(t *testing.T) {
		st := r.Status()
		if len(st) != 9 {
			t.Fatalf("status has %d entries, want 9: %v", len(st), st)
		}
		for _, ev := range st {
			resolved := false
			for _, a := range servers {
				resolved = resolved || ev.Entry.Addr == a
			}
			if ev.Entry.Resolved != resolved || (ev.Err == nil) != resolved {
				t.Errorf("status %v: resolved %v, err %v", ev.Entry, ev.Entry.Resolved, ev.Err)
			}
		}
	})

	t.Run("one-shot resolve", func(t *testing.T) {
		rctx, cancel := context.WithTimeout(ctx, resolveWithin)
		defer cancel()
		// A fresh entry, so that Resolve has to ask.
		delNeighbour(t, d, s2.Addr6)
		e, err := r.Resolve(rctx, s2.Addr6)
		if err != nil {
			t.Fatal(err)
		}
		checkEntry(t, e, s2.Addr6, s2.MAC, d)

		for _, tc := range []struct {
			addr netip.Addr
			want error
		}{
			{netip.MustParseAddr("198.51.100.249"), neighbor.ErrUnresolved},
			{offLink4, neighbor.ErrViaGateway},
			{d.Addr4, neighbor.ErrUnusable}, // the dispatcher's own
			{netip.MustParseAddr("fe80::11"), neighbor.ErrUnusable},
		} {
			start := time.Now()
			e, err := r.Resolve(rctx, tc.addr)
			if !errors.Is(err, tc.want) || e.Resolved {
				t.Errorf("Resolve(%s) = %v, %v; want %v", tc.addr, e, err, tc.want)
			}
			t.Logf("Resolve(%s): %v after %s", tc.addr, err, time.Since(start).Round(time.Millisecond))
		}

		short, cancel2 := context.WithTimeout(ctx, time.Millisecond)
		defer cancel2()
		<-short.Done()
		if _, err := r.Resolve(short, netip.MustParseAddr("198.51.100.248")); !errors.Is(err, neighbor.ErrResolving) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Resolve with an expired context: %v, want ErrResolving and DeadlineExceeded", err)
		}
	})

	t.Run("only allowed interfaces", func(t *testing.T) {
		only := newResolver(t, d.NS, neighbor.Options{Interfaces: []string{"eth1"}})
		rctx, cancel := context.WithTimeout(ctx, resolveWithin)
		defer cancel()
		_, err := only.Resolve(rctx, s1.Addr4)
		if !errors.Is(err, neighbor.ErrInterface) {
			t.Fatalf("Resolve via eth0 with only eth1 allowed: %v, want ErrInterface", err)
		}
		t.Log(err)
	})

	// moveMAC gives server s a new MAC and waits, up to within, until the
	// resolver reports each of its addresses at it; it returns the mark
	// of the events recorded before.
	moveMAC := func(t *testing.T, s *lab.Host, mac net.HardwareAddr, within time.Duration) int {
		t.Helper()
		mark := rec.len()
		setMAC(t, s, mac)
		for _, a := range []netip.Addr{s.Addr4, s.Addr6} {
			ev := rec.wait(t, mark, within, fmt.Sprintf("%s moved to %s", a, mac), func(ev neighbor.Event) bool {
				return ev.Entry.Addr == a && ev.Entry.MAC.String() == mac.String()
			})
			checkEntry(t, ev.Entry, a, mac, d)
		}
		return mark
	}

	t.Run("announced MAC change", func(t *testing.T) {
		// The server announces its new MAC (gratuitous ARP, unsolicited NA).
		for _, key := range []string{
			"net.ipv4.conf.all.arp_notify", "net.ipv4.conf.eth0.arp_notify",
			"net.ipv6.conf.all.ndisc_notify", "net.ipv6.conf.eth0.ndisc_notify",
		} {
			if err := s1.NS.Sysctl(key, "1"); err != nil {
				t.Fatal(err)
			}
		}
		moveMAC(t, s1, net.HardwareAddr{0x02, 0, 0, 0, 0xa0, 0x11}, resolveWithin)
	})

	t.Run("silent MAC change", func(t *testing.T) {
		// No announcement: the change shows when the kernel re-verifies the
		// entry, which the resolver has it do.
		mark := moveMAC(t, s2, net.HardwareAddr{0x02, 0, 0, 0, 0xa0, 0x12}, changeWithin)
		// The unicast probes to the old MAC failed, but the resolver
		// broadcast before declaring the server lost.
		for _, ev := range rec.since(mark) {
			if (ev.Entry.Addr == s2.Addr4 || ev.Entry.Addr == s2.Addr6) && !ev.Entry.Resolved {
				t.Errorf("transient loss reported for a MAC change: %v", ev)
			}
		}
	})

	t.Run("server removed", func(t *testing.T) {
		// Deleting the bridge-side end of its veth pair takes server1 off the
		// network (and deletes its eth0).
		mark := rec.len()
		bh, peer := testutil.Link(t, l.Bridge, s1.Peer)
		if err := bh.LinkDel(peer); err != nil {
			t.Fatal(err)
		}
		for _, a := range []netip.Addr{s1.Addr4, s1.Addr6} {
			ev := rec.wait(t, mark, changeWithin, fmt.Sprintf("%s lost", a), func(ev neighbor.Event) bool {
				return ev.Entry.Addr == a
			})
			if ev.Entry.Resolved || !errors.Is(ev.Err, neighbor.ErrUnresolved) {
				t.Fatalf("%s: %v, want unresolved with ErrUnresolved", a, ev)
			}
			t.Logf("%s: %v", a, ev.Err)
			if _, ok := r.Lookup(a); ok {
				t.Errorf("Lookup(%s) still resolved", a)
			}
		}
		// server2 is unaffected.
		if _, ok := r.Lookup(s2.Addr4); !ok {
			t.Errorf("Lookup(%s) not resolved", s2.Addr4)
		}
	})

	t.Run("watch replaces the set", func(t *testing.T) {
		r.Watch([]netip.Addr{s2.Addr4, netip.AddrFrom16(s2.Addr4.As16())}) // the mapped form is the same address
		st := r.Status()
		if len(st) != 1 || st[0].Entry.Addr != s2.Addr4 || !st[0].Entry.Resolved {
			t.Fatalf("status after Watch: %v", st)
		}
		if _, ok := r.Lookup(s1.Addr6); ok {
			t.Errorf("Lookup of an unwatched address succeeded")
		}
	})
}

// TestRunStops checks that Run ends with its context, closing Events, and
// that Close makes further use fail cleanly.
func TestRunStops(t *testing.T) {
	ns := testutil.NewNS(t, nsPrefix)
	r := newResolver(t, ns, neighbor.Options{})

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	r.Watch([]netip.Addr{netip.MustParseAddr("198.51.100.11")})
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := testutil.Recv(t, errc, 5*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	drained := time.After(5 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-r.Events():
		case <-drained:
			t.Fatal("Events not closed after Run returned")
		}
	}
	if err := r.Run(context.Background()); !errors.Is(err, neighbor.ErrRunTwice) {
		t.Errorf("second Run: %v, want ErrRunTwice", err)
	}
	r.Close()
	if _, err := r.Resolve(context.Background(), netip.MustParseAddr("198.51.100.11")); !errors.Is(err, neighbor.ErrClosed) {
		t.Errorf("Resolve after Close: %v, want ErrClosed", err)
	}
}

// newResolver makes a Resolver inside ns and closes it at cleanup.
func newResolver(t *testing.T, ns *netns.NS, o neighbor.Options) *neighbor.Resolver {
	t.Helper()
	o.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	var r *neighbor.Resolver
	err := ns.Do(func() (err error) {
		r, err = neighbor.New(o)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// runResolver runs r until the test ends, and checks that Run returns.
func runResolver(t *testing.T, r *neighbor.Resolver) {
	t.Helper()
	testutil.Start(t, "Run", 10*time.Second, r.Run)
}

// recorder keeps every event a Resolver delivers.
type recorder struct {
	mu      sync.Mutex
	evs     []neighbor.Event
	changed chan struct{} // closed and replaced at each event
}

func record(r *neighbor.Resolver) *recorder {
	rec := &recorder{changed: make(chan struct{})}
	go func() {
		for ev := range r.Events() {
			rec.mu.Lock()
			rec.evs = append(rec.evs, ev)
			close(rec.changed)
			rec.changed = make(chan struct{})
			rec.mu.Unlock()
		}
	}()
	return rec
}

func (rec *recorder) len() int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return len(rec.evs)
}

func (rec *recorder) since(mark int) []neighbor.Event {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]neighbor.Event(nil), rec.evs[mark:]...)
}

// wait returns the first event from index mark on that matches, waiting up
// to within for it.
func (rec *recorder) wait(t *testing.T, mark int, within time.Duration, what string, match func(neighbor.Event) bool) neighbor.Event {
	t.Helper()
	deadline := time.After(within)
	for i := mark; ; {
		rec.mu.Lock()
		evs, changed := rec.evs[i:], rec.changed
		rec.mu.Unlock()
		for _, ev := range evs {
			if match(ev) {
				return ev
			}
		}
		i += len(evs)
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no event %q within %s; events since: %v", what, within, rec.since(mark))
		}
	}
}

func checkEntry(t *testing.T, e neighbor.Entry, a netip.Addr, mac net.HardwareAddr, d *lab.Host) {
	t.Helper()
	if e.Addr != a || !e.Resolved || e.MAC.String() != mac.String() || e.Ifindex != d.Ifindex || e.Ifname != d.Ifname {
		t.Errorf("entry %+v, want %s resolved to %s on %s (%d)", e, a, mac, d.Ifname, d.Ifindex)
	}
}

// fastTimers shortens ifname's neighbour timers in ns so that entries go
// stale within about a second and failures show within about one more.
func fastTimers(t *testing.T, ns *netns.NS, ifname string) {
	t.Helper()
	for _, fam := range []string{"ipv4", "ipv6"} {
		for _, kv := range [][2]string{
			{"base_reachable_time_ms", "1000"},
			{"delay_first_probe_time", "1"},
			{"retrans_time_ms", "200"},
			{"ucast_solicit", "3"},
			{"mcast_solicit", "3"},
		} {
			if err := ns.Sysctl(fmt.Sprintf("net.%s.neigh.%s.%s", fam, ifname, kv[0]), kv[1]); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// addOffLinkRoutes routes 203.0.113.0/24 and 2001:db8:2::/64 via the client.
func addOffLinkRoutes(t *testing.T, d *lab.Host) {
	t.Helper()
	h, err := d.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range []struct{ dst, gw string }{
		{"203.0.113.0/24", gateway4.String()},
		{"2001:db8:2::/64", gateway6.String()},
	} {
		_, dst, _ := net.ParseCIDR(rt.dst)
		err := h.RouteAdd(&netlink.Route{LinkIndex: d.Ifindex, Dst: dst, Gw: net.ParseIP(rt.gw)})
		if err != nil {
			t.Fatalf("route %s via %s: %v", rt.dst, rt.gw, err)
		}
	}
}

// flushNeighbours empties the dispatcher's neighbour table on eth0, so that
// resolution starts from nothing.
func flushNeighbours(t *testing.T, d *lab.Host) {
	t.Helper()
	h, err := d.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := h.NeighList(d.Ifindex, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ns {
		if err := h.NeighDel(&ns[i]); err != nil {
			t.Fatalf("delete neighbour %v: %v", ns[i], err)
		}
	}
	ns, err = h.NeighList(d.Ifindex, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.State&(netlink.NUD_REACHABLE|netlink.NUD_STALE|netlink.NUD_DELAY|netlink.NUD_PROBE|netlink.NUD_PERMANENT) != 0 {
			t.Fatalf("neighbour table not empty after flush: %v", n)
		}
	}
}

func delNeighbour(t *testing.T, d *lab.Host, a netip.Addr) {
	t.Helper()
	h, err := d.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	err = h.NeighDel(&netlink.Neigh{LinkIndex: d.Ifindex, IP: a.AsSlice()})
	if err != nil {
		t.Fatalf("delete neighbour %s: %v", a, err)
	}
}

// setMAC changes the MAC of s's eth0 while it is up (veth allows it), so
// that the server keeps its addresses.
func setMAC(t *testing.T, s *lab.Host, mac net.HardwareAddr) {
	t.Helper()
	h, err := s.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	link, err := h.LinkByIndex(s.Ifindex)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetHardwareAddr(link, mac); err != nil {
		t.Fatalf("set %s's MAC to %s: %v", s.Name, mac, err)
	}
}
