package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/manager"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// managerSettings turns the file's manager section into the manager's.
func managerSettings(m config.Manager) manager.Settings {
	s := manager.Settings{
		Interval:    m.Interval,
		Sensitivity: m.Sensitivity,
		Smoothing:   m.Smoothing,
		Policy:      m.Policy,
		Overload:    m.Overload,
		CoolDown:    m.CoolDown,
		HostMetric:  m.HostMetric,
	}
	if m.Overload == 0 {
		s.Overload = -1 // the file's 0 means never
	}
	return s
}

// managerPorts is the manager's view of the configured ports.
func managerPorts(cfg *config.Config) []manager.Port {
	var out []manager.Port
	for _, p := range cfg.Ports() {
		mp := manager.Port{Key: p.Key, Bound: p.WeightBound, Advisor: p.Advisor, Proportions: manager.Proportions{
			Active: p.Proportions.Active, New: p.Proportions.New, Advisor: p.Proportions.Advisor, Host: p.Proportions.Host,
		}}
		for _, c := range p.Proportions.Custom {
			mp.Proportions.Custom = append(mp.Proportions.Custom, manager.CustomMetric{Name: c.Name, Agent: c.Agent, Advisor: c.Advisor, Proportion: c.Proportion})
		}
		for _, s := range p.Servers {
			mp.Servers = append(mp.Servers, manager.Server{Addr: s.Address, Weight: s.Weight, Quiesced: s.Quiesce, Fixed: s.Fixed})
		}
		out = append(out, mp)
	}
	return out
}

// advisorSpecs turns the advisors the ports use into the runner's specs: an
// advisor probes the servers of every port that names it.
func advisorSpecs(cfg *config.Config) []advisor.Spec {
	byName := map[string]*advisor.Spec{}
	var order []string
	for _, a := range cfg.Advisors {
		s := &advisor.Spec{
			Name: a.Name, Kind: a.Kind, Interval: a.Interval, Timeout: a.Timeout,
			Retries: int(a.Retries), Rise: int(a.Rise), Fall: int(a.Fall), Mode: a.Target,
			Command: a.Command,
		}
		if a.Kind == config.AdvisorHTTP || a.Kind == config.AdvisorHTTPS {
			s.HTTP = advisor.HTTPSpec{Method: a.HTTP.Method, Path: a.HTTP.Path, Host: a.HTTP.Host,
				Status: int(a.HTTP.Status), Body: a.HTTP.Body, Insecure: a.HTTP.Insecure}
		}
		byName[a.Name] = s
		order = append(order, a.Name)
	}
	seen := map[string]bool{}
	for _, p := range cfg.Ports() {
		s := byName[p.Advisor]
		if s == nil {
			continue
		}
		port := p.Key.Port
		for _, a := range cfg.Advisors {
			if a.Name == p.Advisor && a.Port != 0 {
				port = a.Port
			}
		}
		for _, srv := range p.Servers {
			t := advisor.Target{Server: srv.Address, Port: port}
			if s.Mode == config.TargetVIP {
				t.VIP = p.Key.VIP
			}
			id := fmt.Sprintf("%s %s %d %s", s.Name, t.Server, t.Port, t.VIP)
			if !seen[id] {
				seen[id] = true
				s.Targets = append(s.Targets, t)
			}
		}
	}
	var out []advisor.Spec
	for _, n := range order {
		if len(byName[n].Targets) > 0 {
			out = append(out, *byName[n])
		}
	}
	return out
}

// advisorIndex answers the manager's questions about advisors from a
// snapshot of the runner, taken at most every 100 ms: the manager asks once
// per server and port in each computation.
type advisorIndex struct {
	runner *advisor.Runner

	mu    sync.Mutex
	taken time.Time
	byKey map[string]advisor.Status
}

func (ai *advisorIndex) reading(name string, port executor.ServiceKey, server netip.Addr) (manager.AdvisorReading, bool) {
	ai.mu.Lock()
	defer ai.mu.Unlock()
	if time.Since(ai.taken) > 100*time.Millisecond {
		ai.byKey = map[string]advisor.Status{}
		for _, s := range ai.runner.Snapshot() {
			ai.byKey[s.Advisor+" "+s.Server.String()+" "+s.VIP.String()] = s
			if !s.VIP.IsValid() {
				// Server-mode targets answer for every VIP.
				ai.byKey[s.Advisor+" "+s.Server.String()+" any"] = s
			}
		}
		ai.taken = time.Now()
	}
	s, ok := ai.byKey[name+" "+server.String()+" "+port.VIP.String()]
	if !ok {
		s, ok = ai.byKey[name+" "+server.String()+" any"]
	}
	if !ok || !s.Known {
		return manager.AdvisorReading{}, false
	}
	return manager.AdvisorReading{Latency: s.Smoothed, Floor: s.Floor, Down: !s.Up, Err: s.Err}, true
}

