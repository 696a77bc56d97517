package executor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/maglev"
)

var (
	// ErrClosed marks a call on an executor that has been closed.
	ErrClosed = errors.New("executor closed")
	// ErrNoServer marks a packet of a new flow that was dropped because no
	// server of its service had a positive weight.
	ErrNoServer = errors.New("no server with a positive weight")
)

const (
	// FakeRingSize is the Maglev table size of NewFake: small, so that
	// tables build fast, and prime, as maglev.Build requires.
	FakeRingSize = 1009
	// FakePacketBytes is the packet length Dispatch counts.
	FakePacketBytes = 64
	// FakeFlowEventsQueue is how many flow events the Fake holds for a
	// subscriber that does not keep up (besides the batch on its way);
	// more are dropped and counted, as the kernel's full ring does.
	FakeFlowEventsQueue = 4096
)

// Fake is an in-memory Executor for testing what sits above the data plane
// (manager, daemon, high availability) without root or a kernel. It keeps the
// same state the kernel implementation keeps and follows the same rules:
// server slots whose counters start at zero, flows that go stale when their
// server leaves, client affinity, idle expiry. Dispatch stands in for a packet
// arriving on an attached interface.
//
// Time is virtual: it stands still until Advance moves it, so flow idle times
// and affinity windows are exact in tests. Flows expire after 300 s of
// idleness, the kernel implementation's default, and every packet restarts
// a flow's idle time (the kernel refreshes it about once a second). Tables
// have no size limit, so the Fake never returns ErrFull.
//
// With the same ring size, Dispatch picks the server the kernel would pick
// for a new flow under hash seed 0: the Maglev tables are built the same way
// and the flow hash is the data plane's.
//
// A Fake is safe for concurrent use.
type Fake struct {
	ringSize        uint32
	idleTimeout     time.Duration
	halfOpenTimeout time.Duration

	mu       sync.Mutex
	closed   bool
	now      time.Duration // virtual clock
	attached map[int]bool
	services map[ServiceKey]*fakeService
	vips     map[netip.Addr]*fakeVIP
	// flows is the connection table. Like the kernel's it keeps entries
	// whose server has left; they are stale and read as absent.
	flows    map[FlowKey]*fakeFlow
	affinity map[fakeAffinityKey]*fakeAffinity
	global   GlobalStats
	nextID   uint32 // names servers to maglev.Build
	commits  int
	drained  bool

	// events queues flow events for the FlowEvents subscriber; nil when
	// there is none.
	events       chan FlowEvent
	eventsCancel context.CancelFunc
}

// fakeService is one service. Its servers are compared by identity: a server
// removed and added again is a new *fakeServer, like a fresh kernel slot, so
// flows and affinity records naming the old one go stale.
type fakeService struct {
	sticky   time.Duration
	sched    Scheduler
	flowTime time.Duration
	servers  map[netip.Addr]*fakeServer
	ring     []*fakeServer // nil when no server has a positive weight
	packets  uint64
	bytes    uint64
	noServer uint64
}

type fakeServer struct {
	id    uint32
	srv   Server
	stats ServerStats
	// active is the open-flow count the p2c scheduler compares (the
	// kernel's server_active), kept while the service is p2c.
	active int64
	// picks counts the delay scheduler's new flows in the current pick
	// window (epoch) and the one before (server_picks).
	epoch     int64
	picks     uint64
	prevPicks uint64
	// halfOpen is the kernel's server_halfopen, kept for every service.
	halfOpen int64
}

type fakeVIP struct {
	refs  int
	stats VIPStats
}

type fakeFlow struct {
	server   *fakeServer
	lastSeen time.Duration
	closing  bool
	halfOpen bool
	// once: a UDP flow that has sent one datagram; reported at its second.
	once bool
}

// timeout is how long the flow is kept after its last packet.
func (f *Fake) timeout(fl *fakeFlow) time.Duration {
	if fl.closing || fl.halfOpen {
		return f.halfOpenTimeout
	}
	return f.idleTimeout
}

