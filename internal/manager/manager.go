// Package manager is the paper's Manager: the feedback loop that turns
// metrics into weights. Every interval, and at once on events (a server
// added, removed, down or up; settings changed), it gathers for each port
// the input metrics (the executor's new and active flow counters), the
// forward metrics (advisors' latencies) and the host metrics (agents'
// reports), normalises each across the port's servers, combines them into
// a Load Metric Index per server, LMI = sum R(i) * l(i), runs a replaceable
// weight computation function with smoothing, and commits the new weights
// to the executor only when they moved by more than the sensitivity
// threshold. Servers that are down, whose host metrics stopped arriving,
// or whose load stands far above their peers' sit out at weight 0 and come
// back by themselves, gently.
//
// The manager never writes the data plane itself: it hands each decision
// to a Commit function (the daemon's, which owns the data plane), so that
// configuration changes and weight commits go through one owner.
package manager

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// Settings tune the loop. They can change at any time (Set).
type Settings struct {
	// Interval between two computations. Default 1s.
	Interval time.Duration
	// Sensitivity is the smallest aggregate weight change, as a fraction
	// of the port's total weight, that is committed; 0 commits every
	// change (there is no default: DefaultSensitivity is the file's).
	Sensitivity float64
	// Smoothing is how slowly weights follow the metrics: 1 at once,
	// larger slower. Default 1.5.
	Smoothing float64
	// Policy names the weight function: default, best or static.
	Policy string
	// Overload is the LMI past which a server is taken out to cool down
	// (its load stands this many times above its peers'). 0 means the
	// default, 3; a negative value disables cool-downs.
	Overload float64
	// CoolDown is how long an overloaded server sits out before it is
	// tried again; it doubles each time the server is found overloaded
	// again soon after coming back, up to 16 times. Default 3 intervals.
	CoolDown time.Duration
	// HostMetric names the agent metric that the host proportion weighs.
	// Default "cpu".
	HostMetric string
}

// Defaults of Settings.
const (
	DefaultInterval    = time.Second
	DefaultSensitivity = 0.05
	DefaultSmoothing   = 1.5
	DefaultOverload    = 3
	DefaultHostMetric  = "cpu"
)

func (s Settings) withDefaults() Settings {
	if s.Interval <= 0 {
		s.Interval = DefaultInterval
	}
	if s.Smoothing < 1 {
		s.Smoothing = DefaultSmoothing
	}
	if s.Policy == "" {
		s.Policy = PolicyDefault
	}
	if s.Overload == 0 {
		s.Overload = DefaultOverload
	}
	if s.CoolDown <= 0 {
		s.CoolDown = 3 * s.Interval
	}
	if s.HostMetric == "" {
		s.HostMetric = DefaultHostMetric
	}
	return s
}

// Validate reports settings the manager cannot run with.
func (s Settings) Validate() error {
	if s.Interval < 0 || s.Sensitivity < 0 || s.Sensitivity > 1 || s.CoolDown < 0 {
		return fmt.Errorf("%w: interval, sensitivity (0..1) and cool-down must not be negative", ErrInvalid)
	}
	if s.Smoothing != 0 && (s.Smoothing < 1 || s.Smoothing > 10) {
		return fmt.Errorf("%w: smoothing %v must be between 1 and 10", ErrInvalid, s.Smoothing)
	}
	if s.Overload > 0 && s.Overload <= 1 {
		return fmt.Errorf("%w: overload %v must be above 1 (a fair load is 1), or negative to disable", ErrInvalid, s.Overload)
	}
	_, err := NewWeightFunc(s.Policy)
	return err
}

// ErrInvalid marks settings or ports the manager refuses.
var ErrInvalid = errors.New("invalid")

// Proportions weigh the LMI's inputs, in percent; they sum to 100 (or to 0,
// which leaves every server equally loaded).
type Proportions struct {
	Active, New, Advisor, Host uint32
	// Custom are operator-defined metrics.
	Custom []CustomMetric
}

// CustomMetric is an operator-defined input: an agent metric (an agent's
// configured command) or another advisor's latency, weighed like the rest.
type CustomMetric struct {
	// Name labels it in reports.
	Name string
	// Agent names an agent metric; Advisor an advisor. One of the two.
	Agent, Advisor string
	Proportion     uint32
}

func (p Proportions) sum() uint32 {
	s := p.Active + p.New + p.Advisor + p.Host
	for _, c := range p.Custom {
		s += c.Proportion
	}
	return s
}

