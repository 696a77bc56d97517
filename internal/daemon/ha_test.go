package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/manager"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// recordingVIPs stands in for the kernel's VIP addresses.
type recordingVIPs struct {
	mu     sync.Mutex
	up     bool
	events []string
}

func (v *recordingVIPs) record(e string, up bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.up = up
	v.events = append(v.events, e)
	return nil
}
func (v *recordingVIPs) Up() error       { return v.record("up", true) }
func (v *recordingVIPs) Announce() error { return v.record("announce", true) }
func (v *recordingVIPs) Down() error     { return v.record("down", false) }
func (v *recordingVIPs) Close() error    { return nil }
func (v *recordingVIPs) isUp() bool      { v.mu.Lock(); defer v.mu.Unlock(); return v.up }

// TestHAAlone: a node whose only peer never answers becomes active after
// dead_after, brings the VIPs up, and then commits the manager's weights;
// before that, as a standby, it commits none. Its sockets live in a
// namespace of their own, so nothing leaves the test.
func TestHAAlone(t *testing.T) {
	ns := testutil.NewNS(t, "ndtha")
	dir := t.TempDir()
	key := filepath.Join(dir, "ha.key")
	if err := os.WriteFile(key, []byte("0123456789abcdef-ha-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := strings.Replace(baseConfig, "manager: {policy: static}", fmt.Sprintf(`manager: {policy: static}
ha:
  interface: eth0
  self: 198.51.100.3:7101
  peers: [198.51.100.4:7101]
  interval: 50ms
  dead_after: 300ms
  key_file: %s`, key), 1)
	x := executor.NewFake()
	nbr := newStaticNeighbors()
	nbr.set(srv1, "02:00:00:00:00:11", 2)
	nbr.set(srv2, "02:00:00:00:00:12", 2)
	// The node's own address, on the namespace's lo; its peer's is
	// nowhere, so it never answers.
	h, lo := testutil.Link(t, ns, "lo")
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("198.51.100.3"), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	cfg := parse(t, yaml)
	vips := &recordingVIPs{}
	var d *Daemon
	err := ns.Do(func() error {
		var err error
		d, err = New(cfg, Options{Executor: x, Neighbors: nbr, Interfaces: fakeInterfaces,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), HAVIPs: vips})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer testutil.Start(t, "Run", time.Minute, d.Run)()

	w := &world{t: t, x: x, nbr: nbr, d: d}
	w.eventually("configuration installed", func() bool { return len(x.Services()) == 1 })
	if st, err := d.HAStatus(); err != nil || st.State == ha.StateActive {
		t.Fatalf("at start: %+v %v, want a standby", st.State, err)
	}
	w.eventually("active once the peer stays silent", func() bool {
		st, _ := d.HAStatus()
		return st.State == ha.StateActive
	})
	if !vips.isUp() {
		t.Error("active without the VIPs up")
	}
	before := x.Commits()
	if err := d.commitWeights(managerCommit(d, 7)); err != nil {
		t.Fatal(err)
	}
	if x.Commits() == before {
		t.Error("the active node did not commit the manager's weights")
	}
}

// managerCommit is a decision for the test port, under the manager's
// current configuration version.
func managerCommit(d *Daemon, w uint32) manager.Commit {
	return manager.Commit{Port: key, Weights: map[netip.Addr]uint32{srv1: w, srv2: w}, Reason: "test", Version: d.mgr.Version()}
}

// TestHAStandbyCommitsNothing: a standby's manager leaves the data plane to
// the active's weights.
func TestHAStandbyCommitsNothing(t *testing.T) {
	w := start(t, baseConfig)
	w.d.ha = &haLink{}
	w.d.ha.standby.Store(true)
	before := w.x.Commits()
	if err := w.d.commitWeights(managerCommit(w.d, 7)); !errors.Is(err, manager.ErrNotApplied) {
		t.Fatalf("a standby's commit: %v, want manager.ErrNotApplied", err)
	}
	if w.x.Commits() != before {
		t.Error("a standby committed weights")
	}
	w.d.ha = nil
}

// TestHAPublishesInOrder: configuration changes and weight commits made
// from many goroutines at once reach the HA node in the order their
// snapshots were taken, never an older one after a newer one, and the last
// one published is the running state.
func TestHAPublishesInOrder(t *testing.T) {
	w := start(t, baseConfig)
	var (
		mu       sync.Mutex
		versions []uint64
		last     syncedState
	)
	link := &haLink{publishes: make(chan struct{}, 1), send: func(b []byte) {
		var st syncedState
		if err := json.Unmarshal(b, &st); err != nil {
			t.Errorf("published state: %v", err)
			return
		}
		mu.Lock()
		versions = append(versions, st.Version)
		last = st
		mu.Unlock()
	}}
	w.d.mu.Lock()
	w.d.ha = link
	w.d.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	loop := make(chan struct{})
	go func() { defer close(loop); w.d.publishLoop(ctx) }()
	defer func() {
		cancel()
		<-loop
		w.d.mu.Lock()
		w.d.ha = nil
		w.d.mu.Unlock()
	}()

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 10 {
				weight := uint32(1 + (g*10+i)%90)
				_, err := w.d.Update(func(c *config.Config) error {
					c.Clusters[0].Ports[0].Servers[0].Weight = weight
					return nil
				})
				if err != nil {
					t.Errorf("update: %v", err)
					return
				}
				// A configuration change between taking the version and
				// committing drops the decision: that is the point.
				if err := w.d.commitWeights(managerCommit(w.d, weight)); err != nil && !errors.Is(err, manager.ErrNotApplied) {
					t.Errorf("commit: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	want := w.d.Config().Clusters[0].Ports[0].Servers[0].Weight
	w.eventually("the last state published", func() bool {
		mu.Lock()
		defer mu.Unlock()
		if last.Config == "" {
			return false
		}
		c, err := config.Parse([]byte(last.Config), "published")
		return err == nil && c.Clusters[0].Ports[0].Servers[0].Weight == want
	})
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(versions); i++ {
		if versions[i] <= versions[i-1] {
			t.Fatalf("publish %d has version %d after %d: an older snapshot followed a newer one (%v)", i, versions[i], versions[i-1], versions)
		}
	}
	t.Logf("%d publishes for 80 changes and 80 commits", len(versions))
}

// TestHADelaysReachStandby: the delay factors and the typical flow time an
// active's manager committed travel with its weights: a standby that takes
// over schedules around the same slow server, and a factor that is not a
// number is refused.
func TestHADelaysReachStandby(t *testing.T) {
	active, standby := start(t, baseConfig), start(t, baseConfig)
	var sent []byte
	active.d.mu.Lock()
	active.d.ha = &haLink{publishes: make(chan struct{}, 1), send: func(b []byte) { sent = b }}
	active.d.mu.Unlock()
	c := managerCommit(active.d, 10)
	c.Delays = map[netip.Addr]float64{srv1: 64, srv2: 1}
	c.FlowTime = 11 * time.Millisecond
	if err := active.d.commitWeights(c); err != nil {
		t.Fatal(err)
	}
	active.d.publishHA()
	active.d.mu.Lock()
	active.d.ha = nil
	active.d.mu.Unlock()
	if sent == nil {
		t.Fatal("the active published nothing")
	}
	if err := standby.d.onHAConfig(sent); err != nil {
		t.Fatal(err)
	}
	var got executor.Service
	for _, s := range standby.x.Services() {
		if s.Key == key {
			got = s
		}
	}
	if got.FlowTime != 11*time.Millisecond {
		t.Errorf("standby's flow time %v, want 11ms", got.FlowTime)
	}
	for _, s := range got.Servers {
		if want := map[netip.Addr]float64{srv1: 64, srv2: 1}[s.Addr]; s.Delay != want {
			t.Errorf("standby's delay factor of %v: %v, want %v", s.Addr, s.Delay, want)
		}
	}
	var st syncedState
	if err := json.Unmarshal(sent, &st); err != nil {
		t.Fatal(err)
	}
	st.Delays[key.String()].Servers[srv1.String()] = -1
	bad, _ := json.Marshal(st)
	if err := standby.d.onHAConfig(bad); err == nil {
		t.Error("a negative delay factor from the active was taken")
	}
}

// TestHARefreshRound: a refresh round lists, from the connection table's
// last-seen stamps, the established flows seen since the round's Since and
// the closing ones seen since its ClosingSince; a closing round lists
// closing flows only.
func TestHARefreshRound(t *testing.T) {
	w := start(t, baseConfig)
	client := netip.MustParseAddr("203.0.113.9")
	fk := func(port uint16) executor.FlowKey {
		return executor.FlowKey{Client: netip.AddrPortFrom(client, port), VIP: netip.AddrPortFrom(vip, 80), Proto: executor.TCP}
	}
	if err := w.x.UpsertFlows([]executor.Flow{
		{Key: fk(1), Server: srv1},                                       // busy
		{Key: fk(2), Server: srv2, Idle: 10 * time.Second},               // quiet since before the round
		{Key: fk(3), Server: srv1, Closing: true},                        // closing, busy
		{Key: fk(4), Server: srv2, Closing: true, Idle: 3 * time.Second}, // closing, quiet
	}); err != nil {
		t.Fatal(err)
	}
	list := func(r ha.RefreshRound) []uint16 {
		var ports []uint16
		if err := w.d.haRefresh(r, func(rec ha.FlowRecord) bool {
			ports = append(ports, rec.Client.Port())
			return true
		}); err != nil {
			t.Fatal(err)
		}
		return ports
	}
	now := time.Now()
	full := ha.RefreshRound{Since: now.Add(-5 * time.Second), ClosingSince: now.Add(-time.Second)}
	if got := list(full); !slices.Equal(got, []uint16{1, 3}) {
		t.Errorf("full round: flows %v, want 1 and 3", got)
	}
	full.Since = now.Add(-20 * time.Second)
	if got := list(full); !slices.Equal(got, []uint16{1, 2, 3}) {
		t.Errorf("full round over 20 s: flows %v, want 1, 2 and 3", got)
	}
	full.ClosingOnly = true
	if got := list(full); !slices.Equal(got, []uint16{3}) {
		t.Errorf("closing round: flows %v, want 3", got)
	}
}

// TestHAActiveActiveLearntNotEchoed: in active-active mode a copy learnt
// from a peer is dated back further than a refresh round reaches, so this
// node's rounds do not send it back; in active-standby mode it is dated
// when written.
func TestHAActiveActiveLearntNotEchoed(t *testing.T) {
	w := start(t, baseConfig)
	rec := ha.FlowRecord{Client: netip.MustParseAddrPort("203.0.113.9:1000"), VIP: netip.AddrPortFrom(vip, 80), Proto: 6, Server: srv1}
	k := executor.FlowKey{Client: rec.Client, VIP: rec.VIP, Proto: executor.TCP}
	for _, mode := range []string{config.HAModeActiveActive, config.HAModeActiveStandby} {
		cfg := config.Default()
		cfg.HA = &config.HA{Mode: mode}
		link := &haLink{}
		link.follow(cfg)
		w.d.mu.Lock()
		w.d.ha = link
		w.d.mu.Unlock()
		if err := w.d.onHAFlows([]ha.FlowRecord{rec}); err != nil {
			t.Fatal(err)
		}
		f, ok, err := w.x.LookupFlow(k)
		if err != nil || !ok {
			t.Fatalf("%s: learnt flow not found: %v", mode, err)
		}
		est, _ := cfg.HA.Refreshes(cfg.DataPlane)
		now := time.Now()
		var listed int
		if err := w.d.haRefresh(ha.RefreshRound{Since: now.Add(-est), ClosingSince: now.Add(-est)}, func(ha.FlowRecord) bool { listed++; return true }); err != nil {
			t.Fatal(err)
		}
		switch mode {
		case config.HAModeActiveActive:
			if f.Idle != est+learntSlack || listed != 0 {
				t.Errorf("%s: learnt copy idle %v (want %v), listed by a round %d times", mode, f.Idle, est+learntSlack, listed)
			}
		default:
			if f.Idle != 0 || listed != 1 {
				t.Errorf("%s: learnt copy idle %v, listed %d times", mode, f.Idle, listed)
			}
		}
	}
	w.d.mu.Lock()
	w.d.ha = nil
	w.d.mu.Unlock()
}

// TestHASnapshotLeavesHalfOpenOut: a snapshot carries established and
// closing flows, never half-open ones (a record has no half-open state: a
// standby would hold a flood's SYNs as established flows).
func TestHASnapshotLeavesHalfOpenOut(t *testing.T) {
	w := start(t, baseConfig)
	client := netip.MustParseAddr("203.0.113.9")
	fk := func(port uint16) executor.FlowKey {
		return executor.FlowKey{Client: netip.AddrPortFrom(client, port), VIP: netip.AddrPortFrom(vip, 80), Proto: executor.TCP}
	}
	// 1: a SYN only; 2: a completed handshake; 3: a SYN, then the client's FIN.
	steps := []struct {
		port         uint16
		syn, closing bool
	}{{1, true, false}, {2, true, false}, {2, false, false}, {3, true, false}, {3, false, true}}
	for _, s := range steps {
		if _, err := w.x.Dispatch(fk(s.port), s.syn, s.closing); err != nil {
			t.Fatal(err)
		}
	}
	var ports []uint16
	if err := w.d.haSnapshot(func(rec ha.FlowRecord) bool {
		ports = append(ports, rec.Client.Port())
		return true
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ports)
	if !slices.Equal(ports, []uint16{2, 3}) {
		t.Errorf("snapshot carries flows %v, want 2 (established) and 3 (closing), not the half-open 1", ports)
	}

	// UDP: a flow of one datagram stays out, one of two goes in.
	udp := executor.ServiceKey{VIP: vip, Port: 53, Proto: executor.UDP}
	mac, _ := net.ParseMAC("02:00:00:00:00:11")
	if err := w.x.UpsertService(executor.Service{Key: udp, Servers: []executor.Server{{Addr: srv1, MAC: mac, Ifindex: 2, Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	uk := func(port uint16) executor.FlowKey {
		return executor.FlowKey{Client: netip.AddrPortFrom(client, port), VIP: netip.AddrPortFrom(vip, 53), Proto: executor.UDP}
	}
	for _, port := range []uint16{4, 5, 5} {
		if _, err := w.x.Dispatch(uk(port), false, false); err != nil {
			t.Fatal(err)
		}
	}
	var udpPorts []uint16
	if err := w.d.haSnapshot(func(rec ha.FlowRecord) bool {
		if rec.Proto == uint8(executor.UDP) {
			udpPorts = append(udpPorts, rec.Client.Port())
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(udpPorts, []uint16{5}) {
		t.Errorf("snapshot carries UDP flows %v, want 5 (two datagrams), not 4 (one)", udpPorts)
	}
}
