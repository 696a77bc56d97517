package neighbor

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
	"github.com/vishvananda/netlink"
)

var (
	testAddr = netip.MustParseAddr("198.51.100.11")
	macA     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}
	macB     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xa1}
)

// obs builds an observation of testAddr on eth0.
func obs(found bool, nud int, mac net.HardwareAddr) observation {
	o := observation{
		entry: Entry{Addr: testAddr, Ifindex: 2, Ifname: "eth0", State: stateName(found, nud)},
		found: found,
		nud:   nud,
	}
	if found && nud&nudValid != 0 && usableMAC(mac) {
		o.entry.MAC, o.entry.Resolved = mac, true
	}
	return o
}

func TestStep(t *testing.T) {
	const retry = time.Second
	t0 := time.Unix(1000, 0)
	type want struct {
		ask, changed, resolved bool
		mac                    net.HardwareAddr
		err                    error // nil, or a sentinel the reported error matches
	}
	steps := []struct {
		name string
		at   time.Duration
		o    observation
		want want
	}{
		{"no entry: ask", 0, obs(false, 0, nil), want{ask: true, err: ErrResolving}},
		{"incomplete: wait", 100 * time.Millisecond, obs(true, netlink.NUD_INCOMPLETE, nil), want{err: ErrResolving}},
		{"reachable: resolved", 200 * time.Millisecond, obs(true, netlink.NUD_REACHABLE, macA), want{changed: true, resolved: true, mac: macA}},
		{"reachable again: nothing new", 300 * time.Millisecond, obs(true, netlink.NUD_REACHABLE, macA), want{resolved: true, mac: macA}},
		{"stale: verify, still resolved", 30 * time.Second, obs(true, netlink.NUD_STALE, macA), want{ask: true, resolved: true, mac: macA}},
		{"delay: still resolved", 31 * time.Second, obs(true, netlink.NUD_DELAY, macA), want{resolved: true, mac: macA}},
		{"unicast probes failed: broadcast before giving up", 40 * time.Second, obs(true, netlink.NUD_FAILED, nil), want{ask: true, resolved: true, mac: macA}},
		{"incomplete: still resolved meanwhile", 40*time.Second + 100*time.Millisecond, obs(true, netlink.NUD_INCOMPLETE, nil), want{resolved: true, mac: macA}},
		{"new MAC answers: one change", 40*time.Second + 200*time.Millisecond, obs(true, netlink.NUD_REACHABLE, macB), want{changed: true, resolved: true, mac: macB}},
		{"failed again", 80 * time.Second, obs(true, netlink.NUD_FAILED, nil), want{ask: true, resolved: true, mac: macB}},
		{"broadcast failed too: lost", 83 * time.Second, obs(true, netlink.NUD_FAILED, nil), want{changed: true, err: ErrUnresolved}},
		{"failed, within backoff: nothing", 83*time.Second + 500*time.Millisecond, obs(true, netlink.NUD_FAILED, nil), want{err: ErrUnresolved}},
		{"failed, backoff over: ask", 84 * time.Second, obs(true, netlink.NUD_FAILED, nil), want{ask: true, err: ErrUnresolved}},
		{"no answer again: same outcome", 87 * time.Second, obs(true, netlink.NUD_FAILED, nil), want{err: ErrUnresolved}},
		{"second backoff is longer", 88 * time.Second, obs(true, netlink.NUD_FAILED, nil), want{err: ErrUnresolved}},
		{"second backoff over", 89 * time.Second, obs(true, netlink.NUD_FAILED, nil), want{ask: true, err: ErrUnresolved}},
		{"gratuitous ARP: resolved", 89*time.Second + 100*time.Millisecond, obs(true, netlink.NUD_STALE, macA), want{ask: true, changed: true, resolved: true, mac: macA}},
		{"route now via a gateway", 90 * time.Second, observation{entry: Entry{Addr: testAddr}, err: &addrError{kind: ErrViaGateway, msg: "via gw"}}, want{changed: true, err: ErrViaGateway}},
		{"same route error: nothing new", 91 * time.Second, observation{entry: Entry{Addr: testAddr}, err: &addrError{kind: ErrViaGateway, msg: "via gw"}}, want{err: ErrViaGateway}},
		{"route back, no entry: ask at once", 92 * time.Second, obs(false, 0, nil), want{ask: true, err: ErrViaGateway}},
		{"permanent entry: resolved, never asked", 93 * time.Second, obs(true, netlink.NUD_PERMANENT, macB), want{changed: true, resolved: true, mac: macB}},
	}
	w := newWatch(testAddr)
	for _, s := range steps {
		ask, changed := w.step(s.o, t0.Add(s.at), retry)
		got := want{ask: ask, changed: changed, resolved: w.cur.Entry.Resolved, mac: w.cur.Entry.MAC}
		if got.ask != s.want.ask || got.changed != s.want.changed || got.resolved != s.want.resolved ||
			got.mac.String() != s.want.mac.String() {
			t.Fatalf("%s: ask %v changed %v resolved %v mac %v, want ask %v changed %v resolved %v mac %v",
				s.name, got.ask, got.changed, got.resolved, got.mac, s.want.ask, s.want.changed, s.want.resolved, s.want.mac)
		}
		switch {
		case s.want.err == nil && w.cur.Err != nil:
			t.Fatalf("%s: error %v, want none", s.name, w.cur.Err)
		case s.want.err != nil && !errors.Is(w.cur.Err, s.want.err):
			t.Fatalf("%s: error %v, want %v", s.name, w.cur.Err, s.want.err)
		}
	}
}