type fakeAffinityKey struct {
	svc    ServiceKey
	client netip.Addr
}

type fakeAffinity struct {
	server   *fakeServer
	lastSeen time.Duration
}

var _ Executor = (*Fake)(nil)

// NewFake returns an empty Fake whose Maglev tables have FakeRingSize slots.
func NewFake() *Fake {
	f, err := NewFakeSize(FakeRingSize)
	if err != nil {
		panic(err) // FakeRingSize is a valid size
	}
	return f
}

// NewFakeSize returns an empty Fake whose Maglev tables have ringSize slots,
// a prime in [maglev.MinSize, maglev.MaxSize]. Use maglev.DefaultSize to pick
// servers exactly as a kernel data plane with the default configuration.
func NewFakeSize(ringSize uint32) (*Fake, error) {
	if ringSize < maglev.MinSize || ringSize > maglev.MaxSize || !maglev.IsPrime(ringSize) {
		return nil, fmt.Errorf("%w: ring size %d is not a prime in [%d, %d]", ErrInvalid, ringSize, maglev.MinSize, maglev.MaxSize)
	}
	return &Fake{
		ringSize:        ringSize,
		idleTimeout:     DefaultConfig().IdleTimeout,
		halfOpenTimeout: DefaultConfig().HalfOpenTimeout,
		attached:        map[int]bool{},
		services:        map[ServiceKey]*fakeService{},
		vips:            map[netip.Addr]*fakeVIP{},
		flows:           map[FlowKey]*fakeFlow{},
		affinity:        map[fakeAffinityKey]*fakeAffinity{},
	}, nil
}

// Advance moves the Fake's clock forward by d; a negative d is ignored.
func (f *Fake) Advance(d time.Duration) {
	if d <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now += d
}

// Attach implements Executor. Attaching twice is not an error.
func (f *Fake) Attach(ifindex int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	if ifindex <= 0 {
		return fmt.Errorf("%w: attach xdp to ifindex %d", ErrInvalid, ifindex)
	}
	f.attached[ifindex] = true
	return nil
}

// Detach implements Executor.
func (f *Fake) Detach(ifindex int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	if !f.attached[ifindex] {
		return fmt.Errorf("%w: not attached to ifindex %d", ErrNotFound, ifindex)
	}
	delete(f.attached, ifindex)
	return nil
}

// Attached lists the interfaces the Fake is attached to, sorted.
func (f *Fake) Attached() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(maps.Keys(f.attached))
}

// Commits counts the calls of UpsertService, SetWeights and DeleteService
// that succeeded and changed something; calls that installed what was
// already there are not counted.
func (f *Fake) Commits() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.commits
}

// UpsertService implements Executor.
func (f *Fake) UpsertService(s Service) error {
	if err := validateService(s); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	return f.upsertLocked(s)
}

