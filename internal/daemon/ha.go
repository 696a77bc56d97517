package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/keyfile"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// haLink ties the daemon to its high-availability node: the node decides
// who is active, the daemon feeds it the data plane's new flows and the
// live configuration, and applies what a standby receives.
type haLink struct {
	node    *ha.Node
	cfg     config.HA
	standby atomic.Bool
	// vips are the group's addresses when the daemon owns them (the
	// kernel's, changed as clusters come and go); nil when a caller
	// supplied its own.
	vips *ha.KernelVIPs
	set  []netip.Addr // the VIPs last given to vips
	// publishes asks the one publisher goroutine (publishLoop) for a new
	// snapshot: changes are published in the order they were made, each
	// snapshot newer than the one before.
	publishes chan struct{}
	// version numbers the snapshots, under the daemon's mu.
	version uint64
	// send hands a snapshot to the node (its SetConfig).
	send func([]byte)
	// aa: the group runs in active-active mode. backdate is then how far
	// back a copy learnt from a peer is dated, established and closing
	// (docs/SCALEOUT.md, "Echoes"); 0 otherwise.
	aa       atomic.Bool
	backdate [2]atomic.Int64
	// status reads the node's view of its group (its Status); started is
	// when the node was made. They decide when an active-active node has
	// learnt the group's flows (learnt, latched): docs/SCALEOUT.md.
	status  func() ha.Status
	started time.Time
	learnt  atomic.Bool
}

// requestPublish asks for the state to be published; requests made while
// one is pending are one.
func (h *haLink) requestPublish() {
	select {
	case h.publishes <- struct{}{}:
	default:
	}
}

// syncedState is what an active sends its standbys: the parts of the
// configuration a takeover must not change, and the manager's weights.
// Version grows with every snapshot an active takes.
type syncedState struct {
	Version uint64                       `json:"version,omitempty"`
	Config  string                       `json:"config"` // YAML: clusters, manager, advisors, agents
	Weights map[string]map[string]uint32 `json:"weights,omitempty"`
	// Delays are the manager's delay factors and typical flow times of
	// ports under the delay scheduler: a standby that takes over schedules
	// as the active did, not as if every server were as fast as the rest.
	Delays map[string]syncedDelays `json:"delays,omitempty"`
}

// syncedDelays is one port's portDelays on the wire.
type syncedDelays struct {
	Servers  map[string]float64 `json:"servers,omitempty"`
	FlowTime time.Duration      `json:"flow_time_ns,omitempty"`
}

// newHA builds the node of cfg.HA: the group's VIPs are every cluster's.
func (d *Daemon) newHA(cfg *config.Config, vips ha.VIPs) error {
	h := cfg.HA
	key, err := keyfile.Load(h.KeyFile, ha.MinKeyLen)
	if err != nil {
		return fmt.Errorf("ha.key_file: %w", err)
	}
	addrs := clusterVIPs(cfg)
	var kv *ha.KernelVIPs
	if vips == nil {
		if kv, err = ha.NewKernelVIPs(h.Interface, addrs); err != nil {
			return fmt.Errorf("ha: %w", err)
		}
		vips = kv
	}
	node, err := ha.New(haConfig(cfg, key), ha.Options{
		VIPs:     vips,
		OnState:  d.onHAState,
		OnFlows:  d.onHAFlows,
		OnConfig: d.onHAConfig,
		Snapshot: d.haSnapshot,
		Refresh:  d.haRefresh,
		Logger:   d.log,
	})
	if err != nil {
		if kv != nil {
			kv.Close()
		}
		return err
	}
	d.ha = &haLink{node: node, cfg: *h, vips: kv, set: addrs, publishes: make(chan struct{}, 1), send: node.SetConfig,
		status: node.Status, started: time.Now()}
	d.ha.standby.Store(true) // until the node says otherwise
	d.ha.follow(cfg)
	return nil
}

// haConfig is the node's configuration of cfg's ha section.
func haConfig(cfg *config.Config, key []byte) ha.Config {
	h := cfg.HA
	est, closing := h.Refreshes(cfg.DataPlane)
	return ha.Config{
		Group: h.Group, Interface: h.Interface, Self: h.Self, Peers: h.Peers,
		Priority: uint8(h.Priority), Preempt: h.Preempt, Interval: h.Interval, DeadAfter: h.DeadAfter,
		Key: key, VIPs: clusterVIPs(cfg), Refresh: est, RefreshClosing: closing,
		ActiveActive: h.ActiveActive(),
	}
}

