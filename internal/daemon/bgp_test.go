package daemon

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"

	"github.com/nd-dispatcher/nd/internal/bgp/bgptest"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// gobgpRouter is a GoBGP server on loopback standing in for a router: it
// accepts the daemon's speaker (from 127.0.0.1, AS 64513) and its table
// shows what the daemon announces.
type gobgpRouter struct {
	t    *testing.T
	srv  *server.BgpServer
	port int
}

func newGoBGPRouter(t *testing.T) *gobgpRouter {
	t.Helper()
	r, port := bgptest.Router(t)
	return &gobgpRouter{t: t, srv: r, port: int(port)}
}

// med returns the MED of the router's route to vip, and whether it has one.
func (r *gobgpRouter) med(vip netip.Addr) (uint32, bool) {
	var med uint32
	found := false
	err := r.srv.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: bgp.RF_IPv4_UC},
		func(n bgp.NLRI, paths []*apiutil.Path) {
			if n.String() != netip.PrefixFrom(vip, 32).String() {
				return
			}
			found = true
			for _, a := range paths[0].Attrs {
				if m, ok := a.(*bgp.PathAttributeMultiExitDisc); ok {
					med = m.Value
				}
			}
		})
	if err != nil {
		r.t.Fatal(err)
	}
	return med, found
}

func bgpConfig(port int, med int) string {
	return baseConfig + strings.NewReplacer("PORT", strconv.Itoa(port), "MED", strconv.Itoa(med)).Replace(`bgp:
  asn: 64513
  router_id: 198.51.100.3
  shutdown_grace: 2s
  med: MED
  peers:
    - {address: 127.0.0.1, port: PORT, asn: 64512, hold_time: 3s}
`)
}

func (w *world) bgpStatus() nd.BGPStatus {
	w.t.Helper()
	st, err := w.d.BGPStatus(context.Background())
	if err != nil {
		w.t.Fatal(err)
	}
	return st
}

