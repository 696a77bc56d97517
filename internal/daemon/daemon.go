// Package daemon is ndd as a library: it owns the live configuration, turns
// it into data-plane state through the executor, follows the neighbour table
// for servers' MAC addresses, and reports status and events. The API, the CLI
// and the config file are its clients; every change, whatever its source,
// goes through Apply, which diffs the running configuration against the new
// one and applies only the difference.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/manager"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/neighbor"
)

// Neighbors resolves servers' addresses to MAC addresses and interfaces;
// *neighbor.Resolver is the real one.
type Neighbors interface {
	Watch(addrs []netip.Addr)
	Lookup(a netip.Addr) (neighbor.Entry, bool)
	Status() []neighbor.Event
	Events() <-chan neighbor.Event
	Run(ctx context.Context) error
	Close() error
}

// Interfaces finds network interfaces by name; net.InterfaceByName in the
// daemon's namespace is the real one.
type Interfaces func(name string) (*net.Interface, error)

var defaultInterfaces Interfaces = net.InterfaceByName

// Options are what New needs beyond the configuration.
type Options struct {
	// Executor is the data plane. Required.
	Executor executor.Executor
	// Neighbors resolves servers. Required.
	Neighbors Neighbors
	// Interfaces looks interfaces up. Default net.InterfaceByName.
	Interfaces Interfaces
	// Networks lists the connected networks, whose broadcast addresses no
	// VIP may be. Default: the interfaces' addresses.
	Networks Networks
	// ConfigPath is the file Reload reads. Optional.
	ConfigPath string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// StatsInterval is how often counters are sampled for rates. Default 1s.
	StatsInterval time.Duration
	// NewSteering attaches the program that routes advisors' probes of a
	// VIP to one server (advisors with target vip; executor.NewSteering is
	// the real one). The daemon calls it when some advisor first probes
	// through a VIP and closes (detaches) what it returned when none does
	// any more. It runs on whichever goroutine applies a configuration,
	// so the daemon's network namespace must be the whole process's, as
	// it is for ndd. Nil leaves such probes down, saying why.
	NewSteering func() (Steering, error)
	// HAVIPs manages the VIP addresses of a high-availability node; nil
	// means the kernel's (ha.NewKernelVIPs on the ha section's interface).
	HAVIPs ha.VIPs
	// Ready, if set, is called once by Run when the configuration given to
	// New is applied: the data plane is attached and every service
	// installed (ndd tells systemd it is ready then).
	Ready func()
}

// Daemon is one running dispatcher.
type Daemon struct {
	x      executor.Executor
	nbr    Neighbors
	ifaces Interfaces
	// networks lists the connected networks (Check).
	networks Networks
	log      *slog.Logger
	path     string
	every    time.Duration
	events   *hub

	// edits serializes whole configuration changes (read, edit, apply), so
	// that two concurrent edits cannot undo each other.
	edits sync.Mutex

	mu       sync.Mutex
	cfg      *config.Config
	attached map[string]int // interface name -> ifindex
	// resolved remembers each server's last resolution outcome, so that
	// events report changes only; a server absent from it has not been
	// answered for yet.
	resolved map[netip.Addr]bool
	rates    rateSampler
	// pending is the configuration given to New, applied by Run.
	pending *config.Config
	// restarted: the data plane already served services when New ran (a
	// restarted ndd took it over): BGP's graceful restart says so.
	restarted bool
	// managed holds the weights the manager committed, per port and
	// server: what the data plane gets instead of the configured weight.
	managed map[executor.ServiceKey]map[netip.Addr]uint32
	// delays holds what the manager committed for ports under the delay
	// scheduler: servers' delay factors and the typical flow time.
	delays map[executor.ServiceKey]portDelays

	mgr   *manager.Manager
	adv   *advisor.Runner
	hosts agents
	ha    *haLink // nil without an ha section
	// bgp is the BGP speaker's link; nil until a bgp section is applied.
	bgp *bgpLink
	// runCtx is Run's context, for what Apply starts (the speaker), and
	// loops its goroutines, which Run waits for.
	runCtx context.Context
	loops  sync.WaitGroup
	ready  func()
	// newSteer attaches advisor steering; steer is attached while some
	// advisor probes through a VIP (steerErr says why it could not be).
	// steerMu guards steer and steerErr: advisors' probes read them
	// without d.mu.
	newSteer func() (Steering, error)
	steerMu  sync.Mutex
	steer    Steering
	steerErr error
	// listeners serve api.listen and metrics.listen; nil until
	// SetListeners.
	listeners Listeners
	// addrs are the configured VIPs and co-located servers, read without
	// d.mu by advisors' probes.
	addrs atomic.Pointer[addrSets]
}

