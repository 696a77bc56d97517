package executor

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// floodPacket is one frame through the harness's data plane from inside
// h.do: the action and the server it went to ("" unless forwarded).
func (h *harness) floodPacket(src netip.Addr, sport, dport uint16, flags uint8, out []byte, byMAC map[string]netip.Addr) (uint32, netip.Addr, error) {
	return h.sendFrame(tcp4From(src, sport, dport, flags), out, byMAC)
}

// sendFrame is floodPacket for any frame.
func (h *harness) sendFrame(fr frame, out []byte, byMAC map[string]netip.Addr) (uint32, netip.Addr, error) {
	in := fr.build()
	opts := &ebpf.RunOptions{Data: in, DataOut: out, Context: xdpMD{DataEnd: uint32(len(in)), IngressIfindex: uint32(h.in)}}
	act, err := h.x.objs.NdDispatch.Run(opts)
	if err != nil {
		return 0, netip.Addr{}, err
	}
	return act, byMAC[net.HardwareAddr(opts.DataOut[:6]).String()], nil
}

// newFloodHarness is a data plane with a maxFlows table (idle timeout a
// minute, half-open timeout a second) serving each of svcs by the four
// servers at equal weights, and the servers by MAC address.
func newFloodHarness(t *testing.T, maxFlows uint32, svcs ...Service) (*harness, map[string]netip.Addr) {
	h := newHarness(t, Config{MaxFlows: maxFlows, IdleTimeout: time.Minute, HalfOpenTimeout: time.Second})
	for _, svc := range svcs {
		svc.Servers = []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1), h.server(s3, macS3, 1), h.server(s4, macS4, 1)}
		h.upsert(svc)
	}
	byMAC := map[string]netip.Addr{}
	for a, m := range macOf {
		byMAC[m.String()] = a
	}
	return h, byMAC
}

