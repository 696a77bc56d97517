// Package ha keeps a group of VIPs on exactly one of several nd
// dispatchers. The dispatchers of a group exchange authenticated
// heartbeats; one is active and holds the VIPs, the others stand by with
// a shadow of its connection table and its configuration, so that one of
// them can take the VIPs over, announce them with gratuitous ARP and
// unsolicited neighbour advertisements, and carry on forwarding the
// existing connections to the same servers.
//
// docs/HA.md describes the protocol, the wire format and the behaviour
// when the heartbeat path is cut.
package ha

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config.
const (
	DefaultInterval  = 500 * time.Millisecond
	DefaultDeadAfter = 2 * time.Second
	DefaultGroup     = "default"
	// MinKeyLen is the shortest accepted shared key.
	MinKeyLen = 16
	// DefaultQueueLen is Options.QueueLen's default, in batches per peer.
	DefaultQueueLen = 1024
	// DefaultConfigEvery is Options.ConfigEvery's default.
	DefaultConfigEvery = 30 * time.Second
)

// Errors returned by this package.
var (
	ErrBadConfig = errors.New("bad ha config")
	ErrRunning   = errors.New("ha node already running, stopped or closed")
	ErrStopped   = errors.New("ha node not running")
)

// State is a node's role in its group.
type State uint8

// States. Only active nodes hold the VIPs. Stopping is what a node
// announces as it shuts down, so that a standby need not wait for its
// heartbeats to time out; Status reports it once Run has returned.
const (
	StateStandby  State = 1
	StateActive   State = 2
	StateStopping State = 3
)

func (s State) String() string {
	switch s {
	case StateStandby:
		return "standby"
	case StateActive:
		return "active"
	case StateStopping:
		return "stopping"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// MarshalText makes states readable in JSON.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads what MarshalText writes, so that API clients can
// decode a Status.
func (s *State) UnmarshalText(b []byte) error {
	for _, v := range []State{StateStandby, StateActive, StateStopping} {
		if string(b) == v.String() {
			*s = v
			return nil
		}
	}
	var n uint8
	if _, err := fmt.Sscanf(string(b), "state-%d", &n); err == nil {
		*s = State(n)
		return nil
	}
	return fmt.Errorf("unknown ha state %q", b)
}

// Config is one node's view of its group. Every node of a group lists the
// others as Peers and shares Key, Group, Interval and DeadAfter.
type Config struct {
	// Group names the VIP group; nodes of different groups ignore each
	// other. Empty means DefaultGroup.
	Group string
	// Interface carries the VIPs. Unused when Options.VIPs is set.
	Interface string
	// Self is this node's address and port for heartbeats (UDP) and
	// synchronisation (TCP); it also identifies the node to its peers.
	Self netip.AddrPort
	// Peers are the other nodes' Self.
	Peers []netip.AddrPort
	// Priority ranks nodes: the highest live one becomes active; equal
	// priorities are broken by the higher Self address.
	Priority uint8
	// Preempt lets this node take the VIPs back, in an orderly handover,
	// from an active of lower priority.
	Preempt bool
	// Interval is the heartbeat period; 0 means DefaultInterval.
	Interval time.Duration
	// DeadAfter is how long a peer may stay silent before it is
	// considered gone; 0 means DefaultDeadAfter. At least 2 Intervals.
	DeadAfter time.Duration
	// Key authenticates every message (HMAC-SHA256); MinKeyLen bytes or more.
	Key []byte
	// VIPs are the addresses the active holds.
	VIPs []netip.Addr
	// Refresh is how often an active refreshes its standbys' copies of
	// the established flows that carried packets since the last round
	// (Options.Refresh lists them), so that a standby's copy of a live
	// flow does not age out while the active's does not. It must stay
	// well under the data plane's idle timeout. 0 turns refreshing off: a
	// standby's copy then ages from when it was written.
	Refresh time.Duration
	// RefreshClosing is the same for closing flows (FIN or RST seen),
	// whose timeout is shorter; 0 or more than Refresh means Refresh.
	RefreshClosing time.Duration
	// ActiveActive makes every node forward at once (docs/SCALEOUT.md):
	// every node streams its flows to every peer and takes theirs; the
	// election only picks the leader, whose configuration the others
	// follow (it alone sends configuration); and no node manages the VIP
	// addresses, which are the routing's (BGP).
	ActiveActive bool
}

func (c *Config) setDefaults() {
	c.Group = cmp.Or(c.Group, DefaultGroup)
	c.Interval = cmp.Or(c.Interval, DefaultInterval)
	c.DeadAfter = cmp.Or(c.DeadAfter, DefaultDeadAfter)
}

// Validate reports what is wrong with c, after defaults.
func (c Config) Validate() error {
	c.setDefaults()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadConfig, fmt.Sprintf(format, args...))
	}
	if !c.Self.IsValid() || c.Self.Port() == 0 || c.Self.Addr().IsUnspecified() {
		return bad("self %s: need a specific address and a port", c.Self)
	}
	if len(c.Peers) == 0 {
		return bad("no peers")
	}
	seen := map[netip.AddrPort]bool{c.Self: true}
	for _, p := range c.Peers {
		if !p.IsValid() || p.Port() == 0 || p.Addr().IsUnspecified() {
			return bad("peer %s: need a specific address and a port", p)
		}
		if seen[p] {
			return bad("peer %s listed twice or equal to self", p)
		}
		seen[p] = true
	}
	if c.Interval < time.Millisecond {
		return bad("interval %s too short", c.Interval)
	}
	if c.DeadAfter < 2*c.Interval {
		return bad("dead-after %s must be at least two intervals (%s)", c.DeadAfter, 2*c.Interval)
	}
	if len(c.Key) < MinKeyLen {
		return bad("key of %d bytes, need at least %d", len(c.Key), MinKeyLen)
	}
	if len(c.VIPs) == 0 {
		return bad("no VIPs")
	}
	for _, v := range c.VIPs {
		if !v.IsValid() || v.IsUnspecified() || v.IsMulticast() {
			return bad("VIP %s is not a unicast address", v)
		}
	}
	return validateRefresh(c.Refresh, c.RefreshClosing)
}

