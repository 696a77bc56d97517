package api

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/agent"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/manager"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// fakeController is an in-memory Controller: it validates and diffs like the
// daemon, and keeps the configuration, with no data plane behind it.
type fakeController struct {
	mu        sync.Mutex
	cfg       *config.Config
	file      *config.Config // what Reload reads; nil: no file
	status    nd.Status
	statusErr error
	recent    []nd.Event
	subs      map[chan nd.Event]struct{}
	applied   int // successful Apply calls
}

const fakeYAML = `
interfaces: [eth0]
clusters:
  - vip: 198.51.100.100
    ports:
      - port: 80
        servers:
          - {address: 198.51.100.11, weight: 10}
          - {address: 198.51.100.12, weight: 20}
      - port: 53
        protocol: udp
        sticky_time: 30s
        weight_bound: 10
        servers:
          - {address: 198.51.100.11}
  - vip: 2001:db8::100
    ports:
      - port: 443
        servers:
          - {address: 2001:db8::11}
`

func newFake(t testing.TB) *fakeController {
	t.Helper()
	cfg, err := config.Parse([]byte(fakeYAML), "fake.yaml")
	if err != nil {
		t.Fatalf("parse fake config: %v", err)
	}
	return &fakeController{cfg: cfg, subs: map[chan nd.Event]struct{}{}}
}

func (f *fakeController) ManagerReport() []manager.PortReport {
	return []manager.PortReport{{Port: "198.51.100.100:80/tcp", Policy: "default", Reason: "no change"}}
}

func (f *fakeController) AdvisorStatus() []advisor.Status { return nil }

func (f *fakeController) HAStatus() (ha.Status, error) { return ha.Status{}, nd.ErrNoHA }

func (f *fakeController) HATakeover(ctx context.Context) error { return nd.ErrNoHA }

func (f *fakeController) BGPStatus(ctx context.Context) (nd.BGPStatus, error) {
	return nd.BGPStatus{}, nd.ErrNoBGP
}

func (f *fakeController) BGPDrain(ctx context.Context, drain bool) (nd.BGPStatus, error) {
	return nd.BGPStatus{}, nd.ErrNoBGP
}

func (f *fakeController) AgentStatus() map[netip.AddrPort]agent.Status {
	return map[netip.AddrPort]agent.Status{netip.MustParseAddrPort("198.51.100.11:7010"): {Disabled: true, Err: "connection refused"}}
}

func (f *fakeController) Config() *config.Config {
	f.mu.Lock()
	defer f.mu.Unlock()
	return cloneConfig(f.cfg)
}

func (f *fakeController) Apply(cfg *config.Config) (config.Changes, error) {
	if err := cfg.Validate(); err != nil {
		return config.Changes{}, fmt.Errorf("%w: %w", nd.ErrRejected, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := config.Diff(f.cfg, cfg)
	if err := ch.Err(); err != nil {
		return ch, fmt.Errorf("%w: %w", nd.ErrRejected, err)
	}
	f.cfg = cloneConfig(cfg)
	f.applied++
	if !ch.Empty() {
		f.publishLocked(nd.Event{Time: time.Now(), Type: nd.EventConfigApplied, Message: ch.String()})
	}
	return ch, nil
}

func (f *fakeController) Update(fn func(*config.Config) error) (config.Changes, error) {
	c := f.Config()
	if err := fn(c); err != nil {
		return config.Changes{}, fmt.Errorf("%w: %w", nd.ErrRejected, err)
	}
	return f.Apply(c)
}

func (f *fakeController) Reload() (config.Changes, error) {
	f.mu.Lock()
	file := f.file
	f.mu.Unlock()
	if file == nil {
		return config.Changes{}, fmt.Errorf("%w: no configuration file to reload", nd.ErrRejected)
	}
	return f.Apply(file)
}

func (f *fakeController) Status() (nd.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status, f.statusErr
}

func (f *fakeController) Events() (<-chan nd.Event, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan nd.Event, 64+len(f.recent))
	for _, ev := range f.recent {
		ch <- ev
	}
	f.subs[ch] = struct{}{}
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			f.mu.Lock()
			delete(f.subs, ch)
			f.mu.Unlock()
			close(ch)
		})
	}
}

func (f *fakeController) publish(ev nd.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.publishLocked(ev)
}

func (f *fakeController) publishLocked(ev nd.Event) {
	f.recent = append(f.recent, ev)
	for ch := range f.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

func (f *fakeController) subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// yaml returns the fake's configuration as the API would show it.
func (f *fakeController) yaml(t testing.TB) string {
	t.Helper()
	b, err := config.Marshal(f.Config())
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return string(b)
}

func cloneConfig(c *config.Config) *config.Config {
	out := *c
	out.Interfaces = slices.Clone(c.Interfaces)
	out.Clusters = slices.Clone(c.Clusters)
	for i := range out.Clusters {
		out.Clusters[i].Ports = slices.Clone(out.Clusters[i].Ports)
		for j := range out.Clusters[i].Ports {
			out.Clusters[i].Ports[j].Servers = slices.Clone(out.Clusters[i].Ports[j].Servers)
		}
	}
	return &out
}

// Flows: the fake has no data plane, so no flows (TestFlows drives a
// daemon over executor.Fake).
func (f *fakeController) Flows(nd.FlowFilter, int) ([]executor.Flow, bool, error) {
	return nil, false, nil
}

var _ Controller = (*fakeController)(nil)

// errStatus returns the status of an *Error, 0 for another error.
func errStatus(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}