// TestSYNFlood is the acceptance test in BPF_PROG_RUN: flows are
// established, the weights change, and a flood of spoofed SYNs at 10x the
// table's capacity, with as many bare ACKs and RSTs, passes while half the
// flows stay idle and half send an ACK now and then. Every established
// flow keeps its server; the open-flow counts and the new-flow counters
// do not move; the half-open counts rise and return to zero after the
// half-open timeout; the table reports pressure during the flood only.
func TestSYNFlood(t *testing.T) {
	const maxFlows = 1024
	maglevKey := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	p2cKey := ServiceKey{VIP: vip4, Port: 81, Proto: TCP}
	h, byMAC := newFloodHarness(t, maxFlows, Service{Key: maglevKey}, Service{Key: p2cKey, Scheduler: SchedulerP2C})

	// Established flows, at most three in a bucket: a fourth would find
	// its bucket full of established flows and go unrecorded, which is
	// the table's capacity, not the flood, at work.
	type flow struct {
		key    FlowKey
		server netip.Addr
		active bool
	}
	var flows []flow
	perBucket := map[uint32]int{}
	out := make([]byte, 256)
	h.do(func() error {
		for i := 0; len(flows) < 400; i++ {
			port := uint16(80 + i%2)
			k := FlowKey{Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i%50)}), uint16(10000+i)), VIP: netip.AddrPortFrom(vip4, port), Proto: TCP}
			b := bucketIndex(flowHash(flowKey(k), 0), h.x.cfg.flowBuckets())
			if perBucket[b] == 3 {
				continue
			}
			perBucket[b]++
			var srv netip.Addr
			for _, flags := range []uint8{tcpSYN, tcpACK} {
				act, got, err := h.floodPacket(k.Client.Addr(), k.Client.Port(), port, flags, out, byMAC)
				if err != nil {
					return err
				}
				if act != xdpTX || (srv.IsValid() && got != srv) {
					return fmt.Errorf("establishing %v: %s to %v", k, actionNames[act], got)
				}
				srv = got
			}
			flows = append(flows, flow{key: k, server: srv, active: len(flows)%2 == 1})
		}
		return nil
	})
	for _, f := range flows {
		if got, ok, err := h.x.LookupFlow(f.key); err != nil || !ok || got.HalfOpen || got.Server != f.server {
			t.Fatalf("flow %v not established in the table: %+v %v %v", f.key, got, ok, err)
		}
	}

	// The weights move: most flows' ring slots now name other servers.
	for _, key := range []ServiceKey{maglevKey, p2cKey} {
		h.do(func() error {
			return h.x.SetWeights(key, map[netip.Addr]uint32{s1: 7, s2: 1, s3: 0, s4: 2})
		})
	}
	before := h.stats()
	countsBefore, err := h.x.ActiveCounts()
	if err != nil {
		t.Fatal(err)
	}
	tableBefore, err := h.x.ActiveFlows()
	if err != nil {
		t.Fatal(err)
	}

	// The flood: per round, 1,024 spoofed SYNs (a table's worth), 1,024
	// bare ACKs and 1,024 RSTs from random sources in 203.0.113.0/24,
	// then one ACK of every active flow.
	const rounds = 10
	rng := rand.New(rand.NewPCG(7, 11))
	var moved []string
	var halfDuring uint64
	h.do(func() error {
		for r := range rounds {
			for _, flags := range []uint8{tcpSYN, tcpACK, tcpRST} {
				for range maxFlows {
					src := netip.AddrFrom4([4]byte{203, 0, 113, byte(rng.IntN(256))})
					act, _, err := h.floodPacket(src, uint16(1024+rng.IntN(60000)), uint16(80+rng.IntN(2)), flags, out, byMAC)
					if err != nil {
						return err
					}
					if act != xdpTX {
						return fmt.Errorf("flood packet flags %#x: %s", flags, actionNames[act])
					}
				}
			}
			for _, f := range flows {
				if !f.active {
					continue
				}
				act, got, err := h.floodPacket(f.key.Client.Addr(), f.key.Client.Port(), f.key.VIP.Port(), tcpACK|tcpPSH, out, byMAC)
				if err != nil {
					return err
				}
				if act != xdpTX || got != f.server {
					moved = append(moved, fmt.Sprintf("round %d: active %v moved from %v to %v (%s)", r, f.key, f.server, got, actionNames[act]))
				}
			}
		}
		return nil
	})
	during := h.stats()
	for _, ss := range during.Services {
		for _, s := range ss.Servers {
			halfDuring += s.HalfOpen
		}
	}
	// Every flow, idle ones included, still reaches its server.
	h.do(func() error {
		for _, f := range flows {
			act, got, err := h.floodPacket(f.key.Client.Addr(), f.key.Client.Port(), f.key.VIP.Port(), tcpACK, out, byMAC)
			if err != nil {
				return err
			}
			if act != xdpTX || got != f.server {
				moved = append(moved, fmt.Sprintf("after the flood: %v (active %v) moved from %v to %v (%s)", f.key, f.active, f.server, got, actionNames[act]))
			}
		}
		return nil
	})
	kept := len(flows) - len(moved)
	t.Logf("flood of %d SYNs, %d ACKs, %d RSTs into a %d-flow table: %d of %d established flows kept (%.1f%%); %d half-open displaced, %d openers and %d strays unrecorded, %d half-open counted",
		rounds*maxFlows, rounds*maxFlows, rounds*maxFlows, maxFlows, kept, len(flows), 100*float64(kept)/float64(len(flows)),
		during.Global.HalfOpenEvicted, during.Global.OpenersUnrecorded, during.Global.StraysUnrecorded, halfDuring)
	for i, m := range moved {
		if i == 10 {
			t.Errorf("... and %d more", len(moved)-10)
			break
		}
		t.Error(m)
	}
	if during.Global.FlowsEvicted != 0 || during.Global.HalfOpenEvicted == 0 || !during.Global.TablePressure || halfDuring == 0 {
		t.Errorf("during the flood: %+v, %d half-open; want no established flow evicted, half-open ones displaced, pressure, half-open counts", during.Global, halfDuring)
	}

	// The flood moved no count the manager or p2c reads.
	for key, ss := range during.Services {
		for addr, s := range ss.Servers {
			b := before.Services[key].Servers[addr]
			if s.NewFlows != b.NewFlows || s.Closed != b.Closed || s.Expired != b.Expired || s.Active() != b.Active() {
				t.Errorf("%v %v: counters moved by the flood: %+v -> %+v", key, addr, b, s)
			}
		}
	}
	if counts, err := h.x.ActiveCounts(); err != nil || !reflect.DeepEqual(counts, countsBefore) {
		t.Errorf("p2c open-flow counts moved by the flood: %v -> %v (%v)", countsBefore, counts, err)
	}
	if table, err := h.x.ActiveFlows(); err != nil || !reflect.DeepEqual(table, tableBefore) {
		t.Errorf("open flows in the table moved by the flood: %v -> %v (%v)", tableBefore, table, err)
	}

	// The half-open timeout later, reconciled: no trace of the flood.
	time.Sleep(1500 * time.Millisecond)
	if err := h.x.ReconcileActive(); err != nil {
		t.Fatal(err)
	}
	after := h.stats()
	for key, ss := range after.Services {
		for addr, s := range ss.Servers {
			if s.HalfOpen != 0 {
				t.Errorf("%v %v: %d half-open flows counted after the half-open timeout", key, addr, s.HalfOpen)
			}
		}
	}
	if after.Global.TablePressure {
		t.Errorf("table still under pressure after the flood")
	}
	if counts, err := h.x.ActiveCounts(); err != nil || !reflect.DeepEqual(counts, countsBefore) {
		t.Errorf("p2c open-flow counts after reconciling: %v -> %v (%v)", countsBefore, counts, err)
	}
}

