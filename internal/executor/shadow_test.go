package executor

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// recentKeys lists the keys RecentFlows selects, sorted.
func recentKeys(t *testing.T, x Executor, within, closingWithin time.Duration) []FlowKey {
	t.Helper()
	var keys []FlowKey
	if err := x.RecentFlows(within, closingWithin, func(f Flow) bool { keys = append(keys, f.Key); return true }); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(keys, compareFlowKeys)
	return keys
}

// TestRecentFlows: RecentFlows selects established and closing entries
// by their last-seen stamps, each kind within its own window, in both
// implementations; a negative window selects none of its kind.
func TestRecentFlows(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 12})
	f := NewFake()
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	fk := func(port uint16) FlowKey {
		return FlowKey{Client: netip.AddrPortFrom(client4, port), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
	}
	flows := []Flow{
		{Key: fk(1), Server: s1},
		{Key: fk(2), Server: s2, Idle: 10 * time.Second},
		{Key: fk(3), Server: s1, Closing: true},
		{Key: fk(4), Server: s2, Closing: true, Idle: 3 * time.Second},
	}
	for _, x := range []Executor{h.x, f} {
		name := map[bool]string{true: "kernel", false: "fake"}[x == Executor(h.x)]
		svc := Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}}
		h.do(func() error {
			if err := x.UpsertService(svc); err != nil {
				return err
			}
			return x.UpsertFlows(flows)
		})
		for _, c := range []struct {
			within, closing time.Duration
			want            []uint16
		}{
			{5 * time.Second, time.Second, []uint16{1, 3}},
			{time.Minute, time.Minute, []uint16{1, 2, 3, 4}},
			{-1, 5 * time.Second, []uint16{3, 4}},
			{time.Minute, -1, []uint16{1, 2}},
		} {
			var want []FlowKey
			for _, p := range c.want {
				want = append(want, fk(p))
			}
			if got := recentKeys(t, x, c.within, c.closing); !slices.Equal(got, want) {
				t.Errorf("%s: within %v, closing %v: %v, want ports %v", name, c.within, c.closing, got, c.want)
			}
		}
	}
}

// TestFlowOpLayout: writeFlow hands flow_write a flowOp's memory as it
// is, which must be the bytes binary.Append writes (no padding).
func TestFlowOpLayout(t *testing.T) {
	op := flowOp{Op: flowOpUpsert, Backend: 7, Gen: 9, Flags: flowClosing, IdleNs: 12345,
		Key: flowKey(FlowKey{Client: netip.MustParseAddrPort("203.0.113.7:4242"), VIP: netip.MustParseAddrPort("198.51.100.100:80"), Proto: TCP})}
	want, err := binary.Append(nil, binary.NativeEndian, op)
	if err != nil {
		t.Fatal(err)
	}
	if got := unsafe.Slice((*byte)(unsafe.Pointer(&op)), unsafe.Sizeof(op)); !bytes.Equal(got, want) {
		t.Errorf("flowOp in memory\n%x\nwant\n%x", got, want)
	}
}

// TestUpsertFlowsBatched: UpsertFlows writes the kernel's table in batches
// (flow_write_batch): more flows than a batch, a flow named twice (the
// later record wins), and a record naming an unknown server (reported,
// the others written).
func TestUpsertFlowsBatched(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 12})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	fk := func(port uint16) FlowKey {
		return FlowKey{Client: netip.AddrPortFrom(client4, port), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
	}
	var flows []Flow
	for i := range 3*flowBatch + 5 {
		flows = append(flows, Flow{Key: fk(uint16(1000 + i)), Server: s1})
	}
	flows = append(flows, Flow{Key: fk(1000), Server: s2, Closing: true}, Flow{Key: fk(9), Server: s3})
	err := h.x.UpsertFlows(flows)
	if err == nil || !strings.Contains(err.Error(), s3.String()) {
		t.Errorf("UpsertFlows with an unknown server: %v", err)
	}
	got := map[FlowKey]Flow{}
	if err := h.x.Flows(func(f Flow) bool { got[f.Key] = f; return true }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3*flowBatch+5 {
		t.Errorf("%d flows in the table, want %d", len(got), 3*flowBatch+5)
	}
	if f := got[fk(1000)]; f.Server != s2 || !f.Closing {
		t.Errorf("the flow named twice: %+v, want the later record (s2, closing)", f)
	}
	if f := got[fk(1000+3*flowBatch+4)]; f.Server != s1 {
		t.Errorf("the last flow of the last batch: %+v", f)
	}
	if err := h.x.DeleteFlow(fk(1001)); err != nil {
		t.Errorf("delete a batched flow: %v", err)
	}
}