// commitWeights is the manager's way into the data plane: it records the
// weights it chose (so that a reinstall after a neighbour change keeps
// them) and writes those of installed servers.
func (d *Daemon) commitWeights(c manager.Commit) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	// The configuration changed since the manager computed this: its
	// weights may undo what the operator just set. It computes again.
	if c.Version != d.mgr.Version() {
		d.mgr.Trigger()
		return fmt.Errorf("%w: computed under configuration %d, now %d", manager.ErrNotApplied, c.Version, d.mgr.Version())
	}
	// A standby follows the active's weights; its own data plane carries
	// no traffic to judge by.
	if d.ha != nil && d.ha.standby.Load() {
		return fmt.Errorf("%w: a standby follows the active", manager.ErrNotApplied)
	}
	var port *config.Port
	for _, p := range d.cfg.Ports() {
		if p.Key == c.Port {
			port = &p
			break
		}
	}
	if port == nil {
		return fmt.Errorf("%w: port %v is no longer configured", executor.ErrNotFound, c.Port)
	}
	if d.managed[c.Port] == nil {
		d.managed[c.Port] = map[netip.Addr]uint32{}
	}
	installed := map[netip.Addr]bool{}
	for _, s := range d.x.Services() {
		if s.Key == c.Port {
			for _, sv := range s.Servers {
				installed[sv.Addr] = true
			}
		}
	}
	write := map[netip.Addr]uint32{}
	for _, s := range port.Servers {
		w, ok := c.Weights[s.Address]
		if !ok {
			continue
		}
		// The manager keeps within the bound it was told; the port's
		// bound is the last word all the same.
		w = min(w, port.WeightBound)
		d.managed[c.Port][s.Address] = w
		if installed[s.Address] && !s.Quiesce {
			write[s.Address] = w
		}
	}
	switch {
	case c.Delays != nil:
		// Weights, delay factors and flow time in one update of the
		// service.
		d.delays[c.Port] = portDelays{servers: maps.Clone(c.Delays), flowTime: c.FlowTime}
		var have executor.Service
		for _, s := range d.x.Services() {
			if s.Key == c.Port {
				have = s
			}
		}
		want := d.service(*port, have)
		for i, s := range want.Servers {
			if w, ok := write[s.Addr]; ok {
				want.Servers[i].Weight = w
			}
		}
		if err := d.x.UpsertService(want); err != nil {
			return fmt.Errorf("commit weights and delay factors of %v: %w", c.Port, err)
		}
	case len(write) > 0:
		if err := d.x.SetWeights(c.Port, write); err != nil {
			return fmt.Errorf("commit weights of %v: %w", c.Port, err)
		}
	}
	addrs := make([]netip.Addr, 0, len(write))
	for a := range write {
		addrs = append(addrs, a)
	}
	sort.Slice(addrs, func(i, j int) bool { return addrs[i].Less(addrs[j]) })
	var parts []string
	for _, a := range addrs {
		if f := c.Delays[a]; f > 1 {
			parts = append(parts, fmt.Sprintf("%s=%d(delay x%.3g, lmi %.2f)", a, write[a], f, c.LMIs[a]))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%d", a, write[a]))
	}
	msg := fmt.Sprintf("%s (change %.1f%%): %s", c.Reason, 100*c.Change, strings.Join(parts, " "))
	d.log.Info("weights committed", "service", c.Port.String(), "reason", c.Reason, "weights", strings.Join(parts, " "))
	d.emit(nd.Event{Type: nd.EventWeightsCommitted, Service: c.Port.String(), Message: msg})
	_ = d.updateBGP() // logged
	if d.ha != nil {
		d.ha.requestPublish()
	}
	return nil
}

// portDelays is what the manager committed for a port under the delay
// scheduler.
type portDelays struct {
	servers  map[netip.Addr]float64
	flowTime time.Duration
}

// forgetManaged drops the manager's weights that a configuration change
// overrides: a server whose configured weight changed starts again from it,
// and removed ports and servers are forgotten. Called with d.mu held.
func (d *Daemon) forgetManaged(ch config.Changes) {
	for _, p := range ch.Removed {
		delete(d.managed, p.Key)
		delete(d.delays, p.Key)
	}
	for _, pc := range ch.Changed {
		m := d.managed[pc.New.Key]
		if m == nil {
			continue
		}
		for _, s := range pc.Removed {
			delete(m, s.Address)
		}
		for _, c := range pc.Changed {
			if c.Old.Weight != c.New.Weight || c.Old.Fixed != c.New.Fixed {
				delete(m, c.New.Address)
			}
		}
		if pc.Old.WeightBound != pc.New.WeightBound {
			delete(d.managed, pc.New.Key)
		}
	}
}

