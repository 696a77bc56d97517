package executor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/nd-dispatcher/nd/internal/maglev"
)

// Flag bits of struct backend, svc_info and flow_val (bpf/types.h).
const (
	beActive   = 1 << 0
	beLocal    = 1 << 1
	beQuiesced = 1 << 2
	beP2C      = 1 << 3

	svcAffinity = 1 << 0
	svcP2C      = 1 << 1
	svcDelay    = 1 << 2

	svcSlotUsed     = 1 << 0
	svcSlotOverflow = 1 << 1

	flowValid     = 1 << 0
	flowClosing   = 1 << 1
	flowHalfOpen  = 1 << 3
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
	// MaxFlows sizes the connection table (LRU). Default 1,048,576.
	MaxFlows uint32
	// MaxServers bounds port server instances over all services. Default 4,096.
	MaxServers uint32
	// MaxServices bounds VIP:port services. Default 1,024.
	MaxServices uint32
	// MaxVIPs bounds distinct VIP addresses. Default 1,024.
	MaxVIPs uint32
	// MaxAffinity sizes the client affinity table (LRU). Default 65,536.
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
		MaxFlows:    1 << 20,
		MaxServers:  4096,
		MaxServices: 1024,
		MaxVIPs:     1024,
		MaxAffinity: 1 << 16,
		RingSize:    maglev.DefaultSize,
		IdleTimeout: 300 * time.Second,

		HalfOpenTimeout: 10 * time.Second,
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
		"conns": cfg.flowBuckets(), "affinity": cfg.MaxAffinity,
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

// Attach implements Executor. With a pin path, an interface the data plane is
// already attached to (by an earlier process) gets the new program in place,
// without a moment of detachment.
func (b *BPF) Attach(ifindex int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.links[ifindex]; ok {
		return nil
	}
	ifi, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("attach xdp to ifindex %d: %w", ifindex, err)
	}
	pin := ""
	if b.cfg.PinPath != "" {
		pin = filepath.Join(b.cfg.PinPath, fmt.Sprintf("link_%d", ifindex))
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if err := l.Update(b.objs.NdDispatch); err != nil {
				l.Close()
				return fmt.Errorf("replace xdp program on %s: %w", ifi.Name, err)
			}
			b.links[ifindex] = l
			b.log.Info("took over xdp attachment", "interface", ifi.Name)
			return errors.Join(b.setIngressMAC(ifi), b.addTxPort(ifindex))
		}
	}
	mode := "native"
	l, err := link.AttachXDP(link.XDPOptions{Program: b.objs.NdDispatch, Interface: ifindex, Flags: link.XDPDriverMode})
	if err != nil {
		mode = "generic"
		l, err = link.AttachXDP(link.XDPOptions{Program: b.objs.NdDispatch, Interface: ifindex, Flags: link.XDPGenericMode})
	}
	if err != nil {
		return fmt.Errorf("attach xdp to %s: %w", ifi.Name, err)
	}
	if pin != "" {
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin xdp link of %s: %w", ifi.Name, err)
		}
	}
	b.links[ifindex] = l
	b.log.Info("attached xdp", "interface", ifi.Name, "mode", mode)
	return errors.Join(b.setIngressMAC(ifi), b.addTxPort(ifindex))
}

// setIngressMAC tells the program the interface's own MAC, so that it
// leaves frames for other hosts' MACs to the stack (frame_for_us in
// bpf/dispatch.c). An interface without an Ethernet address, or beyond
// maxIfindex, is not checked, and says so.
func (b *BPF) setIngressMAC(ifi *net.Interface) error {
	if len(ifi.HardwareAddr) != 6 || ifi.Index >= maxIfindex {
		b.log.Warn("frames on this interface are dispatched whatever their destination MAC",
			"interface", ifi.Name, "ifindex", ifi.Index, "mac", ifi.HardwareAddr.String())
		return nil
	}
	v := dispatchIfMac{Known: 1}
	copy(v.Addr[:], ifi.HardwareAddr)
	if err := b.objs.IfMacs.Update(uint32(ifi.Index), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("record the MAC of %s: %w", ifi.Name, err)
	}
	return nil
}

// Detach implements Executor.
func (b *BPF) Detach(ifindex int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.links[ifindex]
	if !ok {
		return fmt.Errorf("%w: not attached to ifindex %d", ErrNotFound, ifindex)
	}
	delete(b.links, ifindex)
	if b.cfg.PinPath != "" {
		if err := l.Unpin(); err != nil {
			l.Close()
			return fmt.Errorf("unpin xdp link of ifindex %d: %w", ifindex, err)
		}
	}
	err := l.Close()
	if ifindex < maxIfindex {
		// The index may come back as another interface with another MAC.
		if merr := b.objs.IfMacs.Update(uint32(ifindex), &dispatchIfMac{}, ebpf.UpdateAny); merr != nil {
			err = errors.Join(err, fmt.Errorf("forget the MAC of ifindex %d: %w", ifindex, merr))
		}
	}
	return err
}

func (b *BPF) addTxPort(ifindex int) error {
	if b.txPorts[ifindex] {
		return nil
	}
	if err := b.objs.TxPorts.Update(uint32(ifindex), uint32(ifindex), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("add ifindex %d to tx_ports: %w", ifindex, err)
	}
	b.txPorts[ifindex] = true
	return nil
}

func (b *BPF) ifaceMAC(ifindex int) (net.HardwareAddr, error) {
	if mac, ok := b.ifMACs[ifindex]; ok {
		return mac, nil
	}
	ifi, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("egress interface %d: %w", ifindex, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("%w: egress interface %s has no Ethernet address", ErrInvalid, ifi.Name)
	}
	b.ifMACs[ifindex] = ifi.HardwareAddr
	return ifi.HardwareAddr, nil
}

// UpsertService implements Executor. The order of writes is what makes it
// atomic for packets: new servers first, then the ring in one swap, then the
// service entry, and only then are removed servers retired.
func (b *BPF) UpsertService(s Service) error {
	if err := validateService(s); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.upsertLocked(s)
}

