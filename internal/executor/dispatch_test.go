package executor

import (
	"bytes"
	"net/netip"
	"os"
	"testing"
	"time"
)

const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

var actionNames = map[uint32]string{0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}

// fixtureWorld installs one single-server service per path, so that every
// expected output frame is known exactly.
func fixtureWorld(t testing.TB) *harness {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{h.server(s1, macS1, 10)}})
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 53, Proto: UDP}, Servers: []Server{h.server(s2, macS2, 10)}})
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 8080, Proto: TCP}, Servers: []Server{{Addr: s3, MAC: macS3, Ifindex: h.out, Weight: 10}}})
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 8081, Proto: TCP}, Servers: []Server{{Addr: local4, Local: true, Weight: 10}}})
	h.upsert(Service{Key: ServiceKey{VIP: vip6, Port: 80, Proto: TCP}, Servers: []Server{h.server(s1v6, macS1, 10)}})
	h.upsert(Service{Key: ServiceKey{VIP: vip6, Port: 53, Proto: UDP}, Servers: []Server{h.server(netip.MustParseAddr("2001:db8::12"), macS2, 10)}})
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 9000, Proto: TCP}, Servers: []Server{h.server(s4, macS4, 0)}})
	// p2c services, for the fuzzer: their picks depend on the counts.
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 8082, Proto: TCP}, Scheduler: SchedulerP2C, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 2), h.server(s3, macS3, 3)}})
	h.upsert(Service{Key: ServiceKey{VIP: vip6, Port: 8082, Proto: UDP}, Scheduler: SchedulerP2C, StickyTime: time.Minute, Servers: []Server{h.server(s1v6, macS1, 1), h.server(netip.MustParseAddr("2001:db8::12"), macS2, 1)}})
	return h
}

