package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/neighbor"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// staticNeighbors is a neighbour table a test edits by hand.
type staticNeighbors struct {
	mu      sync.Mutex
	entries map[netip.Addr]neighbor.Entry
	watched []netip.Addr
	events  chan neighbor.Event
}

func newStaticNeighbors() *staticNeighbors {
	return &staticNeighbors{entries: map[netip.Addr]neighbor.Entry{}, events: make(chan neighbor.Event, 16)}
}

func (n *staticNeighbors) set(a netip.Addr, mac string, ifindex int) {
	m, _ := net.ParseMAC(mac)
	e := neighbor.Entry{Addr: a, MAC: m, Ifindex: ifindex, Ifname: "eth0", Resolved: mac != "", State: "reachable"}
	n.mu.Lock()
	n.entries[a] = e
	n.mu.Unlock()
	var err error
	if mac == "" {
		err = neighbor.ErrUnresolved
	}
	n.events <- neighbor.Event{Entry: e, Err: err}
}

func (n *staticNeighbors) Watch(addrs []netip.Addr) {
	n.mu.Lock()
	n.watched = addrs
	n.mu.Unlock()
}

func (n *staticNeighbors) Lookup(a netip.Addr) (neighbor.Entry, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.entries[a]
	return e, ok && e.Resolved
}

func (n *staticNeighbors) Status() []neighbor.Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []neighbor.Event
	for _, a := range n.watched {
		e, ok := n.entries[a]
		if !ok || !e.Resolved {
			out = append(out, neighbor.Event{Entry: neighbor.Entry{Addr: a}, Err: neighbor.ErrUnresolved})
		}
	}
	return out
}

func (n *staticNeighbors) Events() <-chan neighbor.Event { return n.events }