// TestClockAcrossCPUs: a flow whose last_seen is later than the packet's
// now (written by another CPU after this one read the clock) is live: it
// keeps its server and is neither counted expired nor displaced. Compared
// unsigned, now - last_seen wrapped and the flow looked idle.
func TestClockAcrossCPUs(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: flowWays, IdleTimeout: 10 * time.Second}) // one bucket
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	fk := func(p uint16) FlowKey {
		return FlowKey{Client: netip.AddrPortFrom(client4, p), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
	}
	var flows []Flow
	for p := uint16(1); p <= flowWays; p++ {
		flows = append(flows, Flow{Key: fk(p), Server: s2})
	}
	if err := h.x.UpsertFlows(flows); err != nil {
		t.Fatal(err)
	}
	// Every way's last_seen a second ahead of the clock.
	var b dispatchFlowBucket
	if err := h.x.objs.Conns.Lookup(uint32(0), &b); err != nil {
		t.Fatal(err)
	}
	for i := range b.Head {
		b.Head[i].LastSeen = h.x.kernelNow() + uint64(time.Second)
	}
	if err := h.x.objs.Conns.Update(uint32(0), &b, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	h.do(func() error { return h.x.SetWeights(key, map[netip.Addr]uint32{s2: 0}) })

	// A SYN into the full bucket displaces none of them.
	h.dispatch(tcp4(100, 80, tcpSYN).build())
	for _, f := range flows {
		if _, ok, err := h.x.LookupFlow(f.Key); err != nil || !ok {
			t.Fatalf("flow %v displaced by a SYN (%v)", f.Key, err)
		}
	}
	// Their packets still reach s2, quiesced but keeping its flows.
	for _, f := range flows {
		act, out := h.dispatch(tcp4(f.Key.Client.Port(), 80, tcpACK).build())
		if act != xdpTX || serverByMAC(out) != "s2" {
			t.Fatalf("flow %v: %s to %s, want s2", f.Key, actionNames[act], serverByMAC(out))
		}
	}
	if s := h.stats(); s.Services[key].Servers[s2].Expired != 0 || s.Global.FlowsEvicted != 0 {
		t.Fatalf("live flows counted gone: %+v", s)
	}
}

// TestIdleFlowDroppedOnce: an idle flow whose new pick fails (every server
// quiesced) is counted expired once, not on every packet, and its
// server's open-flow count does not go below zero.
func TestIdleFlowDroppedOnce(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 10, IdleTimeout: time.Second})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(h.p2cService(key, 1))
	fk := FlowKey{Client: netip.AddrPortFrom(client4, 5000), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
	if err := h.x.UpsertFlows([]Flow{{Key: fk, Server: s1, Idle: 5 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	if got := h.activeRaw(key, s1); got != 1 {
		t.Fatalf("learnt flow counted %d, want 1", got)
	}
	h.do(func() error { return h.x.SetWeights(key, map[netip.Addr]uint32{s1: 0}) })
	for range 3 {
		if act, _ := h.dispatch(tcp4(5000, 80, tcpACK).build()); act != xdpDrop {
			t.Fatalf("packet with no server to take it: %s, want drop", actionNames[act])
		}
	}
	if s, n := h.stats().Services[key].Servers[s1], h.activeRaw(key, s1); s.Expired != 1 || n != 0 {
		t.Fatalf("expired %d, open-flow count %d; want 1 and 0", s.Expired, n)
	}
}

// TestHalfOpenRepickedWhenQuiesced: a SYN retransmitted to a server taken
// out (weight 0) is picked again, while an established flow keeps its
// quiesced server.
func TestHalfOpenRepickedWhenQuiesced(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 10})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	var half, est uint16
	for p := uint16(2000); half == 0 || est == 0; p++ {
		_, out := h.dispatch(tcp4(p, 80, tcpSYN).build())
		if serverByMAC(out) != "s1" {
			continue
		}
		if half == 0 {
			half = p
		} else {
			est = p
			h.dispatch(tcp4(p, 80, tcpACK).build())
		}
	}
	s2Half := h.stats().Services[key].Servers[s2].HalfOpen // the SYNs that went to s2
	h.do(func() error { return h.x.SetWeights(key, map[netip.Addr]uint32{s1: 0}) })
	if _, out := h.dispatch(tcp4(half, 80, tcpSYN).build()); serverByMAC(out) != "s2" {
		t.Fatalf("retransmitted SYN went to %s, want s2", serverByMAC(out))
	}
	if _, out := h.dispatch(tcp4(half, 80, tcpACK).build()); serverByMAC(out) != "s2" {
		t.Fatalf("its ACK went to %s, want s2", serverByMAC(out))
	}
	if _, out := h.dispatch(tcp4(est, 80, tcpACK).build()); serverByMAC(out) != "s1" {
		t.Fatalf("established flow went to %s, want its quiesced s1", serverByMAC(out))
	}
	if s := h.stats().Services[key].Servers; s[s1].HalfOpen != 0 || s[s2].HalfOpen != s2Half {
		t.Fatalf("half-open counts %d, %d; want 0, %d", s[s1].HalfOpen, s[s2].HalfOpen, s2Half)
	}
}

// TestExpireNodestConn: with expire_nodest_conn on, an established flow
// whose server is taken out (weight 0) is dispatched anew on its next
// packet and counted expired; off (TestHalfOpenRepickedWhenQuiesced), it
// keeps its server.
func TestExpireNodestConn(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 10, ExpireNodestConn: true})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	var port uint16
	for p := uint16(3000); port == 0; p++ {
		if _, out := h.dispatch(tcp4(p, 80, tcpSYN).build()); serverByMAC(out) == "s1" {
			port = p
		}
	}
	h.dispatch(tcp4(port, 80, tcpACK).build())
	h.do(func() error { return h.x.SetWeights(key, map[netip.Addr]uint32{s1: 0}) })
	if _, out := h.dispatch(tcp4(port, 80, tcpACK|tcpPSH).build()); serverByMAC(out) != "s2" {
		t.Fatalf("established flow of a server taken out went to %s, want s2", serverByMAC(out))
	}
	if s := h.stats().Services[key].Servers[s1]; s.Expired != 1 || s.Active() != 0 {
		t.Fatalf("s1 after its flow left: %+v, want 1 expired, 0 active", s)
	}
}

