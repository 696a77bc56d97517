package api

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/daemon"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/neighbor"
)

// resolveAll is a neighbour table in which every address is resolved.
type resolveAll struct{ events chan neighbor.Event }

func (resolveAll) Watch([]netip.Addr) {}
func (resolveAll) Lookup(a netip.Addr) (neighbor.Entry, bool) {
	b := a.As16()
	return neighbor.Entry{Addr: a, MAC: net.HardwareAddr{2, 0, 0, 0, b[14], b[15]}, Ifindex: 1, Ifname: "eth0", State: "reachable", Resolved: true}, true
}
func (resolveAll) Status() []neighbor.Event        { return nil }
func (r resolveAll) Events() <-chan neighbor.Event { return r.events }
func (resolveAll) Run(ctx context.Context) error   { <-ctx.Done(); return nil }
func (resolveAll) Close() error                    { return nil }

// startDaemon runs a daemon over an in-memory data plane with fakeYAML and
// serves its API.
func startDaemon(t *testing.T) (*executor.Fake, *Client) {
	t.Helper()
	cfg, err := config.Parse([]byte(fakeYAML), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d, x := runDaemon(t, cfg, daemon.Options{})
	return x, unixClient(t, serve(t, d, ServerOptions{}))
}

// runDaemon runs a daemon with cfg over an in-memory data plane, a
// neighbour table that resolves everything and interfaces that all exist
// (o's other options are kept), until the test ends; it returns once cfg
// is applied.
func runDaemon(t *testing.T, cfg *config.Config, o daemon.Options) (*daemon.Daemon, *executor.Fake) {
	t.Helper()
	x := executor.NewFake()
	o.Executor = x
	o.Neighbors = resolveAll{events: make(chan neighbor.Event)}
	o.Interfaces = func(name string) (*net.Interface, error) { return &net.Interface{Index: 1, Name: name}, nil }
	o.Logger = quietLogger()
	d, err := daemon.New(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); d.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitFor(t, "configuration applied", func() bool { return len(x.Services()) == len(cfg.Ports()) })
	return d, x
}

// TestWithDaemon drives a real daemon over an in-memory data plane through
// the API and its client.
func TestWithDaemon(t *testing.T) {
	_, c := startDaemon(t)
	if _, err := c.AddServer("198.51.100.100", 80, "tcp", ServerRequest{Address: "198.51.100.13"}); err != nil {
		t.Fatalf("AddServer: %v", err)
	}
	q := true
	if _, err := c.SetServer("198.51.100.100", 80, "tcp", "198.51.100.11", ServerPatch{Quiesce: &q}); err != nil {
		t.Fatalf("SetServer: %v", err)
	}
	st, err := c.Status()
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	states := map[string]string{}
	for _, p := range st.Ports {
		if p.VIP == "198.51.100.100" && p.Port == 80 {
			for _, sv := range p.Servers {
				states[sv.Address] = sv.State
			}
		}
	}
	want := map[string]string{"198.51.100.11": nd.StateQuiesced, "198.51.100.12": nd.StateUp, "198.51.100.13": nd.StateUp}
	for a, s := range want {
		if states[a] != s {
			t.Errorf("server %s state %q, want %q (all: %v)", a, states[a], s, states)
		}
	}
	if _, err := c.RemoveCluster("203.0.113.9"); errStatus(err) != 404 {
		t.Errorf("RemoveCluster of a missing VIP: %v, want 404", err)
	}
	if _, err := c.Reload(); errStatus(err) != 400 {
		t.Errorf("Reload without a file: %v, want 400", err)
	}
	y, err := c.Config()
	if err != nil || !strings.Contains(string(y), "198.51.100.13") {
		t.Errorf("Config: %v\n%s", err, y)
	}

	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	var types []string
	if err := c.Events(ctx2, false, func(ev nd.Event) error { types = append(types, ev.Type); return nil }); err != nil {
		t.Fatalf("Events: %v", err)
	}
	if n := strings.Count(strings.Join(types, " "), nd.EventConfigApplied); n < 3 {
		t.Errorf("events %v: want at least 3 %s", types, nd.EventConfigApplied)
	}
}

// TestFlows: GET /v1/flows lists the connection table's entries with their
// server, filtered by VIP, port, protocol, client and server, cut at the
// limit with "more" set; bad parameters are 400s.
func TestFlows(t *testing.T) {
	x, c := startDaemon(t)
	vip := netip.MustParseAddr("198.51.100.100")
	clientA := netip.MustParseAddr("203.0.113.7")
	clientB := netip.MustParseAddr("203.0.113.8")
	servers := map[netip.AddrPort]netip.Addr{}
	for i := range 10 {
		cl := clientA
		if i%2 == 1 {
			cl = clientB
		}
		k := executor.FlowKey{Client: netip.AddrPortFrom(cl, uint16(40000+i)), VIP: netip.AddrPortFrom(vip, 80), Proto: executor.TCP}
		srv, err := x.Dispatch(k, true, false)
		if err != nil {
			t.Fatal(err)
		}
		servers[k.Client] = srv
	}
	udp := executor.FlowKey{Client: netip.AddrPortFrom(clientA, 5353), VIP: netip.AddrPortFrom(vip, 53), Proto: executor.UDP}
	if _, err := x.Dispatch(udp, false, false); err != nil {
		t.Fatal(err)
	}

	all, err := c.Flows(FlowQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Flows) != 11 || all.More {
		t.Fatalf("all flows: %d (more %v), want 11", len(all.Flows), all.More)
	}
	for _, f := range all.Flows {
		if f.Protocol != "tcp" {
			continue
		}
		want := servers[netip.MustParseAddrPort(f.Client)]
		if f.Server != want.String() || f.VIP != "198.51.100.100:80" || f.Closing {
			t.Errorf("flow %+v, want server %s", f, want)
		}
	}
	byServer := map[string]int{}
	for _, s := range servers {
		byServer[s.String()]++
	}
	for _, tc := range []struct {
		q    FlowQuery
		want int
		more bool
	}{
		{FlowQuery{Protocol: "udp"}, 1, false},
		{FlowQuery{VIP: vip, Port: 80}, 10, false},
		{FlowQuery{Port: 443}, 0, false},
		{FlowQuery{Client: clientB, Protocol: "tcp"}, 5, false},
		{FlowQuery{Server: netip.MustParseAddr("198.51.100.12"), Protocol: "tcp"}, byServer["198.51.100.12"], false},
		{FlowQuery{Limit: 4}, 4, true},
	} {
		got, err := c.Flows(tc.q)
		if err != nil || len(got.Flows) != tc.want || got.More != tc.more {
			t.Errorf("%+v: %d flows (more %v), %v; want %d (more %v)", tc.q, len(got.Flows), got.More, err, tc.want, tc.more)
		}
	}
	for _, q := range []string{"vip=nope", "port=0", "port=70000", "protocol=sctp", "limit=0", "limit=100001", "client=1.2.3"} {
		var out FlowsResponse
		if err := c.call("GET", "/v1/flows?"+q, nil, &out); errStatus(err) != 400 {
			t.Errorf("?%s: %v, want a 400", q, err)
		}
	}
}

// TestConcurrentEdits: edits sent at once are all applied, none lost
// between one's copy of the configuration and another's.
func TestConcurrentEdits(t *testing.T) {
	f := newFake(t)
	s := serve(t, f, ServerOptions{})
	c := unixClient(t, s)
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addr := netip.AddrFrom4([4]byte{198, 51, 100, byte(20 + i)}).String()
			_, err := c.AddServer("198.51.100.100", 80, "tcp", ServerRequest{Address: addr})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("AddServer: %v", err)
		}
	}
	if got := len(f.Config().Clusters[0].Ports[0].Servers); got != 2+n {
		t.Errorf("%d servers after %d concurrent adds to 2, want %d", got, n, 2+n)
	}
}

// *daemon.Daemon is the Controller of ndd (the package itself imports no
// daemon, so that ndctl links no data plane).
var _ Controller = (*daemon.Daemon)(nil)