func (n *staticNeighbors) Run(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (n *staticNeighbors) Close() error { return nil }

var (
	vip  = netip.MustParseAddr("198.51.100.100")
	srv1 = netip.MustParseAddr("198.51.100.11")
	srv2 = netip.MustParseAddr("198.51.100.12")
	srv3 = netip.MustParseAddr("198.51.100.13")
	key  = executor.ServiceKey{VIP: vip, Port: 80, Proto: executor.TCP}
)

// baseConfig keeps the configured weights (static policy), so that the
// tests below see exactly what the configuration says; the manager's own
// decisions are tested in manager_test.go.
const baseConfig = `
interfaces: [eth0]
manager: {policy: static}
clusters:
  - vip: 198.51.100.100
    ports:
      - port: 80
        servers:
          - {address: 198.51.100.11, weight: 10}
          - {address: 198.51.100.12, weight: 20}
`

type world struct {
	t    *testing.T
	x    *executor.Fake
	nbr  *staticNeighbors
	d    *Daemon
	stop func()
}

func fakeInterfaces(name string) (*net.Interface, error) {
	switch name {
	case "eth0":
		return &net.Interface{Index: 2, Name: "eth0"}, nil
	case "eth1":
		return &net.Interface{Index: 3, Name: "eth1"}, nil
	}
	return nil, errors.New("no such network interface")
}

func parse(t *testing.T, yaml string) *config.Config {
	t.Helper()
	c, err := config.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func start(t *testing.T, yaml string) *world {
	t.Helper()
	return startOn(t, yaml, executor.NewFake())
}

// startOn is start on a given data plane: a second daemon on the first's
// stands for ndd restarted, taking its pinned tables over.
func startOn(t *testing.T, yaml string, x *executor.Fake) *world {
	t.Helper()
	w := &world{t: t, x: x, nbr: newStaticNeighbors()}
	w.nbr.set(srv1, "02:00:00:00:00:11", 2)
	w.nbr.set(srv2, "02:00:00:00:00:12", 2)
	d, err := New(parse(t, yaml), Options{
		Executor: w.x, Neighbors: w.nbr, Interfaces: fakeInterfaces,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), StatsInterval: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	w.d = d
	w.stop = testutil.Start(t, "Run", time.Minute, d.Run)
	w.eventually("configuration installed", func() bool { return len(w.x.Services()) == 1 })
	return w
}

func (w *world) eventually(what string, cond func() bool) {
	w.t.Helper()
	testutil.Eventually(w.t, 5*time.Second, what, cond)
}

// installed is addr's entry in the data plane's view of the port, if any.
func (w *world) installed(addr netip.Addr) (executor.Server, bool) {
	for _, s := range w.x.Services() {
		if s.Key == key {
			for _, srv := range s.Servers {
				if srv.Addr == addr {
					return srv, true
				}
			}
		}
	}
	return executor.Server{}, false
}

func (w *world) weights() map[netip.Addr]uint32 {
	out := map[netip.Addr]uint32{}
	for _, s := range w.x.Services() {
		if s.Key == key {
			for _, srv := range s.Servers {
				out[srv.Addr] = srv.Weight
			}
		}
	}
	return out
}

func TestRunInstallsConfiguration(t *testing.T) {
	w := start(t, baseConfig)
	if got := w.x.Attached(); len(got) != 1 || got[0] != 2 {
		t.Fatalf("attached %v, want [2]", got)
	}
	got := w.weights()
	if got[srv1] != 10 || got[srv2] != 20 || len(got) != 2 {
		t.Fatalf("weights %v", got)
	}
	svc := w.x.Services()[0]
	for _, s := range svc.Servers {
		if s.Ifindex != 2 || s.MAC == nil {
			t.Fatalf("server %v not resolved into the data plane: %+v", s.Addr, s)
		}
	}
}

// TestUnresolvedServerIsLeftOut: nd never dispatches to a server it cannot
// resolve, reports it, and adds it once it resolves; one it loses is held
// (no new flow, its flows kept for its return) and reported unresolved.
func TestUnresolvedServerIsLeftOut(t *testing.T) {
	w := start(t, baseConfig)
	_, err := w.d.Update(func(c *config.Config) error {
		p := &c.Clusters[0].Ports[0]
		p.Servers = append(p.Servers, config.Server{Address: srv3, Weight: 5})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := w.weights()[srv3]; ok {
		t.Fatal("unresolved server installed in the data plane")
	}
	st, err := w.d.Status()
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, s := range st.Ports[0].Servers {
		if s.Address == srv3.String() {
			found = true
			if s.State != nd.StateUnresolved || s.Reason == "" {
				t.Fatalf("status of unresolved server: %+v", s)
			}
		}
	}
	if !found {
		t.Fatal("unresolved server missing from status")
	}
	events, cancel := w.d.Events()
	defer cancel()
	w.nbr.set(srv3, "02:00:00:00:00:13", 2)
	w.eventually("server 3 installed after resolving", func() bool { return w.weights()[srv3] == 5 })
	waitEvent(t, events, nd.EventServerResolved, srv3.String())

	w.nbr.set(srv3, "", 2)
	w.eventually("server 3 held once unreachable", func() bool { s, ok := w.installed(srv3); return ok && s.Held && s.Weight == 0 })
	waitEvent(t, events, nd.EventServerUnreachable, srv3.String())
	st, err = w.d.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Ports[0].Servers {
		if s.Address == srv3.String() && s.State != nd.StateUnresolved {
			t.Errorf("status of a held server: %+v", s)
		}
	}
	w.nbr.set(srv3, "02:00:00:00:00:13", 2)
	w.eventually("server 3 back from held", func() bool { s, ok := w.installed(srv3); return ok && !s.Held && s.Weight == 5 })
}

func waitEvent(t *testing.T, events <-chan nd.Event, typ, server string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Type == typ && (server == "" || ev.Server == server) {
				return
			}
		case <-timeout:
			t.Fatalf("no %s event for %q", typ, server)
		}
	}
}

// TestLiveChangeKeepsFlows: applying a configuration that adds, removes
// and re-weights servers keeps every flow to a server that remains.
func TestLiveChangeKeepsFlows(t *testing.T) {
	w := start(t, baseConfig)
	w.nbr.set(srv3, "02:00:00:00:00:13", 2)
	owner := map[uint16]netip.Addr{}
	for p := uint16(1000); p < 1200; p++ {
		k := executor.FlowKey{Client: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), p), VIP: netip.AddrPortFrom(vip, 80), Proto: executor.TCP}
		s, err := w.x.Dispatch(k, true, false)
		if err != nil {
			t.Fatal(err)
		}
		owner[p] = s
	}
	next := strings.Replace(baseConfig, "{address: 198.51.100.12, weight: 20}", "{address: 198.51.100.12, weight: 3}\n          - {address: 198.51.100.13, weight: 40}", 1)
	ch, err := w.d.Apply(parse(t, next))
	if err != nil {
		t.Fatal(err)
	}
	if ch.Empty() {
		t.Fatal("no changes reported")
	}
	for p, s := range owner {
		k := executor.FlowKey{Client: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), p), VIP: netip.AddrPortFrom(vip, 80), Proto: executor.TCP}
		got, err := w.x.Dispatch(k, false, false)
		if err != nil || got != s {
			t.Fatalf("flow %d moved from %v to %v (%v)", p, s, got, err)
		}
	}
	if got := w.weights(); got[srv2] != 3 || got[srv3] != 40 {
		t.Fatalf("weights after apply %v", got)
	}
	// The same configuration again changes nothing.
	commits := w.x.Commits()
	if ch, err := w.d.Apply(parse(t, next)); err != nil || !ch.Empty() {
		t.Fatalf("re-applying: %v %v", ch, err)
	}
	if w.x.Commits() != commits {
		t.Fatal("re-applying the running configuration wrote to the data plane")
	}
}