func TestFixtures(t *testing.T) {
	h := fixtureWorld(t)

	udp4 := func(dport uint16) frame {
		return frame{dstMAC: macIn, srcMAC: macClient, src: client4, dst: vip4, proto: 17, sport: 5353, dport: dport, payload: []byte("query")}
	}
	tcp6 := func(dport uint16, flags uint8) frame {
		return frame{dstMAC: macIn, srcMAC: macClient, src: client6, dst: vip6, proto: 6, sport: 40000, dport: dport, tcpFlags: flags}
	}
	udp6 := frame{dstMAC: macIn, srcMAC: macClient, src: client6, dst: vip6, proto: 17, sport: 5353, dport: 53, payload: []byte("q6")}

	vlan := tcp4(40001, 80, tcpSYN)
	vlan.vlan = 42
	opts := tcp4(40002, 80, tcpSYN)
	opts.ipOptions = []byte{1, 1, 1, 0} // NOP NOP NOP EOL
	hbh := tcp6(80, tcpSYN)
	hbh.sport = 40003
	hbh.hopByHop = true
	frag4 := udp4(53)
	frag4.fragment = true
	frag6 := udp6
	frag6.fragment = true
	nonVIPFrag := udp4(53)
	nonVIPFrag.dst = netip.MustParseAddr("198.51.100.200")
	nonVIPFrag.fragment = true
	nonVIP := tcp4(40004, 80, tcpSYN)
	nonVIP.dst = netip.MustParseAddr("198.51.100.200")
	nonVIP6 := tcp6(80, tcpSYN)
	nonVIP6.dst = netip.MustParseAddr("2001:db8::200")
	echo4 := frame{dstMAC: macIn, srcMAC: macClient, src: client4, dst: vip4, proto: 1, l4: []byte{8, 0, 0, 0, 0, 1, 0, 1, 'p', 'i', 'n', 'g'}}
	echo6 := frame{dstMAC: macIn, srcMAC: macClient, src: client6, dst: vip6, proto: 58, l4: []byte{128, 0, 0, 0, 0, 1, 0, 1}}
	gre := frame{dstMAC: macIn, srcMAC: macClient, src: client4, dst: vip4, proto: 47, payload: make([]byte, 8)}
	arp := append(append(append([]byte{}, macIn...), macClient...), 0x08, 0x06)
	arp = append(arp, make([]byte, 28)...)

	truncatedTCP := tcp4(40005, 80, tcpSYN).build()
	truncatedTCP = truncatedTCP[:14+20+10]
	truncatedIP := tcp4(40005, 80, tcpSYN).build()[:14+12]

	cases := []struct {
		name   string
		in     []byte
		action uint32
		out    []byte // nil: the input unchanged
	}{
		{"tcp4 new flow: MAC rewrite, XDP_TX", tcp4(40000, 80, tcpSYN).build(), xdpTX, withMACs(tcp4(40000, 80, tcpSYN).build(), macS1, macIn)},
		{"tcp4 established", tcp4(40000, 80, tcpACK|tcpPSH).build(), xdpTX, withMACs(tcp4(40000, 80, tcpACK|tcpPSH).build(), macS1, macIn)},
		{"udp4 new flow", udp4(53).build(), xdpTX, withMACs(udp4(53).build(), macS2, macIn)},
		{"tcp6 new flow", tcp6(80, tcpSYN).build(), xdpTX, withMACs(tcp6(80, tcpSYN).build(), macS1, macIn)},
		{"udp6 new flow", udp6.build(), xdpTX, withMACs(udp6.build(), macS2, macIn)},
		{"vlan tagged: tag kept", vlan.build(), xdpTX, withMACs(vlan.build(), macS1, macIn)},
		{"ipv4 with options", opts.build(), xdpTX, withMACs(opts.build(), macS1, macIn)},
		{"ipv6 hop-by-hop header", hbh.build(), xdpTX, withMACs(hbh.build(), macS1, macIn)},
		{"server on another interface: redirect", tcp4(40006, 8080, tcpSYN).build(), xdpRedirect, withMACs(tcp4(40006, 8080, tcpSYN).build(), macS3, macOut)},
		{"co-located server: pass untouched", tcp4(40007, 8081, tcpSYN).build(), xdpPass, nil},
		{"undefined port on VIP: dropped", tcp4(40008, 443, tcpSYN).build(), xdpDrop, nil},
		{"undefined protocol on port: dropped", udp4(80).build(), xdpDrop, nil},
		{"other IP protocol to VIP: dropped", gre.build(), xdpDrop, nil},
		{"not a VIP: pass untouched", nonVIP.build(), xdpPass, nil},
		{"not a VIP (v6): pass untouched", nonVIP6.build(), xdpPass, nil},
		{"ARP: pass untouched", arp, xdpPass, nil},
		{"fragment to VIP: dropped", frag4.build(), xdpDrop, nil},
		{"v6 fragment to VIP: dropped", frag6.build(), xdpDrop, nil},
		{"fragment not to a VIP: pass", nonVIPFrag.build(), xdpPass, nil},
		{"icmp echo to VIP: local stack", echo4.build(), xdpPass, nil},
		{"icmpv6 echo to VIP: local stack", echo6.build(), xdpPass, nil},
		{"only quiesced servers: dropped", tcp4(40009, 9000, tcpSYN).build(), xdpDrop, nil},
		{"truncated tcp header to VIP: dropped", truncatedTCP, xdpDrop, nil},
		{"truncated ip header: pass", truncatedIP, xdpPass, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			act, out := h.with(t).dispatch(c.in)
			if act != c.action {
				t.Fatalf("action %s, want %s", actionNames[act], actionNames[c.action])
			}
			want := c.out
			if want == nil {
				want = c.in
			}
			if !bytes.Equal(out, want) {
				t.Fatalf("output frame differs\n got %x\nwant %x", out, want)
			}
		})
	}

	st := h.stats()
	if got := st.VIPs[vip4].Filtered; got != 3 {
		t.Errorf("filtered on %v = %d, want 3", vip4, got)
	}
	if got := st.VIPs[vip4].Fragments + st.VIPs[vip6].Fragments; got != 2 {
		t.Errorf("fragments = %d, want 2", got)
	}
	if got := st.VIPs[vip4].ICMPLocal + st.VIPs[vip6].ICMPLocal; got != 2 {
		t.Errorf("icmp local = %d, want 2", got)
	}
	if got := st.Services[ServiceKey{VIP: vip4, Port: 9000, Proto: TCP}].NoServer; got != 1 {
		t.Errorf("no-server drops = %d, want 1", got)
	}
	if got := st.Global.Malformed; got != 2 {
		t.Errorf("malformed = %d, want 2", got)
	}
	if got := st.Global.Passed; got != 3 {
		t.Errorf("passed = %d, want 3 (non-VIP v4, v6 and fragment)", got)
	}
	if got := st.Global.NotIP; got != 1 {
		t.Errorf("not IP = %d, want 1", got)
	}
	s1stats := st.Services[ServiceKey{VIP: vip4, Port: 80, Proto: TCP}].Servers[s1]
	// SYN 40000, ACK 40000 (which establishes it), vlan SYN, options
	// SYN: one established flow, two half-open.
	if s1stats.NewFlows != 1 || s1stats.Packets != 4 || s1stats.HalfOpenOpened != 3 || s1stats.HalfOpen != 2 {
		t.Errorf("s1 counters %+v, want 1 new flow, 4 packets, 3 half-open opened, 2 half-open", s1stats)
	}
}