// MinRefresh is the shortest refresh period accepted.
const MinRefresh = 100 * time.Millisecond

func validateRefresh(est, closing time.Duration) error {
	for _, d := range []time.Duration{est, closing} {
		if d != 0 && d < MinRefresh {
			return fmt.Errorf("%w: refresh period %s: 0 (off) or at least %s", ErrBadConfig, d, MinRefresh)
		}
	}
	return nil
}

// Options are the node's links to the rest of ndd. Callbacks run on the
// node's goroutines and should return promptly.
type Options struct {
	// VIPs manages the addresses; nil means NewKernelVIPs(cfg.Interface,
	// cfg.VIPs) opened in New's network namespace. A VIPs passed here is
	// not closed by the node.
	VIPs VIPs
	// OnState is told each change of this node's state.
	OnState func(State)
	// OnFlows receives, on a standby, the flows the active streams and
	// its snapshots. Records must be applied in order: a Closed record
	// deletes the flow an earlier record opened.
	OnFlows func([]FlowRecord) error
	// OnConfig receives, on a standby, the active's configuration each
	// time it differs from the last one OnConfig accepted.
	OnConfig func([]byte) error
	// Snapshot iterates the local connection table for a full resync of
	// a standby that (re)joins, until yield returns false.
	Snapshot func(yield func(FlowRecord) bool) error
	// Refresh iterates the flows of the local table that a refresh round
	// must send (see RefreshRound), until yield returns false. Nil, or a
	// Config.Refresh of 0, means no refreshing.
	Refresh func(r RefreshRound, yield func(FlowRecord) bool) error
	// Dial opens synchronisation connections; nil means a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// QueueLen bounds the flow batches queued for each peer; 0 means
	// DefaultQueueLen. Batches beyond it are dropped, counted, and
	// repaired by a fresh snapshot.
	QueueLen int
	// ConfigEvery is how often the active resends its configuration even
	// when unchanged; 0 means DefaultConfigEvery.
	ConfigEvery time.Duration
}