// upsertLocked computes the new state in full, the Maglev table included,
// before changing anything, so that a failure leaves the service as it was.
func (f *Fake) upsertLocked(s Service) error {
	st := f.services[s.Key]
	changed := st == nil || st.sticky != s.StickyTime || st.sched != s.Scheduler || st.flowTime != s.FlowTime || len(st.servers) != len(s.Servers)

	type rewrite struct {
		fs  *fakeServer
		srv Server
	}
	var (
		rewrites []rewrite
		members  []maglev.Backend
		byID     = make(map[uint32]*fakeServer, len(s.Servers))
		next     = make(map[netip.Addr]*fakeServer, len(s.Servers))
	)
	for _, srv := range s.Servers {
		srv.MAC = slices.Clone(srv.MAC)
		var fs *fakeServer
		if st != nil {
			fs = st.servers[srv.Addr]
		}
		switch {
		case fs == nil:
			// A new server: fresh counters, like a freshly allocated slot.
			fs = &fakeServer{id: f.nextID, srv: srv}
			f.nextID++
			changed = true
		case !sameServer(fs.srv, srv) || fs.srv.Delay != srv.Delay:
			// Rewritten in place: it keeps its flows and counters.
			rewrites = append(rewrites, rewrite{fs, srv})
			changed = true
		}
		next[srv.Addr] = fs
		byID[fs.id] = fs
		if srv.Weight > 0 {
			members = append(members, maglev.Backend{Key: srv.Addr.String(), ID: fs.id, Weight: srv.Weight})
		}
	}
	if !changed {
		return nil
	}

	var ring []*fakeServer
	if len(members) > 0 {
		table, err := maglev.Build(f.ringSize, members)
		if err != nil {
			return fmt.Errorf("build maglev table: %w", err)
		}
		ring = make([]*fakeServer, len(table))
		for i, id := range table {
			ring[i] = byID[id]
		}
	}

	if st == nil {
		st = &fakeService{}
		f.services[s.Key] = st
		f.refVIP(s.Key.VIP)
	}
	for _, r := range rewrites {
		r.fs.srv = r.srv
	}
	if s.Scheduler.CountsActive() && !st.sched.CountsActive() {
		// Seeded from the counters' estimate, as the kernel does.
		for _, fs := range next {
			fs.active = int64(fs.stats.Active())
		}
	}
	st.servers = next
	st.sticky = s.StickyTime
	st.sched = s.Scheduler
	st.flowTime = s.FlowTime
	st.ring = ring
	f.commits++
	return nil
}

func (f *Fake) refVIP(a netip.Addr) {
	if v := f.vips[a]; v != nil {
		v.refs++
		return
	}
	f.vips[a] = &fakeVIP{refs: 1}
}

func (f *Fake) unrefVIP(a netip.Addr) {
	v := f.vips[a]
	if v == nil {
		return
	}
	if v.refs--; v.refs <= 0 {
		delete(f.vips, a)
	}
}

// DeleteService implements Executor.
func (f *Fake) DeleteService(key ServiceKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	if f.services[key] == nil {
		return fmt.Errorf("%w: service %v", ErrNotFound, key)
	}
	delete(f.services, key)
	f.unrefVIP(key.VIP)
	f.commits++
	return nil
}

// SetWeights implements Executor.
func (f *Fake) SetWeights(key ServiceKey, weights map[netip.Addr]uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	st := f.services[key]
	if st == nil {
		return fmt.Errorf("%w: service %v", ErrNotFound, key)
	}
	for addr := range weights {
		if st.servers[addr] == nil {
			return fmt.Errorf("%w: server %v in %v", ErrNotFound, addr, key)
		}
	}
	s := st.service(key)
	setWeights(&s, weights)
	return f.upsertLocked(s)
}

// service returns a copy of the service as the caller installed it.
func (st *fakeService) service(key ServiceKey) Service {
	s := Service{Key: key, StickyTime: st.sticky, Scheduler: st.sched, FlowTime: st.flowTime}
	for _, fs := range st.servers {
		srv := fs.srv
		srv.MAC = slices.Clone(srv.MAC)
		s.Servers = append(s.Servers, srv)
	}
	slices.SortFunc(s.Servers, func(x, y Server) int { return x.Addr.Compare(y.Addr) })
	return s
}

// Services implements Executor. A closed Fake has none.
func (f *Fake) Services() []Service {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	out := make([]Service, 0, len(f.services))
	for key, st := range f.services {
		out = append(out, st.service(key))
	}
	sortServices(out)
	return out
}

// Dispatch passes one packet of flow k, of FakePacketBytes bytes, through
// the Fake as the data plane would. See DispatchBytes.
func (f *Fake) Dispatch(k FlowKey, syn, closing bool) (netip.Addr, error) {
	return f.DispatchBytes(k, syn, closing, FakePacketBytes)
}