// TestEstablishedAndClose follows one connection through the table: its
// packets stick to one server, a FIN counts it closed, and a SYN reusing the
// closed tuple is a new connection.
func TestEstablishedAndClose(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1), h.server(s3, macS3, 1), h.server(s4, macS4, 1)}})

	_, out := h.dispatch(tcp4(41000, 80, tcpSYN).build())
	first := serverByMAC(out)
	for _, flags := range []uint8{tcpACK, tcpACK | tcpPSH, tcpACK | tcpFIN, tcpACK} {
		act, out := h.dispatch(tcp4(41000, 80, flags).build())
		if act != xdpTX || serverByMAC(out) != first {
			t.Fatalf("packet with flags %#x went to %s (%s), want %s", flags, serverByMAC(out), actionNames[act], first)
		}
	}
	f, ok, err := h.x.LookupFlow(FlowKey{Client: netip.AddrPortFrom(client4, 41000), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP})
	if err != nil || !ok || !f.Closing {
		t.Fatalf("flow after FIN: %+v %v %v, want a closing entry", f, ok, err)
	}
	st := h.stats().Services[key]
	var newFlows, closed, active uint64
	for _, s := range st.Servers {
		newFlows += s.NewFlows
		closed += s.Closed
		active += s.Active()
	}
	if newFlows != 1 || closed != 1 || active != 0 {
		t.Fatalf("new %d closed %d active %d, want 1 1 0", newFlows, closed, active)
	}

	// Many SYNs reusing closed tuples: each is a new flow, so they spread.
	seen := map[string]bool{}
	for p := uint16(0); p < 64; p++ {
		h.dispatch(tcp4(42000+p, 80, tcpSYN).build())
		h.dispatch(tcp4(42000+p, 80, tcpRST).build())
		_, out := h.dispatch(tcp4(42000+p, 80, tcpSYN).build())
		seen[serverByMAC(out)] = true
		h.dispatch(tcp4(42000+p, 80, tcpACK).build()) // established
	}
	if len(seen) != 4 {
		t.Fatalf("reused tuples reached %v, want all 4 servers", seen)
	}
	active4, err := h.x.ActiveFlows()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, c := range active4[key] {
		n += c
	}
	if n != 64 {
		t.Fatalf("table holds %d open flows, want 64", n)
	}
}

