package executor

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkShadowRefresh measures the data plane's part of an HA refresh
// round (docs/HA-BENCH.md, "Cost of the refresh"): on the active, a scan
// of the whole connection table (RecentFlows, the default 1,048,576 flows
// of room) holding 1,000 or 100,000 flows, selecting all or none; on the
// standby, UpsertFlows of 1,000 records that it holds already (a refresh
// rewrites each entry).
func BenchmarkShadowRefresh(b *testing.B) {
	h := newHarness(b, Config{MaxFlows: 1 << 20})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	flows := func(n int) []Flow {
		out := make([]Flow, n)
		for i := range out {
			c := netip.AddrFrom4([4]byte{203, 0, byte(i >> 16), byte(i >> 8)})
			out[i] = Flow{Key: FlowKey{Client: netip.AddrPortFrom(c, uint16(1024+i&0xff)), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP},
				Server: []netip.Addr{s1, s2}[i%2]}
		}
		return out
	}
	thousand := flows(1000)
	b.Run("upsert-1000", func(b *testing.B) {
		for b.Loop() {
			if err := h.x.UpsertFlows(thousand); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, n := range []int{1000, 100_000} {
		if err := h.x.UpsertFlows(flows(n)); err != nil {
			b.Fatal(err)
		}
		// A round that selects every flow, and a closing round when no
		// flow is closing: the table's read alone.
		for _, c := range []struct {
			name            string
			within, closing time.Duration
			want            int
		}{{"all", time.Hour, time.Hour, n}, {"none", -1, time.Hour, 0}} {
			b.Run(fmt.Sprintf("recent-1M-table-%d-flows-select-%s", n, c.name), func(b *testing.B) {
				for b.Loop() {
					seen := 0
					if err := h.x.RecentFlows(c.within, c.closing, func(Flow) bool { seen++; return true }); err != nil {
						b.Fatal(err)
					}
					if seen < c.want*99/100 { // a full bucket may have displaced a few
						b.Fatalf("scan saw %d flows of %d", seen, c.want)
					}
				}
			})
		}
	}
}
