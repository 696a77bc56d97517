package executor

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/nd-dispatcher/nd/internal/maglev"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// Flag bits of struct backend, svc_info and flow_val (bpf/types.h).
const (
	beActive   = 1 << 0
	beLocal    = 1 << 1
	beQuiesced = 1 << 2
	beP2C      = 1 << 3
	beHeld     = 1 << 4

	svcAffinity = 1 << 0
	svcP2C      = 1 << 1
	svcDelay    = 1 << 2

	svcSlotUsed     = 1 << 0
	svcSlotOverflow = 1 << 1

	flowValid     = 1 << 0
	flowClosing   = 1 << 1
	flowHalfOpen  = 1 << 3
	flowOnce      = 1 << 4
	flowFlagsMask = 0xff

	ringEmpty = 0xffff

	afInet  = 4
	afInet6 = 6
)

// Indexes of the stats_global map (enum global_counter in bpf/types.h).
const (
	gPassed = iota
	gMalformed
	gNotIP
	gEvicted
	gFlowBusy
	gEventsLost
	gOtherHost
	gHalfOpenEvicted
	gOpenerUnrecorded
	gStrayUnrecorded
	gMax
)

// maxIfindex bounds the interface indexes whose MAC the data plane checks
// (MAX_IFINDEX in bpf/types.h).
const maxIfindex = 65536