func clusterVIPs(cfg *config.Config) []netip.Addr {
	var out []netip.Addr
	for _, cl := range cfg.Clusters {
		out = append(out, cl.VIP)
	}
	return out
}

// followHA gives the node the settings of the configuration in force that
// change on reload (ha.refresh, ha.mode). Called with d.mu held.
func (d *Daemon) followHA() {
	if d.ha == nil || d.ha.node == nil || d.cfg.HA == nil {
		return
	}
	d.ha.follow(d.cfg)
	est, closing := d.cfg.HA.Refreshes(d.cfg.DataPlane)
	if err := d.ha.node.SetRefresh(est, closing); err != nil {
		d.log.Error("ha: refresh periods", "err", err)
	}
	d.ha.node.SetActiveActive(d.cfg.HA.ActiveActive())
}

// follow records cfg's mode and the backdating of learnt copies it implies.
func (h *haLink) follow(cfg *config.Config) {
	aa := cfg.HA.ActiveActive()
	h.aa.Store(aa)
	est, closing := cfg.HA.Refreshes(cfg.DataPlane)
	if !aa {
		est, closing = 0, 0
	} else {
		// Older than the start of the next refresh round, whatever the
		// clocks' slack (ha.RefreshRound.Windows), so that it is not sent
		// back; a local packet makes it fresh again.
		est, closing = est+learntSlack, closing+learntSlack
	}
	h.backdate[0].Store(int64(est))
	h.backdate[1].Store(int64(closing))
}

// learntSlack is how much further back than a refresh period an
// active-active node dates a copy learnt from a peer: a second for the data
// plane's stamps, which it writes at most once a second, and the rounds'
// 100 ms of slack.
const learntSlack = 1100 * time.Millisecond

// followVIPs gives the group the VIPs of a new configuration: an active
// node brings new ones up (and announces them) and drops removed ones at
// once. Called with d.mu held.
func (d *Daemon) followVIPs() {
	if d.ha == nil || d.ha.vips == nil {
		return
	}
	next := clusterVIPs(d.cfg)
	if slices.Equal(next, d.ha.set) {
		return
	}
	d.ha.set = next
	if err := d.ha.vips.Set(next, !d.ha.standby.Load() && !d.ha.aa.Load()); err != nil {
		d.log.Error("ha: VIPs", "err", err)
		d.emit(nd.Event{Type: nd.EventError, Message: "ha: VIPs: " + err.Error()})
	}
}

// runHA runs the node and streams the data plane's flows to the standbys
// until ctx ends.
func (d *Daemon) runHA(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.ha.node.Run(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("ha node stopped", "err", err)
			d.emit(nd.Event{Type: nd.EventError, Message: "ha: " + err.Error()})
		}
	}()
	defer func() {
		<-done
		if d.ha.vips != nil {
			d.ha.vips.Close()
		}
	}()
	events, err := d.x.FlowEvents(ctx)
	if err != nil {
		d.log.Error("ha: the data plane's flow events are unavailable: standbys learn flows from snapshots only", "err", err)
		d.emit(nd.Event{Type: nd.EventError, Message: "ha: flow events: " + err.Error()})
		return
	}
	for batch := range events {
		recs := make([]ha.FlowRecord, 0, len(batch))
		for _, ev := range batch {
			r := flowRecord(ev.Flow)
			if ev.Kind == executor.FlowClosed {
				r.Closing = true
			}
			recs = append(recs, r)
		}
		d.ha.node.SendFlows(recs)
	}
}

func flowRecord(f executor.Flow) ha.FlowRecord {
	return ha.FlowRecord{Client: f.Key.Client, VIP: f.Key.VIP, Proto: uint8(f.Key.Proto), Server: f.Server, Closing: f.Closing}
}

func (d *Daemon) onHAState(s ha.State) {
	d.ha.standby.Store(s != ha.StateActive)
	d.log.Info("ha state", "state", s.String())
	d.emit(nd.Event{Type: nd.EventHAState, Message: s.String()})
	if s == ha.StateActive {
		// The weights a standby followed are now this node's to manage.
		d.mgr.Trigger()
		d.ha.requestPublish()
	}
}

