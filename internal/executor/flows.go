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
	if flags&(flowHalfOpen|flowOnce) != 0 {
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
		Once:     e.flags&flowOnce != 0,
	}
	if now > e.lastSeen {
		f.Idle = time.Duration(now - e.lastSeen)
	}
	return f
}