// DispatchBytes passes one packet of flow k, bytes long, through the Fake
// as the data plane would, and returns the server it goes to. For TCP, syn
// says the packet opens a connection (SYN without ACK) and closing that the
// client sends FIN or RST; any other TCP packet is an ACK or data. For UDP
// both are ignored, as the data plane reads them from TCP flags.
//
// The table's rules are the kernel's (docs/ARCHITECTURE.md, "The
// connection table"): a SYN records its flow half-open, and the flow's
// next packet without SYN establishes it (counted in NewFlows and the
// open-flow counts); a stray packet of an unknown TCP flow is recorded
// half-open too; a FIN or RST of an unknown flow is forwarded and leaves
// nothing; a UDP flow is established by its first packet. A flow keeps its
// server while the server remains, unless it has been idle past its
// state's timeout (half-open and closing flows: the half-open timeout), a
// SYN reuses the tuple of a closing flow, or a SYN of a half-open flow
// finds its server quiesced. Any other packet is dispatched anew: on the
// client's sticky server when the service has affinity and that server
// has a positive weight, otherwise on the server the Maglev table names,
// or for a p2c service the one of the table's two picks with fewer open
// flows for its weight. With no server to take it the packet is dropped
// with ErrNoServer. A packet for no service is dropped with ErrNotFound.
// The Fake's table has no size limit: nothing is ever displaced.
func (f *Fake) DispatchBytes(k FlowKey, syn, closing bool, bytes uint64) (netip.Addr, error) {
	if err := validateFlowKey(k); err != nil {
		return netip.Addr{}, err
	}
	tcp := k.Proto == TCP
	if !tcp {
		syn, closing = false, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return netip.Addr{}, ErrClosed
	}
	key := k.Service()
	st := f.services[key]
	if st == nil {
		if v := f.vips[key.VIP]; v != nil {
			v.stats.Filtered++
		} else {
			f.global.Passed++
		}
		return netip.Addr{}, fmt.Errorf("%w: no service %v", ErrNotFound, key)
	}

	var (
		fs               *fakeServer
		opened, isClosed bool
		recordedHalfOpen bool
		replaced         *fakeFlow
	)
	fl := f.flows[k]
	if fl != nil && st.has(fl.server) {
		switch {
		case f.now-fl.lastSeen > f.timeout(fl):
			f.goneLocked(st, fl)
			delete(f.flows, k)
			fl = nil
		case syn && fl.closing:
			replaced = fl // the client reuses a closed tuple: a new connection
		case syn && fl.halfOpen && fl.server.srv.Weight == 0:
			replaced = fl // a SYN retransmitted to a server taken out
		case fl.server.srv.Held:
			// Its server cannot be reached: the flow waits for it.
			st.noServer++
			return netip.Addr{}, fmt.Errorf("%w: flow %v: server %v held", ErrNoServer, k, fl.server.srv.Addr)
		default:
			fs = fl.server
		}
	}
	if fs != nil {
		fl.lastSeen = f.now
		if st.sticky > 0 {
			ak := fakeAffinityKey{svc: key, client: k.Client.Addr()}
			if a := f.affinity[ak]; a != nil && a.server == fs {
				a.lastSeen = f.now
			}
		}
		switch {
		case fl.halfOpen && closing:
			fl.halfOpen, fl.closing = false, true
			fs.halfOpen--
		case fl.halfOpen && !syn:
			fl.halfOpen = false
			fs.halfOpen--
			opened = true
			st.countActive(fs, 1)
			f.reportLocked(FlowOpened, k, fs, false)
		case !fl.halfOpen && closing && !fl.closing:
			fl.closing = true
			isClosed = true
			st.countActive(fs, -1)
			f.reportLocked(FlowClosed, k, fs, true)
		case fl.once:
			fl.once = false
			f.reportLocked(FlowOpened, k, fs, false)
		}
	} else {
		// As the kernel: only an opener the table remembers goes to the
		// scheduler; any other packet of an unknown flow to the ring's
		// pick (the Fake always has room).
		if fs = f.pick(key, st, k, (syn || !tcp) && !closing); fs == nil {
			st.noServer++
			return netip.Addr{}, fmt.Errorf("%w: flow %v", ErrNoServer, k)
		}
		if !closing {
			if replaced != nil {
				f.goneLocked(st, replaced)
			}
			entry := &fakeFlow{server: fs, lastSeen: f.now, halfOpen: tcp, once: !tcp}
			f.flows[k] = entry
			if tcp {
				fs.halfOpen++
				recordedHalfOpen = true
			} else {
				opened = true
				st.countActive(fs, 1)
			}
		}
	}

	fs.stats.Packets++
	fs.stats.Bytes += bytes
	if opened {
		fs.stats.NewFlows++
	}
	if isClosed {
		fs.stats.Closed++
	}
	if recordedHalfOpen {
		fs.stats.HalfOpenOpened++
	}
	st.packets++
	st.bytes += bytes
	return fs.srv.Addr, nil
}