// TestOtherHostsMAC: once attached to its ingress interface, the program
// forwards only frames addressed to that interface's MAC; a frame for a VIP
// sent to another host's MAC (flooded, or seen in promiscuous mode) or to a
// group address goes to the stack untouched, records no flow and is counted.
// Detached, the interface is no longer checked.
func TestOtherHostsMAC(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	h.do(func() error { return h.x.Attach(h.in) })

	other := tcp4(44000, 80, tcpSYN)
	other.dstMAC = mustMAC("02:00:00:00:01:99") // another dispatcher's
	broadcast := tcp4(44001, 80, tcpSYN)
	broadcast.dstMAC = mustMAC("ff:ff:ff:ff:ff:ff")
	for _, f := range []frame{other, broadcast} {
		if act, _ := h.dispatch(f.build()); act != xdpPass {
			t.Fatalf("SYN to %s: %s, want pass", f.dstMAC, actionNames[act])
		}
		k := FlowKey{Client: netip.AddrPortFrom(client4, f.sport), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
		if _, ok, _ := h.x.LookupFlow(k); ok {
			t.Fatalf("SYN to %s recorded a flow", f.dstMAC)
		}
	}
	if got := h.stats().Global.OtherHost; got != 2 {
		t.Fatalf("other_host %d, want 2", got)
	}
	if act, _ := h.dispatch(tcp4(44002, 80, tcpSYN).build()); act != xdpTX {
		t.Fatalf("SYN to the dispatcher's own MAC: %s, want tx", actionNames[act])
	}

	h.do(func() error { return h.x.Detach(h.in) })
	if act, _ := h.dispatch(other.build()); act != xdpTX {
		t.Fatalf("after detach, SYN to another MAC: %s, want tx (not checked)", actionNames[act])
	}
}

// TestNonSYNWithoutEntry: after a restart or failover the table may lack a
// flow; its next packet goes where the ring says, which is where its SYN went.
func TestNonSYNWithoutEntry(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1), h.server(s3, macS3, 1)}})
	for p := uint16(0); p < 100; p++ {
		k := FlowKey{Client: netip.AddrPortFrom(client4, 43000+p), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
		_, out := h.dispatch(tcp4(43000+p, 80, tcpSYN).build())
		want := serverByMAC(out)
		if err := h.x.DeleteFlow(k); err != nil {
			t.Fatal(err)
		}
		act, out := h.dispatch(tcp4(43000+p, 80, tcpACK).build())
		if act != xdpTX || serverByMAC(out) != want {
			t.Fatalf("port %d: mid-flow packet without entry went to %s, want %s", 43000+p, serverByMAC(out), want)
		}
		if _, ok, _ := h.x.LookupFlow(k); !ok {
			t.Fatalf("port %d: no entry recorded for the adopted flow", 43000+p)
		}
	}
}

// TestQuiesceAndRemove: a quiesced server keeps its flows and gets no new
// ones; a removed server's flows are dispatched anew.
func TestQuiesceAndRemove(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	servers := []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1), h.server(s3, macS3, 1)}
	h.upsert(Service{Key: key, Servers: servers})

	owner := map[uint16]string{}
	for p := uint16(0); p < 300; p++ {
		_, out := h.dispatch(tcp4(44000+p, 80, tcpSYN).build())
		owner[44000+p] = serverByMAC(out)
	}
	h.do(func() error { return h.x.SetWeights(key, map[netip.Addr]uint32{s1: 0}) })
	for p, want := range owner {
		if _, out := h.dispatch(tcp4(p, 80, tcpACK).build()); serverByMAC(out) != want {
			t.Fatalf("flow %d moved from %s to %s after quiesce", p, want, serverByMAC(out))
		}
	}
	for p := uint16(0); p < 300; p++ {
		if _, out := h.dispatch(tcp4(45000+p, 80, tcpSYN).build()); serverByMAC(out) == "s1" {
			t.Fatalf("new flow %d went to quiesced s1", 45000+p)
		}
	}

	// Remove s2: its flows go elsewhere, the others stay.
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 0), h.server(s3, macS3, 1)}})
	for p, was := range owner {
		_, out := h.dispatch(tcp4(p, 80, tcpACK).build())
		got := serverByMAC(out)
		switch {
		case was == "s2" && got != "s3":
			t.Fatalf("flow %d of removed s2 went to %s, want s3 (only server taking flows)", p, got)
		case was != "s2" && got != was:
			t.Fatalf("flow %d moved from %s to %s when s2 was removed", p, was, got)
		}
	}

	// A new server in the removed one's slot must not inherit its flows.
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 0), h.server(s3, macS3, 1), h.server(s4, macS4, 1)}})
	for p, was := range owner {
		_, out := h.dispatch(tcp4(p, 80, tcpACK).build())
		if was == "s1" && serverByMAC(out) != "s1" {
			t.Fatalf("flow %d of quiesced s1 moved to %s", p, serverByMAC(out))
		}
	}
}

