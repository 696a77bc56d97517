package executor

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// delayService is a delay service of servers on the ingress interface,
// with the given weights and delay factors (0: typical).
func (h *harness) delayService(key ServiceKey, weights []uint32, delays []float64) Service {
	macs := []net.HardwareAddr{macS1, macS2, macS3, macS4}
	addrs := []netip.Addr{s1, s2, s3, s4}
	s := Service{Key: key, Scheduler: SchedulerDelay}
	for i, w := range weights {
		srv := h.server(addrs[i], macs[i], w)
		if i < len(delays) {
			srv.Delay = delays[i]
		}
		s.Servers = append(s.Servers, srv)
	}
	return s
}

// sendSYNs opens n new flows from distinct clients, each SYN followed by
// the handshake's ACK (a flow counts as open once established), and counts
// where they went.
func sendSYNs(t *testing.T, send sendFn, key ServiceKey, from, n int) map[netip.Addr]int {
	t.Helper()
	got := map[netip.Addr]int{}
	for i := from; i < from+n; i++ {
		client := netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 200)})
		k := fkFlow(key, client, uint16(10000+i/200))
		a, err := send(k, tcpSYN)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := send(k, tcpACK); err != nil || b != a {
			t.Fatalf("flow %v: SYN to %v, ACK to %v (%v)", k, a, b, err)
		}
		got[a]++
	}
	return got
}

// TestDelayLeastConnections: through the kernel, servers as fast as their
// peers are least connections: each new flow goes to a server holding the
// fewest, so open flows that only grow stay within one of each other.
func TestDelayLeastConnections(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(h.delayService(key, []uint32{1, 1, 1, 1}, nil))
	h.setActive(key, s1, 9)
	h.setActive(key, s2, 3)
	h.setActive(key, s3, 6)
	h.setActive(key, s4, 0)
	send := h.rawSend()
	var got map[netip.Addr]int
	h.do(func() error {
		got = sendSYNs(t, send, key, 0, 15)
		return nil
	})
	t.Logf("new flows: %v", got)
	// 9+3+6+0 open, 15 new: 33, the fewest-first fill ends at 9,8,8,8.
	if got[s1] != 0 {
		t.Errorf("s1 holding the most got %d new flows, want 0", got[s1])
	}
	want := map[netip.Addr]int64{s1: 9}
	for _, s := range []netip.Addr{s1, s2, s3, s4} {
		n := h.activeRaw(key, s)
		if n < 8 || n > 9 {
			t.Errorf("%v holds %d flows after the fill, want 8 or 9", s, n)
		}
		if w, ok := want[s]; ok && n != w {
			t.Errorf("%v holds %d, want %d", s, n, w)
		}
	}
}

// TestDelaySlowServer: a server with delay factor 16 takes a new flow only
// while each peer holds 16 times its own open flows (plus one) or more.
func TestDelaySlowServer(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(h.delayService(key, []uint32{1, 1, 1, 1}, []float64{16}))
	send := h.rawSend()
	var quiet, busy map[netip.Addr]int
	h.do(func() error {
		// All idle: the fast servers fill up to 15 each before s1 (score
		// 16) beats their 16.
		quiet = sendSYNs(t, send, key, 0, 45)
		for _, s := range []netip.Addr{s2, s3, s4} {
			h.setActive(key, s, 40)
		}
		busy = sendSYNs(t, send, key, 1000, 1)
		return nil
	})
	t.Logf("idle: %v; peers at 40: %v", quiet, busy)
	if quiet[s1] != 0 {
		t.Errorf("slow s1 got %d of 45 new flows while its peers held at most 15, want 0", quiet[s1])
	}
	if busy[s1] != 1 {
		t.Errorf("slow s1 got no new flow while its peers held 40 each (score 41 > 16)")
	}
}

// TestDelayWeights: in a closed loop of flows coming and going, the delay
// scheduler keeps the weights' shares of new flows among equal servers.
func TestDelayWeights(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 18})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	svc := h.delayService(key, []uint32{1, 2, 3, 4}, nil)
	weights := weightsOf(svc)
	h.upsert(svc)
	send := h.rawSend()
	checkShares(t, "closed loop", h.closedLoop(send, key, 200, 20000), weights, 0.1)
}

