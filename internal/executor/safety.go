package executor

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrUnsupportedCPU marks a CPU the data plane cannot run on correctly.
var ErrUnsupportedCPU = errors.New("unsupported CPU")

// checkCPU refuses CPUs whose memory model the connection table's slot
// lock does not hold on. Its writers publish a way with plain stores and
// its readers check a sequence count around plain loads, ordered by
// compiler barriers only: enough under x86's total store order, not on
// weakly ordered CPUs (arm64, ppc64, riscv64), where a reader could see a
// way's new count with its old key. BPF has no load-acquire or
// store-release an XDP program could use there at no cost, so the data
// plane refuses to load instead of corrupting flows silently.
func checkCPU(arch string) error {
	switch arch {
	case "amd64", "386":
		return nil
	}
	return fmt.Errorf("%w: %s: the connection table's lock relies on x86 store ordering (see bpf/flow.h); nd's data plane runs on x86-64 only", ErrUnsupportedCPU, arch)
}

// membarrierCmdGlobal is MEMBARRIER_CMD_GLOBAL: return after every CPU
// has passed through a quiescent state, i.e. after an RCU grace period.
const membarrierCmdGlobal = 1

// graceFallback stands in for a grace period where the kernel refuses
// MEMBARRIER_CMD_GLOBAL (nohz_full CPUs): far longer than any XDP program
// runs.
const graceFallback = 50 * time.Millisecond

// waitGrace returns once no packet that started before the call can still
// be running: XDP programs run inside RCU read-side sections, and
// membarrier(MEMBARRIER_CMD_GLOBAL) waits for an RCU grace period.
func waitGrace() {
	if _, _, errno := unix.Syscall(unix.SYS_MEMBARRIER, membarrierCmdGlobal, 0, 0); errno != 0 {
		time.Sleep(graceFallback)
	}
}

// retire notes that packets may still read what a flip just retired (a
// server slot's copy, or the service index's half), and grace waits, if
// anything was retired since the last wait, before such a copy is
// rewritten: a packet that read a pointer to the old copy before the flip
// must not see it half rewritten.
type retired struct {
	slots map[uint32]bool // server slots whose idle copy was in use since the last grace
	index bool            // the service index's idle half, likewise
	waits int             // grace periods waited, for tests
}

func (r *retired) grace() {
	waitGrace()
	r.waits++
	clear(r.slots)
	r.index = false
}

// beforeSlotWrite waits for a grace period if slot id's idle copy was in
// use since the last one.
func (r *retired) beforeSlotWrite(id uint32) {
	if r.slots[id] {
		r.grace()
	}
}

// beforeIndexWrite does the same for the service index.
func (r *retired) beforeIndexWrite() {
	if r.index {
		r.grace()
	}
}

// dataPlaneID checks what the pinned tables were built with against this
// configuration, or records it in a fresh data plane: a daemon restarted
// with another hash_seed would look every pinned flow up in the wrong
// bucket and dispatch it anew, breaking every established connection whose
// ring slot moved.
func checkDataPlaneID(m *ebpf.Map, cfg Config) error {
	var id dispatchDpId
	if err := m.Lookup(uint32(0), &id); err != nil {
		return fmt.Errorf("read data plane id: %w", err)
	}
	want := dispatchDpId{Magic: dpIDMagic, HashSeed: cfg.HashSeed, FlowWays: flowWays}
	if id.Magic == 0 {
		if err := m.Update(uint32(0), want, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("record data plane id: %w", err)
		}
		return nil
	}
	if id.HashSeed != cfg.HashSeed {
		return fmt.Errorf("%w: the data plane pinned in %s was built with data_plane.hash_seed %d, this configuration says %d: taking it over would orphan every pinned flow; set hash_seed back to %d, or stop ndd and remove %s to start with an empty table",
			ErrInvalid, cfg.PinPath, id.HashSeed, cfg.HashSeed, id.HashSeed, cfg.PinPath)
	}
	want.Marks = id.Marks // the control plane's, not the layout's
	if id != want {
		return fmt.Errorf("%w: the data plane pinned in %s has another table layout (%+v): remove it to start afresh", ErrInvalid, cfg.PinPath, id)
	}
	return nil
}

// dpIDMagic is DP_ID_MAGIC in bpf/types.h.
const dpIDMagic = 0x6e64666c

// dpMarkDrained is DP_MARK_DRAINED in bpf/types.h.
const dpMarkDrained = 1 << 0

// Drained implements Executor.
func (b *BPF) Drained() (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var id dispatchDpId
	if err := b.objs.DataPlaneId.Lookup(uint32(0), &id); err != nil {
		return false, fmt.Errorf("read the drain mark: %w", err)
	}
	return id.Marks&dpMarkDrained != 0, nil
}

// SetDrained implements Executor.
func (b *BPF) SetDrained(drained bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var id dispatchDpId
	if err := b.objs.DataPlaneId.Lookup(uint32(0), &id); err != nil {
		return fmt.Errorf("read the drain mark: %w", err)
	}
	id.Marks &^= dpMarkDrained
	if drained {
		id.Marks |= dpMarkDrained
	}
	if err := b.objs.DataPlaneId.Update(uint32(0), id, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write the drain mark: %w", err)
	}
	return nil
}