// Report is the manager's last computation per port (ndctl manager report).
func (d *Daemon) ManagerReport() []manager.PortReport {
	return d.mgr.Report()
}

// AdvisorStatus lists every advisor target's state.
func (d *Daemon) AdvisorStatus() []advisor.Status {
	return d.adv.Snapshot()
}

// onAdvisorChange reports a server going down or up and asks the manager
// to act at once (the paper's "on events").
func (d *Daemon) onAdvisorChange(s advisor.Status) {
	typ, msg := nd.EventServerUp, fmt.Sprintf("advisor %s: up (%v)", s.Advisor, s.Latency)
	if !s.Up {
		typ, msg = nd.EventServerDown, fmt.Sprintf("advisor %s: down: %s", s.Advisor, s.Err)
	}
	svc := ""
	if s.VIP.IsValid() {
		svc = netip.AddrPortFrom(s.VIP, s.Port).String()
	}
	d.emit(nd.Event{Type: typ, Server: s.Server.String(), Service: svc, Message: msg})
	if d.mgr != nil {
		d.mgr.Trigger()
	}
}

// Steering routes connections to a VIP to one server: advisors with target
// vip probe the socket clients reach under direct server return.
// Closing it detaches it.
type Steering interface {
	Route(server netip.Addr, mac net.HardwareAddr, ifindex int) (mark uint32, err error)
	Mark(server netip.Addr) (uint32, bool)
	DialFunc(server, source netip.Addr) (func(ctx context.Context, network, address string) (net.Conn, error), error)
	Close() error
}

// probesThroughVIP reports whether some advisor probes a server other than
// the dispatcher itself through a VIP: what needs steering.
func probesThroughVIP(specs []advisor.Spec, locals map[netip.Addr]bool) bool {
	for _, s := range specs {
		if s.Mode != config.TargetVIP {
			continue
		}
		for _, t := range s.Targets {
			if !locals[t.Server] {
				return true
			}
		}
	}
	return false
}

// steering is the attached steering, or nil and why not.
func (d *Daemon) steering() (Steering, error) {
	d.steerMu.Lock()
	defer d.steerMu.Unlock()
	if d.steer == nil && d.steerErr == nil {
		return nil, errors.New("advisor steering is not attached: no advisor probes through a VIP")
	}
	return d.steer, d.steerErr
}

// attachSteering attaches steering if it is not. Called with d.mu held.
func (d *Daemon) attachSteering() {
	d.steerMu.Lock()
	defer d.steerMu.Unlock()
	if d.steer != nil || d.newSteer == nil {
		return
	}
	st, err := d.newSteer()
	if err != nil {
		d.steerErr = fmt.Errorf("advisor steering unavailable: %w", err)
		d.log.Warn("advisor steering unavailable: advisors with target vip will report down", "err", err)
		d.emit(nd.Event{Type: nd.EventError, Message: d.steerErr.Error()})
		return
	}
	d.steer, d.steerErr = st, nil
	d.log.Info("advisor steering attached to lo: an advisor probes through a VIP")
}

// detachSteering detaches steering if it is attached.
func (d *Daemon) detachSteering() {
	d.steerMu.Lock()
	defer d.steerMu.Unlock()
	d.steerErr = nil
	if d.steer == nil {
		return
	}
	if err := d.steer.Close(); err != nil {
		d.log.Error("detach advisor steering", "err", err)
	}
	d.steer = nil
	d.log.Info("advisor steering detached from lo: no advisor probes through a VIP")
}

// viaVIP gives an advisor a dial function whose connections to vip reach
// server: steered to the server's MAC, from the dispatcher's own address on
// the interface that reaches it. A co-located server is the local stack,
// which a plain connection to the VIP reaches.
func (d *Daemon) viaVIP(server, vip netip.Addr) (advisor.DialFunc, error) {
	sets := d.addrs.Load()
	if sets == nil {
		return nil, errors.New("no configuration applied yet")
	}
	if sets.locals[server] {
		var dl net.Dialer
		return dl.DialContext, nil
	}
	st, err := d.steering()
	if st == nil {
		return nil, err
	}
	e, ok := d.nbr.Lookup(server)
	if !ok {
		return nil, errors.New("server not resolved in the neighbour table")
	}
	if _, err := st.Route(server, e.MAC, e.Ifindex); err != nil {
		return nil, err
	}
	src, err := executor.InterfaceSource(e.Ifindex, vip.Is6(), func(a netip.Addr) bool { return sets.vips[a] })
	if err != nil {
		return nil, fmt.Errorf("no source address to probe from: %w", err)
	}
	return st.DialFunc(server, src)
}

// addrSets are the configured VIPs and co-located servers.
type addrSets struct {
	vips, locals map[netip.Addr]bool
}