// Port is one VIP:port as the manager manages it.
type Port struct {
	Key nd.ServiceKey
	// Bound is the largest weight (the port's weight bound).
	Bound       uint32
	Proportions Proportions
	// Advisor names the advisor whose latency feeds the advisor
	// proportion and whose "down" takes a server out; "" for none.
	Advisor string
	Servers []Server
}

// Server is one server of a Port as configured.
type Server struct {
	Addr netip.Addr
	// Weight is the configured weight: where a managed server starts, and
	// what a fixed one keeps.
	Weight uint32
	// Quiesced: the operator's quiesce wins over every computation.
	Quiesced bool
	// Fixed keeps the configured weight whatever the load (still taken out
	// when down).
	Fixed bool
}

// AdvisorReading is an advisor's view of one server of one port.
type AdvisorReading struct {
	// Latency is the advisor's smoothed latency; Floor the lowest of its
	// last few rounds (the server's speed with no queue ahead of the
	// probe), 0 when not known.
	Latency time.Duration
	Floor   time.Duration
	Down    bool
	Err     string
}

// HostReading is an agent's latest report on one server.
type HostReading struct {
	Metrics map[string]float64
	// Disabled: no valid report for longer than its threshold.
	Disabled bool
	Err      string
}

// Commit is a decision handed to the owner of the data plane.
type Commit struct {
	Port    nd.ServiceKey
	Weights map[netip.Addr]uint32
	// Reason says why, for logs and events: "load", "down", "up",
	// "cool-down", "disabled", ...
	Reason string
	// Change is the aggregate change as a fraction of the total weight.
	Change float64
	// Delays are the servers' delay factors and FlowTime the port's
	// typical flow time, for a port under the delay scheduler (nil and 0
	// under others: leave them as they are).
	Delays   map[netip.Addr]float64
	FlowTime time.Duration
	// LMIs are the servers' LMIs behind the decision (delay scheduler),
	// for the log.
	LMIs map[netip.Addr]float64
	// applied is the manager's bookkeeping, kept once the commit
	// function applied the decision.
	applied func()
	// Version is the manager's configuration version the decision was
	// computed under (see Manager.Version): the owner of the data plane
	// drops a decision computed before its latest SetPorts or SetSettings.
	Version uint64
}

// DataPlane is what the manager reads of the executor: the services
// installed and their counters (the executor's Executor has both).
type DataPlane interface {
	Services() []nd.Service
	Stats() (nd.Stats, error)
}

// Options are what New needs.
type Options struct {
	// Executor is read for counters and for the servers installed.
	Executor DataPlane
	// Commit applies new weights. Required.
	Commit func(Commit) error
	// Advisor reads an advisor's latest result for a server of a port; ok
	// false when it has none (yet).
	Advisor func(advisor string, port nd.ServiceKey, server netip.Addr) (AdvisorReading, bool)
	// Host reads an agent's latest report for a server; ok false when no
	// agent is configured for it.
	Host func(server netip.Addr) (HostReading, bool)
	// Now is the clock. Default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Manager is the feedback loop. Its methods are safe for concurrent use.
type Manager struct {
	x      DataPlane
	commit func(Commit) error
	adv    func(string, nd.ServiceKey, netip.Addr) (AdvisorReading, bool)
	host   func(netip.Addr) (HostReading, bool)
	now    func() time.Time
	log    *slog.Logger

	trigger chan struct{}
	reset   chan struct{} // the interval changed
	// sampled asks for a computation that reads health only: what
	// checkSamples saw between intervals.
	sampled chan struct{}

	mu       sync.Mutex
	settings Settings
	wcf      WeightFunc
	ports    map[nd.ServiceKey]*portState
	last     time.Time // last computation that read the load
	version  uint64
}

// Version counts configuration changes (SetPorts, SetSettings). A Commit
// carries the version it was computed under.
func (m *Manager) Version() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.version
}