// TestBGPFollowsServability: the VIP is announced while a server can take
// new flows, withdrawn when none can (quiesced, unresolved), when drained
// and on shutdown; a reload changes its MED at the router, and one without
// the bgp section closes the session.
func TestBGPFollowsServability(t *testing.T) {
	r := newGoBGPRouter(t)
	w := start(t, bgpConfig(r.port, 5))
	evs, stop := w.d.Events()
	defer stop()
	var seen []string
	wanted := []string{"bgp_peer peer 127.0.0.1 (as 64512) established", "bgp_withdrawn no server can take new flows",
		"bgp_withdrawn drained by the operator", "bgp_drained drained", "bgp_announced 198.51.100.100/32 med 9", "bgp_withdrawn ndd is stopping"}
	announced := func(what string, want bool) {
		t.Helper()
		w.eventually(what, func() bool { _, ok := r.med(vip); return ok == want })
	}
	announced("announced", true)
	// The speaker reads the sessions' states every half second.
	w.eventually("the established event", func() bool {
		for {
			select {
			case ev := <-evs:
				seen = append(seen, ev.Type+" "+ev.Message)
			default:
				return slices.ContainsFunc(seen, func(s string) bool { return strings.HasPrefix(s, wanted[0]) })
			}
		}
	})
	st := w.bgpStatus()
	if len(st.Peers) != 1 || st.Peers[0].State != "established" || len(st.VIPs) != 1 || !st.VIPs[0].Announced || st.VIPs[0].MED != 5 {
		t.Fatalf("status %+v", st)
	}

	// Both servers quiesced: withdrawn, saying why; back when one returns.
	quiesce := func(a netip.Addr, q bool) {
		t.Helper()
		_, err := w.d.Update(func(c *config.Config) error {
			for i, s := range c.Clusters[0].Ports[0].Servers {
				if s.Address == a {
					c.Clusters[0].Ports[0].Servers[i].Quiesce = q
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	quiesce(srv1, true)
	if st := w.bgpStatus(); !st.VIPs[0].Announced {
		t.Errorf("withdrawn with a server left: %+v", st.VIPs)
	}
	quiesce(srv2, true)
	announced("withdrawn with every server quiesced", false)
	if st := w.bgpStatus(); st.VIPs[0].Announced || st.VIPs[0].Reason != "no server can take new flows" {
		t.Errorf("status %+v", st.VIPs)
	}
	quiesce(srv2, false)
	announced("back with a server", true)

	// Unresolved servers are not in the data plane: withdrawn.
	quiesce(srv1, false)
	w.nbr.set(srv1, "", 2)
	w.nbr.set(srv2, "", 2)
	announced("withdrawn with no server resolved", false)
	w.nbr.set(srv1, "02:00:00:00:00:11", 2)
	announced("back once resolved", true)

	// Drain and undrain.
	if st, err := w.d.BGPDrain(context.Background(), true); err != nil || !st.Drained {
		t.Fatalf("drain: %+v %v", st, err)
	}
	announced("withdrawn when drained", false)
	if st := w.bgpStatus(); st.VIPs[0].Reason != "drained by the operator" {
		t.Errorf("status %+v", st.VIPs)
	}
	if _, err := w.d.BGPDrain(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	announced("back when undrained", true)

	// A reload changes the MED at the router.
	if _, err := w.d.Apply(parse(t, bgpConfig(r.port, 9))); err != nil {
		t.Fatal(err)
	}
	w.eventually("MED 9", func() bool { m, ok := r.med(vip); return ok && m == 9 })

	// Shutdown: withdrawn, the grace returned.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if g := w.d.BGPShutdown(ctx); g != 2*time.Second {
		t.Errorf("grace %v", g)
	}
	announced("withdrawn on shutdown", false)

	// Without the bgp section the speaker stops.
	if _, err := w.d.Apply(parse(t, baseConfig)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.d.BGPStatus(context.Background()); err == nil {
		t.Error("BGP status without a bgp section")
	}
	announced("withdrawn with the section gone", false)
	// And a reload that brings it back starts a speaker again.
	if _, err := w.d.Apply(parse(t, bgpConfig(r.port, 7))); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if m, ok := r.med(vip); ok && m == 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not announced again (MED 7) after the bgp section came back")
		}
	}

	// Every event the test expects was emitted, in time.
	deadline := time.After(3 * time.Second)
	for _, want := range wanted {
		for !slices.ContainsFunc(seen, func(s string) bool { return strings.HasPrefix(s, want) }) {
			select {
			case ev := <-evs:
				if strings.HasPrefix(ev.Type, "bgp_") {
					seen = append(seen, ev.Type+" "+ev.Message)
				}
			case <-deadline:
				t.Fatalf("no event %q among %q", want, seen)
			}
		}
	}
}

// TestGroupFlowsPending: an active-active node holds the group's flows once
// every peer's snapshot arrived; after the wait, once every peer it hears
// sent one; a peer heard without a snapshot keeps it waiting.
func TestGroupFlowsPending(t *testing.T) {
	a := netip.MustParseAddrPort("198.51.100.4:7000")
	b := netip.MustParseAddrPort("198.51.100.5:7000")
	const wait = 4 * time.Second
	for _, c := range []struct {
		name   string
		peers  []ha.PeerStatus
		waited time.Duration
		want   string // "" or a part of the reason
	}{
		{"no peers", nil, 0, ""},
		{"every snapshot", []ha.PeerStatus{{Addr: a, Alive: true, SnapshotReceived: true}, {Addr: b, SnapshotReceived: true}}, 0, ""},
		{"one missing, early", []ha.PeerStatus{{Addr: a, Alive: true, SnapshotReceived: true}, {Addr: b}}, wait - time.Millisecond, "no snapshot yet from 198.51.100.5:7000"},
		{"one silent, after the wait", []ha.PeerStatus{{Addr: a, Alive: true, SnapshotReceived: true}, {Addr: b}}, wait, ""},
		{"one alive without, after the wait", []ha.PeerStatus{{Addr: a, Alive: true}, {Addr: b}}, time.Hour, "peer 198.51.100.4:7000 is alive but its snapshot has not arrived"},
		{"alone, early", []ha.PeerStatus{{Addr: a}, {Addr: b}}, time.Second, "no snapshot yet from 198.51.100.4:7000, 198.51.100.5:7000"},
	} {
		got := groupFlowsPending(c.peers, c.waited, wait)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

// TestBGPActiveActiveAnnouncesOnceFlowsLearnt: in active-active mode a node
// that is not the leader announces its VIPs, but only once it holds a
// snapshot from every peer, or after two dead_after periods when a peer
// stays silent; once announced it stays so. In active-standby mode a
// standby announces nothing.
func TestBGPActiveActiveAnnouncesOnceFlowsLearnt(t *testing.T) {
	r := newGoBGPRouter(t)
	w := start(t, bgpConfig(r.port, 0))
	announced := func(what string, want bool) {
		t.Helper()
		w.eventually(what, func() bool { _, ok := r.med(vip); return ok == want })
	}
	announced("announced without an ha section", true)

	peer := netip.MustParseAddrPort("198.51.100.4:7000")
	var mu sync.Mutex
	ps := ha.PeerStatus{Addr: peer, Alive: true, State: ha.StateActive}
	status := func() ha.Status {
		mu.Lock()
		defer mu.Unlock()
		return ha.Status{ActiveActive: true, Peers: []ha.PeerStatus{ps}}
	}
	setPeer := func(f func(p *ha.PeerStatus)) { mu.Lock(); f(&ps); mu.Unlock() }
	link := func(mode string, deadAfter time.Duration) *haLink {
		cfg := config.Default()
		cfg.HA = &config.HA{Mode: mode, DeadAfter: deadAfter}
		l := &haLink{cfg: *cfg.HA, status: status, started: time.Now()}
		l.follow(cfg)
		l.standby.Store(true) // the peer leads
		return l
	}
	setLink := func(l *haLink) {
		w.d.mu.Lock()
		w.d.ha = l
		_ = w.d.updateBGP()
		w.d.mu.Unlock()
	}
	defer setLink(nil)
	reason := func() string { return w.bgpStatus().VIPs[0].Reason }

	// Active-standby: the standby withdraws.
	setLink(link(config.HAModeActiveStandby, time.Hour))
	announced("a standby withdraws", false)
	if got := reason(); got != "a standby of its high-availability group" {
		t.Errorf("standby's reason %q", got)
	}

	// Active-active, the leader alive: withdrawn until its snapshot is in,
	// then announced although this node does not lead.
	setLink(link(config.HAModeActiveActive, time.Hour))
	time.Sleep(100 * time.Millisecond) // some stats intervals
	if _, ok := r.med(vip); ok {
		t.Fatal("announced before the peer's snapshot arrived")
	}
	if got := reason(); !strings.HasPrefix(got, "learning the group's flows: no snapshot yet from "+peer.String()) {
		t.Errorf("reason %q", got)
	}
	setPeer(func(p *ha.PeerStatus) { p.SnapshotReceived = true })
	announced("announced once the snapshot is in, not leading", true)
	// Latched: the peer restarting (no snapshot, silent) withdraws nothing.
	setPeer(func(p *ha.PeerStatus) { p.SnapshotReceived, p.Alive = false, false })
	time.Sleep(100 * time.Millisecond)
	if _, ok := r.med(vip); !ok {
		t.Fatal("withdrawn when a peer restarted after the node had learnt the flows")
	}

	// The active of an active-standby group announces, and keeps
	// announcing when a reload switches the group to active-active, before
	// its peer (still a standby, streaming nothing) has sent a snapshot.
	setPeer(func(p *ha.PeerStatus) { p.Alive, p.SnapshotReceived = true, false })
	l := link(config.HAModeActiveStandby, time.Hour)
	l.standby.Store(false)
	setLink(l)
	announced("the active of an active-standby group announces", true)
	aa := config.Default()
	aa.HA = &config.HA{Mode: config.HAModeActiveActive, DeadAfter: time.Hour}
	w.d.mu.Lock()
	l.follow(aa)
	_ = w.d.updateBGP()
	w.d.mu.Unlock()
	time.Sleep(100 * time.Millisecond)
	if st := w.bgpStatus(); !st.VIPs[0].Announced {
		t.Errorf("the former active withdrew on switching to active-active: %+v", st.VIPs)
	}

	// A silent peer: announced after two dead_after periods, not before.
	setPeer(func(p *ha.PeerStatus) { p.Alive = false })
	const deadAfter = 300 * time.Millisecond
	l = link(config.HAModeActiveActive, deadAfter)
	setLink(l)
	announced("withdrawn while learning", false)
	w.eventually("announced after the wait", func() bool { _, ok := r.med(vip); return ok })
	if waited := time.Since(l.started); waited < flowsLearntWait*deadAfter {
		t.Errorf("announced %v after the start, before %v", waited, flowsLearntWait*deadAfter)
	}

	// A peer heard whose snapshot does not come keeps the node waiting,
	// past the wait.
	setPeer(func(p *ha.PeerStatus) { p.Alive = true })
	l = link(config.HAModeActiveActive, 50*time.Millisecond)
	setLink(l)
	announced("withdrawn while learning", false)
	time.Sleep(4 * flowsLearntWait * 50 * time.Millisecond)
	if _, ok := r.med(vip); ok {
		t.Fatal("announced without the snapshot of a peer that is alive")
	}
	if got := reason(); !strings.Contains(got, "is alive but its snapshot has not arrived") {
		t.Errorf("reason %q", got)
	}
}

// TestBGPDrainOutlivesRestart: ndd restarted on a drained data plane keeps
// the VIP withdrawn, says so, and announces it again once undrained.
func TestBGPDrainOutlivesRestart(t *testing.T) {
	r := newGoBGPRouter(t)
	w := start(t, bgpConfig(r.port, 5))
	w.eventually("announced", func() bool { _, ok := r.med(vip); return ok })
	if _, err := w.d.BGPDrain(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	w.eventually("withdrawn when drained", func() bool { _, ok := r.med(vip); return !ok })
	w.stop()

	w2 := startOn(t, bgpConfig(r.port, 5), w.x)
	// The router takes a few seconds to accept the speaker again.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st, err := w2.d.BGPStatus(context.Background())
		if err == nil && len(st.Peers) == 1 && st.Peers[0].State == "established" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the session did not come back: %+v (%v)", st, err)
		}
	}
	// The speaker would have announced within its first decision.
	time.Sleep(time.Second)
	if st := w2.bgpStatus(); !st.Drained || len(st.VIPs) != 1 || st.VIPs[0].Announced || st.VIPs[0].Reason != "drained by the operator" {
		t.Errorf("restarted on a drained data plane: %+v", st)
	}
	if _, ok := r.med(vip); ok {
		t.Error("restarted on a drained data plane: the router has the route")
	}
	if _, err := w2.d.BGPDrain(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	w2.eventually("announced once undrained", func() bool { _, ok := r.med(vip); return ok })
	if d, err := w.x.Drained(); err != nil || d {
		t.Errorf("the data plane's mark after undrain: %v (%v)", d, err)
	}
}