// Config sizes the data plane. Zero values take the defaults.
type Config struct {
	// PinPath is a directory on a bpffs where maps and links are pinned so
	// that the data plane outlives the process and a restarted daemon takes
	// it over with every established flow. Empty: nothing is pinned and
	// Close tears the data plane down.
	PinPath string
	// MaxFlows sizes the connection table (four-way buckets). Default 1,048,576.
	MaxFlows uint32
	// MaxServers bounds port server instances over all services. Default 4,096.
	MaxServers uint32
	// MaxServices bounds VIP:port services. Default 1,024.
	MaxServices uint32
	// MaxVIPs bounds distinct VIP addresses. Default 1,024.
	MaxVIPs uint32
	// MaxAffinity sizes the client affinity table (LRU), and the table of
	// choices pending a handshake alike. Default 65,536.
	MaxAffinity uint32
	// RingSize is each service's Maglev table size, a prime. Default 65,537.
	RingSize uint32
	// IdleTimeout forgets established flows idle this long. Default 300 s.
	IdleTimeout time.Duration
	// HalfOpenTimeout forgets half-open flows (a SYN, no ACK yet) and
	// closing ones this long after their last packet, and is how long
	// the table counts as under pressure after a sign of it. Default
	// 10 s; at most IdleTimeout.
	HalfOpenTimeout time.Duration
	// ExpireNodestConn dispatches anew, on its next packet, an established
	// flow whose server has weight 0 (taken out by an advisor or an agent,
	// or quiesced), as IPVS's expire_nodest_conn: its client then meets a
	// live server's RST at once instead of timing out against a dead one.
	// Off by default, since it also ends a quiesced server's flows.
	ExpireNodestConn bool
	// HashSeed seeds the flow hash; dispatchers that back each other up
	// must share it. Default 0.
	HashSeed uint32
	// FlowEventsRing sizes the ring buffer through which the data plane
	// reports new flows and closes (FlowEvents), in bytes: a power of two,
	// at least a page. Each report takes 88 bytes. Default 1 MiB.
	FlowEventsRing uint32
	// Logger receives attach and recovery messages. Default slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults documented on Config.
func DefaultConfig() Config {
	return Config{
		MaxFlows:    nd.DefaultMaxFlows,
		MaxServers:  nd.DefaultMaxServers,
		MaxServices: nd.DefaultMaxServices,
		MaxVIPs:     nd.DefaultMaxVIPs,
		MaxAffinity: nd.DefaultMaxAffinity,
		RingSize:    maglev.DefaultSize,
		IdleTimeout: nd.DefaultIdleTimeout,

		HalfOpenTimeout: nd.DefaultHalfOpenTimeout,
		FlowEventsRing:  1 << 20,
	}
}

func (c *Config) fill() error {
	d := DefaultConfig()
	if c.MaxFlows == 0 {
		c.MaxFlows = d.MaxFlows
	}
	if c.MaxServers == 0 {
		c.MaxServers = d.MaxServers
	}
	if c.MaxServices == 0 {
		c.MaxServices = d.MaxServices
	}
	if c.MaxVIPs == 0 {
		c.MaxVIPs = d.MaxVIPs
	}
	if c.MaxAffinity == 0 {
		c.MaxAffinity = d.MaxAffinity
	}
	if c.RingSize == 0 {
		c.RingSize = d.RingSize
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = d.IdleTimeout
	}
	if c.FlowEventsRing == 0 {
		c.FlowEventsRing = d.FlowEventsRing
	}
	if c.HalfOpenTimeout == 0 {
		c.HalfOpenTimeout = min(d.HalfOpenTimeout, c.IdleTimeout)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if !maglev.IsPrime(c.RingSize) {
		return fmt.Errorf("%w: ring size %d is not prime", ErrInvalid, c.RingSize)
	}
	if c.MaxServers >= ringEmpty {
		return fmt.Errorf("%w: max servers %d: rings hold 16-bit server slots, at most %d", ErrInvalid, c.MaxServers, ringEmpty-1)
	}
	if r := c.FlowEventsRing; r&(r-1) != 0 || r < uint32(os.Getpagesize()) {
		return fmt.Errorf("%w: flow events ring of %d bytes: want a power of two of at least %d", ErrInvalid, r, os.Getpagesize())
	}
	if c.IdleTimeout < time.Second {
		return fmt.Errorf("%w: idle timeout %v is under a second", ErrInvalid, c.IdleTimeout)
	}
	if c.HalfOpenTimeout < time.Second || c.HalfOpenTimeout > c.IdleTimeout {
		return fmt.Errorf("%w: half-open timeout %v: want from a second to the idle timeout (%v)", ErrInvalid, c.HalfOpenTimeout, c.IdleTimeout)
	}
	return nil
}

// flowWays is FLOW_WAYS: the connection table's bucket associativity.
const flowWays = 4

// flowBuckets sizes the connection table: MaxFlows ways, rounded up to
// whole buckets.
func (c Config) flowBuckets() uint32 {
	return (c.MaxFlows + flowWays - 1) / flowWays
}

// BPF is the kernel implementation of Executor. It must be used from the
// network namespace of the interfaces it serves: interface indexes, attach and
// the redirect map all resolve in the caller's namespace.
type BPF struct {
	cfg  Config
	log  *slog.Logger
	ncpu int

	mu        sync.Mutex
	objs      dispatchObjects
	innerSpec *ebpf.MapSpec
	links     map[int]link.Link
	ifMACs    map[int]net.HardwareAddr
	txPorts   map[int]bool

	sel map[uint32]uint32 // copy of each server slot in use (backend_sel)
	// retired tracks copies packets may still read (grace periods).
	retired retired

	services map[ServiceKey]*serviceState
	vips     map[netip.Addr]*vipState
	svcIDs   *idPool
	beIDs    *idPool
	vipIDs   *idPool
	gens     map[uint32]uint32 // last generation handed out per backend slot

	// events is the FlowEvents subscription, nil when there is none.
	events *subscription

	// pinLock holds the pin path for this process (lockPinPath).
	pinLock *os.File
}

type serviceState struct {
	id     uint32
	sticky time.Duration
	sched  Scheduler
	// msel is the half of svc_members that packets read (members_sel).
	msel     uint32
	flowTime time.Duration
	servers  map[netip.Addr]*backendState
	// retired keeps the packets and bytes of servers that left, so that the
	// service's totals, which are its servers' sums, never go back.
	retired ServerStats
}

type backendState struct {
	id  uint32
	gen uint32
	srv Server
}

type vipState struct {
	id   uint32
	refs int
}

var _ Executor = (*BPF)(nil)

// New loads the data plane, or takes over the pinned one under cfg.PinPath
// together with its services, servers and flows.
func New(cfg Config) (ret *BPF, err error) {
	var pinLock *os.File
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	if err := checkCPU(runtime.GOARCH); err != nil {
		return nil, err
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count cpus: %w", err)
	}
	spec, err := loadDispatch()
	if err != nil {
		return nil, fmt.Errorf("load dispatch spec: %w", err)
	}
	sizes := map[string]uint32{
		"vips": cfg.MaxVIPs, "stats_vip": cfg.MaxVIPs,
		"services": cfg.MaxServices, "stats_service": cfg.MaxServices, "rings": cfg.MaxServices,
		"backends": 2 * cfg.MaxServers, "backend_sel": cfg.MaxServers, "stats_backend": cfg.MaxServers,
		"server_active": cfg.MaxServers, "server_halfopen": cfg.MaxServers, "flow_events": cfg.FlowEventsRing,
		"conns": cfg.flowBuckets(), "affinity": cfg.MaxAffinity, "affinity_pending": cfg.MaxAffinity,
		"svc_index": 2 * cfg.svcIndexSlots(), "vip_index": 4 * cfg.MaxVIPs,
		"svc_members": 2 * cfg.MaxServices, "members_sel": cfg.MaxServices, "server_picks": cfg.MaxServers,
	}
	for name, n := range sizes {
		spec.Maps[name].MaxEntries = n
	}
	// A ring is one value of RingSize 16-bit slots; its size is set here,
	// so the compiled-in BTF type (sized for the default) is dropped.
	inner := spec.Maps["rings"].InnerMap
	inner.MaxEntries = 1
	inner.ValueSize = 2 * cfg.RingSize
	inner.Key, inner.Value = nil, nil
	jiffy, err := jiffyNanos()
	if err != nil {
		return nil, err
	}
	consts := map[string]any{
		"jiffy_ns":            jiffy,
		"ring_size":           cfg.RingSize,
		"hash_seed":           cfg.HashSeed,
		"idle_timeout_ns":     uint64(cfg.IdleTimeout.Nanoseconds()),
		"halfopen_timeout_ns": uint64(cfg.HalfOpenTimeout.Nanoseconds()),
		"expire_nodest":       b2u(cfg.ExpireNodestConn),
		"flow_buckets":        cfg.flowBuckets(),
		"svc_index_slots":     cfg.svcIndexSlots(),
		"vip_index_slots":     4 * cfg.MaxVIPs,
	}
	for name, v := range consts {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}

	opts := &ebpf.CollectionOptions{}
	if cfg.PinPath != "" {
		if err := prepareBPFFS(cfg.PinPath); err != nil {
			return nil, err
		}
		lock, err := lockPinPath(cfg.PinPath)
		if err != nil {
			return nil, err
		}
		pinLock = lock
		defer func() {
			if pinLock != nil && ret == nil {
				pinLock.Close()
			}
		}()
		for name, m := range spec.Maps {
			if !strings.HasPrefix(name, ".") { // .rodata holds this load's constants
				m.Pinning = ebpf.PinByName
			}
		}
		opts.Maps.PinPath = cfg.PinPath
	}

	b := &BPF{
		cfg:       cfg,
		log:       cfg.Logger,
		ncpu:      ncpu,
		innerSpec: spec.Maps["rings"].InnerMap.Copy(),
		links:     map[int]link.Link{},
		ifMACs:    map[int]net.HardwareAddr{},
		txPorts:   map[int]bool{},
		services:  map[ServiceKey]*serviceState{},
		vips:      map[netip.Addr]*vipState{},
		svcIDs:    newIDPool(cfg.MaxServices),
		beIDs:     newIDPool(cfg.MaxServers),
		vipIDs:    newIDPool(cfg.MaxVIPs),
		gens:      map[uint32]uint32{},
		sel:       map[uint32]uint32{},
		retired:   retired{slots: map[uint32]bool{}},
		pinLock:   pinLock,
	}
	if err := spec.LoadAndAssign(&b.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load dispatcher: %+v", ve)
		}
		if cfg.PinPath != "" {
			return nil, fmt.Errorf("load dispatcher over the maps pinned in %s (a data plane of other sizes must be removed first): %w", cfg.PinPath, err)
		}
		return nil, fmt.Errorf("load dispatcher: %w", err)
	}
	if err := checkDataPlaneID(b.objs.DataPlaneId, cfg); err != nil {
		b.objs.Close()
		return nil, err
	}
	if err := b.recover(); err != nil {
		b.objs.Close()
		return nil, fmt.Errorf("recover pinned state: %w", err)
	}
	// A process that died while subscribed left reporting on: nobody
	// reads the ring now.
	if err := b.objs.FlowEventsOn.Update(uint32(0), uint32(0), ebpf.UpdateAny); err != nil {
		b.objs.Close()
		return nil, fmt.Errorf("turn flow events off: %w", err)
	}
	if err := b.writeVIPFilter(); err != nil {
		b.objs.Close()
		return nil, err
	}
	return b, nil
}

// recover rebuilds the Go view of services, servers and VIPs from pinned
// maps, keeping every slot number so that established flows stay valid.
func (b *BPF) recover() error {
	var (
		vk dispatchVipKey
		vi dispatchVipInfo
	)
	vipByID := map[uint32]netip.Addr{}
	it := b.objs.Vips.Iterate()
	for it.Next(&vk, &vi) {
		a := addrFrom(vk.Addr.Addr, vk.Family)
		b.vips[a] = &vipState{id: vi.VipId}
		b.vipIDs.take(vi.VipId)
		vipByID[vi.VipId] = a
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate vips: %w", err)
	}

	var (
		sk dispatchSvcKey
		si dispatchSvcInfo
	)
	byID := map[uint32]*serviceState{}
	it = b.objs.Services.Iterate()
	for it.Next(&sk, &si) {
		key := ServiceKey{VIP: addrFrom(sk.Addr.Addr, sk.Family), Port: ntohs(sk.Port), Proto: Proto(sk.Proto)}
		st := &serviceState{id: si.SvcId, servers: map[netip.Addr]*backendState{}}
		if si.Flags&svcAffinity != 0 {
			st.sticky = time.Duration(si.StickySecs) * time.Second
		}
		switch {
		case si.Flags&svcDelay != 0:
			st.sched = SchedulerDelay
		case si.Flags&svcP2C != 0:
			st.sched = SchedulerP2C
		}
		if err := b.objs.MembersSel.Lookup(si.SvcId, &st.msel); err != nil {
			return fmt.Errorf("read member list half of %v: %w", key, err)
		}
		st.msel &= 1
		b.services[key] = st
		byID[si.SvcId] = st
		b.svcIDs.take(si.SvcId)
		if v := b.vips[key.VIP]; v != nil {
			v.refs++
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate services: %w", err)
	}

	for id := range b.cfg.MaxServers {
		var sel uint32
		if err := b.objs.BackendSel.Lookup(id, &sel); err != nil {
			return fmt.Errorf("read slot %d: %w", id, err)
		}
		sel &= 1
		var be dispatchBackend
		if err := b.objs.Backends.Lookup(2*id+sel, &be); err != nil {
			return fmt.Errorf("read slot %d: %w", id, err)
		}
		b.sel[id] = sel
		b.gens[id] = be.Gen
		st := byID[be.SvcId]
		if be.Flags&beActive == 0 || st == nil {
			continue
		}
		srv := Server{
			Addr:    addrFrom(be.Addr.Addr, be.Family),
			Local:   be.Flags&beLocal != 0,
			Held:    be.Flags&beHeld != 0,
			Weight:  be.Weight,
			Ifindex: int(be.Ifindex),
		}
		if !srv.Local {
			srv.MAC = net.HardwareAddr(slices.Clone(be.DstMac[:]))
			b.ifMACs[srv.Ifindex] = net.HardwareAddr(slices.Clone(be.SrcMac[:]))
			b.txPorts[srv.Ifindex] = true
		}
		st.servers[srv.Addr] = &backendState{id: id, gen: be.Gen, srv: srv}
		b.beIDs.take(id)
	}
	// A process killed while it changed a service may have left its tables
	// half written: servers recorded but the ring not yet swapped to
	// include them, or the service index not rebuilt. Rebuilding every
	// ring from the servers just recovered makes the kernel use what
	// Services reports; a ring that was whole comes out the same (the
	// Maglev table depends only on its members), so no flow moves.
	for key, st := range b.services {
		if err := b.installRing(st.id, st.servers); err != nil {
			return fmt.Errorf("rebuild the ring of %v: %w", key, err)
		}
	}
	if n := len(b.services); n > 0 {
		// The process before may have flipped copies a moment ago.
		b.retired.grace()
		if err := b.writeServiceIndex(); err != nil {
			return err
		}
		b.log.Info("took over pinned data plane", "services", n, "pin_path", b.cfg.PinPath)
	}
	return nil
}

// Close implements Executor. With a pin path the data plane keeps running
// (maps and attachments stay pinned) for the next process to take over;
// without one, closing detaches everything.
func (b *BPF) Close() error {
	b.stopEvents()
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for ifindex, l := range b.links {
		errs = append(errs, l.Close())
		delete(b.links, ifindex)
	}
	errs = append(errs, b.objs.Close())
	if b.pinLock != nil {
		errs = append(errs, b.pinLock.Close())
		b.pinLock = nil
	}
	return errors.Join(errs...)
}

// Destroy detaches from every interface, removes the pinned maps and closes:
// the data plane is gone, with its flows.
func (b *BPF) Destroy() error {
	b.mu.Lock()
	var errs []error
	for ifindex, l := range b.links {
		if b.cfg.PinPath != "" {
			errs = append(errs, l.Unpin())
		}
		errs = append(errs, l.Close())
		delete(b.links, ifindex)
	}
	if b.cfg.PinPath != "" {
		for _, m := range b.mapsByName() {
			errs = append(errs, m.Unpin())
		}
	}
	b.mu.Unlock()
	errs = append(errs, b.Close())
	if b.cfg.PinPath != "" {
		if err := os.Remove(b.cfg.PinPath); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