// New returns a manager; Run starts it.
func New(s Settings, o Options) (*Manager, error) {
	if o.Executor == nil || o.Commit == nil {
		return nil, errors.New("manager: an executor and a commit function are required")
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Advisor == nil {
		o.Advisor = func(string, nd.ServiceKey, netip.Addr) (AdvisorReading, bool) { return AdvisorReading{}, false }
	}
	if o.Host == nil {
		o.Host = func(netip.Addr) (HostReading, bool) { return HostReading{}, false }
	}
	s = s.withDefaults()
	wcf, _ := NewWeightFunc(s.Policy)
	return &Manager{
		x: o.Executor, commit: o.Commit, adv: o.Advisor, host: o.Host, now: o.Now, log: o.Logger,
		trigger:  make(chan struct{}, 1),
		reset:    make(chan struct{}, 1),
		sampled:  make(chan struct{}, 1),
		settings: s,
		wcf:      wcf,
		ports:    map[nd.ServiceKey]*portState{},
	}, nil
}

// SetWeightFunc replaces the weight computation function, e.g. with one of
// an operator's own making.
func (m *Manager) SetWeightFunc(f WeightFunc) {
	m.mu.Lock()
	m.wcf = f
	m.mu.Unlock()
	m.Trigger()
}

// Settings returns the settings in force, defaults applied.
func (m *Manager) Settings() Settings {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.settings
}

// SetSettings changes the settings live.
func (m *Manager) SetSettings(s Settings) error {
	if err := s.Validate(); err != nil {
		return err
	}
	s = s.withDefaults()
	wcf, _ := NewWeightFunc(s.Policy)
	m.mu.Lock()
	old := m.settings
	m.settings = s
	if old != s {
		m.version++
	}
	if old.Policy != s.Policy {
		m.wcf = wcf
	}
	m.mu.Unlock()
	if old.Interval != s.Interval {
		select {
		case m.reset <- struct{}{}:
		default:
		}
	}
	m.Trigger()
	return nil
}

// SetPorts replaces the ports the manager manages. A port or server that
// stays keeps its state (weights, history); new ones start from their
// configured weights. Proportions must sum to 100 (or 0).
func (m *Manager) SetPorts(ports []Port) error {
	for _, p := range ports {
		if s := p.Proportions.sum(); s != 100 && s != 0 {
			return fmt.Errorf("%w: port %v: proportions sum to %d, not 100", ErrInvalid, p.Key, s)
		}
		if p.Bound == 0 {
			return fmt.Errorf("%w: port %v: weight bound 0", ErrInvalid, p.Key)
		}
		for _, c := range p.Proportions.Custom {
			if (c.Agent == "") == (c.Advisor == "") {
				return fmt.Errorf("%w: port %v: custom metric %q needs an agent metric or an advisor, not both", ErrInvalid, p.Key, c.Name)
			}
		}
	}
	m.mu.Lock()
	next := map[nd.ServiceKey]*portState{}
	changed := len(ports) != len(m.ports)
	for _, p := range ports {
		ps, ok := m.ports[p.Key]
		if !ok {
			ps = &portState{servers: map[netip.Addr]*serverState{}}
			changed = true
		}
		if !samePort(ps.spec, p) {
			changed = true
		}
		ps.spec = p
		keep := map[netip.Addr]*serverState{}
		for _, s := range p.Servers {
			st, ok := ps.servers[s.Addr]
			if !ok {
				st = &serverState{}
			}
			keep[s.Addr] = st
		}
		ps.servers = keep
		next[p.Key] = ps
	}
	m.ports = next
	if changed {
		m.version++
	}
	m.mu.Unlock()
	if changed {
		m.Trigger()
	}
	return nil
}

func samePort(a, b Port) bool {
	return a.Key == b.Key && a.Bound == b.Bound && a.Advisor == b.Advisor &&
		a.Proportions.Active == b.Proportions.Active && a.Proportions.New == b.Proportions.New &&
		a.Proportions.Advisor == b.Proportions.Advisor && a.Proportions.Host == b.Proportions.Host &&
		slices.Equal(a.Proportions.Custom, b.Proportions.Custom) && slices.Equal(a.Servers, b.Servers)
}

// Trigger asks for a computation now (an event), without waiting.
func (m *Manager) Trigger() {
	select {
	case m.trigger <- struct{}{}:
	default:
	}
}

// Run computes every interval and on triggers until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	iv := m.Settings().Interval
	t := time.NewTicker(iv)
	defer t.Stop()
	// Active flows are sampled several times an interval and averaged: a
	// snapshot of a few dozen short flows swings by half from one instant
	// to the next, their average over the interval (arrival rate x
	// response time) does not.
	st := time.NewTicker(iv / activeSamples)
	defer st.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.reset:
			iv = m.Settings().Interval
			t.Reset(iv)
			st.Reset(iv / activeSamples)
		case <-m.trigger:
			m.Step()
		case <-m.sampled:
			m.step(false)
		case <-t.C:
			m.Step()
		case <-st.C:
			m.sampleActive()
		}
	}
}

