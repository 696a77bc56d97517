package api

import (
	"errors"
	"testing"

	"github.com/nd-dispatcher/nd/internal/config"
)

func TestManagerRoutes(t *testing.T) {
	f := newFake(t)
	c := unixClient(t, serve(t, f, ServerOptions{}))

	rep, err := c.ManagerReport()
	if err != nil {
		t.Fatal(err)
	}
	if rep.Policy != "default" || rep.Proportions.Active != 30 || rep.Interval != "1s" || len(rep.Ports) != 1 {
		t.Fatalf("report %+v", rep)
	}

	pol, iv := "best", "5s"
	ch, err := c.SetManager(ManagerPatch{Policy: &pol, Interval: &iv, Proportions: &ProportionsRequest{Active: 20, New: 20, Advisor: 60}})
	if err != nil {
		t.Fatal(err)
	}
	m := f.Config().Manager
	if m.Policy != "best" || m.Interval.String() != "5s" || m.Proportions.Advisor != 60 {
		t.Fatalf("manager after set: %+v (changes %q)", m, ch)
	}

	// Per-port proportions, then back to the manager's.
	if _, err := c.SetManager(ManagerPatch{Port: "198.51.100.100/80/tcp", Proportions: &ProportionsRequest{Active: 100}}); err != nil {
		t.Fatal(err)
	}
	if p := port80(f); p.Proportions.Active != 100 || p.Proportions.New != 0 {
		t.Fatalf("port proportions %+v", p.Proportions)
	}
	if _, err := c.SetManager(ManagerPatch{Port: "198.51.100.100/80", ResetPort: true}); err != nil {
		t.Fatal(err)
	}
	if p := port80(f); p.Proportions.Active != 20 {
		t.Fatalf("port proportions after reset %+v", p.Proportions)
	}

	bad := []ManagerPatch{
		{},
		{Proportions: &ProportionsRequest{Active: 60, New: 60}},
		{Interval: ptr("soon")},
		{Policy: ptr("random")},
		{Port: "198.51.100.100/80", Policy: ptr("best")},
		{Port: "198.51.100.100"},
		{Port: "198.51.100.100/81", Proportions: &ProportionsRequest{Active: 100}},
		{ResetPort: true},
	}
	before := f.Config()
	for _, p := range bad {
		_, err := c.SetManager(p)
		var ae *Error
		if !errors.As(err, &ae) || (ae.Status != 400 && ae.Status != 404) {
			t.Errorf("%+v: %v, want a 400 or 404", p, err)
		}
	}
	if after := f.Config(); after.Manager.Policy != before.Manager.Policy || after.Manager.Interval != before.Manager.Interval {
		t.Error("a refused change changed the configuration")
	}

	fixed := true
	if _, err := c.SetServer("198.51.100.100", 80, "tcp", "198.51.100.11", ServerPatch{Fixed: &fixed}); err != nil {
		t.Fatal(err)
	}
	if s := port80(f).Servers[0]; !s.Fixed {
		t.Errorf("server not fixed: %+v", s)
	}
	if st, err := c.Advisors(); err != nil || st == nil {
		t.Errorf("advisors: %v %v", st, err)
	}
	var ae *Error
	if _, err := c.HAStatus(); !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("ha status without ha: %v, want a 404", err)
	}
	if _, err := c.HATakeover(); !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("ha takeover without ha: %v, want a 404", err)
	}
	if ag, err := c.Agents(); err != nil || len(ag) != 1 || !ag[0].Disabled || ag[0].Address != "198.51.100.11:7010" {
		t.Errorf("agents: %+v %v", ag, err)
	}
}

func ptr[T any](v T) *T { return &v }

func port80(f *fakeController) config.Port {
	for _, p := range f.Config().Ports() {
		if p.Key.Port == 80 {
			return p
		}
	}
	return config.Port{}
}