// RefreshRound is one refresh of a standby's copies: the flows that
// carried a packet since the standby last heard of them. Half-open flows
// are never refreshed.
type RefreshRound struct {
	// Since: established flows that carried a packet since then.
	Since time.Time
	// ClosingSince: closing flows that carried a packet since then.
	ClosingSince time.Time
	// ClosingOnly: this round refreshes closing flows only (they are
	// refreshed more often than the rest).
	ClosingOnly bool
}

// Windows returns, as of now, how recently an established flow and a
// closing one must have carried a packet to belong to the round; a
// negative window selects none of its kind.
func (r RefreshRound) Windows(now time.Time) (established, closing time.Duration) {
	// The data plane's clock and the wall clock may differ by a tick.
	const slack = 100 * time.Millisecond
	established, closing = now.Sub(r.Since)+slack, now.Sub(r.ClosingSince)+slack
	if r.ClosingOnly {
		established = -1
	}
	return established, closing
}

// PeerStatus is what a node knows of one peer.
type PeerStatus struct {
	Addr      netip.AddrPort
	Alive     bool      // heard within DeadAfter
	State     State     // as last announced; 0 if never heard
	Priority  uint8     // as last announced
	Preempt   bool      // as last announced
	Takeover  bool      // it asks the active to hand over
	LastHeard time.Time // zero if never heard
	Epoch     uint64    // its boot id
	Synced    bool      // this node streams its flows to it
	// SnapshotReceived: a whole snapshot of its flows arrived since this
	// node started. In active-active mode a node that has one from every
	// live peer holds their flows, and may be given traffic (its routes
	// announced): docs/SCALEOUT.md.
	SnapshotReceived bool
	// ConfigVersion is the version of the configuration it holds, as
	// numbered by the node that sent it.
	ConfigVersion uint64
}

// Counters are the node's cumulative counts since New.
type Counters struct {
	HeartbeatsSent     uint64
	HeartbeatsReceived uint64
	// Rejected counts refused messages by reason (Reject* constants).
	Rejected  map[string]uint64
	FlowsSent uint64 // records written to standbys, snapshots and refreshes included
	// FlowsRefreshed counts the records of refresh rounds (part of
	// FlowsSent); RefreshRounds the rounds, per standby.
	FlowsRefreshed uint64
	RefreshRounds  uint64
	// StreamBytesSent counts the bytes written on synchronisation
	// connections: frames, headers and MACs included.
	StreamBytesSent   uint64
	FlowsReceived     uint64 // records handed to OnFlows
	FlowsDropped      uint64 // records dropped because a queue was full
	FlowErrors        uint64 // OnFlows errors
	SnapshotsSent     uint64
	SnapshotsReceived uint64
	ConfigsSent       uint64
	ConfigsReceived   uint64 // configurations handed to OnConfig
	ConfigErrors      uint64 // OnConfig errors
	Takeovers         uint64 // times this node became active
	StepDowns         uint64 // times it stopped being active
	VIPErrors         uint64 // failures to add, remove or announce VIPs
}

// Status is a snapshot of the node.
type Status struct {
	Group string
	Self  netip.AddrPort
	State State
	Since time.Time // when State was entered
	// ActiveActive: every node forwards; State active means the leader.
	ActiveActive bool
	Priority     uint8
	Preempt      bool
	Epoch        uint64
	// Active is the node this one believes active (itself included);
	// invalid if none.
	Active netip.AddrPort
	// ConfigVersion and ConfigHash describe the configuration this node
	// would send (SetConfig) or last accepted (OnConfig).
	ConfigVersion uint64
	ConfigHash    string // hex SHA-256; empty if none
	// Refresh and RefreshClosing are the refresh periods in force (0: off).
	Refresh        time.Duration
	RefreshClosing time.Duration
	Peers          []PeerStatus
	Counters       Counters
}

type peer struct {
	addr      netip.AddrPort
	hb        heartbeat
	heard     bool
	lastHeard time.Time
	epoch     uint64
	// snapshotAt is when the last whole snapshot of its flows arrived.
	snapshotAt time.Time
}