// onHAFlows loads the flows an active streams (or its snapshot) into this
// standby's connection table, so that they keep their servers after a
// takeover.
func (d *Daemon) onHAFlows(recs []ha.FlowRecord) error {
	var up []executor.Flow
	var errs []error
	for _, r := range recs {
		k := executor.FlowKey{Client: r.Client, VIP: r.VIP, Proto: executor.Proto(r.Proto)}
		if r.Closed {
			if err := d.x.DeleteFlow(k); err != nil && !errors.Is(err, executor.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		f := executor.Flow{Key: k, Server: r.Server, Closing: r.Closing}
		// In active-active mode a learnt copy is dated back, so that this
		// node's refresh rounds do not send it back (docs/SCALEOUT.md).
		if r.Closing {
			f.Idle = time.Duration(d.ha.backdate[1].Load())
		} else {
			f.Idle = time.Duration(d.ha.backdate[0].Load())
		}
		up = append(up, f)
	}
	if len(up) > 0 {
		if err := d.x.UpsertFlows(up); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// haSnapshot lists the flows of a snapshot for a standby: every flow of
// the table but the half-open ones and the UDP flows of one datagram (as
// unconfirmed as a SYN), which a record cannot carry (a standby
// would hold them as established, out of reach of the half-open timeout
// and of every victim rule: a SYN flood during a snapshot would fill its
// table for good). A standby learns such a flow when its handshake
// completes, as it learns any new flow.
func (d *Daemon) haSnapshot(yield func(ha.FlowRecord) bool) error {
	return d.x.Flows(func(f executor.Flow) bool {
		if f.HalfOpen || f.Once {
			return true
		}
		return yield(flowRecord(f))
	})
}

// haRefresh lists the flows of a refresh round: those that carried a
// packet since the standby last heard of them, chosen by the connection
// table's last-seen stamps. Half-open flows are left out: a standby learns
// a flow once its handshake completes, and a flood of SYNs must not become
// synchronisation traffic.
func (d *Daemon) haRefresh(r ha.RefreshRound, yield func(ha.FlowRecord) bool) error {
	est, closing := r.Windows(time.Now())
	return d.x.RecentFlows(est, closing, func(f executor.Flow) bool { return yield(flowRecord(f)) })
}

// onHAConfig applies, on a standby, the configuration and weights the
// active sent: its clusters, manager, advisors and agents replace this
// node's; interfaces, data plane, API, metrics and ha stay this node's own.
func (d *Daemon) onHAConfig(b []byte) error {
	var st syncedState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("ha: configuration from the active: %w", err)
	}
	recv, err := config.Parse([]byte(st.Config), "active")
	if err != nil {
		return fmt.Errorf("ha: configuration from the active: %w", err)
	}
	weights := map[executor.ServiceKey]map[netip.Addr]uint32{}
	for _, p := range recv.Ports() {
		ws := st.Weights[p.Key.String()]
		if len(ws) == 0 {
			continue
		}
		m := map[netip.Addr]uint32{}
		for a, w := range ws {
			addr, err := netip.ParseAddr(a)
			if err != nil {
				return fmt.Errorf("ha: weights from the active: %q is not an address", a)
			}
			m[addr] = w
		}
		weights[p.Key] = m
	}
	delays := map[executor.ServiceKey]portDelays{}
	for _, p := range recv.Ports() {
		sd, ok := st.Delays[p.Key.String()]
		if !ok {
			continue
		}
		pd := portDelays{servers: map[netip.Addr]float64{}, flowTime: max(sd.FlowTime, 0)}
		for a, f := range sd.Servers {
			addr, err := netip.ParseAddr(a)
			if err != nil {
				return fmt.Errorf("ha: delay factors from the active: %q is not an address", a)
			}
			if !(f >= 0) || math.IsInf(f, 0) {
				return fmt.Errorf("ha: delay factors from the active: %v for %s is not a factor", f, a)
			}
			pd.servers[addr] = f
		}
		delays[p.Key] = pd
	}
	_, err = d.Update(func(c *config.Config) error {
		c.Clusters, c.Manager, c.Advisors, c.Agents = recv.Clusters, recv.Manager, recv.Advisors, recv.Agents
		return nil
	})
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.managed, d.delays = weights, delays
	for _, p := range d.cfg.Ports() {
		if err := d.install(p); err != nil {
			d.log.Error("ha: install the active's weights", "port", p.Key.String(), "err", err)
		}
	}
	return nil
}

// publishLoop is the one goroutine that publishes the state an active
// sends its standbys, when asked (after every applied configuration, every
// weight commit and on becoming active), until ctx ends. Being one, it
// publishes snapshots in the order they were taken: an older one never
// follows a newer one.
func (d *Daemon) publishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.ha.publishes:
			d.publishHA()
		}
	}
}

