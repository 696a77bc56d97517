package executor

// The connection table: walking its buckets, listing, looking up, writing
// and deleting flows.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
)

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

// ways returns the valid ways of a bucket. A way being rewritten at that
// moment is skipped.
func (bk *dispatchFlowBucket) ways() []flowWay {
	var out []flowWay
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
		for i := range count {
			for _, w := range vals[i].ways() {
				if !fn(&w) {
					return nil
				}
			}
		}
	}
	return nil
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
	for _, e := range bucket.ways() {
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
	in, err := binary.Append(nil, binary.NativeEndian, op)
	if err != nil {
		return 0, err
	}
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
	var errs []error
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
		if _, err := b.writeFlow(op); err != nil {
			errs = append(errs, fmt.Errorf("write flow %v: %w", f.Key, err))
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