// goneLocked takes a flow leaving the table out of its server's counts,
// as the kernel's count_gone: a half-open flow leaves the half-open count,
// an established one is counted expired, a closing one was counted out.
func (f *Fake) goneLocked(st *fakeService, fl *fakeFlow) {
	switch {
	case fl.closing:
	case fl.halfOpen:
		fl.server.halfOpen--
	default:
		fl.server.stats.Expired++
		st.countActive(fl.server, -1)
	}
}

// countActive moves a server's open-flow count if the service keeps them.
func (st *fakeService) countActive(fs *fakeServer, delta int64) {
	if st.sched.CountsActive() {
		fs.active += delta
	}
}

// reportLocked queues a flow event for the subscriber, if any, or counts it
// lost when the queue is full.
func (f *Fake) reportLocked(kind FlowEventKind, k FlowKey, fs *fakeServer, closing bool) {
	if f.events == nil {
		return
	}
	select {
	case f.events <- FlowEvent{Kind: kind, Flow: Flow{Key: k, Server: fs.srv.Addr, Closing: closing}}:
	default:
		f.global.FlowEventsLost++
	}
}

// FlowEvents implements Executor. Dispatch reports as the kernel's data
// plane does; Idle is 0, the Fake's clock standing still between calls.
func (f *Fake) FlowEvents(ctx context.Context) (<-chan []FlowEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	if f.events != nil {
		return nil, fmt.Errorf("%w: flow events already have a subscriber", ErrBusy)
	}
	q := make(chan FlowEvent, FakeFlowEventsQueue)
	ctx, cancel := context.WithCancel(ctx)
	f.events, f.eventsCancel = q, cancel
	out := make(chan []FlowEvent)
	go func() {
		defer close(out)
		defer func() {
			cancel()
			f.mu.Lock()
			if f.events == q {
				f.events, f.eventsCancel = nil, nil
			}
			f.mu.Unlock()
		}()
		for {
			var batch []FlowEvent
			select {
			case <-ctx.Done():
				return
			case ev := <-q:
				batch = append(batch, ev)
			}
		more:
			for len(batch) < maxEventBatch {
				select {
				case ev := <-q:
					batch = append(batch, ev)
				default:
					break more
				}
			}
			select {
			case out <- batch:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// has reports whether fs is still one of the service's servers.
func (st *fakeService) has(fs *fakeServer) bool {
	return fs != nil && st.servers[fs.srv.Addr] == fs
}

// pick chooses the server of a new flow: the client's sticky server if the
// service has affinity, the record is within the window and the server takes
// new flows; otherwise the Maglev table's, which becomes the sticky one.
func (f *Fake) pick(key ServiceKey, st *fakeService, k FlowKey, schedule bool) *fakeServer {
	ak := fakeAffinityKey{svc: key, client: k.Client.Addr()}
	if st.sticky > 0 {
		if a := f.affinity[ak]; a != nil && f.now-a.lastSeen <= st.sticky && st.has(a.server) && a.server.srv.Weight > 0 {
			a.lastSeen = f.now
			return a.server
		}
	}
	if st.ring == nil {
		return nil
	}
	fk := flowKey(k)
	hash := flowHash(fk, 0)
	if schedule && st.sched == SchedulerDelay {
		if fs := st.delayPick(hash, f.now, st.ring[ringSlot(hash, f.ringSize)]); fs != nil {
			if st.sticky > 0 {
				f.affinity[ak] = &fakeAffinity{server: fs, lastSeen: f.now}
			}
			return fs
		}
	}
	fs := st.ring[ringSlot(hash, f.ringSize)]
	if schedule && st.sched.CountsActive() {
		// Every ring member takes new flows here: the Fake swaps ring
		// and weights at once.
		b := st.ring[ringSlot(flowHash(fk, p2cSeed), f.ringSize)]
		if p2cLoad(fs.active, b.srv.Weight) > p2cLoad(b.active, fs.srv.Weight) {
			fs = b
		}
	}
	if st.sticky > 0 {
		f.affinity[ak] = &fakeAffinity{server: fs, lastSeen: f.now}
	}
	return fs
}

// delayPick is the delay scheduler as the kernel runs it (nd_delay_pick):
// the members in address order, scored from a place the hash chooses. nil
// when the service has more members than the data plane scores: it is
// scheduled as p2c then.
func (st *fakeService) delayPick(hash uint32, now time.Duration, ringPick *fakeServer) *fakeServer {
	var members []*fakeServer
	var srvs []Server
	for _, addr := range slices.SortedFunc(maps.Keys(st.servers), netip.Addr.Compare) {
		fs := st.servers[addr]
		srvs = append(srvs, fs.srv)
		if fs.srv.Weight > 0 {
			members = append(members, fs)
		}
	}
	n := len(members)
	if n == 0 || n > MaxMembers {
		return nil
	}
	mean := meanWeight(srvs)
	charge := uint64(memberCharge(st.flowTime))
	epoch := int64(now) >> pickWindowShift
	var best *fakeServer
	var bestScore uint64
	i := int(uint64(hash) * uint64(n) >> 32)
	for range n {
		fs := members[i]
		held := uint64(max(fs.active, 0))
		if charge > 0 {
			if charged := fs.recentPicks(epoch, now) * charge; charged > (held+1)*pickChargeFactor<<16 {
				held = charged >> 16
			}
		}
		per, base := memberCosts(fs.srv, mean)
		score := held*uint64(per) + uint64(base)
		if best == nil || score < bestScore || (score == bestScore && fs == ringPick) {
			best, bestScore = fs, score
		}
		i = (i + 1) % n
	}
	if charge > 0 {
		best.rotate(epoch)
		best.picks++
	}
	return best
}

// The data plane's pick window (PICK_WINDOW_SHIFT, PICK_CHARGE_FACTOR).
const (
	pickWindowShift  = 28
	pickChargeFactor = 3
)

func (fs *fakeServer) rotate(epoch int64) {
	if fs.epoch != epoch {
		fs.prevPicks = 0
		if fs.epoch == epoch-1 {
			fs.prevPicks = fs.picks
		}
		fs.picks, fs.epoch = 0, epoch
	}
}

// recentPicks is recent_picks: this window's count and the uncovered part
// of the last one's.
func (fs *fakeServer) recentPicks(epoch int64, now time.Duration) uint64 {
	cur, prev := fs.picks, fs.prevPicks
	if fs.epoch != epoch {
		prev = 0
		if fs.epoch == epoch-1 {
			prev = cur
		}
		cur = 0
	}
	const window = 1 << pickWindowShift
	left := uint64(window - int64(now)&(window-1))
	return cur + prev*left>>pickWindowShift
}

// AddCounters adds delta to the counters of a server of a service, and its
// packets and bytes to the service's, as if the data plane had counted them,
// so that a test can feed the manager the metrics it wants.
func (f *Fake) AddCounters(key ServiceKey, server netip.Addr, delta ServerStats) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	st := f.services[key]
	if st == nil {
		return fmt.Errorf("%w: service %v", ErrNotFound, key)
	}
	fs := st.servers[server]
	if fs == nil {
		return fmt.Errorf("%w: server %v in %v", ErrNotFound, server, key)
	}
	fs.stats.NewFlows += delta.NewFlows
	fs.stats.Packets += delta.Packets
	fs.stats.Bytes += delta.Bytes
	fs.stats.Closed += delta.Closed
	fs.stats.Expired += delta.Expired
	st.packets += delta.Packets
	st.bytes += delta.Bytes
	return nil
}

// Stats implements Executor.
func (f *Fake) Stats() (Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return Stats{}, ErrClosed
	}
	out := Stats{
		Services: make(map[ServiceKey]ServiceStats, len(f.services)),
		VIPs:     make(map[netip.Addr]VIPStats, len(f.vips)),
		Global:   f.global,
	}
	for key, st := range f.services {
		ss := ServiceStats{
			Packets:  st.packets,
			Bytes:    st.bytes,
			NoServer: st.noServer,
			Servers:  make(map[netip.Addr]ServerStats, len(st.servers)),
		}
		for addr, fs := range st.servers {
			s := fs.stats
			s.HalfOpen = uint64(max(fs.halfOpen, 0))
			ss.Servers[addr] = s
		}
		out.Services[key] = ss
	}
	for addr, v := range f.vips {
		out.VIPs[addr] = v.stats
	}
	return out, nil
}

// ActiveFlows implements Executor.
func (f *Fake) ActiveFlows() (map[ServiceKey]map[netip.Addr]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	return f.activeFlowsLocked(), nil
}

// ActiveCounts implements Executor.
func (f *Fake) ActiveCounts() (map[ServiceKey]map[netip.Addr]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	out := map[ServiceKey]map[netip.Addr]int{}
	for key, st := range f.services {
		if !st.sched.CountsActive() {
			continue
		}
		m := map[netip.Addr]int{}
		for addr, fs := range st.servers {
			m[addr] = int(max(fs.active, 0))
		}
		out[key] = m
	}
	return out, nil
}

// ReconcileActive implements Executor. The Fake has no concurrent packets,
// so its counts come out exact.
// Drained implements Executor: the mark lasts as long as the Fake, which
// a test may hand to a second daemon as a restarted ndd's data plane.
func (f *Fake) Drained() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false, ErrClosed
	}
	return f.drained, nil
}