func TestAffinity(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	servers := []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1), h.server(s3, macS3, 1), h.server(s4, macS4, 1)}
	h.upsert(Service{Key: key, StickyTime: 60 * time.Second, Servers: servers})

	spread := map[string]bool{}
	for c := 1; c <= 40; c++ {
		client := netip.AddrFrom4([4]byte{203, 0, 113, byte(c)})
		_, out := h.dispatch(tcp4From(client, 1000, 80, tcpSYN).build())
		first := serverByMAC(out)
		spread[first] = true
		for p := uint16(1001); p < 1021; p++ {
			if _, out := h.dispatch(tcp4From(client, p, 80, tcpSYN).build()); serverByMAC(out) != first {
				t.Fatalf("client %v: flow from port %d went to %s, sticky server is %s", client, p, serverByMAC(out), first)
			}
		}
	}
	if len(spread) < 3 {
		t.Fatalf("40 clients reached only %v", spread)
	}

	// Without affinity the same client spreads.
	h.upsert(Service{Key: key, Servers: servers})
	seen := map[string]bool{}
	for p := uint16(2000); p < 2100; p++ {
		_, out := h.dispatch(tcp4(p, 80, tcpSYN).build())
		seen[serverByMAC(out)] = true
	}
	if len(seen) != 4 {
		t.Fatalf("without affinity one client reached %v, want all 4", seen)
	}

	// A quiesced sticky server gets no new flows even from its clients.
	h.upsert(Service{Key: key, StickyTime: 60 * time.Second, Servers: servers})
	_, out := h.dispatch(tcp4(3000, 80, tcpSYN).build())
	sticky := serverByMAC(out)
	w := map[netip.Addr]uint32{}
	for _, s := range servers {
		if serverByMAC(withMACs(make([]byte, 12), s.MAC, macIn)) == sticky {
			w[s.Addr] = 0
		}
	}
	h.do(func() error { return h.x.SetWeights(key, w) })
	if _, out := h.dispatch(tcp4(3001, 80, tcpSYN).build()); serverByMAC(out) == sticky {
		t.Fatalf("new flow went to quiesced sticky server %s", sticky)
	}
}