func (b *BPF) upsertLocked(s Service) error {
	st := b.services[s.Key]
	created := st == nil
	if created {
		if err := b.refVIP(s.Key.VIP); err != nil {
			return err
		}
		id, ok := b.svcIDs.get()
		if !ok {
			b.unrefVIP(s.Key.VIP)
			return fmt.Errorf("%w: no room for service %v (max %d)", ErrFull, s.Key, b.cfg.MaxServices)
		}
		if err := b.objs.StatsService.Update(id, make([]dispatchSvcStats, b.ncpu), ebpf.UpdateAny); err != nil {
			b.svcIDs.put(id)
			b.unrefVIP(s.Key.VIP)
			return fmt.Errorf("reset counters of %v: %w", s.Key, err)
		}
		st = &serviceState{id: id, servers: map[netip.Addr]*backendState{}}
	}

	next, fresh, err := b.stageServers(s.Key, st, s.Servers, s.Scheduler)
	if err == nil {
		err = b.installRing(st.id, next)
	}
	delay := false
	if err == nil && s.Scheduler == SchedulerDelay {
		delay, err = b.writeMembers(st, next, s.FlowTime)
	}
	if err == nil {
		err = b.writeServiceInfo(s.Key, st.id, s.StickyTime, s.Scheduler, delay)
	}
	if err != nil {
		for _, be := range fresh {
			b.retireBackend(be)
		}
		if created {
			b.svcIDs.put(st.id)
			b.unrefVIP(s.Key.VIP)
		}
		return err
	}
	for addr, be := range st.servers {
		if _, kept := next[addr]; !kept {
			if s, err := b.backendStats(be.id); err == nil {
				st.retired.Packets += s.Packets
				st.retired.Bytes += s.Bytes
			}
			b.retireBackend(be)
		}
	}
	st.servers = next
	st.sticky = s.StickyTime
	st.sched = s.Scheduler
	st.flowTime = s.FlowTime
	if created {
		b.services[s.Key] = st
	}
	return nil
}

// stageServers writes the backend entries of the new server list: new
// servers get fresh slots (and zeroed counters), changed ones are rewritten
// in the spare copy of the double-buffered backends array (writeBackend).
// Returns the new server set and the slots it allocated, to undo on failure.
//
// A service turning p2c rewrites every server, to set BE_F_P2C, after
// seeding its open-flow count from the per-CPU counters' estimate (opened
// minus closed or expired), which the data plane keeps for every service:
// the scheduler starts from a fair figure, and ReconcileActive refines it.
func (b *BPF) stageServers(key ServiceKey, st *serviceState, servers []Server, sched Scheduler) (map[netip.Addr]*backendState, []*backendState, error) {
	next := make(map[netip.Addr]*backendState, len(servers))
	var fresh []*backendState
	fail := func(err error) (map[netip.Addr]*backendState, []*backendState, error) {
		for _, be := range fresh {
			b.retireBackend(be)
		}
		return nil, nil, err
	}
	for _, srv := range servers {
		srv.MAC = slices.Clone(srv.MAC)
		old := st.servers[srv.Addr]
		if old != nil && sameServer(old.srv, srv) && st.sched == sched {
			// The delay factor is not in the server's entry: only the
			// member list, rewritten on every update, carries it.
			old.srv.Delay = srv.Delay
			next[srv.Addr] = old
			continue
		}
		be := &backendState{srv: srv}
		if old != nil {
			be.id, be.gen = old.id, old.gen
			if sched.CountsActive() && !st.sched.CountsActive() {
				est, err := b.backendStats(be.id)
				if err == nil {
					err = b.objs.ServerActive.Update(be.id, int64(est.Active()), ebpf.UpdateAny)
				}
				if err != nil {
					return fail(fmt.Errorf("seed open-flow count of server %v: %w", srv.Addr, err))
				}
			}
		} else {
			id, ok := b.beIDs.get()
			if !ok {
				return fail(fmt.Errorf("%w: no room for server %v of %v (max %d servers)", ErrFull, srv.Addr, key, b.cfg.MaxServers))
			}
			be.id, be.gen = id, b.gens[id]+1
			b.gens[id] = be.gen
			fresh = append(fresh, be)
			if err := b.objs.StatsBackend.Update(id, make([]dispatchBackendStats, b.ncpu), ebpf.UpdateAny); err != nil {
				return fail(fmt.Errorf("reset counters of server %v: %w", srv.Addr, err))
			}
			if err := b.objs.ServerActive.Update(id, int64(0), ebpf.UpdateAny); err != nil {
				return fail(fmt.Errorf("reset open-flow count of server %v: %w", srv.Addr, err))
			}
			if err := b.objs.ServerPicks.Update(id, dispatchPickWindow{}, ebpf.UpdateAny); err != nil {
				return fail(fmt.Errorf("reset new-flow window of server %v: %w", srv.Addr, err))
			}
			if err := b.objs.ServerHalfopen.Update(id, make([]int64, b.ncpu), ebpf.UpdateAny); err != nil {
				return fail(fmt.Errorf("reset half-open count of server %v: %w", srv.Addr, err))
			}
		}
		v, err := b.backendValue(st.id, be, sched)
		if err != nil {
			return fail(fmt.Errorf("server %v of %v: %w", srv.Addr, key, err))
		}
		if !srv.Local {
			if err := b.addTxPort(srv.Ifindex); err != nil {
				return fail(err)
			}
		}
		if err := b.writeBackend(be.id, v); err != nil {
			return fail(fmt.Errorf("write server %v of %v: %w", srv.Addr, key, err))
		}
		next[srv.Addr] = be
	}
	return next, fresh, nil
}

func sameServer(a, b Server) bool {
	return a.Addr == b.Addr && a.Local == b.Local && a.Weight == b.Weight &&
		a.Ifindex == b.Ifindex && slices.Equal(a.MAC, b.MAC)
}

func (b *BPF) backendValue(svcID uint32, be *backendState, sched Scheduler) (dispatchBackend, error) {
	v := dispatchBackend{SvcId: svcID, Gen: be.gen, Flags: beActive, Weight: be.srv.Weight}
	v.Addr.Addr, v.Family = addrWords(be.srv.Addr)
	if be.srv.Weight == 0 {
		v.Flags |= beQuiesced
	}
	if sched.CountsActive() {
		v.Flags |= beP2C
	}
	if be.srv.Local {
		v.Flags |= beLocal
		return v, nil
	}
	src, err := b.ifaceMAC(be.srv.Ifindex)
	if err != nil {
		return v, err
	}
	copy(v.DstMac[:], be.srv.MAC)
	copy(v.SrcMac[:], src)
	v.Ifindex = uint32(be.srv.Ifindex)
	return v, nil
}