// publishHA takes a snapshot of what an active sends and gives it to the
// node. Only publishLoop calls it.
func (d *Daemon) publishHA() {
	// A standby sends nothing: what it holds came from the active.
	if d.ha == nil || d.ha.standby.Load() {
		return
	}
	d.mu.Lock()
	c := config.Default()
	c.Interfaces = d.cfg.Interfaces
	c.Clusters, c.Manager, c.Advisors, c.Agents = d.cfg.Clusters, d.cfg.Manager, d.cfg.Advisors, d.cfg.Agents
	weights := map[string]map[string]uint32{}
	for k, m := range d.managed {
		ws := map[string]uint32{}
		for a, w := range m {
			ws[a.String()] = w
		}
		weights[k.String()] = ws
	}
	delays := map[string]syncedDelays{}
	for k, pd := range d.delays {
		sd := syncedDelays{Servers: map[string]float64{}, FlowTime: pd.flowTime}
		for a, f := range pd.servers {
			sd.Servers[a.String()] = f
		}
		delays[k.String()] = sd
	}
	d.ha.version++
	version := d.ha.version
	d.mu.Unlock()
	y, err := config.Marshal(c)
	if err != nil {
		d.log.Error("ha: write the configuration for the standbys", "err", err)
		return
	}
	b, err := json.Marshal(syncedState{Version: version, Config: string(y), Weights: weights, Delays: delays})
	if err != nil {
		d.log.Error("ha: encode the state for the standbys", "err", err)
		return
	}
	d.ha.send(b)
}

// HAStatus is the node's view of its group.
func (d *Daemon) HAStatus() (ha.Status, error) {
	if d.ha == nil {
		return ha.Status{}, nd.ErrNoHA
	}
	return d.ha.node.Status(), nil
}

// HATakeover makes this node active in an orderly handover.
func (d *Daemon) HATakeover(ctx context.Context) error {
	if d.ha == nil {
		return nd.ErrNoHA
	}
	ctx, cancel := context.WithTimeout(ctx, 5*d.ha.cfg.DeadAfter+time.Second)
	defer cancel()
	return d.ha.node.Takeover(ctx)
}

// flowsLearntWait is how long, in dead_after periods, an active-active node
// that starts waits for the snapshots of peers that stay silent before it
// takes traffic without them.
const flowsLearntWait = 2

// groupFlowsPending says why a node of an active-active group that started
// waited ago does not yet hold the group's flows, or "" when it does: it
// holds them once a whole snapshot arrived from every peer; after wait,
// from every peer it hears (a silent peer, dead or cut off, has nothing to
// give). A peer that is heard but whose snapshot does not arrive keeps it
// waiting: its flows would break on this node.
func groupFlowsPending(peers []ha.PeerStatus, waited, wait time.Duration) string {
	var missing, alive []string
	for _, p := range peers {
		if p.SnapshotReceived {
			continue
		}
		missing = append(missing, p.Addr.String())
		if p.Alive {
			alive = append(alive, p.Addr.String())
		}
	}
	switch {
	case len(missing) == 0:
		return ""
	case waited < wait:
		return "learning the group's flows: no snapshot yet from " + strings.Join(missing, ", ")
	case len(alive) > 0:
		return "learning the group's flows: peer " + strings.Join(alive, ", ") + " is alive but its snapshot has not arrived"
	}
	return ""
}

// flowsPending says why this active-active node must not take traffic yet
// (it has not learnt the group's flows since it started), or "". Once it
// has, it stays so until ndd restarts: a peer that joins later learns this
// node's flows, not the reverse. d.mu held.
func (d *Daemon) flowsPending() string {
	h := d.ha
	if h == nil || !h.aa.Load() || h.status == nil || h.learnt.Load() {
		return ""
	}
	wait := flowsLearntWait * h.cfg.DeadAfter
	if d.cfg.HA != nil {
		wait = flowsLearntWait * d.cfg.HA.DeadAfter
	}
	waited := time.Since(h.started)
	why := groupFlowsPending(h.status().Peers, waited, wait)
	if why == "" {
		h.learnt.Store(true)
		d.log.Info("ha: the group's flows are learnt: this node may take traffic", "after", waited.Round(time.Millisecond))
	}
	return why
}