// TestICMPPacketTooBig: PMTU errors about a flow reach the server that owns
// it, for both families.
func TestICMPPacketTooBig(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	s2v6 := netip.MustParseAddr("2001:db8::12")
	h.upsert(Service{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	h.upsert(Service{Key: ServiceKey{VIP: vip6, Port: 80, Proto: TCP}, Servers: []Server{h.server(s1v6, macS1, 1), h.server(s2v6, macS2, 1)}})
	router4 := netip.MustParseAddr("203.0.113.1")
	router6 := netip.MustParseAddr("2001:db8:1::1")

	for p := uint16(0); p < 20; p++ {
		for _, v4 := range []bool{true, false} {
			syn := tcp4(46000+p, 80, tcpSYN)
			if !v4 {
				syn = frame{dstMAC: macIn, srcMAC: macClient, src: client6, dst: vip6, proto: 6, sport: 46000 + p, dport: 80, tcpFlags: tcpSYN}
			}
			_, out := h.dispatch(syn.build())
			owner := serverByMAC(out)

			// The too-big packet the server sent: VIP:80 -> client:port.
			reply := syn
			reply.src, reply.dst = syn.dst, syn.src
			reply.sport, reply.dport = syn.dport, syn.sport
			reply.tcpFlags = tcpACK
			quoted := reply.build()[14:]
			if len(quoted) > 60 {
				quoted = quoted[:60]
			}
			icmp := frame{dstMAC: macIn, srcMAC: macClient, src: router4, dst: vip4, proto: 1, l4: icmpError(true, 1400, quoted)}
			if !v4 {
				icmp = frame{dstMAC: macIn, srcMAC: macClient, src: router6, dst: vip6, proto: 58, l4: icmpError(false, 1400, quoted)}
			}
			in := icmp.build()
			act, out := h.dispatch(in)
			if act != xdpTX || serverByMAC(out) != owner {
				t.Fatalf("v4=%v port %d: PTB went %s to %s, flow is on %s", v4, 46000+p, actionNames[act], serverByMAC(out), owner)
			}
			if !bytes.Equal(out[12:], in[12:]) {
				t.Fatalf("PTB changed beyond the Ethernet addresses")
			}
		}
	}
	if st := h.stats(); st.VIPs[vip4].ICMPForwarded != 20 || st.VIPs[vip6].ICMPForwarded != 20 {
		t.Fatalf("icmp forwarded v4 %d v6 %d, want 20 each", st.VIPs[vip4].ICMPForwarded, st.VIPs[vip6].ICMPForwarded)
	}
}

// TestIdleExpiry: a flow idle past the timeout stops counting as active.
func TestIdleExpiry(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16, IdleTimeout: time.Second})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1)}})
	h.dispatch(tcp4(47000, 80, tcpSYN).build())
	h.dispatch(tcp4(47000, 80, tcpACK).build())
	if a := h.stats().Services[key].Servers[s1].Active(); a != 1 {
		t.Fatalf("active %d, want 1", a)
	}
	time.Sleep(2100 * time.Millisecond)
	for range 2 { // a stray packet records the flow half-open; the next establishes it
		act, out := h.dispatch(tcp4(47000, 80, tcpACK).build())
		if act != xdpTX || serverByMAC(out) != "s1" {
			t.Fatalf("expired flow's packet: %s to %s", actionNames[act], serverByMAC(out))
		}
	}
	s := h.stats().Services[key].Servers[s1]
	if s.Expired != 1 || s.NewFlows != 2 || s.Active() != 1 {
		t.Fatalf("after expiry %+v, want expired 1, new 2, active 1", s)
	}
}

// TestPinnedRestart: a new executor over the same pins takes over services,
// servers and every flow; flows keep their servers even when the new process
// brings other weights.
func TestPinnedRestart(t *testing.T) {
	pin := "/sys/fs/bpf/" + randomName("ndtest")
	t.Cleanup(func() { os.RemoveAll(pin) })
	h := newHarness(t, Config{MaxFlows: 1 << 16, PinPath: pin})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, StickyTime: 30 * time.Second, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 2), h.server(s3, macS3, 3)}})
	h.do(func() error { return h.x.Attach(h.in) })
	owner := map[uint16]string{}
	for p := uint16(0); p < 200; p++ {
		_, out := h.dispatch(tcp4From(netip.AddrFrom4([4]byte{203, 0, 113, byte(p)}), 48000+p, 80, tcpSYN).build())
		owner[48000+p] = serverByMAC(out)
	}
	before := h.x.Services()
	h.restart(true)
	after := h.x.Services()
	if len(after) != 1 || after[0].StickyTime != before[0].StickyTime || len(after[0].Servers) != 3 {
		t.Fatalf("recovered services %+v, want %+v", after, before)
	}
	for i := range before[0].Servers {
		b, a := before[0].Servers[i], after[0].Servers[i]
		if a.Addr != b.Addr || a.Weight != b.Weight || a.MAC.String() != b.MAC.String() || a.Ifindex != b.Ifindex {
			t.Fatalf("recovered server %+v, want %+v", a, b)
		}
	}
	h.do(func() error {
		return h.x.SetWeights(key, map[netip.Addr]uint32{s1: 5, s2: 0, s3: 1})
	})
	for p, want := range owner {
		_, out := h.dispatch(tcp4From(netip.AddrFrom4([4]byte{203, 0, 113, byte(p - 48000)}), p, 80, tcpACK).build())
		if serverByMAC(out) != want {
			t.Fatalf("flow %d moved from %s to %s across the restart", p, want, serverByMAC(out))
		}
	}
}