// TestUDPFloodLeavesRoomForNewFlows: spoofed datagrams, one from each
// forged source, at 10x the table's capacity, into a table that holds UDP
// flows that have sent more than one datagram and established TCP flows,
// the weights moved before the flood. Every real flow keeps its server, and
// new TCP flows opened after the flood are still recorded: a UDP flow seen
// once ranks with half-open flows as a victim, so the flood's entries do
// not fill the buckets for the idle timeout.
func TestUDPFloodLeavesRoomForNewFlows(t *testing.T) {
	const maxFlows = 1024
	udpKey := ServiceKey{VIP: vip4, Port: 53, Proto: UDP}
	tcpKey := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h, byMAC := newFloodHarness(t, maxFlows, Service{Key: udpKey}, Service{Key: tcpKey})
	udp := func(src netip.Addr, sport uint16) frame {
		return frame{dstMAC: macIn, srcMAC: macClient, src: src, dst: vip4, proto: 17, sport: sport, dport: 53, payload: []byte("query")}
	}

	// Real flows: a UDP flow that sent two datagrams and a TCP flow past
	// its handshake in every other bucket, at most two flows a bucket.
	type flow struct {
		fr     frame
		key    FlowKey
		server netip.Addr
	}
	var flows []flow
	perBucket := map[uint32]int{}
	out := make([]byte, 256)
	h.do(func() error {
		for i := 0; len(flows) < 300; i++ {
			src := netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i%50)})
			fr, proto, port, steps := udp(src, uint16(10000+i)), UDP, uint16(53), [][]uint8{{0}, {0}}
			if i%2 == 1 {
				fr, proto, port, steps = tcp4From(src, uint16(10000+i), 80, 0), TCP, 80, [][]uint8{{tcpSYN}, {tcpACK}}
			}
			k := FlowKey{Client: netip.AddrPortFrom(src, uint16(10000+i)), VIP: netip.AddrPortFrom(vip4, port), Proto: proto}
			b := bucketIndex(flowHash(flowKey(k), 0), h.x.cfg.flowBuckets())
			if perBucket[b] == 2 {
				continue
			}
			perBucket[b]++
			var srv netip.Addr
			for _, st := range steps {
				fr.tcpFlags = st[0]
				act, got, err := h.sendFrame(fr, out, byMAC)
				if err != nil {
					return err
				}
				if act != xdpTX || (srv.IsValid() && got != srv) {
					return fmt.Errorf("establishing %v: %s to %v", k, actionNames[act], got)
				}
				srv = got
			}
			fr.tcpFlags = tcpACK
			if proto == UDP {
				fr.tcpFlags = 0
			}
			flows = append(flows, flow{fr: fr, key: k, server: srv})
		}
		return nil
	})
	for _, key := range []ServiceKey{udpKey, tcpKey} {
		h.do(func() error {
			return h.x.SetWeights(key, map[netip.Addr]uint32{s1: 7, s2: 1, s3: 0, s4: 2})
		})
	}
	before := h.stats()

	rng := rand.New(rand.NewPCG(3, 5))
	h.do(func() error {
		for range 10 * maxFlows {
			src := netip.AddrFrom4([4]byte{203, 0, 113, byte(rng.IntN(256))})
			if act, _, err := h.sendFrame(udp(src, uint16(1024+rng.IntN(60000))), out, byMAC); err != nil || act != xdpTX {
				return fmt.Errorf("flood datagram: %s, %v", actionNames[act], err)
			}
		}
		return nil
	})

	var moved []string
	h.do(func() error {
		for _, f := range flows {
			act, got, err := h.sendFrame(f.fr, out, byMAC)
			if err != nil {
				return err
			}
			if act != xdpTX || got != f.server {
				moved = append(moved, fmt.Sprintf("%v moved from %v to %v (%s)", f.key, f.server, got, actionNames[act]))
			}
		}
		return nil
	})
	for i, m := range moved {
		if i == 10 {
			t.Errorf("... and %d more", len(moved)-10)
			break
		}
		t.Error(m)
	}

	// New TCP flows after the flood: each SYN is remembered half-open.
	var unrecorded int
	h.do(func() error {
		for i := range 300 {
			src := netip.AddrFrom4([4]byte{198, 51, 100, byte(100 + i%50)})
			if act, _, err := h.floodPacket(src, uint16(20000+i), 80, tcpSYN, out, byMAC); err != nil || act != xdpTX {
				return fmt.Errorf("new SYN: %s, %v", actionNames[act], err)
			}
			k := FlowKey{Client: netip.AddrPortFrom(src, uint16(20000+i)), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
			if f, ok, err := h.x.LookupFlow(k); err != nil || !ok || !f.HalfOpen {
				unrecorded++
			}
		}
		return nil
	})
	after := h.stats()
	t.Logf("%d spoofed datagrams into a %d-flow table: %d of %d real flows kept; %d of 300 new TCP flows unrecorded; %d displaced, %d openers unrecorded",
		10*maxFlows, maxFlows, len(flows)-len(moved), len(flows), unrecorded, after.Global.HalfOpenEvicted, after.Global.OpenersUnrecorded)
	if unrecorded != 0 || after.Global.OpenersUnrecorded != before.Global.OpenersUnrecorded {
		t.Errorf("%d of 300 new TCP flows were not recorded after the flood (openers unrecorded %d -> %d)",
			unrecorded, before.Global.OpenersUnrecorded, after.Global.OpenersUnrecorded)
	}
	if after.Global.FlowsEvicted != 0 {
		t.Errorf("flows evicted: %d, want 0", after.Global.FlowsEvicted)
	}
}