type counters struct {
	hbSent, hbRecv                  atomic.Uint64
	rejected                        map[string]*atomic.Uint64
	flowsSent, flowsRecv, flowsDrop atomic.Uint64
	flowsRefr, refrRounds, bytesOut atomic.Uint64
	flowErrs                        atomic.Uint64
	snapSent, snapRecv              atomic.Uint64
	cfgSent, cfgRecv, cfgErrs       atomic.Uint64
	takeovers, stepDowns, vipErrs   atomic.Uint64
}

// Node is one dispatcher's member of an HA group.
type Node struct {
	cfg   Config
	o     Options
	log   *slog.Logger
	group uint32
	epoch uint64
	udp   *net.UDPConn
	tcp   *net.TCPListener
	vips  VIPs
	ownV  bool
	c     counters

	seqDgram, seqStream atomic.Uint64
	aa                  atomic.Bool // Config.ActiveActive, as SetActiveActive left it

	replayMu sync.Mutex
	replay   *replayGuard

	wake chan struct{}

	mu      sync.Mutex
	state   State
	since   time.Time
	started time.Time
	ran     bool
	stopped bool
	peers   map[netip.AddrPort]*peer
	// peerAddr holds the peers' addresses: a peer sends and dials from its
	// own (Config.Self), so a datagram or a connection from elsewhere is a
	// stranger's.
	peerAddr    map[netip.Addr]bool
	takeoverReq bool           // Takeover was called and has not completed
	autoReq     bool           // preemption asks for a handover
	yieldedTo   netip.AddrPort // handed over to it by request: do not preempt it
	peerJoined  bool           // a peer came (back) into view since the last step
	sessions    map[netip.AddrPort]*session
	sessWG      sync.WaitGroup   // the sessions' goroutines, stopped or not
	syncUntil   time.Time        // a resigned node keeps streaming until then
	refresh     [2]time.Duration // established, closing: SetRefresh's
	config      configMsg        // what this node sends; Data nil if none
	applied     [sha256.Size]byte
	stateCh     chan struct{} // closed and replaced on every state change

	closeOnce sync.Once
	closed    atomic.Bool
}

// New checks cfg and opens the node's sockets (and, unless o.VIPs is set,
// the VIP interface) in the calling thread's network namespace. The node
// does nothing until Run; Close releases it if Run is never called.
func New(cfg Config, o Options) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	cfg.Peers = slices.Clone(cfg.Peers)
	cfg.VIPs = slices.Clone(cfg.VIPs)
	cfg.Key = slices.Clone(cfg.Key)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.QueueLen <= 0 {
		o.QueueLen = DefaultQueueLen
	}
	if o.ConfigEvery <= 0 {
		o.ConfigEvery = DefaultConfigEvery
	}
	if o.Dial == nil {
		d := &net.Dialer{Timeout: cfg.DeadAfter, LocalAddr: &net.TCPAddr{IP: cfg.Self.Addr().AsSlice()}}
		o.Dial = d.DialContext
	}
	n := &Node{
		cfg:      cfg,
		o:        o,
		log:      o.Logger.With("ha-group", cfg.Group, "self", cfg.Self.String()),
		group:    groupID(cfg.Group),
		epoch:    newEpoch(),
		replay:   newReplayGuard(),
		wake:     make(chan struct{}, 1),
		state:    StateStandby,
		since:    time.Now(),
		peers:    make(map[netip.AddrPort]*peer),
		peerAddr: make(map[netip.Addr]bool),
		sessions: make(map[netip.AddrPort]*session),
		stateCh:  make(chan struct{}),
	}
	n.c.rejected = make(map[string]*atomic.Uint64)
	for _, r := range rejectReasons {
		n.c.rejected[r] = new(atomic.Uint64)
	}
	for _, p := range cfg.Peers {
		n.peers[p] = &peer{addr: p}
		n.peerAddr[p.Addr().Unmap()] = true
	}
	n.refresh = [2]time.Duration{cfg.Refresh, cfg.RefreshClosing}
	n.aa.Store(cfg.ActiveActive)
	var err error
	if n.udp, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(cfg.Self)); err != nil {
		return nil, fmt.Errorf("ha: listen udp %s: %w", cfg.Self, err)
	}
	if n.tcp, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(cfg.Self)); err != nil {
		n.udp.Close()
		return nil, fmt.Errorf("ha: listen tcp %s: %w", cfg.Self, err)
	}
	n.vips = o.VIPs
	if n.vips == nil {
		kv, err := NewKernelVIPs(cfg.Interface, cfg.VIPs)
		if err != nil {
			n.udp.Close()
			n.tcp.Close()
			return nil, fmt.Errorf("ha: %w", err)
		}
		n.vips, n.ownV = kv, true
	}
	return n, nil
}