// TestPinnedRestartRepairsHalfWrittenService: a process killed between
// recording a new server and swapping in the ring that includes it leaves
// the pins half written; the next process rebuilds the ring from the
// servers it finds, so the server it reports is one the kernel uses.
func TestPinnedRestartRepairsHalfWrittenService(t *testing.T) {
	pin := "/sys/fs/bpf/" + randomName("ndtest")
	t.Cleanup(func() { os.RemoveAll(pin) })
	h := newHarness(t, Config{MaxFlows: 1 << 16, PinPath: pin})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1)}})
	h.do(func() error { return h.x.Attach(h.in) })
	// The first half of adding s3, as UpsertService does it; the process
	// dies before the ring.
	h.do(func() error {
		st := h.x.services[key]
		_, _, err := h.x.stageServers(key, st, []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 1), h.server(s3, macS3, 1)}, SchedulerMaglev)
		return err
	})
	h.restart(true)
	if got := h.x.Services(); len(got) != 1 || len(got[0].Servers) != 3 {
		t.Fatalf("recovered %+v, want the service with 3 servers", got)
	}
	seen := map[string]int{}
	for p := uint16(0); p < 300; p++ {
		_, out := h.dispatch(tcp4From(netip.AddrFrom4([4]byte{203, 0, 113, byte(p)}), 40000+p, 80, tcpSYN).build())
		seen[serverByMAC(out)]++
	}
	if seen["s3"] < 50 {
		t.Fatalf("new flows after the restart: %v; s3, reported as a server, got %d of 300", seen, seen["s3"])
	}
}

// TestFlowTableAPI: entries written from user space (as a backup learns
// them from its peer) steer packets; bad entries are refused.
func TestFlowTableAPI(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(Service{Key: key, Servers: []Server{h.server(s1, macS1, 1), h.server(s2, macS2, 0)}})
	fk := FlowKey{Client: netip.AddrPortFrom(client4, 49000), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
	if err := h.x.UpsertFlows([]Flow{{Key: fk, Server: s2}}); err != nil {
		t.Fatal(err)
	}
	if _, out := h.dispatch(tcp4(49000, 80, tcpACK).build()); serverByMAC(out) != "s2" {
		t.Fatalf("learnt flow went to %s, want s2 (quiesced, but the flow is its)", serverByMAC(out))
	}
	var n int
	if err := h.x.Flows(func(f Flow) bool { n++; return f.Server == s2 }); err != nil || n != 1 {
		t.Fatalf("Flows: %d entries, %v", n, err)
	}
	bad := []Flow{
		{Key: fk, Server: netip.MustParseAddr("198.51.100.99")},
		{Key: FlowKey{Client: netip.AddrPortFrom(client4, 1), VIP: netip.AddrPortFrom(vip4, 81), Proto: TCP}, Server: s1},
		{Key: FlowKey{Client: netip.AddrPortFrom(client6, 1), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}, Server: s1},
	}
	for _, f := range bad {
		if err := h.x.UpsertFlows([]Flow{f}); err == nil {
			t.Errorf("UpsertFlows(%+v) accepted", f)
		}
	}
	if f, _, _ := h.x.LookupFlow(fk); f.Server != s2 {
		t.Fatalf("a rejected write changed the flow: %+v", f)
	}
}

func TestServiceValidation(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 10})
	good := h.server(s1, macS1, 1)
	bad := []Service{
		{Key: ServiceKey{VIP: netip.Addr{}, Port: 80, Proto: TCP}},
		{Key: ServiceKey{VIP: vip4, Port: 0, Proto: TCP}},
		{Key: ServiceKey{VIP: vip4, Port: 80, Proto: 1}},
		{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, StickyTime: 1500 * time.Millisecond},
		{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{good, good}},
		{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{h.server(s1v6, macS1, 1)}},
		{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{{Addr: s1, Weight: 1, Ifindex: h.in}}},
		{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{{Addr: s1, MAC: macS1, Weight: 1}}},
		{Key: ServiceKey{VIP: vip4, Port: 80, Proto: TCP}, Servers: []Server{{Addr: s1, MAC: macS1, Weight: 1, Ifindex: 9999}}},
	}
	for _, s := range bad {
		if err := h.ns.Do(func() error { return h.x.UpsertService(s) }); err == nil {
			t.Errorf("UpsertService(%+v) accepted", s)
		}
	}
	if n := len(h.x.Services()); n != 0 {
		t.Fatalf("rejected services left %d behind", n)
	}
	// Nothing leaked: the VIP is gone, so its traffic passes.
	if act, _ := h.dispatch(tcp4(1, 80, tcpSYN).build()); act != xdpPass {
		t.Fatalf("VIP of rejected services still filtered: %s", actionNames[act])
	}
}