// TestDelayFactorLive: a new delay factor takes effect on the next flow,
// without touching the server's entry or its flows.
func TestDelayFactorLive(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(h.delayService(key, []uint32{1, 1}, nil))
	send := h.rawSend()
	var before, after map[netip.Addr]int
	h.do(func() error {
		before = sendSYNs(t, send, key, 0, 20)
		return nil
	})
	h.upsert(h.delayService(key, []uint32{1, 1}, []float64{64}))
	h.do(func() error {
		after = sendSYNs(t, send, key, 100, 20)
		return nil
	})
	t.Logf("before: %v, after s1's factor 64: %v", before, after)
	if before[s1] != 10 || before[s2] != 10 {
		t.Errorf("equal servers split 20 new flows %v, want 10 each", before)
	}
	if after[s1] != 0 {
		t.Errorf("s1 at factor 64 got %d new flows while s2 held at most 30, want 0", after[s1])
	}
}

// TestDelayFakeMatchesKernel: the Fake scores as the kernel does, flow for
// flow.
func TestDelayFakeMatchesKernel(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	svc := h.delayService(key, []uint32{3, 1, 2, 2}, []float64{1, 2, 0, 1.5})
	h.upsert(svc)
	// The same ring size: ties go to the Maglev ring's pick.
	f, err := NewFakeSize(h.x.cfg.RingSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.UpsertService(svc); err != nil {
		t.Fatal(err)
	}
	kernel, fake := h.rawSend(), fakeSend(f)
	h.do(func() error {
		for i := range 300 {
			client := netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 200)})
			k := fkFlow(key, client, uint16(20000+i))
			a, err := kernel(k, tcpSYN)
			if err != nil {
				return err
			}
			b, err := fake(k, tcpSYN)
			if err != nil {
				return err
			}
			if a != b {
				t.Errorf("flow %d %v: kernel %v, Fake %v", i, k, a, b)
				return nil
			}
		}
		return nil
	})
}

// TestDelayChargesFastEnders: a server that ends every flow at once (a
// sinkhole answering each request with an error) holds nothing and would
// take every new flow; with a typical flow time set, it is charged by its
// recent new flows and its peer takes its part, in the kernel and the Fake.
func TestDelayChargesFastEnders(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	run := func(send sendFn, from int) map[netip.Addr]int {
		got := map[netip.Addr]int{}
		for i := from; i < from+100; i++ {
			k := fkFlow(key, netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 200)}), uint16(30000+i))
			a, err := send(k, tcpSYN)
			if err != nil {
				t.Fatal(err)
			}
			got[a]++
			if a == s1 {
				// s1 fails the flow at once: the client's FIN follows.
				if _, err := send(k, tcpACK|tcpFIN); err != nil {
					t.Fatal(err)
				}
			}
		}
		return got
	}
	svc := h.delayService(key, []uint32{1, 1}, nil)
	for _, flowTime := range []time.Duration{0, 300 * time.Millisecond} {
		svc.FlowTime = flowTime
		h.upsert(svc)
		h.setActive(key, s2, 10)
		var got map[netip.Addr]int
		h.do(func() error {
			got = run(h.rawSend(), int(flowTime/time.Millisecond))
			return nil
		})
		f, err := NewFakeSize(h.x.cfg.RingSize)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.UpsertService(svc); err != nil {
			t.Fatal(err)
		}
		var held []Flow
		for i := range 10 {
			held = append(held, Flow{Key: fkFlow(key, netip.AddrFrom4([4]byte{203, 0, 113, 250}), uint16(i+1)), Server: s2})
		}
		if err := f.UpsertFlows(held); err != nil {
			t.Fatal(err)
		}
		fakeGot := run(fakeSend(f), 0)
		t.Logf("flow time %v: kernel %v, Fake %v", flowTime, got, fakeGot)
		for what, g := range map[string]map[netip.Addr]int{"kernel": got, "Fake": fakeGot} {
			switch {
			case flowTime == 0 && g[s1] != 100:
				t.Errorf("%s, no charge: s1, holding nothing, got %d of 100 new flows, want all", what, g[s1])
			case flowTime > 0 && (g[s1] > 60 || g[s1] < 10):
				t.Errorf("%s, charged: s1 got %d of 100 new flows, want its peer to take a fair part", what, g[s1])
			}
		}
	}
}