// retireBackend marks a slot unused but keeps it in the map with its
// generation, so that the next server to take the slot gets a new one and
// flows that named the old server are dispatched anew.
func (b *BPF) retireBackend(be *backendState) {
	v := dispatchBackend{Gen: be.gen}
	if err := b.writeBackend(be.id, v); err != nil {
		b.log.Error("retire server slot", "slot", be.id, "server", be.srv.Addr, "err", err)
	}
	b.beIDs.put(be.id)
}

// writeBackend rewrites the copy of slot id that packets are not reading,
// then points them at it. A copy retired by the last flip is rewritten only
// after a grace period: a packet may have read the pointer to it just
// before the flip.
func (b *BPF) writeBackend(id uint32, v dispatchBackend) error {
	next := b.sel[id] ^ 1
	b.retired.beforeSlotWrite(id)
	if err := b.objs.Backends.Update(2*id+next, v, ebpf.UpdateAny); err != nil {
		return err
	}
	if err := b.objs.BackendSel.Update(id, next, ebpf.UpdateAny); err != nil {
		return err
	}
	b.sel[id] = next
	b.retired.slots[id] = true
	return nil
}

// writeVIPFilter rewrites vip_bloom from the VIP set. Readers may see a mix
// of old and new words for a moment; either way a packet is at worst sent
// down the slower path that looks the VIP up, or passed as it was before.
func (b *BPF) writeVIPFilter() error {
	var f dispatchVipFilter
	for a := range b.vips {
		w, fam := addrWords(a)
		h := addrHash(w, fam)
		f.Bits[(h>>6)%uint32(len(f.Bits))] |= 1 << (h & 63)
	}
	if err := b.objs.VipBloom.Update(uint32(0), f, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write VIP filter: %w", err)
	}
	// The index: each VIP in the slot its address hash scales to, the
	// first in address order winning a slot two VIPs share.
	n := 4 * b.cfg.MaxVIPs
	slots := make([]dispatchVipSlot, n)
	addrs := slices.SortedFunc(maps.Keys(b.vips), netip.Addr.Compare)
	for _, a := range addrs {
		w, fam := addrWords(a)
		s := &slots[scale(addrHash(w, fam), n)]
		if s.Used == 0 {
			*s = dispatchVipSlot{Family: fam, Used: 1, VipId: b.vips[a].id}
			s.Addr.Addr = w
		}
	}
	idx := make([]uint32, n)
	for i := range idx {
		idx[i] = uint32(i)
	}
	if _, err := b.objs.VipIndex.BatchUpdate(idx, slots, nil); err != nil {
		return fmt.Errorf("write VIP index: %w", err)
	}
	return nil
}

// installRing computes the service's Maglev table into a fresh inner map and
// swaps it in with a single update of the outer map.
func (b *BPF) installRing(svcID uint32, servers map[netip.Addr]*backendState) error {
	var members []maglev.Backend
	for addr, be := range servers {
		if be.srv.Weight > 0 {
			members = append(members, maglev.Backend{Key: addr.String(), ID: be.id, Weight: be.srv.Weight})
		}
	}
	slots := make([]byte, 2*b.cfg.RingSize)
	if len(members) == 0 {
		for i := range b.cfg.RingSize {
			binary.NativeEndian.PutUint16(slots[2*i:], ringEmpty)
		}
	} else {
		table, err := maglev.Build(b.cfg.RingSize, members)
		if err != nil {
			return fmt.Errorf("build maglev table: %w", err)
		}
		for i, id := range table {
			binary.NativeEndian.PutUint16(slots[2*i:], uint16(id))
		}
	}
	inner, err := ebpf.NewMap(b.innerSpec)
	if err != nil {
		return fmt.Errorf("create ring: %w", err)
	}
	defer inner.Close()
	if err := inner.Update(uint32(0), slots, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("fill ring: %w", err)
	}
	if err := b.objs.Rings.Update(svcID, inner, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("swap ring: %w", err)
	}
	return nil
}

// writeServiceInfo writes the service entry. delay says that the service's
// member list is in place for the delay scheduler; a delay service without
// one (more members than the data plane scores) is scheduled as p2c.
func (b *BPF) writeServiceInfo(key ServiceKey, id uint32, sticky time.Duration, sched Scheduler, delay bool) error {
	k := svcKey(key)
	v := dispatchSvcInfo{SvcId: id}
	if sticky > 0 {
		v.Flags |= svcAffinity
		v.StickySecs = uint32(sticky / time.Second)
	}
	switch {
	case sched == SchedulerDelay && delay:
		v.Flags |= svcDelay
	case sched.CountsActive():
		v.Flags |= svcP2C
	}
	var old dispatchSvcInfo
	if err := b.objs.Services.Lookup(k, &old); err == nil && old == v {
		return nil
	}
	if err := b.objs.Services.Update(k, v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write service %v: %w", key, err)
	}
	return b.writeServiceIndex()
}

// memberCostShift is MEMBER_COST_SHIFT: member costs are in 1/4096ths.
const memberCostShift = 12

// memberCosts are a server's costs in the delay scheduler's score, held x
// perFlow + base (struct member): its delay factor (0 reads as 1) per flow
// times the service's mean weight over its weight, and its delay factor.
// Bounded so that a score cannot overflow: factors to 2^20, weight ratios
// to 2^20 in all.
func memberCosts(srv Server, meanWeight float64) (perFlow, base uint32) {
	d := srv.Delay
	if d < 1 {
		d = 1
	}
	d = min(d, 1<<20)
	unit := float64(1 << memberCostShift)
	per := d * meanWeight / float64(max(srv.Weight, 1)) * unit
	return uint32(min(max(per, 1), math.MaxUint32)), uint32(min(d*unit, math.MaxUint32))
}

// meanWeight is the mean weight of the servers taking new flows, 1 if none.
func meanWeight(servers []Server) float64 {
	var sum float64
	n := 0
	for _, s := range servers {
		if s.Weight > 0 {
			sum += float64(s.Weight)
			n++
		}
	}
	if n == 0 {
		return 1
	}
	return sum / float64(n)
}

// memberCharge is a typical flow's time over the data plane's pick window
// (PICK_WINDOW_SHIFT), in 1/65536ths: the flows one recent new flow counts
// for when the delay scheduler charges a server by its new flows.
func memberCharge(flowTime time.Duration) uint32 {
	const windowShift = 28
	return uint32(min(max(int64(flowTime), 0)>>(windowShift-16), math.MaxUint32))
}