// TestHeldServer: a server held (unreachable) takes no new flow, the
// packets of its flows are dropped and counted as finding no server, and
// its flows keep it: once it is no longer held they reach it again, where
// a removed server's flows are dispatched anew.
func TestHeldServer(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	servers := func(held bool) []Server {
		s1 := h.server(s1, macS1, 1)
		if held {
			s1.Weight, s1.Held = 0, true
		}
		return []Server{s1, h.server(s2, macS2, 1), h.server(s3, macS3, 1)}
	}
	h.upsert(Service{Key: key, Servers: servers(false)})

	owner := map[uint16]string{}
	for p := uint16(0); p < 300; p++ {
		h.dispatch(tcp4(44000+p, 80, tcpSYN).build())
		_, out := h.dispatch(tcp4(44000+p, 80, tcpACK).build())
		owner[44000+p] = serverByMAC(out)
	}
	h.upsert(Service{Key: key, Servers: servers(true)})
	before := h.stats().Services[key].NoServer
	var held uint64
	for p, was := range owner {
		act, out := h.dispatch(tcp4(p, 80, tcpACK|tcpPSH).build())
		switch {
		case was == "s1" && act != xdpDrop:
			t.Fatalf("a packet of held s1's flow %d: %s to %s, want dropped", p, actionNames[act], serverByMAC(out))
		case was == "s1":
			held++
		case serverByMAC(out) != was:
			t.Fatalf("flow %d moved from %s to %s while s1 was held", p, was, serverByMAC(out))
		}
	}
	if held == 0 {
		t.Fatal("no flow on s1 to hold")
	}
	if got := h.stats().Services[key].NoServer - before; got != held {
		t.Errorf("%d packets counted finding no server, want %d", got, held)
	}
	// A weight commit (a peer's, which can reach it) leaves it at 0.
	h.do(func() error { return h.x.SetWeights(key, map[netip.Addr]uint32{s1: 5, s2: 1}) })
	for p := uint16(0); p < 300; p++ {
		if _, out := h.dispatch(tcp4(45000+p, 80, tcpSYN).build()); serverByMAC(out) == "s1" {
			t.Fatalf("new flow %d went to held s1", 45000+p)
		}
	}

	h.upsert(Service{Key: key, Servers: servers(false)})
	for p, was := range owner {
		if act, out := h.dispatch(tcp4(p, 80, tcpACK|tcpPSH).build()); act != xdpTX || serverByMAC(out) != was {
			t.Fatalf("flow %d of %s went to %s (%s) once s1 was back", p, was, serverByMAC(out), actionNames[act])
		}
	}
	if got := h.x.Services()[0].Servers[0]; got.Held || got.Weight != 1 {
		t.Errorf("s1 after its return: %+v", got)
	}
}