// SetDrained implements Executor.
func (f *Fake) SetDrained(drained bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	f.drained = drained
	return nil
}

func (f *Fake) ReconcileActive() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	truth := f.activeFlowsLocked()
	half := map[*fakeServer]int64{}
	for k, fl := range f.flows {
		if st := f.services[k.Service()]; st != nil && st.has(fl.server) && fl.halfOpen && f.now-fl.lastSeen <= f.halfOpenTimeout {
			half[fl.server]++
		}
	}
	for key, st := range f.services {
		for addr, fs := range st.servers {
			fs.halfOpen = half[fs]
			if st.sched.CountsActive() {
				fs.active = int64(truth[key][addr])
			}
		}
	}
	return nil
}

func (f *Fake) activeFlowsLocked() map[ServiceKey]map[netip.Addr]int {
	out := map[ServiceKey]map[netip.Addr]int{}
	for k, fl := range f.flows {
		key := k.Service()
		st := f.services[key]
		if st == nil || !st.has(fl.server) || fl.closing || fl.halfOpen || f.now-fl.lastSeen > f.timeout(fl) {
			continue
		}
		m := out[key]
		if m == nil {
			m = map[netip.Addr]int{}
			out[key] = m
		}
		m[fl.server.srv.Addr]++
	}
	return out
}