// writeMembers rewrites the half of the service's member list that packets
// are not reading with the servers that may take new flows and their
// costs, then points packets at it. It reports false, writing nothing, when
// there are more than MaxMembers: the service is then scheduled as p2c.
func (b *BPF) writeMembers(st *serviceState, servers map[netip.Addr]*backendState, flowTime time.Duration) (bool, error) {
	ml := dispatchMemberList{Charge: memberCharge(flowTime)}
	addrs := slices.SortedFunc(maps.Keys(servers), netip.Addr.Compare)
	var srvs []Server
	for _, addr := range addrs {
		srvs = append(srvs, servers[addr].srv)
	}
	mean := meanWeight(srvs)
	for _, addr := range addrs {
		be := servers[addr]
		if be.srv.Weight == 0 {
			continue
		}
		if ml.N == MaxMembers {
			return false, nil
		}
		per, base := memberCosts(be.srv, mean)
		ml.M[ml.N] = dispatchMember{Id: uint16(be.id), PerFlow: per, Base: base}
		ml.N++
	}
	next := st.msel ^ 1
	if err := b.objs.SvcMembers.Update(2*st.id+next, ml, ebpf.UpdateAny); err != nil {
		return false, fmt.Errorf("write member list: %w", err)
	}
	if err := b.objs.MembersSel.Update(st.id, next, ebpf.UpdateAny); err != nil {
		return false, fmt.Errorf("flip member list: %w", err)
	}
	st.msel = next
	return true, nil
}

// svcIndexProbes is SVC_PROBES: how far from its home slot a service may sit.
const svcIndexProbes = 4

// svcIndexSlots sizes each half of svc_index: four slots a service keeps
// probe sequences short.
func (c Config) svcIndexSlots() uint32 { return 4 * c.MaxServices }

// writeServiceIndex rebuilds the half of svc_index that packets are not
// reading from the services hash, then points packets at it.
func (b *BPF) writeServiceIndex() error {
	n := b.cfg.svcIndexSlots()
	slots := make([]dispatchSvcSlot, n)
	var (
		k dispatchSvcKey
		v dispatchSvcInfo
	)
	var keys []dispatchSvcKey
	infos := map[dispatchSvcKey]dispatchSvcInfo{}
	it := b.objs.Services.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
		infos[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read services: %w", err)
	}
	// Place services in a fixed order, so that the index is the same
	// whatever order the hash map lists them in.
	slices.SortFunc(keys, func(a, b dispatchSvcKey) int {
		return bytes.Compare(binaryOf(a), binaryOf(b))
	})
	for _, k := range keys {
		home := scale(svcHash(k), n)
		placed := false
		for i := range uint32(svcIndexProbes) {
			s := &slots[(home+i)%n]
			if s.Flags&svcSlotUsed == 0 {
				*s = dispatchSvcSlot{Key: k, Info: infos[k], Flags: svcSlotUsed | s.Flags&svcSlotOverflow}
				placed = true
				break
			}
		}
		if !placed {
			// Readers probing past these slots must fall back to the hash.
			for i := range uint32(svcIndexProbes) {
				slots[(home+i)%n].Flags |= svcSlotOverflow
			}
		}
	}
	// The filter that lets a packet to an undefined port skip the
	// connection table: a service's bit is set before packets can find
	// the service, and a removed one's cleared only after it is gone
	// from the hash (a stale bit only costs a lookup).
	var f dispatchVipFilter
	for _, k := range keys {
		bit := svcFilterBit(addrHash(k.Addr.Addr, k.Family), k.Port, k.Proto)
		f.Bits[bit>>6] |= 1 << (bit & 63)
	}
	if err := b.objs.SvcBloom.Update(uint32(0), f, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write service filter: %w", err)
	}
	var sel uint32
	if err := b.objs.SvcIndexSel.Lookup(uint32(0), &sel); err != nil {
		return fmt.Errorf("read service index selector: %w", err)
	}
	next := (sel & 1) ^ 1
	b.retired.beforeIndexWrite()
	idx := make([]uint32, n)
	for i := range idx {
		idx[i] = next*n + uint32(i)
	}
	if _, err := b.objs.SvcIndex.BatchUpdate(idx, slots, nil); err != nil {
		return fmt.Errorf("write service index: %w", err)
	}
	if err := b.objs.SvcIndexSel.Update(uint32(0), next, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("flip service index: %w", err)
	}
	b.retired.index = true
	return nil
}

func binaryOf(k dispatchSvcKey) []byte {
	b, _ := binary.Append(nil, binary.NativeEndian, k)
	return b
}

func (b *BPF) refVIP(a netip.Addr) error {
	if v := b.vips[a]; v != nil {
		v.refs++
		return nil
	}
	id, ok := b.vipIDs.get()
	if !ok {
		return fmt.Errorf("%w: no room for VIP %v (max %d)", ErrFull, a, b.cfg.MaxVIPs)
	}
	if err := b.objs.StatsVip.Update(id, make([]dispatchVipStats, b.ncpu), ebpf.UpdateAny); err != nil {
		b.vipIDs.put(id)
		return fmt.Errorf("reset counters of VIP %v: %w", a, err)
	}
	var k dispatchVipKey
	k.Addr.Addr, k.Family = addrWords(a)
	if err := b.objs.Vips.Update(k, dispatchVipInfo{VipId: id}, ebpf.UpdateAny); err != nil {
		b.vipIDs.put(id)
		return fmt.Errorf("add VIP %v: %w", a, err)
	}
	b.vips[a] = &vipState{id: id, refs: 1}
	return b.writeVIPFilter()
}

func (b *BPF) unrefVIP(a netip.Addr) {
	v := b.vips[a]
	if v == nil {
		return
	}
	if v.refs--; v.refs > 0 {
		return
	}
	var k dispatchVipKey
	k.Addr.Addr, k.Family = addrWords(a)
	if err := b.objs.Vips.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		b.log.Error("remove VIP", "vip", a, "err", err)
	}
	delete(b.vips, a)
	b.vipIDs.put(v.id)
	if err := b.writeVIPFilter(); err != nil {
		b.log.Error("remove VIP from filter", "vip", a, "err", err)
	}
}

// DeleteService implements Executor.
func (b *BPF) DeleteService(key ServiceKey) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.services[key]
	if st == nil {
		return fmt.Errorf("%w: service %v", ErrNotFound, key)
	}
	if err := b.objs.Services.Delete(svcKey(key)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete service %v: %w", key, err)
	}
	if err := b.writeServiceIndex(); err != nil {
		return err
	}
	if err := b.objs.Rings.Delete(st.id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		b.log.Error("delete ring", "service", key, "err", err)
	}
	for _, be := range st.servers {
		b.retireBackend(be)
	}
	delete(b.services, key)
	b.svcIDs.put(st.id)
	b.unrefVIP(key.VIP)
	return nil
}