// newEpoch returns the boot id: the start time in nanoseconds, so that a
// restarted node's epoch is larger than its previous life's, with random
// low bits so that two starts in the same instant differ.
func newEpoch() uint64 {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return uint64(time.Now().UnixNano())&^0xffff | uint64(binary.BigEndian.Uint16(b[:]))
}

// Close releases the sockets and the VIP interface. It does not remove
// the VIPs; Run does that when it ends. Close is idempotent.
func (n *Node) Close() error {
	var err error
	n.closeOnce.Do(func() {
		n.closed.Store(true)
		err = errors.Join(n.udp.Close(), n.tcp.Close())
		if n.ownV {
			err = errors.Join(err, n.vips.Close())
		}
	})
	return err
}

// Run takes part in the group until ctx is done. It starts as a standby,
// listens for DeadAfter, and then follows the election. On return it
// gives up the VIPs if it held them, tells the peers it is stopping, and
// closes the node. A node runs once.
func (n *Node) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.ran || n.closed.Load() {
		n.mu.Unlock()
		return ErrRunning
	}
	n.ran = true
	n.started = time.Now()
	n.mu.Unlock()
	defer n.Close()
	// A node starts as a standby. VIPs left on the interface by a run that
	// died (SIGKILL, a crash) would have it answer ARP and NDP for them
	// beside the active, so they go first.
	if err := n.vips.Down(); err != nil {
		n.c.vipErrs.Add(1)
		n.log.Warn("ha: remove VIPs left from an earlier run", "err", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { n.readHeartbeats(ctx) })
	wg.Go(func() { n.acceptSync(ctx, &wg) })

	n.log.Info("ha node starting", "priority", n.cfg.Priority, "preempt", n.cfg.Preempt, "peers", len(n.cfg.Peers))
	tick := time.NewTicker(n.cfg.Interval / 4)
	defer tick.Stop()
	var nextBeat, nextAnnounce time.Time
	var lastBeat heartbeat
	announcements := 0
	for {
		now := time.Now()
		switch n.step(ctx, now) {
		case stepBecameActive:
			announcements, nextAnnounce = announceRepeats, now.Add(n.cfg.Interval)
		case stepReannounce:
			if announcements == 0 {
				announcements, nextAnnounce = 1, now
			}
		}
		if announcements > 0 && !now.Before(nextAnnounce) {
			if n.State() == StateActive && !n.aa.Load() {
				n.announce()
			}
			announcements--
			nextAnnounce = now.Add(n.cfg.Interval)
		}
		// Beat on time, and at once whenever what a beat says changes
		// (state, a takeover request, a new configuration).
		if hb := n.heartbeat(); hb != lastBeat || !now.Before(nextBeat) {
			n.sendHeartbeats(hb)
			lastBeat, nextBeat = hb, now.Add(n.cfg.Interval)
		}
		select {
		case <-ctx.Done():
			n.shutdown()
			cancel()
			n.Close() // unblocks the readers
			wg.Wait()
			n.sessWG.Wait()
			return nil
		case <-tick.C:
		case <-n.wake:
		}
	}
}

// announceRepeats is how many announcements follow the first one, an
// interval apart, in case a frame was lost.
const announceRepeats = 2

func (n *Node) announce() {
	if err := n.vips.Announce(); err != nil {
		n.c.vipErrs.Add(1)
		n.log.Warn("ha: announce VIPs", "err", err)
	}
}

