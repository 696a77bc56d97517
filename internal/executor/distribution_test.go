package executor

import (
	"fmt"
	"math"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// TestDistribution: 100,000 distinct flows over weights 1:2:3:4 land within
// 2% of their shares, through the real program (hash, ring and table).
func TestDistribution(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 18})
	weights := map[string]uint32{"s1": 1, "s2": 2, "s3": 3, "s4": 4}
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{
		h.server(s1, macS1, 1), h.server(s2, macS2, 2), h.server(s3, macS3, 3), h.server(s4, macS4, 4),
	}})

	const flows = 100000
	counts := map[string]int{}
	out := make([]byte, 128)
	h.do(func() error {
		for i := range flows {
			// Distinct clients and ports, as many clients behind few NATs.
			client := netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 250)})
			in := tcp4From(client, uint16(1024+i/250), 80, tcpSYN).build()
			opts := &ebpf.RunOptions{Data: in, DataOut: out, Context: xdpMD{DataEnd: uint32(len(in)), IngressIfindex: uint32(h.in)}}
			act, err := h.x.objs.NdDispatch.Run(opts)
			if err != nil {
				return err
			}
			if act != xdpTX {
				return fmt.Errorf("flow %d: action %s", i, actionNames[act])
			}
			counts[serverByMAC(opts.DataOut)]++
		}
		return nil
	})
	for name, w := range weights {
		want := float64(w) / 10
		got := float64(counts[name]) / flows
		t.Logf("%s weight %d: %.4f of flows (share %.2f)", name, w, got, want)
		if math.Abs(got-want) > 0.02*want {
			t.Errorf("%s got %.4f of flows, want %.2f within 2%%", name, got, want)
		}
	}
	st := h.stats().Services[ServiceKey{VIP: vip4, Port: 80, Proto: TCP}]
	var total uint64
	for _, s := range st.Servers {
		total += s.HalfOpenOpened
	}
	if total != flows {
		t.Fatalf("counters saw %d half-open flows, want %d", total, flows)
	}
}

// TestRingSizes: the ring size is a load-time setting; a small prime ring
// still splits flows by weight (within the coarser grain it allows).
func TestRingSizes(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16, RingSize: 251})
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 3)}})
	counts := map[string]int{}
	for p := range uint16(4000) {
		_, out := h.dispatch(tcp4(1024+p, 80, tcpSYN).build())
		counts[serverByMAC(out)]++
	}
	if got := float64(counts["s2"]) / 4000; math.Abs(got-0.75) > 0.05 {
		t.Fatalf("weight 3 of 4 got %.3f of flows on a 251-slot ring: %v", got, counts)
	}
	if _, err := New(Config{RingSize: 250}); err == nil {
		t.Fatal("a ring size that is not prime was accepted")
	}
}
