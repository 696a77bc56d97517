package executor

// Counters: the per-CPU statistics read into Stats, the half-open gauges
// and the table-pressure flag.

import (
	"fmt"
	"net/netip"
)

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