func TestStepNoMACInStaticEntry(t *testing.T) {
	w := newWatch(testAddr)
	ask, changed := w.step(obs(true, netlink.NUD_NOARP, nil), time.Now(), time.Second)
	if ask || !changed || !errors.Is(w.cur.Err, ErrUnusable) {
		t.Fatalf("noarp without MAC: ask %v changed %v err %v", ask, changed, w.cur.Err)
	}
}

func TestStepAskRefused(t *testing.T) {
	w := newWatch(testAddr)
	now := time.Now()
	if ask, _ := w.step(obs(false, 0, nil), now, time.Second); !ask {
		t.Fatal("no ask for a missing entry")
	}
	refused := errors.New("refused")
	if !w.askFailed(obs(false, 0, nil).entry, refused, now, time.Second) || !errors.Is(w.cur.Err, refused) {
		t.Fatalf("refused request not reported: %v", w.cur.Err)
	}
	if ask, _ := w.step(obs(false, 0, nil), now.Add(500*time.Millisecond), time.Second); ask {
		t.Fatal("asked again within the backoff")
	}
	if ask, _ := w.step(obs(false, 0, nil), now.Add(time.Second), time.Second); !ask {
		t.Fatal("no ask after the backoff")
	}
}

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		retry time.Duration
		n     int
		want  time.Duration
	}{
		{time.Second, 1, time.Second},
		{time.Second, 2, 2 * time.Second},
		{time.Second, 5, 16 * time.Second},
		{time.Second, 6, 30 * time.Second},
		{time.Second, 1000, 30 * time.Second},
		{time.Minute, 3, time.Minute},
		{200 * time.Millisecond, 3, 800 * time.Millisecond},
	} {
		if got := backoff(tc.retry, tc.n); got != tc.want {
			t.Errorf("backoff(%s, %d) = %s, want %s", tc.retry, tc.n, got, tc.want)
		}
	}
}

func TestCheckAddr(t *testing.T) {
	for _, s := range []string{"198.51.100.11", "2001:db8::11", "203.0.113.7"} {
		if err := checkAddr(netip.MustParseAddr(s)); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range []string{"0.0.0.0", "::", "127.0.0.1", "::1", "224.0.0.1", "ff02::1", "fe80::1", "fe80::1%eth0", "255.255.255.255"} {
		if err := checkAddr(netip.MustParseAddr(s)); !errors.Is(err, ErrUnusable) {
			t.Errorf("%s: %v, want ErrUnusable", s, err)
		}
	}
}

func TestOutboxCoalesces(t *testing.T) {
	a1 := netip.MustParseAddr("198.51.100.11")
	a2 := netip.MustParseAddr("198.51.100.12")
	a3 := netip.MustParseAddr("198.51.100.13")
	o := newOutbox()
	o.put(Event{Entry: Entry{Addr: a1, MAC: macA}})
	o.put(Event{Entry: Entry{Addr: a2}})
	o.put(Event{Entry: Entry{Addr: a1, MAC: macB}}) // replaces the first, keeps its place
	o.put(Event{Entry: Entry{Addr: a3}})
	o.drop(a3)

	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Event)
	done := make(chan struct{})
	go func() { o.pump(ctx, out); close(done) }()
	defer func() { cancel(); <-done }()

	recv := func() Event {
		t.Helper()
		return testutil.Recv(t, out, 5*time.Second)
	}
	if ev := recv(); ev.Entry.Addr != a1 || ev.Entry.MAC.String() != macB.String() {
		t.Fatalf("first event %v, want %s with %s", ev, a1, macB)
	}
	if ev := recv(); ev.Entry.Addr != a2 {
		t.Fatalf("second event %v, want %s", ev, a2)
	}
	select {
	case ev := <-out:
		t.Fatalf("unexpected event %v (dropped address)", ev)
	case <-time.After(50 * time.Millisecond):
	}
	o.put(Event{Entry: Entry{Addr: a3}})
	if ev := recv(); ev.Entry.Addr != a3 {
		t.Fatalf("event after idle %v, want %s", ev, a3)
	}
}
