package executor

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// maxEventBatch bounds a batch of flow events: a subscriber that keeps up
// gets what the ring held, a slow one gets batches of this size.
const maxEventBatch = 1024

// Kinds of struct flow_event (FLOW_EV_* in bpf/types.h).
const (
	flowEvOpened = 1
	flowEvClosed = 2
)

// flowEventSize is sizeof(struct flow_event).
const flowEventSize = 80

// subscription is a running FlowEvents reader.
type subscription struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the reader has stopped and reporting is off
}

// FlowEvents implements Executor. Reports produced before the call (by a
// subscription that ended with reports in the ring) are discarded.
func (b *BPF) FlowEvents(ctx context.Context) (<-chan []FlowEvent, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.events != nil {
		return nil, fmt.Errorf("%w: flow events already have a subscriber", ErrBusy)
	}
	rd, err := ringbuf.NewReader(b.objs.FlowEvents)
	if err != nil {
		return nil, fmt.Errorf("open flow events ring: %w", err)
	}
	if err := drainRing(rd); err != nil {
		rd.Close()
		return nil, fmt.Errorf("discard old flow events: %w", err)
	}
	if err := b.setReporting(true); err != nil {
		rd.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	sub := &subscription{cancel: cancel, done: make(chan struct{})}
	b.events = sub
	out := make(chan []FlowEvent)
	// The stopper turns reporting off and then closes the reader, which
	// interrupts a read waiting for reports.
	stopperDone := make(chan struct{})
	go func() {
		defer close(stopperDone)
		<-ctx.Done()
		if err := b.setReporting(false); err != nil {
			b.log.Error("turn flow events off", "err", err)
		}
		rd.Close()
	}()
	go func() {
		defer close(sub.done)
		defer close(out)
		if err := b.readEvents(ctx, rd, out); err != nil && ctx.Err() == nil {
			b.log.Error("read flow events", "err", err)
		}
		cancel()
		<-stopperDone
		b.mu.Lock()
		if b.events == sub {
			b.events = nil
		}
		b.mu.Unlock()
	}()
	return out, nil
}

func (b *BPF) setReporting(on bool) error {
	v := uint32(0)
	if on {
		v = 1
	}
	if err := b.objs.FlowEventsOn.Update(uint32(0), v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("switch flow events (on=%v): %w", on, err)
	}
	return nil
}

// drainRing reads and drops whatever the ring holds.
func drainRing(rd *ringbuf.Reader) error {
	rd.SetDeadline(time.Now())
	defer rd.SetDeadline(time.Time{})
	var rec ringbuf.Record
	for {
		err := rd.ReadInto(&rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// stopEvents ends the FlowEvents subscription, if any, and waits until
// reporting is off.
func (b *BPF) stopEvents() {
	b.mu.Lock()
	sub := b.events
	b.mu.Unlock()
	if sub != nil {
		sub.cancel()
		<-sub.done
	}
}

// readEvents delivers batches until the reader is closed or ctx ends.
func (b *BPF) readEvents(ctx context.Context, rd *ringbuf.Reader, out chan<- []FlowEvent) error {
	var rec ringbuf.Record
	raw := make([]dispatchFlowEvent, 0, maxEventBatch)
	for {
		raw = raw[:0]
		// Block for the first report, then take what the ring holds
		// without waiting: one batch per wake-up.
		for {
			if err := rd.ReadInto(&rec); err != nil {
				if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
					return nil
				}
				return err
			}
			if ev, ok := decodeFlowEvent(rec.RawSample); ok {
				raw = append(raw, ev)
			}
			if rec.Remaining == 0 || len(raw) == maxEventBatch {
				break
			}
		}
		if len(raw) == 0 {
			continue
		}
		now := b.kernelNow()
		batch := make([]FlowEvent, 0, len(raw))
		for i := range raw {
			if ev, ok := flowEventFrom(&raw[i], now); ok {
				batch = append(batch, ev)
			}
		}
		select {
		case out <- batch:
		case <-ctx.Done():
			return nil
		}
	}
}

// decodeFlowEvent reads a struct flow_event field by field: the reflection
// of encoding/binary would cost more than the rest of the reader.
func decodeFlowEvent(b []byte) (dispatchFlowEvent, bool) {
	var ev dispatchFlowEvent
	if len(b) < flowEventSize {
		return ev, false
	}
	ne := binary.NativeEndian
	for i := range 4 {
		ev.Key.Src.Addr[i] = ne.Uint32(b[4*i:])
		ev.Key.Dst.Addr[i] = ne.Uint32(b[16+4*i:])
		ev.Server.Addr[i] = ne.Uint32(b[40+4*i:])
	}
	ev.Key.Sport = ne.Uint16(b[32:])
	ev.Key.Dport = ne.Uint16(b[34:])
	ev.Key.Proto, ev.Key.Family = b[36], b[37]
	ev.Ts = ne.Uint64(b[56:])
	ev.Backend = ne.Uint32(b[64:])
	ev.Gen = ne.Uint32(b[68:])
	ev.Kind, ev.Flags = b[72], b[73]
	return ev, true
}

// flowEventFrom names the flow and its server by address; now is the data
// plane's clock, for Idle.
func flowEventFrom(ev *dispatchFlowEvent, now uint64) (FlowEvent, bool) {
	var kind FlowEventKind
	switch ev.Kind {
	case flowEvOpened:
		kind = FlowOpened
	case flowEvClosed:
		kind = FlowClosed
	default:
		return FlowEvent{}, false
	}
	if ev.Key.Family != afInet && ev.Key.Family != afInet6 {
		return FlowEvent{}, false
	}
	w := flowWay{key: ev.Key, backend: ev.Backend, gen: ev.Gen, flags: uint32(ev.Flags), lastSeen: ev.Ts}
	return FlowEvent{Kind: kind, Flow: flowFrom(&w, addrFrom(ev.Server.Addr, ev.Key.Family), now)}, true
}
