package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// fakeSteering records whether it is attached; its probes fail.
type fakeSteering struct {
	mu       sync.Mutex
	attached int // attached now: 0 or 1
	attaches int // times attached
}

type fakeSteer struct{ f *fakeSteering }

func (f *fakeSteering) open() (Steering, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attached++
	f.attaches++
	return fakeSteer{f}, nil
}

func (f *fakeSteering) state() (attached, attaches int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attached, f.attaches
}

func (s fakeSteer) Route(netip.Addr, net.HardwareAddr, int) (uint32, error) { return 1, nil }
func (s fakeSteer) Mark(netip.Addr) (uint32, bool)                          { return 1, true }
func (s fakeSteer) DialFunc(server, source netip.Addr) (func(ctx context.Context, network, address string) (net.Conn, error), error) {
	return func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("fake steering") }, nil
}
func (s fakeSteer) Close() error {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	s.f.attached--
	return nil
}

// TestSteeringAttachedOnlyWhileUsed: the steering program is attached to lo
// only while some advisor probes a (non-local) server through a VIP: not
// for a configuration without one, attached when one appears, detached
// when the last goes (target server, or the advisor removed), and when the
// daemon stops.
func TestSteeringAttachedOnlyWhileUsed(t *testing.T) {
	f := &fakeSteering{}
	x := executor.NewFake()
	nbr := newStaticNeighbors()
	nbr.set(srv1, "02:00:00:00:00:11", 2)
	nbr.set(srv2, "02:00:00:00:00:12", 2)
	d, err := New(parse(t, baseConfig), Options{
		Executor: x, Neighbors: nbr, Interfaces: fakeInterfaces,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), NewSteering: f.open,
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := testutil.Start(t, "Run", time.Minute, d.Run)
	defer stop()
	w := &world{t: t, x: x, nbr: nbr, d: d}
	w.eventually("configuration installed", func() bool { return len(x.Services()) == 1 })

	want := func(what string, attached, attaches int) {
		t.Helper()
		if a, n := f.state(); a != attached || n != attaches {
			t.Fatalf("%s: attached %d (attached %d times), want %d (%d times)", what, a, n, attached, attaches)
		}
	}
	want("no advisor", 0, 0)

	setAdvisor := func(target string, use bool) {
		t.Helper()
		_, err := d.Update(func(c *config.Config) error {
			c.Advisors = []config.Advisor{{Name: "web", Kind: config.AdvisorTCP, Target: target, Interval: time.Hour,
				Timeout: time.Second, Rise: 1, Fall: 1}}
			c.Clusters[0].Ports[0].Advisor = ""
			if use {
				c.Clusters[0].Ports[0].Advisor = "web"
			}
			return nil
		})
		if err != nil {
			t.Fatalf("advisor %s (used %v): %v", target, use, err)
		}
	}
	for _, step := range []struct {
		target             string
		use                bool
		what               string
		attached, attaches int
	}{
		{config.TargetServer, true, "an advisor probing the servers' own addresses", 0, 0},
		{config.TargetVIP, false, "an advisor with target vip that no port uses", 0, 0},
		{config.TargetVIP, true, "an advisor probing through the VIP", 1, 1},
		{config.TargetVIP, true, "the same again", 1, 1},
		{config.TargetServer, true, "target server again", 0, 1},
		{config.TargetVIP, true, "target vip again", 1, 2},
	} {
		setAdvisor(step.target, step.use)
		want(step.what, step.attached, step.attaches)
	}

	// A port whose servers are all the dispatcher itself probes them
	// through the local stack: nothing to steer.
	_, err = d.Update(func(c *config.Config) error {
		for i := range c.Clusters[0].Ports[0].Servers {
			c.Clusters[0].Ports[0].Servers[i].Local = true
		}
		c.Clusters[0].Ports[0].Servers = c.Clusters[0].Ports[0].Servers[:1]
		c.Clusters[0].Ports[0].Servers[0].Address = vip
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want("only co-located servers", 0, 2)

	stop()
	if a, _ := f.state(); a != 0 {
		t.Errorf("still attached after the daemon stopped")
	}
}