// shutdown leaves the group: the VIPs go, and the peers hear that this
// node is stopping so that one of them takes over at once.
func (n *Node) shutdown() {
	n.mu.Lock()
	wasActive := n.state == StateActive
	for _, s := range n.sessions {
		s.stop()
	}
	n.sessions = map[netip.AddrPort]*session{}
	n.stopped = true
	n.setStateLocked(StateStopping, time.Now())
	n.mu.Unlock()
	if wasActive {
		n.c.stepDowns.Add(1)
		if err := n.vips.Down(); err != nil {
			n.c.vipErrs.Add(1)
			n.log.Warn("ha: remove VIPs", "err", err)
		}
	}
	n.sendHeartbeats(n.heartbeat())
	n.notifyState(StateStopping)
	n.log.Info("ha node stopped")
}

func (n *Node) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// State returns the node's current state.
func (n *Node) State() State {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state
}

func (n *Node) setStateLocked(s State, now time.Time) {
	if n.state == s {
		return
	}
	n.state, n.since = s, now
	close(n.stateCh)
	n.stateCh = make(chan struct{})
}

func (n *Node) notifyState(s State) {
	if n.o.OnState != nil {
		n.o.OnState(s)
	}
}

// Takeover makes this node active in an orderly way: it asks the active
// to hand over, the active flushes its flows to the standbys, gives up
// the VIPs and says so, and this node takes them at once. It returns when
// this node is active, or with ctx's error (the request is then
// withdrawn). A node that is already active returns nil.
func (n *Node) Takeover(ctx context.Context) error {
	n.mu.Lock()
	if !n.ran || n.stopped {
		n.mu.Unlock()
		return ErrStopped
	}
	n.takeoverReq = true
	n.mu.Unlock()
	n.poke()
	for {
		n.mu.Lock()
		st, ch := n.state, n.stateCh
		n.mu.Unlock()
		switch st {
		case StateActive:
			return nil
		case StateStopping:
			return ErrStopped
		}
		select {
		case <-ch:
		case <-ctx.Done():
			n.mu.Lock()
			n.takeoverReq = false
			n.mu.Unlock()
			n.poke()
			return fmt.Errorf("ha takeover: %w", ctx.Err())
		}
	}
}

// Status returns what the node knows now.
func (n *Node) Status() Status {
	now := time.Now()
	n.mu.Lock()
	st := Status{
		Group:         n.cfg.Group,
		Self:          n.cfg.Self,
		State:         n.state,
		Since:         n.since,
		ActiveActive:  n.aa.Load(),
		Priority:      n.cfg.Priority,
		Preempt:       n.cfg.Preempt,
		Epoch:         n.epoch,
		ConfigVersion: n.config.Version,
	}
	st.Refresh, st.RefreshClosing = n.refreshPeriodsLocked()
	if n.config.Data != nil {
		st.ConfigHash = hex.EncodeToString(n.config.Hash[:])
	}
	if n.state == StateActive {
		st.Active = n.cfg.Self
	}
	for _, a := range n.cfg.Peers {
		p := n.peers[a]
		ps := PeerStatus{Addr: a, Alive: n.alive(p, now), LastHeard: p.lastHeard, Epoch: p.epoch,
			SnapshotReceived: p.snapshotAt.After(n.started)}
		if p.heard {
			ps.State, ps.Priority, ps.Preempt, ps.Takeover = p.hb.State, p.hb.Priority, p.hb.Preempt, p.hb.Takeover
			ps.ConfigVersion = p.hb.ConfigVer
		}
		if s := n.sessions[a]; s != nil {
			ps.Synced = s.connected.Load()
		}
		if ps.Alive && ps.State == StateActive && !st.Active.IsValid() {
			st.Active = a
		}
		st.Peers = append(st.Peers, ps)
	}
	n.mu.Unlock()
	c := &n.c
	st.Counters = Counters{
		HeartbeatsSent:     c.hbSent.Load(),
		HeartbeatsReceived: c.hbRecv.Load(),
		Rejected:           make(map[string]uint64, len(c.rejected)),
		FlowsSent:          c.flowsSent.Load(),
		FlowsRefreshed:     c.flowsRefr.Load(),
		RefreshRounds:      c.refrRounds.Load(),
		StreamBytesSent:    c.bytesOut.Load(),
		FlowsReceived:      c.flowsRecv.Load(),
		FlowsDropped:       c.flowsDrop.Load(),
		FlowErrors:         c.flowErrs.Load(),
		SnapshotsSent:      c.snapSent.Load(),
		SnapshotsReceived:  c.snapRecv.Load(),
		ConfigsSent:        c.cfgSent.Load(),
		ConfigsReceived:    c.cfgRecv.Load(),
		ConfigErrors:       c.cfgErrs.Load(),
		Takeovers:          c.takeovers.Load(),
		StepDowns:          c.stepDowns.Load(),
		VIPErrors:          c.vipErrs.Load(),
	}
	for r, v := range c.rejected {
		st.Counters.Rejected[r] = v.Load()
	}
	return st
}