// TestSYNFloodKeepsAffinity: clients of a sticky service that completed a
// handshake keep their server through a flood of spoofed SYNs from 10x as
// many sources as the affinity table holds, with the weights moved: each
// client's next connection still goes to its sticky server. A client's
// SYNs sent together before any handshake completes land together.
func TestSYNFloodKeepsAffinity(t *testing.T) {
	const maxAffinity = 1024
	h := newHarness(t, Config{MaxFlows: 1 << 14, MaxAffinity: maxAffinity, IdleTimeout: time.Minute, HalfOpenTimeout: time.Second})
	key := ServiceKey{VIP: vip6, Port: 443, Proto: TCP}
	v6 := []netip.Addr{netip.MustParseAddr("2001:db8::11"), netip.MustParseAddr("2001:db8::12"), netip.MustParseAddr("2001:db8::13"), netip.MustParseAddr("2001:db8::14")}
	macs := []net.HardwareAddr{macS1, macS2, macS3, macS4}
	byMAC := map[string]netip.Addr{}
	servers := func(w ...uint32) []Server {
		var out []Server
		for i, a := range v6 {
			out = append(out, h.server(a, macs[i], w[i]))
			byMAC[macs[i].String()] = a
		}
		return out
	}
	h.upsert(Service{Key: key, StickyTime: time.Minute, Servers: servers(1, 1, 1, 1)})
	syn := func(src netip.Addr, sport uint16, flags uint8) frame {
		return frame{dstMAC: macIn, srcMAC: macClient, src: src, dst: vip6, proto: 6, sport: sport, dport: 443, tcpFlags: flags}
	}
	out := make([]byte, 256)
	send := func(fr frame) (netip.Addr, error) {
		act, got, err := h.sendFrame(fr, out, byMAC)
		if err == nil && act != xdpTX {
			err = fmt.Errorf("%v: %s", fr.src, actionNames[act])
		}
		return got, err
	}

	// 200 clients complete a handshake each.
	sticky := map[netip.Addr]netip.Addr{}
	client := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 15: byte(i), 14: byte(i >> 8)})
	}
	h.do(func() error {
		for i := range 200 {
			c := client(i)
			srv, err := send(syn(c, 10000, tcpSYN))
			if err != nil {
				return err
			}
			if _, err := send(syn(c, 10000, tcpACK)); err != nil {
				return err
			}
			sticky[c] = srv
		}
		return nil
	})
	h.do(func() error {
		return h.x.SetWeights(key, map[netip.Addr]uint32{v6[0]: 7, v6[1]: 1, v6[2]: 3, v6[3]: 2})
	})

	// The flood: spoofed SYNs from 10 x maxAffinity random sources.
	rng := rand.New(rand.NewPCG(13, 17))
	h.do(func() error {
		for range 10 * maxAffinity {
			var a [16]byte
			copy(a[:], []byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff})
			for j := 6; j < 16; j++ {
				a[j] = byte(rng.IntN(256))
			}
			if _, err := send(syn(netip.AddrFrom16(a), uint16(1024+rng.IntN(60000)), tcpSYN)); err != nil {
				return err
			}
		}
		return nil
	})

	// Every client's next connection goes to its sticky server.
	var moved []string
	h.do(func() error {
		for i := range 200 {
			c := client(i)
			got, err := send(syn(c, 20000, tcpSYN))
			if err != nil {
				return err
			}
			if got != sticky[c] {
				moved = append(moved, fmt.Sprintf("%v: new connection to %v, sticky %v", c, got, sticky[c]))
			}
		}
		return nil
	})
	t.Logf("%d spoofed SYNs against a %d-client affinity table: %d of 200 clients kept their sticky server", 10*maxAffinity, maxAffinity, 200-len(moved))
	for i, m := range moved {
		if i == 10 {
			t.Errorf("... and %d more", len(moved)-10)
			break
		}
		t.Error(m)
	}

	// Two SYNs of one client sent together, before either handshake
	// completes, go to one server.
	h.do(func() error {
		for i := 300; i < 350; i++ {
			c := client(i)
			a, err := send(syn(c, 30000, tcpSYN))
			if err != nil {
				return err
			}
			b, err := send(syn(c, 30001, tcpSYN))
			if err != nil {
				return err
			}
			if a != b {
				t.Errorf("%v: parallel SYNs to %v and %v", c, a, b)
			}
		}
		return nil
	})
}