// SetWeights implements Executor.
func (b *BPF) SetWeights(key ServiceKey, weights map[netip.Addr]uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.services[key]
	if st == nil {
		return fmt.Errorf("%w: service %v", ErrNotFound, key)
	}
	s := b.serviceLocked(key, st)
	for addr := range weights {
		if st.servers[addr] == nil {
			return fmt.Errorf("%w: server %v in %v", ErrNotFound, addr, key)
		}
	}
	for i := range s.Servers {
		if w, ok := weights[s.Servers[i].Addr]; ok {
			s.Servers[i].Weight = w
		}
	}
	return b.upsertLocked(s)
}

func (b *BPF) serviceLocked(key ServiceKey, st *serviceState) Service {
	s := Service{Key: key, StickyTime: st.sticky, Scheduler: st.sched, FlowTime: st.flowTime}
	for _, be := range st.servers {
		srv := be.srv
		srv.MAC = slices.Clone(srv.MAC)
		s.Servers = append(s.Servers, srv)
	}
	slices.SortFunc(s.Servers, func(x, y Server) int { return x.Addr.Compare(y.Addr) })
	return s
}

// Services implements Executor.
func (b *BPF) Services() []Service {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Service, 0, len(b.services))
	for key, st := range b.services {
		out = append(out, b.serviceLocked(key, st))
	}
	sortServices(out)
	return out
}

// Stats implements Executor.
func (b *BPF) Stats() (Stats, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := Stats{Services: map[ServiceKey]ServiceStats{}, VIPs: map[netip.Addr]VIPStats{}}
	for key, st := range b.services {
		var per []dispatchSvcStats
		if err := b.objs.StatsService.Lookup(st.id, &per); err != nil {
			return Stats{}, fmt.Errorf("read counters of %v: %w", key, err)
		}
		ss := ServiceStats{Servers: map[netip.Addr]ServerStats{}, Packets: st.retired.Packets, Bytes: st.retired.Bytes}
		for _, c := range per {
			ss.NoServer += c.NoBackend
		}
		for addr, be := range st.servers {
			s, err := b.backendStats(be.id)
			if err != nil {
				return Stats{}, fmt.Errorf("read counters of %v in %v: %w", addr, key, err)
			}
			ss.Servers[addr] = s
			ss.Packets += s.Packets
			ss.Bytes += s.Bytes
		}
		out.Services[key] = ss
	}
	for addr, v := range b.vips {
		var per []dispatchVipStats
		if err := b.objs.StatsVip.Lookup(v.id, &per); err != nil {
			return Stats{}, fmt.Errorf("read counters of VIP %v: %w", addr, err)
		}
		var s VIPStats
		for _, c := range per {
			s.Filtered += c.Filtered
			s.Fragments += c.Fragments
			s.ICMPLocal += c.IcmpLocal
			s.ICMPForwarded += c.IcmpForwarded
		}
		out.VIPs[addr] = s
	}
	var g [gMax]uint64
	for i := range g {
		var per []uint64
		if err := b.objs.StatsGlobal.Lookup(uint32(i), &per); err != nil {
			return Stats{}, fmt.Errorf("read global counters: %w", err)
		}
		for _, c := range per {
			g[i] += c
		}
	}
	out.Global = GlobalStats{Passed: g[gPassed], Malformed: g[gMalformed], NotIP: g[gNotIP],
		FlowsEvicted: g[gEvicted], FlowsUnrecorded: g[gFlowBusy], FlowEventsLost: g[gEventsLost],
		OtherHost: g[gOtherHost], HalfOpenEvicted: g[gHalfOpenEvicted],
		OpenersUnrecorded: g[gOpenerUnrecorded], StraysUnrecorded: g[gStrayUnrecorded]}
	p, err := b.tablePressure()
	if err != nil {
		return Stats{}, err
	}
	out.Global.TablePressure = p
	return out, nil
}

// backendStats sums a server slot's per-CPU counters.
func (b *BPF) backendStats(id uint32) (ServerStats, error) {
	var per []dispatchBackendStats
	if err := b.objs.StatsBackend.Lookup(id, &per); err != nil {
		return ServerStats{}, err
	}
	var s ServerStats
	for _, c := range per {
		s.NewFlows += c.NewFlows
		s.Packets += c.Packets
		s.Bytes += c.Bytes
		s.Closed += c.Closed
		s.Expired += c.Expired
		s.HalfOpenOpened += c.HalfopenOpened
	}
	half, err := b.halfOpenCount(id)
	if err != nil {
		return ServerStats{}, err
	}
	s.HalfOpen = uint64(max(half, 0))
	return s, nil
}

