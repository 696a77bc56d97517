package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/manager"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// TestAdvisorDownTakesServerOut runs the manager and a custom advisor (a
// command, so that no packet leaves the test) through the daemon: a server
// the advisor finds down gets weight 0 in the data plane at once, and comes
// back by itself when the advisor finds it up again.
func TestAdvisorDownTakesServerOut(t *testing.T) {
	dir := t.TempDir()
	for _, s := range []string{srv1.String(), srv2.String()} {
		if err := os.WriteFile(filepath.Join(dir, s), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	yaml := fmt.Sprintf(`
interfaces: [eth0]
manager: {interval: 200ms}
advisors:
  - name: alive
    kind: custom
    interval: 100ms
    timeout: 90ms
    rise: 1
    fall: 1
    command: [/bin/sh, -c, 'test -e %s/$ND_SERVER']
clusters:
  - vip: 198.51.100.100
    ports:
      - port: 80
        advisor: alive
        servers:
          - {address: 198.51.100.11, weight: 10}
          - {address: 198.51.100.12, weight: 20}
`, dir)
	w := start(t, yaml)
	events, stop := w.d.Events()
	defer stop()
	w.eventually("both servers up", func() bool {
		n := 0
		for _, s := range w.d.AdvisorStatus() {
			if s.Known && s.Up {
				n++
			}
		}
		return n == 2
	})
	if err := os.Remove(filepath.Join(dir, srv2.String())); err != nil {
		t.Fatal(err)
	}
	w.eventually("server 2 out", func() bool { return w.weights()[srv2] == 0 })
	if got := w.weights()[srv1]; got == 0 {
		t.Fatalf("server 1 out too: %v", w.weights())
	}
	waitEvent(t, events, nd.EventServerDown, srv2.String())
	waitEvent(t, events, nd.EventWeightsCommitted, "")
	rep := w.d.ManagerReport()
	if len(rep) != 1 || rep[0].Servers[1].State != "down" {
		t.Fatalf("report %+v", rep)
	}

	if err := os.WriteFile(filepath.Join(dir, srv2.String()), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	w.eventually("server 2 back", func() bool { return w.weights()[srv2] > 0 })
	waitEvent(t, events, nd.EventServerUp, srv2.String())

	// The operator's quiesce wins over the manager.
	if _, err := w.d.Update(func(c *config.Config) error {
		c.Clusters[0].Ports[0].Servers[0].Quiesce = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	w.eventually("server 1 quiesced", func() bool { return w.weights()[srv1] == 0 })
	for range 5 {
		w.d.mgr.Step()
	}
	if got := w.weights()[srv1]; got != 0 {
		t.Fatalf("the manager brought a quiesced server back: weight %d", got)
	}
}

// TestManagedWeights: the manager's weights survive a reinstall (a
// server's MAC changed), an operator's weight replaces the manager's for
// that server, and a decision computed before a configuration change is
// dropped.
func TestManagedWeights(t *testing.T) {
	w := start(t, strings.Replace(baseConfig, "manager: {policy: static}", "manager: {interval: 1h}", 1))
	commit := func(weights map[netip.Addr]uint32, version uint64) {
		t.Helper()
		err := w.d.commitWeights(manager.Commit{Port: key, Weights: weights, Reason: "test", Version: version})
		if stale := version != w.d.mgr.Version(); stale != errors.Is(err, manager.ErrNotApplied) || (!stale && err != nil) {
			t.Fatalf("commit under version %d (now %d): %v", version, w.d.mgr.Version(), err)
		}
	}
	commit(map[netip.Addr]uint32{srv1: 77, srv2: 20}, w.d.mgr.Version())
	if got := w.weights(); got[srv1] != 77 {
		t.Fatalf("weights after commit %v", got)
	}
	w.nbr.set(srv1, "02:00:00:00:00:99", 2)
	w.eventually("reinstalled with the new MAC", func() bool {
		for _, s := range w.x.Services()[0].Servers {
			if s.Addr == srv1 {
				return s.MAC.String() == "02:00:00:00:00:99"
			}
		}
		return false
	})
	if got := w.weights(); got[srv1] != 77 {
		t.Fatalf("a reinstall threw the manager's weight away: %v", got)
	}
	stale := w.d.mgr.Version()
	if _, err := w.d.Update(func(c *config.Config) error {
		c.Clusters[0].Ports[0].Servers[0].Weight = 5
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := w.weights(); got[srv1] != 5 {
		t.Fatalf("operator's weight 5 not installed: %v", got)
	}
	commit(map[netip.Addr]uint32{srv1: 90, srv2: 20}, stale)
	if got := w.weights(); got[srv1] != 5 {
		t.Fatalf("a decision computed before the operator's change overrode it: %v", got)
	}
}

// TestPortAndManagerSettingsFollowReload: a change of ports[].weight_bound,
// manager.policy or ports[].sticky_time, applied live, is in the data plane
// when the change returns: a new bound starts the port's weights again from
// the configured ones and caps what the manager commits, the static policy
// puts the configured weights back, and the service's sticky time is the
// new one.
func TestPortAndManagerSettingsFollowReload(t *testing.T) {
	w := start(t, strings.Replace(baseConfig, "manager: {policy: static}", "manager: {interval: 1h}", 1))
	if err := w.d.commitWeights(manager.Commit{Port: key, Weights: map[netip.Addr]uint32{srv1: 77, srv2: 20}, Reason: "test", Version: w.d.mgr.Version()}); err != nil {
		t.Fatal(err)
	}
	if got := w.weights(); got[srv1] != 77 {
		t.Fatalf("weights after commit %v", got)
	}
	update := func(what string, edit func(c *config.Config)) {
		t.Helper()
		if _, err := w.d.Update(func(c *config.Config) error { edit(c); return nil }); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// A new bound is a new scale: the port's weights start again from the
	// configured ones, and what the manager commits is capped.
	update("weight_bound 50", func(c *config.Config) { c.Clusters[0].Ports[0].WeightBound = 50 })
	if got := w.weights(); got[srv1] != 10 || got[srv2] != 20 {
		t.Errorf("after weight_bound 50: %v, want the configured 10 and 20", got)
	}
	if err := w.d.commitWeights(manager.Commit{Port: key, Weights: map[netip.Addr]uint32{srv1: 77, srv2: 20}, Reason: "test", Version: w.d.mgr.Version()}); err != nil {
		t.Fatal(err)
	}
	if got := w.weights(); got[srv1] != 50 {
		t.Errorf("a commit of 77 under weight_bound 50: %v, want 50", got)
	}
	update("sticky_time 30s", func(c *config.Config) { c.Clusters[0].Ports[0].StickyTime = 30 * time.Second })
	if st := w.x.Services()[0].StickyTime; st != 30*time.Second {
		t.Errorf("sticky time %v in the data plane, want 30s", st)
	}
	update("policy static", func(c *config.Config) { c.Manager.Policy = config.PolicyStatic })
	if got := w.weights(); got[srv1] != 10 || got[srv2] != 20 {
		t.Errorf("after policy static: %v, want the configured 10 and 20", got)
	}
}

// TestInterfacesFollowReload: an interface added to `interfaces` by a live
// change is attached when the change returns, and one removed is detached.
func TestInterfacesFollowReload(t *testing.T) {
	w := start(t, baseConfig)
	if got := w.x.Attached(); !slices.Equal(got, []int{2}) {
		t.Fatalf("attached %v at start, want eth0 (2)", got)
	}
	set := func(names ...string) {
		t.Helper()
		if _, err := w.d.Update(func(c *config.Config) error { c.Interfaces = names; return nil }); err != nil {
			t.Fatalf("interfaces %v: %v", names, err)
		}
	}
	set("eth0", "eth1")
	if got := w.x.Attached(); !slices.Equal(got, []int{2, 3}) {
		t.Errorf("attached %v after adding eth1, want [2 3]", got)
	}
	set("eth1")
	if got := w.x.Attached(); !slices.Equal(got, []int{3}) {
		t.Errorf("attached %v after removing eth0, want [3]", got)
	}
}

func TestSchedulerFollowsConfiguration(t *testing.T) {
	w := start(t, strings.Replace(baseConfig, "      - port: 80\n", "      - port: 80\n        scheduler: p2c\n", 1))
	if s := w.x.Services()[0]; s.Scheduler != executor.SchedulerP2C {
		t.Fatalf("scheduler %v, want p2c", s.Scheduler)
	}
	if _, err := w.d.Update(func(c *config.Config) error {
		c.Clusters[0].Ports[0].Scheduler = config.SchedulerMaglev
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if s := w.x.Services()[0]; s.Scheduler != executor.SchedulerMaglev {
		t.Fatalf("scheduler %v after a live change, want maglev", s.Scheduler)
	}
}