// liveFlowLocked returns the entry of k as a Flow, unless it is absent or
// stale.
func (f *Fake) liveFlowLocked(k FlowKey, fl *fakeFlow) (Flow, bool) {
	st := f.services[k.Service()]
	if st == nil || !st.has(fl.server) {
		return Flow{}, false
	}
	out := Flow{Key: k, Server: fl.server.srv.Addr, Closing: fl.closing, HalfOpen: fl.halfOpen, Once: fl.once}
	if d := f.now - fl.lastSeen; d > 0 {
		out.Idle = d
	}
	return out, true
}

// Flows implements Executor. fn sees the entries in a fixed order (by
// service, then client) and runs without the Fake's lock, so it may call
// the Fake, for instance to delete the flow it is given.
func (f *Fake) Flows(fn func(Flow) bool) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrClosed
	}
	flows := make([]Flow, 0, len(f.flows))
	for k, fl := range f.flows {
		if out, ok := f.liveFlowLocked(k, fl); ok {
			flows = append(flows, out)
		}
	}
	f.mu.Unlock()
	slices.SortFunc(flows, func(x, y Flow) int { return compareFlowKeys(x.Key, y.Key) })
	for _, fl := range flows {
		if !fn(fl) {
			return nil
		}
	}
	return nil
}