// halfOpenCount sums a server slot's per-CPU half-open counts.
func (b *BPF) halfOpenCount(id uint32) (int64, error) {
	var per []int64
	if err := b.objs.ServerHalfopen.Lookup(id, &per); err != nil {
		return 0, err
	}
	var n int64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// tablePressure: did any CPU see a sign of pressure (a live half-open flow
// displaced, a new flow with no way to take) within the half-open timeout?
func (b *BPF) tablePressure() (bool, error) {
	var per []uint64
	if err := b.objs.TablePressure.Lookup(uint32(0), &per); err != nil {
		return false, fmt.Errorf("read table pressure: %w", err)
	}
	now := b.kernelNow()
	if now == 0 {
		return false, fmt.Errorf("read table pressure: the data plane's clock is unreadable")
	}
	for _, t := range per {
		if t != 0 && int64(now-t) <= b.cfg.HalfOpenTimeout.Nanoseconds() {
			return true, nil
		}
	}
	return false, nil
}

// owner maps a connection table value to its service and server, or
// reports that the entry is stale (its server left).
type owner struct {
	key  ServiceKey
	addr netip.Addr
	gen  uint32
}

func (b *BPF) ownersLocked() map[uint32]owner {
	m := make(map[uint32]owner)
	for key, st := range b.services {
		for addr, be := range st.servers {
			m[be.id] = owner{key: key, addr: addr, gen: be.gen}
		}
	}
	return m
}

// flowWay is one valid way of the connection table, as user space reads it.
type flowWay struct {
	key      dispatchFlowKey
	backend  uint32
	gen      uint32
	flags    uint32
	lastSeen uint64
}

// ways appends the valid ways of a bucket to out. A way being rewritten at
// that moment is skipped.
func (bk *dispatchFlowBucket) ways(out []flowWay) []flowWay {
	for i := range bk.Head {
		h, body := &bk.Head[i], &bk.Body[i]
		if h.Seq&1 != 0 || h.Meta&flowValid == 0 {
			continue
		}
		out = append(out, flowWay{key: body.Key, backend: body.Backend, gen: body.Gen,
			flags: h.Meta & flowFlagsMask, lastSeen: h.LastSeen})
	}
	return out
}

// flowEntries calls fn with every valid way of the connection table.
//
// It reads the table through its memory mapping (the map is mmapable): a
// scan of a million-flow table then takes milliseconds instead of a system
// call per bucket, which matters because flows open and close while it
// runs. Like a lookup, a copy may catch a way being rewritten; the way's
// sequence number tells (ways).
func (b *BPF) flowEntries(fn func(e *flowWay) bool) error {
	const batch = 1024
	n := b.cfg.flowBuckets()
	keys := make([]uint32, batch)
	vals := make([]dispatchFlowBucket, batch)
	size := int(unsafe.Sizeof(dispatchFlowBucket{}))
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&vals[0])), batch*size)
	ways := make([]flowWay, 0, len(dispatchFlowBucket{}.Head))
	mem, err := b.objs.Conns.Memory()
	if err != nil || int(b.objs.Conns.ValueSize()) != size {
		mem = nil
	}
	for start := uint32(0); start < n; start += batch {
		count := min(batch, n-start)
		if mem != nil {
			if _, err := mem.ReadAt(raw[:int(count)*size], int64(start)*int64(size)); err != nil {
				return fmt.Errorf("read connection table buckets %d-%d: %w", start, start+count-1, err)
			}
		} else {
			for i := range count {
				keys[i] = start + i
				if err := b.objs.Conns.Lookup(keys[i], &vals[i]); err != nil {
					return fmt.Errorf("read connection table bucket %d: %w", keys[i], err)
				}
			}
		}
		// One buffer for the scan: a way handed to fn by address would
		// otherwise be allocated anew for every way of the table.
		for i := range count {
			found := vals[i].ways(ways[:0])
			for j := range found {
				if !fn(&found[j]) {
					return nil
				}
			}
		}
	}
	return nil
}

// ActiveFlows implements Executor.
func (b *BPF) ActiveFlows() (map[ServiceKey]map[netip.Addr]int, error) {
	b.mu.Lock()
	owners := b.ownersLocked()
	b.mu.Unlock()
	now := b.kernelNow()
	out := map[ServiceKey]map[netip.Addr]int{}
	err := b.flowEntries(func(e *flowWay) bool {
		o, ok := owners[e.backend]
		if !ok || o.gen != e.gen || e.flags&(flowClosing|flowHalfOpen) != 0 || b.idle(e, now) {
			return true
		}
		m := out[o.key]
		if m == nil {
			m = map[netip.Addr]int{}
			out[o.key] = m
		}
		m[o.addr]++
		return true
	})
	return out, err
}

// idle says whether a way is idle past its state's timeout at now (the
// kernel's flow_idle and flow_timeout).
func (b *BPF) idle(e *flowWay, now uint64) bool {
	timeout := b.cfg.IdleTimeout
	if e.flags&(flowClosing|flowHalfOpen) != 0 {
		timeout = b.cfg.HalfOpenTimeout
	}
	return int64(now-e.lastSeen) > timeout.Nanoseconds()
}

// p2cServersLocked lists the server slots of services whose open-flow
// counts the data plane keeps (p2c and delay).
func (b *BPF) p2cServersLocked() map[uint32]owner {
	m := map[uint32]owner{}
	for key, st := range b.services {
		if !st.sched.CountsActive() {
			continue
		}
		for addr, be := range st.servers {
			m[be.id] = owner{key: key, addr: addr, gen: be.gen}
		}
	}
	return m
}

// ActiveCounts implements Executor.
func (b *BPF) ActiveCounts() (map[ServiceKey]map[netip.Addr]int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[ServiceKey]map[netip.Addr]int{}
	for id, o := range b.p2cServersLocked() {
		var n int64
		if err := b.objs.ServerActive.Lookup(id, &n); err != nil {
			return nil, fmt.Errorf("read open-flow count of %v in %v: %w", o.addr, o.key, err)
		}
		m := out[o.key]
		if m == nil {
			m = map[netip.Addr]int{}
			out[o.key] = m
		}
		m[o.addr] = int(max(n, 0))
	}
	return out, nil
}