// Listeners serve the TCP listeners a configuration names: api.listen with
// its token and TLS, and metrics.listen. *api.Server is the real one.
type Listeners interface {
	// Configure makes the listeners those of a and m, all or nothing; the
	// new token is in force when it returns.
	Configure(a config.API, m config.Metrics) error
}

// SetListeners hands the daemon the listeners of api.listen and
// metrics.listen: every configuration applied from then on, by reload or
// through the API, changes them before the change is acknowledged. The
// caller has configured them with the starting configuration.
func (d *Daemon) SetListeners(l Listeners) {
	d.edits.Lock()
	defer d.edits.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.listeners = l
}

// reconcileEvery is how often the open-flow and half-open counts are
// rewritten from the connection table.
const reconcileEvery = 15 * time.Second

// New checks cfg against the machine and returns a daemon ready to Run. It
// changes nothing yet: Run applies the configuration.
func New(cfg *config.Config, o Options) (*Daemon, error) {
	if o.Executor == nil || o.Neighbors == nil {
		return nil, errors.New("daemon: an executor and a neighbour resolver are required")
	}
	if o.Interfaces == nil {
		o.Interfaces = defaultInterfaces
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.StatsInterval <= 0 {
		o.StatsInterval = time.Second
	}
	d := &Daemon{
		x:        o.Executor,
		nbr:      o.Neighbors,
		ifaces:   o.Interfaces,
		networks: o.Networks,
		log:      o.Logger,
		path:     o.ConfigPath,
		every:    o.StatsInterval,
		events:   newHub(256),
		cfg:      config.Default(),
		attached: map[string]int{},
		resolved: map[netip.Addr]bool{},
		managed:  map[executor.ServiceKey]map[netip.Addr]uint32{},
		delays:   map[executor.ServiceKey]portDelays{},
	}
	d.ready = o.Ready
	d.newSteer = o.NewSteering
	var via func(server, vip netip.Addr) (advisor.DialFunc, error)
	if o.NewSteering != nil {
		via = d.viaVIP
	}
	d.adv = advisor.New(advisor.Options{Logger: o.Logger, ViaVIP: via, OnChange: d.onAdvisorChange})
	ai := &advisorIndex{runner: d.adv}
	mgr, err := manager.New(managerSettings(cfg.Manager), manager.Options{
		Executor: o.Executor,
		Commit:   d.commitWeights,
		Advisor:  ai.reading,
		Host:     d.hosts.reading,
		Logger:   o.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", nd.ErrRejected, err)
	}
	d.mgr = mgr
	if cfg.HA != nil {
		if err := d.newHA(cfg, o.HAVIPs); err != nil {
			return nil, fmt.Errorf("%w: %w", nd.ErrRejected, err)
		}
	}
	installed := o.Executor.Services()
	d.restarted = len(installed) > 0
	// A restarted ndd takes over the weights the manager had set, rather
	// than throwing them back to the configured ones.
	if cfg.Manager.Policy != config.PolicyStatic {
		for _, s := range installed {
			m := map[netip.Addr]uint32{}
			for _, sv := range s.Servers {
				m[sv.Addr] = sv.Weight
			}
			d.managed[s.Key] = m
		}
	}
	// The starting point is an empty configuration with cfg's fixed
	// settings, so that the first Apply attaches and installs everything.
	d.cfg.DataPlane = cfg.DataPlane
	d.cfg.API = cfg.API
	d.cfg.HA = cfg.HA // fixed while ndd runs, like the data plane
	if err := d.check(cfg); err != nil {
		return nil, err
	}
	d.pending = cfg
	return d, nil
}

// Run applies the configuration given to New and keeps the data plane in
// step with the neighbour table until ctx ends. It leaves the data plane
// running (pinned) when it returns.
func (d *Daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Last, once the advisors have stopped.
	defer d.detachSteering()

	nbrDone := make(chan error, 1)
	go func() { nbrDone <- d.nbr.Run(ctx) }()
	loops := &d.loops
	defer loops.Wait()
	defer cancel()
	d.mu.Lock()
	d.runCtx = ctx
	d.mu.Unlock()
	loops.Add(2)
	go func() { defer loops.Done(); d.adv.Run(ctx) }()
	go func() { defer loops.Done(); d.mgr.Run(ctx) }()
	d.hosts.start(ctx)
	defer d.hosts.close()
	if d.ha != nil {
		loops.Add(1)
		go func() { defer loops.Done(); d.runHA(ctx) }()
		loops.Add(1)
		go func() { defer loops.Done(); d.publishLoop(ctx) }()
	}

	if _, err := d.Apply(d.pending); err != nil {
		return err
	}
	d.pending = nil
	d.removeStrayServices()
	if d.ready != nil {
		d.ready()
	}

	tick := time.NewTicker(d.every)
	defer tick.Stop()
	// The p2c scheduler's live counts drift when flows end without a
	// client FIN or RST and before they idle out; the connection table
	// has the truth.
	reconcile := time.NewTicker(reconcileEvery)
	defer reconcile.Stop()
	for {
		select {
		case <-ctx.Done():
			<-nbrDone
			return nil
		case err := <-nbrDone:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("neighbour resolver stopped: %w", err)
		case ev, ok := <-d.nbr.Events():
			if !ok {
				continue
			}
			d.onNeighbor(ev)
		case now := <-tick.C:
			d.sample(now)
		case <-reconcile.C:
			// Every service: half-open flows that time out unseen leave
			// their count only here.
			if err := d.x.ReconcileActive(); err != nil {
				d.log.Warn("reconcile flow counts", "err", err)
			}
		}
	}
}

// Config returns a copy of the running configuration.
func (d *Daemon) Config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return clone(d.cfg)
}

// Reload re-reads the configuration file (SIGHUP, `ndctl config reload`).
func (d *Daemon) Reload() (config.Changes, error) {
	if d.path == "" {
		return config.Changes{}, fmt.Errorf("%w: no configuration file to reload", nd.ErrRejected)
	}
	cfg, err := config.Load(d.path)
	if err != nil {
		return config.Changes{}, fmt.Errorf("%w: %w", nd.ErrRejected, err)
	}
	return d.Apply(cfg)
}

// Update edits a copy of the running configuration with fn and applies it:
// the way single changes (add a server, quiesce one) reach the data plane.
func (d *Daemon) Update(fn func(c *config.Config) error) (config.Changes, error) {
	d.edits.Lock()
	defer d.edits.Unlock()
	c := d.Config()
	if err := fn(c); err != nil {
		return config.Changes{}, fmt.Errorf("%w: %w", nd.ErrRejected, err)
	}
	return d.apply(c)
}

// check validates a configuration and the files and interfaces it names
// against the machine (Check).
func (d *Daemon) check(cfg *config.Config) error {
	return Check(cfg, d.ifaces, d.networks)
}

// Apply makes cfg the running configuration, changing only what differs. A
// configuration that fails validation, names a missing interface or changes
// a setting that needs a restart is rejected whole: the running one stays.
func (d *Daemon) Apply(cfg *config.Config) (config.Changes, error) {
	d.edits.Lock()
	defer d.edits.Unlock()
	return d.apply(cfg)
}

func (d *Daemon) apply(cfg *config.Config) (config.Changes, error) {
	if err := d.check(cfg); err != nil {
		return config.Changes{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	ch := config.Diff(d.cfg, cfg)
	if err := ch.Err(); err != nil {
		return ch, fmt.Errorf("%w: %w", nd.ErrRejected, err)
	}
	// The listeners first, all or nothing: a busy port refuses the whole
	// configuration. Every apply re-reads api.token_file, so that a reload
	// revokes a token replaced in the file.
	if d.listeners != nil {
		if err := d.listeners.Configure(cfg.API, cfg.Metrics); err != nil {
			return ch, fmt.Errorf("%w: %w", nd.ErrRejected, err)
		}
	}
	if ch.Empty() {
		// The files the agents section names may have been rewritten in
		// place (a rotated key, a renewed certificate): read them again.
		if err := d.hosts.set(d.cfg); err != nil {
			return ch, err
		}
		return ch, nil
	}

	var errs []error
	for _, name := range ch.Attach {
		if err := d.attach(name); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		if d.listeners != nil {
			if err := d.listeners.Configure(d.cfg.API, d.cfg.Metrics); err != nil {
				d.log.Error("restore the API and metrics listeners", "err", err)
			}
		}
		return ch, fmt.Errorf("%w: %w", nd.ErrRejected, errors.Join(errs...))
	}

	d.watchServers(cfg)
	d.forgetManaged(ch)
	sets := &addrSets{vips: map[netip.Addr]bool{}, locals: map[netip.Addr]bool{}}
	for _, cl := range cfg.Clusters {
		sets.vips[cl.VIP] = true
		for _, p := range cl.Ports {
			for _, s := range p.Servers {
				if s.Local {
					sets.locals[s.Address] = true
				}
			}
		}
	}
	d.addrs.Store(sets)
	for _, p := range ch.Removed {
		if err := d.x.DeleteService(p.Key); err != nil && !errors.Is(err, executor.ErrNotFound) {
			errs = append(errs, fmt.Errorf("remove %v: %w", p.Key, err))
		}
	}
	d.cfg = clone(cfg)
	d.followHA()
	d.followVIPs()
	for _, p := range d.cfg.Ports() {
		if err := d.install(p); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range ch.Detach {
		if err := d.detach(name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.hosts.set(d.cfg); err != nil {
		errs = append(errs, err)
	}
	specs := advisorSpecs(d.cfg)
	steered := probesThroughVIP(specs, sets.locals)
	if steered {
		d.attachSteering()
	}
	if err := d.adv.Set(specs); err != nil {
		errs = append(errs, fmt.Errorf("advisors: %w", err))
	}
	if !steered {
		d.detachSteering()
	}
	if err := d.mgr.SetSettings(managerSettings(d.cfg.Manager)); err != nil {
		errs = append(errs, fmt.Errorf("manager: %w", err))
	}
	if err := d.mgr.SetPorts(managerPorts(d.cfg)); err != nil {
		errs = append(errs, fmt.Errorf("manager: %w", err))
	}
	if err := d.configureBGP(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		err := errors.Join(errs...)
		d.log.Error("configuration applied with errors", "err", err)
		d.emit(nd.Event{Type: nd.EventError, Message: err.Error()})
		return ch, err
	}
	d.log.Info("configuration applied", "changes", ch.String())
	d.emit(nd.Event{Type: nd.EventConfigApplied, Message: ch.String()})
	if d.ha != nil {
		d.ha.requestPublish()
	}
	return ch, nil
}

func (d *Daemon) attach(name string) error {
	ifi, err := d.ifaces(name)
	if err != nil {
		return fmt.Errorf("interface %s: %w", name, err)
	}
	if err := d.x.Attach(ifi.Index); err != nil {
		return err
	}
	d.attached[name] = ifi.Index
	d.emit(nd.Event{Type: nd.EventAttached, Message: "attached to " + name})
	return nil
}

func (d *Daemon) detach(name string) error {
	idx, ok := d.attached[name]
	if !ok {
		return nil
	}
	delete(d.attached, name)
	if err := d.x.Detach(idx); err != nil {
		return fmt.Errorf("detach from %s: %w", name, err)
	}
	d.emit(nd.Event{Type: nd.EventDetached, Message: "detached from " + name})
	return nil
}

// watchServers tells the resolver which addresses to keep resolved.
func (d *Daemon) watchServers(cfg *config.Config) {
	var addrs []netip.Addr
	for _, p := range cfg.Ports() {
		for _, s := range p.Servers {
			if !s.Local && !slices.Contains(addrs, s.Address) {
				addrs = append(addrs, s.Address)
			}
		}
	}
	d.nbr.Watch(addrs)
}

// service is the data plane's view of a port: servers carry their MAC,
// interface and weight. nd never dispatches to a server it cannot reach: one
// that was never resolved is left out; one the data plane has but the
// resolver lost is held (weight 0, its flows' packets dropped), so that its
// flows keep their server for when it is back instead of being dispatched
// anew (a dispatcher cut off from every server, as in a scale-out group,
// would otherwise come back with none of its flows). A server the data plane
// already has (a restarted ndd took it over) keeps its MAC until the
// resolver answers.
func (d *Daemon) service(p config.Port, installed executor.Service) executor.Service {
	sched, _ := executor.ParseScheduler(p.Scheduler) // validated with the configuration
	delays := d.delays[p.Key]
	s := executor.Service{Key: p.Key, StickyTime: p.StickyTime, Scheduler: sched, FlowTime: delays.flowTime}
	managed := d.managed[p.Key]
	for _, srv := range p.Servers {
		es := executor.Server{Addr: srv.Address, Weight: srv.EffectiveWeight(), Local: srv.Local, Delay: delays.servers[srv.Address]}
		if w, ok := managed[srv.Address]; ok && !srv.Quiesce && !srv.Fixed && d.cfg.Manager.Policy != config.PolicyStatic {
			es.Weight = min(w, p.WeightBound)
		}
		if !srv.Local {
			e, ok := d.nbr.Lookup(srv.Address)
			if ok {
				es.MAC, es.Ifindex = e.MAC, e.Ifindex
			} else {
				i := slices.IndexFunc(installed.Servers, func(x executor.Server) bool { return x.Addr == srv.Address })
				if i < 0 || installed.Servers[i].Local {
					continue
				}
				es.MAC, es.Ifindex = installed.Servers[i].MAC, installed.Servers[i].Ifindex
				if _, answered := d.resolved[srv.Address]; answered || installed.Servers[i].Held {
					es.Weight, es.Held = 0, true
				}
			}
		}
		s.Servers = append(s.Servers, es)
	}
	return s
}

// install brings one port's data-plane state in line with the configuration
// and the neighbour table, writing only when something differs.
func (d *Daemon) install(p config.Port) error {
	var have executor.Service
	for _, s := range d.x.Services() {
		if s.Key == p.Key {
			have = s
		}
	}
	want := d.service(p, have)
	if have.Key == p.Key && sameService(have, want) {
		return nil
	}
	if err := d.x.UpsertService(want); err != nil {
		return fmt.Errorf("install %v: %w", p.Key, err)
	}
	return nil
}

func sameService(a, b executor.Service) bool {
	if a.StickyTime != b.StickyTime || a.Scheduler != b.Scheduler || a.FlowTime != b.FlowTime || len(a.Servers) != len(b.Servers) {
		return false
	}
	byAddr := map[netip.Addr]executor.Server{}
	for _, s := range a.Servers {
		byAddr[s.Addr] = s
	}
	for _, s := range b.Servers {
		o, ok := byAddr[s.Addr]
		if !ok || o.Weight != s.Weight || o.Delay != s.Delay || o.Local != s.Local || o.Ifindex != s.Ifindex || o.MAC.String() != s.MAC.String() {
			return false
		}
	}
	return true
}

// removeStrayServices deletes services a previous ndd left in the pinned
// data plane that the configuration no longer has.
func (d *Daemon) removeStrayServices() {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := map[executor.ServiceKey]bool{}
	for _, p := range d.cfg.Ports() {
		want[p.Key] = true
	}
	for _, s := range d.x.Services() {
		if want[s.Key] {
			continue
		}
		if err := d.x.DeleteService(s.Key); err != nil {
			d.log.Error("remove stray service", "service", s.Key, "err", err)
			continue
		}
		d.emit(nd.Event{Type: nd.EventConfigApplied, Service: s.Key.String(), Message: "removed a service no longer configured"})
	}
}

// onNeighbor reinstalls the ports of a server whose resolution changed.
func (d *Daemon) onNeighbor(ev neighbor.Event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	addr := ev.Entry.Addr
	was, known := d.resolved[addr]
	now := ev.Entry.Resolved
	d.resolved[addr] = now
	switch {
	case now && (!known || !was):
		d.emit(nd.Event{Type: nd.EventServerResolved, Server: addr.String(), Message: ev.Entry.String()})
	case now:
		d.emit(nd.Event{Type: nd.EventServerChanged, Server: addr.String(), Message: ev.Entry.String()})
	case !now && (!known || was):
		msg := ev.Entry.String()
		if ev.Err != nil {
			msg = ev.Err.Error()
		}
		d.emit(nd.Event{Type: nd.EventServerUnreachable, Server: addr.String(), Message: msg})
	}
	if st, _ := d.steering(); st != nil && now {
		if _, routed := st.Mark(addr); routed {
			if _, err := st.Route(addr, ev.Entry.MAC, ev.Entry.Ifindex); err != nil {
				d.log.Error("re-route advisor probes after neighbour change", "server", addr, "err", err)
			}
		}
	}
	for _, p := range d.cfg.Ports() {
		for _, s := range p.Servers {
			if s.Address == addr {
				if err := d.install(p); err != nil {
					d.log.Error("reinstall after neighbour change", "server", addr, "err", err)
				}
				break
			}
		}
	}
	_ = d.updateBGP() // logged
}

func clone(c *config.Config) *config.Config {
	out := *c
	out.Interfaces = slices.Clone(c.Interfaces)
	out.Clusters = make([]config.Cluster, len(c.Clusters))
	for i, cl := range c.Clusters {
		out.Clusters[i] = cl
		out.Clusters[i].Ports = make([]config.PortSpec, len(cl.Ports))
		for j, p := range cl.Ports {
			out.Clusters[i].Ports[j] = p
			out.Clusters[i].Ports[j].Servers = slices.Clone(p.Servers)
			if p.Proportions != nil {
				pr := *p.Proportions
				pr.Custom = slices.Clone(pr.Custom)
				out.Clusters[i].Ports[j].Proportions = &pr
			}
		}
	}
	out.Manager.Proportions.Custom = slices.Clone(c.Manager.Proportions.Custom)
	out.Advisors = make([]config.Advisor, len(c.Advisors))
	for i, a := range c.Advisors {
		out.Advisors[i] = a
		out.Advisors[i].Command = slices.Clone(a.Command)
	}
	if c.Advisors == nil {
		out.Advisors = nil
	}
	if c.Agents != nil {
		a := *c.Agents
		out.Agents = &a
	}
	out.BGP = config.CloneBGP(c.BGP)
	return &out
}