// TestWayBeingWrittenIsNotRecordedTwice: a packet that finds its flow's way
// being written by another CPU (its count odd, held there: a writer
// interrupted mid-write) must not take the flow for absent and record it a
// second time in another way of the bucket; it goes unrecorded, counted.
func TestWayBeingWrittenIsNotRecordedTwice(t *testing.T) {
	h, byMAC := newFloodHarness(t, 1<<10, Service{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}})
	k := FlowKey{Client: netip.AddrPortFrom(client4, 40000), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
	out := make([]byte, 256)
	h.do(func() error {
		for _, flags := range []uint8{tcpSYN, tcpACK} {
			if _, _, err := h.floodPacket(client4, 40000, 80, flags, out, byMAC); err != nil {
				return err
			}
		}
		return nil
	})
	idx := bucketIndex(flowHash(flowKey(k), h.x.cfg.HashSeed), h.x.cfg.flowBuckets())
	ways := func() (held []int, bk dispatchFlowBucket) {
		if err := h.x.objs.Conns.Lookup(idx, &bk); err != nil {
			t.Fatal(err)
		}
		for w := range bk.Head {
			if bk.Head[w].Meta&flowValid != 0 && bk.Body[w].Key == flowKey(k) {
				held = append(held, w)
			}
		}
		return held, bk
	}
	held, bk := ways()
	if len(held) != 1 {
		t.Fatalf("the flow is in ways %v of its bucket, want one", held)
	}
	bk.Head[held[0]].Seq |= 1 // a writer holds the way
	if err := h.x.objs.Conns.Update(idx, bk, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	before := h.stats().Global.FlowsUnrecorded
	h.do(func() error {
		for range 3 {
			if act, _, err := h.floodPacket(client4, 40000, 80, tcpACK|tcpPSH, out, byMAC); err != nil || act != xdpTX {
				return fmt.Errorf("packet while the way is written: %s, %v", actionNames[act], err)
			}
		}
		return nil
	})
	if held, _ := ways(); len(held) != 1 {
		t.Errorf("after packets that met the way being written, the flow is in ways %v, want one", held)
	}
	if got := h.stats().Global.FlowsUnrecorded - before; got != 3 {
		t.Errorf("%d packets counted unrecorded for a way being written, want 3", got)
	}
}