// TestBadConfigurationsRejected: nothing of a rejected configuration is
// applied, and the running one stays.
func TestBadConfigurationsRejected(t *testing.T) {
	w := start(t, baseConfig)
	before := w.weights()
	for name, yaml := range map[string]string{
		"unknown interface": strings.Replace(baseConfig, "[eth0]", "[eth9]", 1),
		"fixed setting":     baseConfig + "data_plane: {max_flows: 2048}\n",
	} {
		if _, err := w.d.Apply(parse(t, yaml)); !errors.Is(err, nd.ErrRejected) {
			t.Errorf("%s: Apply = %v, want ErrRejected", name, err)
		}
	}
	_, err := w.d.Update(func(c *config.Config) error {
		c.Clusters[0].Ports[0].Servers[0].Weight = 100000
		return nil
	})
	if !errors.Is(err, nd.ErrRejected) {
		t.Errorf("out-of-range weight: %v", err)
	}
	if got := w.weights(); got[srv1] != before[srv1] || got[srv2] != before[srv2] {
		t.Fatalf("rejected configurations changed weights: %v", got)
	}
	if got := w.x.Attached(); len(got) != 1 {
		t.Fatalf("rejected configuration changed interfaces: %v", got)
	}
}

func TestQuiesceAndRemovePort(t *testing.T) {
	w := start(t, baseConfig)
	if _, err := w.d.Update(func(c *config.Config) error {
		c.Clusters[0].Ports[0].Servers[1].Quiesce = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := w.weights()[srv2]; got != 0 {
		t.Fatalf("quiesced server has weight %d", got)
	}
	st, _ := w.d.Status()
	if s := st.Ports[0].Servers[1]; s.State != nd.StateQuiesced || s.ConfigWeight != 20 {
		t.Fatalf("quiesced status %+v", s)
	}
	if _, err := w.d.Update(func(c *config.Config) error {
		c.Clusters = nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := len(w.x.Services()); n != 0 {
		t.Fatalf("%d services left after removing the cluster", n)
	}
}

func TestStatusRates(t *testing.T) {
	w := start(t, baseConfig)
	if err := w.x.AddCounters(key, srv1, executor.ServerStats{NewFlows: 100, Packets: 1000}); err != nil {
		t.Fatal(err)
	}
	w.eventually("rates computed", func() bool {
		st, err := w.d.Status()
		return err == nil && st.Ports[0].Servers[0].NewFlows == 100
	})
	st, _ := w.d.Status()
	if s := st.Ports[0].Servers[0]; s.State != nd.StateUp || s.Weight != 10 || s.MAC == "" {
		t.Fatalf("status %+v", s)
	}
	if len(st.Interfaces) != 1 || st.Interfaces[0] != "eth0" {
		t.Fatalf("interfaces %v", st.Interfaces)
	}
}

// TestRestartKeepsServersAwaitingResolution: a restarted ndd finds the data
// plane holding servers it has not resolved yet; it keeps them (and their
// flows) until the resolver answers, and drops services no longer configured.
func TestRestartKeepsServersAwaitingResolution(t *testing.T) {
	x := executor.NewFake()
	mac, _ := net.ParseMAC("02:00:00:00:00:11")
	stray := executor.ServiceKey{VIP: vip, Port: 8080, Proto: executor.TCP}
	for _, k := range []executor.ServiceKey{key, stray} {
		if err := x.UpsertService(executor.Service{Key: k, Servers: []executor.Server{{Addr: srv1, MAC: mac, Ifindex: 2, Weight: 10}}}); err != nil {
			t.Fatal(err)
		}
	}
	flow := executor.FlowKey{Client: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), 4000), VIP: netip.AddrPortFrom(vip, 80), Proto: executor.TCP}
	if _, err := x.Dispatch(flow, true, false); err != nil {
		t.Fatal(err)
	}
	nbr := newStaticNeighbors() // nothing answered yet
	d, err := New(parse(t, baseConfig), Options{Executor: x, Neighbors: nbr, Interfaces: fakeInterfaces,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	w := &world{t: t, x: x, nbr: nbr, d: d}
	w.eventually("stray service removed", func() bool { return len(x.Services()) == 1 })
	if got, err := x.Dispatch(flow, false, false); err != nil || got != srv1 {
		t.Fatalf("established flow went to %v (%v) across the restart, want %v", got, err, srv1)
	}
	if _, ok := w.weights()[srv1]; !ok {
		t.Fatal("server awaiting resolution was dropped from the data plane")
	}
	nbr.set(srv1, "", 2) // the resolver answers: unreachable
	w.eventually("unreachable server held", func() bool { s, ok := w.installed(srv1); return ok && s.Held && s.Weight == 0 })
	if got, err := x.Dispatch(flow, false, false); !errors.Is(err, executor.ErrNoServer) {
		t.Fatalf("a packet of a held server's flow went to %v (%v), want dropped", got, err)
	}
	nbr.set(srv1, "02:00:00:00:00:11", 2) // reachable again: the flow carries on
	w.eventually("server back", func() bool { s, ok := w.installed(srv1); return ok && !s.Held && s.Weight == 10 })
	if got, err := x.Dispatch(flow, false, false); err != nil || got != srv1 {
		t.Fatalf("established flow went to %v (%v) once its server was back, want %v", got, err, srv1)
	}
}

// TestReadyAfterApply: Run calls Ready once, after the data plane is
// attached and the services installed (ndd's READY=1 to systemd).
func TestReadyAfterApply(t *testing.T) {
	x, nbr := executor.NewFake(), newStaticNeighbors()
	nbr.set(srv1, "02:00:00:00:00:11", 2)
	nbr.set(srv2, "02:00:00:00:00:12", 2)
	type seen struct{ attached, services int }
	readyc := make(chan seen, 2)
	d, err := New(parse(t, baseConfig), Options{
		Executor: x, Neighbors: nbr, Interfaces: fakeInterfaces,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Ready:  func() { readyc <- seen{len(x.Attached()), len(x.Services())} },
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(readyc) != 0 {
		t.Fatal("ready before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case s := <-readyc:
		if s.attached != 1 || s.services != 1 {
			t.Errorf("ready with %d interfaces attached and %d services installed, want 1 and 1", s.attached, s.services)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Ready not called")
	}
	if _, err := d.Update(func(c *config.Config) error { c.Clusters[0].Ports[0].Servers[0].Weight = 7; return nil }); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(readyc) != 0 {
		t.Error("Ready called more than once")
	}
}
