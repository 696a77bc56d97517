package executor

// Open-flow counts: what the table holds per server, the counters the
// schedulers compare, and their reconciliation.

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

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