// ReconcileActive implements Executor: the open-flow counts of p2c
// servers and the half-open counts of every server. The scan runs without
// the lock; a server that left or changed slot meanwhile is left alone.
//
// Packets keep flowing during the scan, so the table's count is not a
// snapshot: a flow that opens or closes while the scan passes may be
// counted on the wrong side of it. A count is therefore moved only by the
// part of its difference from the table that the flows opened and closed
// during the scan cannot explain: exactly when the server was quiet, not at
// all for a difference of the order of the scan's own noise (which,
// written as the truth, would skew p2c for a whole period), and mostly for
// a real leak (flows that ended unseen), which grows. Half-open flows that
// time out leave their count only here: after a flood, the first
// reconciliation past the half-open timeout brings it back to zero.
func (b *BPF) ReconcileActive() error {
	b.mu.Lock()
	targets := b.ownersLocked()
	b.mu.Unlock()
	if len(targets) == 0 {
		return nil
	}
	before, err := b.activeReadings(targets)
	if err != nil {
		return err
	}
	truth, err := b.tableCounts(targets)
	if err != nil {
		return fmt.Errorf("reconcile flow counts: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	after, err := b.activeReadings(targets)
	if err != nil {
		return err
	}
	now := b.ownersLocked()
	p2c := b.p2cServersLocked()
	for id, o := range targets {
		if now[id] != o {
			continue
		}
		bf, af := before[id], after[id]
		if _, ok := p2c[id]; ok {
			events := int64(af.events - bf.events)
			corr := shrinkToward0(truth[id].active-(bf.count+af.count)/2, events)
			if err := b.correct(b.objs.ServerActive, id, corr); err != nil {
				return fmt.Errorf("write open-flow count of %v in %v: %w", o.addr, o.key, err)
			}
		}
		slack := int64(af.halfEvents-bf.halfEvents) + max(af.half-bf.half, bf.half-af.half)
		corr := shrinkToward0(truth[id].half-(bf.half+af.half)/2, slack)
		if err := b.correctPerCPU(b.objs.ServerHalfopen, id, corr); err != nil {
			return fmt.Errorf("write half-open count of %v in %v: %w", o.addr, o.key, err)
		}
	}
	return nil
}

// correct adds corr to a server slot's count in m.
func (b *BPF) correct(m *ebpf.Map, id uint32, corr int64) error {
	if corr == 0 {
		return nil
	}
	var cur int64
	if err := m.Lookup(id, &cur); err != nil {
		return err
	}
	return m.Update(id, cur+corr, ebpf.UpdateAny)
}

// correctPerCPU adds corr to CPU 0's share of a per-CPU count.
func (b *BPF) correctPerCPU(m *ebpf.Map, id uint32, corr int64) error {
	if corr == 0 {
		return nil
	}
	var per []int64
	if err := m.Lookup(id, &per); err != nil {
		return err
	}
	per[0] += corr
	return m.Update(id, per, ebpf.UpdateAny)
}

// slotCounts is what the connection table holds for a server slot: live
// established flows (not closing) and live half-open ones.
type slotCounts struct {
	active, half int64
}

// tableCounts scans the connection table once for every slot's counts.
func (b *BPF) tableCounts(owners map[uint32]owner) (map[uint32]slotCounts, error) {
	now := b.kernelNow()
	out := map[uint32]slotCounts{}
	err := b.flowEntries(func(e *flowWay) bool {
		o, ok := owners[e.backend]
		if !ok || o.gen != e.gen || e.flags&flowClosing != 0 || b.idle(e, now) {
			return true
		}
		c := out[e.backend]
		if e.flags&flowHalfOpen != 0 {
			c.half++
		} else {
			c.active++
		}
		out[e.backend] = c
		return true
	})
	return out, err
}

// activeReading is a server slot's live open-flow and half-open counts and
// how many flows it had opened, closed or expired, and opened half-open, at
// one moment.
type activeReading struct {
	count      int64
	events     uint64
	half       int64
	halfEvents uint64
}

func (b *BPF) activeReadings(targets map[uint32]owner) (map[uint32]activeReading, error) {
	out := make(map[uint32]activeReading, len(targets))
	for id, o := range targets {
		var r activeReading
		if err := b.objs.ServerActive.Lookup(id, &r.count); err != nil {
			return nil, fmt.Errorf("read open-flow count of %v in %v: %w", o.addr, o.key, err)
		}
		half, err := b.halfOpenCount(id)
		if err != nil {
			return nil, fmt.Errorf("read half-open count of %v in %v: %w", o.addr, o.key, err)
		}
		r.half = half
		st, err := b.backendStats(id)
		if err != nil {
			return nil, fmt.Errorf("read counters of %v in %v: %w", o.addr, o.key, err)
		}
		r.events = st.NewFlows + st.Closed + st.Expired
		r.halfEvents = st.HalfOpenOpened
		out[id] = r
	}
	return out, nil
}

// shrinkToward0 takes slack off d's magnitude, stopping at 0.
func shrinkToward0(d, slack int64) int64 {
	switch {
	case d > slack:
		return d - slack
	case d < -slack:
		return d + slack
	}
	return 0
}

// Flows implements Executor. Entries whose server has left are skipped: the
// data plane would dispatch them anew.
func (b *BPF) Flows(fn func(Flow) bool) error {
	b.mu.Lock()
	owners := b.ownersLocked()
	b.mu.Unlock()
	now := b.kernelNow()
	return b.flowEntries(func(e *flowWay) bool {
		o, ok := owners[e.backend]
		if !ok || o.gen != e.gen {
			return true
		}
		return fn(flowFrom(e, o.addr, now))
	})
}

// RecentFlows implements Executor.
func (b *BPF) RecentFlows(within, closingWithin time.Duration, fn func(Flow) bool) error {
	b.mu.Lock()
	owners := b.ownersLocked()
	b.mu.Unlock()
	now := b.kernelNow()
	return b.flowEntries(func(e *flowWay) bool {
		if !recent(e.flags, e.lastSeen, now, within, closingWithin) {
			return true
		}
		o, ok := owners[e.backend]
		if !ok || o.gen != e.gen {
			return true
		}
		return fn(flowFrom(e, o.addr, now))
	})
}

// recent says whether a way with flags, last seen at lastSeen, carried a
// packet within the window RecentFlows gives its kind, at now. A stamp
// later than now (another CPU's clock) is recent.
func recent(flags uint32, lastSeen, now uint64, within, closingWithin time.Duration) bool {
	if flags&flowHalfOpen != 0 {
		return false
	}
	limit := within
	if flags&flowClosing != 0 {
		limit = closingWithin
	}
	return limit >= 0 && int64(now-lastSeen) <= limit.Nanoseconds()
}

// LookupFlow implements Executor.
func (b *BPF) LookupFlow(key FlowKey) (Flow, bool, error) {
	if err := validateFlowKey(key); err != nil {
		return Flow{}, false, err
	}
	k := flowKey(key)
	idx := bucketIndex(flowHash(k, b.cfg.HashSeed), b.cfg.flowBuckets())
	var bucket dispatchFlowBucket
	if err := b.objs.Conns.Lookup(idx, &bucket); err != nil {
		return Flow{}, false, fmt.Errorf("look up flow %v: %w", key, err)
	}
	b.mu.Lock()
	owners := b.ownersLocked()
	b.mu.Unlock()
	for _, e := range bucket.ways(nil) {
		if e.key != k {
			continue
		}
		o, ok := owners[e.backend]
		if !ok || o.gen != e.gen {
			return Flow{}, false, nil
		}
		return flowFrom(&e, o.addr, b.kernelNow()), true, nil
	}
	return Flow{}, false, nil
}

// flowOp mirrors struct flow_op, flow_write's input.
type flowOp struct {
	Op      uint32
	Backend uint32
	Gen     uint32
	Flags   uint32
	IdleNs  uint64
	Key     dispatchFlowKey
}

const (
	flowOpUpsert = 1
	flowOpDelete = 2
)

// writeFlow runs flow_write, retrying a few times when a way is busy.
func (b *BPF) writeFlow(op flowOp) (uint32, error) {
	// The program reads the op in the host's layout, which flowOp has
	// (no padding: checked by TestFlowOpLayout).
	in := unsafe.Slice((*byte)(unsafe.Pointer(&op)), unsafe.Sizeof(op))
	for range 8 {
		ret, err := b.objs.FlowWrite.Run(&ebpf.RunOptions{Data: in})
		if err != nil {
			return 0, err
		}
		if ret != xdpAbortedAction {
			return ret, nil
		}
	}
	return 0, fmt.Errorf("connection table way stayed busy")
}

// flowBatch and flowDone are FLOW_BATCH and FLOW_DONE: the most ops of one
// flow_write_batch run, and the mark of an op it applied.
const (
	flowBatch = 32
	flowDone  = 0x100
)

// writeFlows applies ops in order, flowBatch a run of flow_write_batch,
// and returns each one's answer. An op the program found busy is retried
// alone (writeFlow) before the ops after it.
func (b *BPF) writeFlows(ops []flowOp) ([]uint32, []error) {
	rets := make([]uint32, len(ops))
	errs := make([]error, len(ops))
	size := int(unsafe.Sizeof(flowOp{}))
	out := make([]byte, flowBatch*size)
	for next := 0; next < len(ops); {
		chunk := ops[next:min(next+flowBatch, len(ops))]
		in := unsafe.Slice((*byte)(unsafe.Pointer(&chunk[0])), len(chunk)*size)
		if _, err := b.objs.FlowWriteBatch.Run(&ebpf.RunOptions{Data: in, DataOut: out[:len(in)]}); err != nil {
			for i := next; i < len(ops); i++ {
				errs[i] = err
			}
			return rets, errs
		}
		done := 0
		for i := range chunk {
			ret := binary.NativeEndian.Uint32(out[i*size:])
			if ret&flowDone == 0 {
				break
			}
			ret &^= flowDone
			done++
			if ret == xdpAbortedAction {
				ret, errs[next+i] = b.writeFlow(chunk[i])
			}
			rets[next+i] = ret
		}
		if done == 0 {
			// Not even the first op was applied: the program refused
			// the input.
			errs[next] = fmt.Errorf("flow_write_batch applied nothing")
			done = 1
		}
		next += done
	}
	return rets, errs
}

// xdpAbortedAction and friends are flow_write's answers.
const (
	xdpAbortedAction = 0
	xdpDropAction    = 1
	xdpPassAction    = 2
)

// UpsertFlows implements Executor.
func (b *BPF) UpsertFlows(flows []Flow) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var (
		errs []error
		ops  []flowOp
		keys []FlowKey
	)
	for _, f := range flows {
		if err := validateFlowKey(f.Key); err != nil {
			errs = append(errs, err)
			continue
		}
		st := b.services[f.Key.Service()]
		if st == nil {
			errs = append(errs, fmt.Errorf("%w: flow %v: no service %v", ErrNotFound, f.Key, f.Key.Service()))
			continue
		}
		be := st.servers[f.Server]
		if be == nil {
			errs = append(errs, fmt.Errorf("%w: flow %v: server %v not in %v", ErrNotFound, f.Key, f.Server, f.Key.Service()))
			continue
		}
		op := flowOp{Op: flowOpUpsert, Backend: be.id, Gen: be.gen, Key: flowKey(f.Key)}
		if f.Idle > 0 {
			op.IdleNs = uint64(f.Idle.Nanoseconds())
		}
		if f.Closing {
			op.Flags = flowClosing
		}
		ops = append(ops, op)
		keys = append(keys, f.Key)
	}
	if len(ops) > 0 {
		_, werrs := b.writeFlows(ops)
		for i, err := range werrs {
			if err != nil {
				errs = append(errs, fmt.Errorf("write flow %v: %w", keys[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// DeleteFlow implements Executor.
func (b *BPF) DeleteFlow(key FlowKey) error {
	if err := validateFlowKey(key); err != nil {
		return err
	}
	ret, err := b.writeFlow(flowOp{Op: flowOpDelete, Key: flowKey(key)})
	if err != nil {
		return fmt.Errorf("delete flow %v: %w", key, err)
	}
	if ret == xdpDropAction {
		return fmt.Errorf("%w: flow %v", ErrNotFound, key)
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

func sortServices(s []Service) {
	slices.SortFunc(s, func(x, y Service) int {
		if c := x.Key.VIP.Compare(y.Key.VIP); c != 0 {
			return c
		}
		if x.Key.Port != y.Key.Port {
			return int(x.Key.Port) - int(y.Key.Port)
		}
		return int(x.Key.Proto) - int(y.Key.Proto)
	})
}

// Conversions between Go values and the kernel's layouts.

func addrWords(a netip.Addr) ([4]uint32, uint8) {
	var w [4]uint32
	if a.Is4() {
		b := a.As4()
		w[0] = binary.NativeEndian.Uint32(b[:])
		return w, afInet
	}
	b := a.As16()
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w, afInet6
}

func addrFrom(w [4]uint32, family uint8) netip.Addr {
	if family == afInet {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], w[0])
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b)
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(v uint16) uint16 { return htons(v) }

func svcKey(k ServiceKey) dispatchSvcKey {
	var sk dispatchSvcKey
	sk.Addr.Addr, sk.Family = addrWords(k.VIP)
	sk.Port = htons(k.Port)
	sk.Proto = uint8(k.Proto)
	return sk
}

func flowKey(k FlowKey) dispatchFlowKey {
	var fk dispatchFlowKey
	fk.Src.Addr, fk.Family = addrWords(k.Client.Addr())
	fk.Dst.Addr, _ = addrWords(k.VIP.Addr())
	fk.Sport = htons(k.Client.Port())
	fk.Dport = htons(k.VIP.Port())
	fk.Proto = uint8(k.Proto)
	return fk
}

func flowFrom(e *flowWay, server netip.Addr, now uint64) Flow {
	k := e.key
	f := Flow{
		Key: FlowKey{
			Client: netip.AddrPortFrom(addrFrom(k.Src.Addr, k.Family), ntohs(k.Sport)),
			VIP:    netip.AddrPortFrom(addrFrom(k.Dst.Addr, k.Family), ntohs(k.Dport)),
			Proto:  Proto(k.Proto),
		},
		Server:   server,
		Closing:  e.flags&flowClosing != 0,
		HalfOpen: e.flags&flowHalfOpen != 0,
	}
	if now > e.lastSeen {
		f.Idle = time.Duration(now - e.lastSeen)
	}
	return f
}

// b2u is 1 for true.
func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