// TestDelayIdleFollowsWeights: servers holding nothing all score alike, and
// the Maglev ring's pick takes the flow: at rest, new flows follow the
// weights, in the kernel and the Fake alike.
func TestDelayIdleFollowsWeights(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	svc := h.delayService(key, []uint32{1, 2, 3, 4}, nil)
	h.upsert(svc)
	weights := weightsOf(svc)
	f, err := NewFakeSize(h.x.cfg.RingSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.UpsertService(svc); err != nil {
		t.Fatal(err)
	}
	for what, send := range map[string]sendFn{"kernel": h.rawSend(), "Fake": fakeSend(f)} {
		counts := map[netip.Addr]int{}
		h.do(func() error {
			for i := range 20000 {
				k := fkFlow(key, netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 250)}), uint16(1024+i/250))
				a, err := send(k, tcpSYN)
				if err != nil {
					return err
				}
				counts[a]++
				// Each flow ends before the next begins: every server idle.
				if _, err := send(k, tcpACK|tcpFIN); err != nil {
					return err
				}
			}
			return nil
		})
		checkShares(t, what, counts, weights, 0.05)
	}
}

// TestDelayUnrecordedFollowsRing: an opener the table cannot remember (its
// bucket full of established flows) goes where the Maglev ring says, not
// where the delay scheduler would send it at that moment, and so does the
// stray ACK of the same flow: the handshake reaches one server. (The
// scheduler's choice, made again at the ACK, would send it elsewhere, and
// the server would reset the connection.)
func TestDelayUnrecordedFollowsRing(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: flowWays, IdleTimeout: time.Minute}) // one bucket
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(h.delayService(key, []uint32{1, 1, 1, 1}, nil))
	var held []Flow
	for p := uint16(1); p <= flowWays; p++ {
		held = append(held, Flow{Key: fkFlow(key, client4, p), Server: s1})
	}
	if err := h.x.UpsertFlows(held); err != nil {
		t.Fatal(err)
	}
	wantRingPlacement(t, h, key, "", nil)
}

// wantRingPlacement opens 40 new flows of key, a SYN then the handshake's
// ACK each, with s2..s4 busy so that the scheduler's choice would be s1
// whatever the ring, and checks that both packets go where the ring says.
// between, if set, runs after each flow.
func wantRingPlacement(t *testing.T, h *harness, key ServiceKey, what string, between func(send sendFn, i int) error) {
	t.Helper()
	for _, s := range []netip.Addr{s2, s3, s4} {
		h.setActive(key, s, 50)
	}
	send := h.rawSend()
	differs := 0
	h.do(func() error {
		for i := range 40 {
			k := fkFlow(key, netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)}), uint16(40000+i))
			ring, _ := h.p2cPair(k)
			a, err := send(k, tcpSYN)
			if err != nil {
				return err
			}
			b, err := send(k, tcpACK)
			if err != nil {
				return err
			}
			if a != ring || b != ring {
				t.Errorf("flow %v%s: SYN to %v, ACK to %v, the ring says %v", k, what, a, b, ring)
			}
			if ring != s1 {
				differs++
			}
			if between != nil {
				if err := between(send, i); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if differs == 0 {
		t.Errorf("the ring named s1 for every flow: the test shows nothing")
	}
}

// TestDelayUnderPressureFollowsRing: an opener that must displace a
// half-open flow (the table under pressure, a SYN flood most likely) is
// placed by the Maglev ring, not by the scheduler's walk over every
// server: a flood SYN costs what a Maglev new flow costs. It is recorded,
// so its handshake's ACK follows it.
func TestDelayUnderPressureFollowsRing(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: flowWays, IdleTimeout: time.Minute, HalfOpenTimeout: time.Minute}) // one bucket
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(h.delayService(key, []uint32{1, 1, 1, 1}, nil))
	// The bucket fills with half-open flows; each flow, established,
	// leaves the half-open ways, and another half-open flow takes its way.
	halfOpen := func(send sendFn, i int) error {
		_, err := send(fkFlow(key, netip.AddrFrom4([4]byte{198, 51, 100, byte(50 + i)}), 1000), tcpSYN)
		return err
	}
	h.do(func() error {
		for i := range flowWays {
			if err := halfOpen(h.rawSend(), i); err != nil {
				return err
			}
		}
		return nil
	})
	wantRingPlacement(t, h, key, " under pressure", func(send sendFn, i int) error { return halfOpen(send, 50+i) })
}
