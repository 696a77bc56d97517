package executor

// Services, their servers and weights: the backend slots, the Maglev rings,
// the delay scheduler's member lists, the VIP and service filters and the
// service index, each written so that no packet sees half a change.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nd-dispatcher/nd/internal/maglev"
)

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
	return a.Addr == b.Addr && a.Local == b.Local && a.Weight == b.Weight && a.Held == b.Held &&
		a.Ifindex == b.Ifindex && slices.Equal(a.MAC, b.MAC)
}

func (b *BPF) backendValue(svcID uint32, be *backendState, sched Scheduler) (dispatchBackend, error) {
	v := dispatchBackend{SvcId: svcID, Gen: be.gen, Flags: beActive, Weight: be.srv.Weight}
	v.Addr.Addr, v.Family = addrWords(be.srv.Addr)
	if be.srv.Weight == 0 {
		v.Flags |= beQuiesced
	}
	if be.srv.Held {
		v.Flags |= beHeld
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
	setWeights(&s, weights)
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
