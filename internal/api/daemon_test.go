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

// TestWithDaemon drives a real daemon over an in-memory data plane through
// the API and its client.
func TestWithDaemon(t *testing.T) {
	cfg, err := config.Parse([]byte(fakeYAML), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	x := executor.NewFake()
	d, err := daemon.New(cfg, daemon.Options{
		Executor:   x,
		Neighbors:  resolveAll{events: make(chan neighbor.Event)},
		Interfaces: func(name string) (*net.Interface, error) { return &net.Interface{Index: 1, Name: name}, nil },
		Logger:     quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); d.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitFor(t, "configuration applied", func() bool { return len(x.Services()) == 3 })

	s := serve(t, d, ServerOptions{})
	c := unixClient(t, s)

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
	want := map[string]string{"198.51.100.11": daemon.StateQuiesced, "198.51.100.12": daemon.StateUp, "198.51.100.13": daemon.StateUp}
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
	if err := c.Events(ctx2, false, func(ev daemon.Event) error { types = append(types, ev.Type); return nil }); err != nil {
		t.Fatalf("Events: %v", err)
	}
	if n := strings.Count(strings.Join(types, " "), daemon.EventConfigApplied); n < 3 {
		t.Errorf("events %v: want at least 3 %s", types, daemon.EventConfigApplied)
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