// activeSamples is how many times an interval active flows are sampled.
const activeSamples = 16

// activeSum accumulates one server's active-flow samples.
type activeSum struct {
	sum float64
	n   int
}

// sampleActive adds a reading of every managed server's active flows to
// the interval's average.
func (m *Manager) sampleActive() {
	stats, err := m.x.Stats()
	if err != nil {
		// One missed sample leaves the interval's average of the rest;
		// say so, at debug: it repeats 16 times an interval.
		m.log.Debug("manager: sampling counters", "err", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	suspect := false
	for k, ps := range m.ports {
		ss := stats.Services[k]
		for a, st := range ps.servers {
			c, ok := ss.Servers[a]
			if !ok {
				continue
			}
			st.active.sum += float64(c.Active())
			st.active.n++
		}
		if ps.sched == nd.SchedulerDelay && m.checkSamples(ps, ss, now, ps.flowTime) {
			suspect = true
		}
	}
	if suspect {
		// At once, as an event that reads health, not load: not at the
		// next interval.
		select {
		case m.sampled <- struct{}{}:
		default:
		}
	}
}

// Step runs one computation over every port now and commits what passes
// the threshold. Run calls it; tests call it directly.
func (m *Manager) Step() { m.step(true) }

// step is Step; mayLoad false reads health only, whenever it runs.
func (m *Manager) step(mayLoad bool) {
	stats, err := m.x.Stats()
	if err != nil {
		m.log.Warn("manager: reading counters", "err", err)
		return
	}
	installed := map[nd.ServiceKey]nd.Service{}
	for _, s := range m.x.Services() {
		installed[s.Key] = s
	}

	m.mu.Lock()
	now := m.now()
	// Load metrics are rates over an interval: a computation an event
	// brings a moment after the last one reads health only (down, up,
	// quiesced), and leaves the load for the next full interval.
	elapsed := now.Sub(m.last)
	load := mayLoad && (m.last.IsZero() || elapsed >= m.settings.Interval/2)
	if load {
		m.last = now
	}
	var commits []Commit
	keys := make([]nd.ServiceKey, 0, len(m.ports))
	for k := range m.ports {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b nd.ServiceKey) int { return cmp.Compare(a.String(), b.String()) })
	for _, k := range keys {
		inst, ok := installed[k]
		if !ok {
			continue // the daemon has not installed it (yet)
		}
		ps := m.ports[k]
		ps.sched = inst.Scheduler
		compute := m.port
		if inst.Scheduler == nd.SchedulerDelay {
			compute = m.delayPort
		}
		if c, ok := compute(ps, inst, stats.Services[k], now, elapsed, load); ok {
			c.Version = m.version
			commits = append(commits, c)
		}
	}
	m.mu.Unlock()

	for _, c := range commits {
		err := m.commit(c)
		m.mu.Lock()
		ps := m.ports[c.Port]
		switch {
		case err == nil:
			if ps != nil && c.applied != nil {
				c.applied()
			}
		case errors.Is(err, ErrNotApplied):
			// Dropped on purpose (stale, standby): nothing changed.
			if ps != nil {
				ps.report.Committed = false
				ps.report.Reason += " (not applied: " + err.Error() + ")"
			}
		default:
			m.log.Warn("manager: commit", "port", c.Port.String(), "err", err)
			if ps != nil {
				ps.report.Committed = false
				ps.report.Err = err.Error()
			}
		}
		m.mu.Unlock()
	}
}

// ErrNotApplied is what a Commit function returns, wrapped, when it drops a
// decision on purpose (computed under an older configuration, or this node
// is a standby): the manager keeps no bookkeeping of a move that did not
// happen.
var ErrNotApplied = errors.New("decision not applied")

// Report is the manager's account of its last computation, per port: the
// IBM manager report.
func (m *Manager) Report() []PortReport {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]PortReport, 0, len(m.ports))
	for _, ps := range m.ports {
		r := ps.report
		r.Servers = slices.Clone(r.Servers)
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b PortReport) int { return cmp.Compare(a.Port, b.Port) })
	return out
}

// clampLMI keeps a reading inside what the weight function can act on.
func clampLMI(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 1
	}
	return math.Min(math.Max(x, 0), 1000)
}