func (n *Node) countReject(err error) {
	n.c.rejected[rejectReason(err)].Add(1)
}

// alive reports whether p was heard recently and is not shutting down.
// Callers hold n.mu.
func (n *Node) alive(p *peer, now time.Time) bool {
	return p.heard && now.Sub(p.lastHeard) < n.cfg.DeadAfter && p.hb.State != StateStopping
}

// SetConfig sets the configuration an active node sends to its standbys.
// It is sent at once if it changed, and again every ConfigEvery and to
// each standby that (re)joins. The node keeps its own copy of b.
func (n *Node) SetConfig(b []byte) {
	h := sha256.Sum256(b)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.config.Data != nil && n.config.Hash == h {
		return
	}
	n.config = configMsg{Version: n.config.Version + 1, Hash: h, Data: append([]byte{}, b...)}
	n.applied = h
	for _, s := range n.sessions {
		s.kickConfig()
	}
}

// SetRefresh changes the refresh periods (Config.Refresh and
// RefreshClosing) of a running node; sessions take them from their next
// round on.
func (n *Node) SetRefresh(established, closing time.Duration) error {
	if err := validateRefresh(established, closing); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.refresh = [2]time.Duration{established, closing}
	for _, s := range n.sessions {
		signal(s.rekick)
	}
	return nil
}

// refreshPeriodsLocked returns the periods in force: the closing one is
// never longer than the other, and both are 0 without a Refresh callback.
func (n *Node) refreshPeriodsLocked() (established, closing time.Duration) {
	est, cl := n.refresh[0], n.refresh[1]
	if est <= 0 || n.o.Refresh == nil {
		return 0, 0
	}
	if cl <= 0 || cl > est {
		cl = est
	}
	return est, cl
}

func (n *Node) refreshPeriods() (established, closing time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.refreshPeriodsLocked()
}

// SendFlows queues records for every standby this active node streams to.
// It never blocks: when a standby's queue is full the batch is dropped
// for it, counted, and that standby gets a fresh snapshot. A node that is
// not active (nor just handing over) ignores the call. The node keeps
// recs, so the caller must not change them afterwards.
func (n *Node) SendFlows(recs []FlowRecord) {
	if len(recs) == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state != StateActive && !n.aa.Load() && time.Now().After(n.syncUntil) {
		return
	}
	for _, s := range n.sessions {
		s.enqueue(recs)
	}
}

// SetActiveActive switches a running node between the modes
// (Config.ActiveActive). An active node entering active-active mode gives
// its VIP addresses up to the routing; one leaving it brings them up and
// announces them. Sessions start (or stop) at the next election step.
func (n *Node) SetActiveActive(on bool) {
	if n.aa.Swap(on) == on {
		return
	}
	n.log.Info("ha: mode", "active-active", on)
	if n.State() == StateActive {
		var err error
		if on {
			err = n.vips.Down()
		} else if err = n.vips.Up(); err == nil {
			n.announce()
		}
		if err != nil {
			n.c.vipErrs.Add(1)
			n.log.Error("ha: VIPs on a change of mode", "err", err)
		}
	}
	n.poke()
}