// RecentFlows implements Executor, over Flows.
func (f *Fake) RecentFlows(within, closingWithin time.Duration, fn func(Flow) bool) error {
	return f.Flows(func(fl Flow) bool {
		limit := within
		if fl.Closing {
			limit = closingWithin
		}
		if fl.HalfOpen || fl.Once || limit < 0 || fl.Idle > limit {
			return true
		}
		return fn(fl)
	})
}

func compareFlowKeys(x, y FlowKey) int {
	if c := x.VIP.Compare(y.VIP); c != 0 {
		return c
	}
	if x.Proto != y.Proto {
		return int(x.Proto) - int(y.Proto)
	}
	return x.Client.Compare(y.Client)
}

// LookupFlow implements Executor.
func (f *Fake) LookupFlow(k FlowKey) (Flow, bool, error) {
	if err := validateFlowKey(k); err != nil {
		return Flow{}, false, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return Flow{}, false, ErrClosed
	}
	fl := f.flows[k]
	if fl == nil {
		return Flow{}, false, nil
	}
	out, ok := f.liveFlowLocked(k, fl)
	return out, ok, nil
}

// UpsertFlows implements Executor. Entries written here do not count as new
// flows, as in the kernel: nothing passed the data plane.
func (f *Fake) UpsertFlows(flows []Flow) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	var errs []error
	for _, fl := range flows {
		if err := validateFlowKey(fl.Key); err != nil {
			errs = append(errs, err)
			continue
		}
		st := f.services[fl.Key.Service()]
		if st == nil {
			errs = append(errs, fmt.Errorf("%w: flow %v: no service %v", ErrNotFound, fl.Key, fl.Key.Service()))
			continue
		}
		fs := st.servers[fl.Server]
		if fs == nil {
			errs = append(errs, fmt.Errorf("%w: flow %v: server %v not in %v", ErrNotFound, fl.Key, fl.Server, fl.Key.Service()))
			continue
		}
		entry := &fakeFlow{server: fs, lastSeen: f.now, closing: fl.Closing}
		if fl.Idle > 0 {
			entry.lastSeen -= fl.Idle
		}
		// The open-flow counts follow the table, as in the kernel.
		if old := f.flows[fl.Key]; old != nil && st.has(old.server) {
			f.outLocked(st, old)
		}
		if !fl.Closing {
			st.countActive(fs, 1)
		}
		f.flows[fl.Key] = entry
	}
	return errors.Join(errs...)
}

// DeleteFlow implements Executor. Like the kernel's, it removes a stale
// entry too, although LookupFlow does not report one.
func (f *Fake) DeleteFlow(k FlowKey) error {
	if err := validateFlowKey(k); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	fl := f.flows[k]
	if fl == nil {
		return fmt.Errorf("%w: flow %v", ErrNotFound, k)
	}
	if st := f.services[k.Service()]; st != nil && st.has(fl.server) {
		f.outLocked(st, fl)
	}
	delete(f.flows, k)
	return nil
}

// outLocked takes a flow that user space removes or replaces out of its
// server's counts, as the kernel's count_out.
func (f *Fake) outLocked(st *fakeService, fl *fakeFlow) {
	switch {
	case fl.closing:
	case fl.halfOpen:
		fl.server.halfOpen--
	default:
		st.countActive(fl.server, -1)
	}
}

// Close implements Executor: it detaches from every interface, and every
// later call, Close included, fails with ErrClosed.
func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	f.closed = true
	clear(f.attached)
	if f.eventsCancel != nil {
		f.eventsCancel()
	}
	return nil
}
