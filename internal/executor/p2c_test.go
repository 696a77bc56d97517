package executor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// sendFn passes one TCP packet of flow k with the given flags through a data
// plane (the kernel's or the Fake) and names the server it went to.
type sendFn func(k FlowKey, flags uint8) (netip.Addr, error)

func fakeSend(f *Fake) sendFn {
	return func(k FlowKey, flags uint8) (netip.Addr, error) {
		return f.Dispatch(k, flags&(tcpSYN|tcpACK) == tcpSYN, flags&(tcpFIN|tcpRST) != 0)
	}
}

// shares turns counts into fractions of their total.
func shares(counts map[netip.Addr]int) map[netip.Addr]float64 {
	var total int
	for _, c := range counts {
		total += c
	}
	out := map[netip.Addr]float64{}
	for a, c := range counts {
		out[a] = float64(c) / float64(total)
	}
	return out
}

// checkShares fails unless every server's share is within tol (relative) of
// its weight's share.
func checkShares(t *testing.T, what string, counts map[netip.Addr]int, weights map[netip.Addr]uint32, tol float64) {
	t.Helper()
	var wsum uint32
	for _, w := range weights {
		wsum += w
	}
	got := shares(counts)
	for a, w := range weights {
		want := float64(w) / float64(wsum)
		t.Logf("%s: %v weight %d: %.4f of new flows (share %.4f)", what, a, w, got[a], want)
		if math.Abs(got[a]-want) > tol*want {
			t.Errorf("%s: %v got %.4f of new flows, want %.4f within %.0f%%", what, a, got[a], want, 100*tol)
		}
	}
}

// closedLoop keeps open flows open to a service and, step after step, closes
// a random one (client FIN) and opens a new one: flows of equal expected
// lifetime, so that the long-run shares of new flows are the shares of
// servers' open flows. It returns where the new flows of the last 80% of
// the steps went.
func closedLoop(send sendFn, key ServiceKey, open, steps int) (map[netip.Addr]int, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	port := 0
	next := func() FlowKey {
		port++
		client := netip.AddrFrom4([4]byte{203, 0, 113, byte(port % 200)})
		return fkFlow(key, client, uint16(1024+port/200))
	}
	var live []FlowKey
	counts := map[netip.Addr]int{}
	for i := range open + steps {
		if i >= open {
			j := rng.IntN(len(live))
			if _, err := send(live[j], tcpACK|tcpFIN); err != nil {
				return nil, err
			}
			live[j] = live[len(live)-1]
			live = live[:len(live)-1]
		}
		k := next()
		a, err := send(k, tcpSYN)
		if err != nil {
			return nil, err
		}
		if _, err := send(k, tcpACK); err != nil { // established: counted open
			return nil, err
		}
		live = append(live, k)
		if i >= open+steps/5 {
			counts[a]++
		}
	}
	return counts, nil
}

// closedLoop runs closedLoop in the harness's namespace.
func (h *harness) closedLoop(send sendFn, key ServiceKey, open, steps int) map[netip.Addr]int {
	h.t.Helper()
	var counts map[netip.Addr]int
	h.do(func() (err error) {
		counts, err = closedLoop(send, key, open, steps)
		return err
	})
	return counts
}

func TestSchedulerNames(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Scheduler
	}{{"", SchedulerMaglev}, {"maglev", SchedulerMaglev}, {"p2c", SchedulerP2C}, {"delay", SchedulerDelay}} {
		got, err := ParseScheduler(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseScheduler(%q) = %v, %v, want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"P2C", "least-conn", "wrr"} {
		if _, err := ParseScheduler(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseScheduler(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	for _, s := range []Scheduler{SchedulerMaglev, SchedulerP2C, SchedulerDelay} {
		text, err := s.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Scheduler
		if err := back.UnmarshalText(text); err != nil || back != s {
			t.Errorf("%v -> %q -> %v, %v", s, text, back, err)
		}
	}
	if _, err := Scheduler(7).MarshalText(); err == nil {
		t.Error("an unknown scheduler marshalled")
	}
	f := NewFake()
	if err := f.UpsertService(Service{Key: fkHTTP, Scheduler: 3, Servers: []Server{fkServer(fkS1, 1)}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown scheduler accepted: %v", err)
	}
}

// TestFakeP2CCounts: the Fake's open-flow counts move where the kernel's
// do, only for p2c services.
func TestFakeP2CCounts(t *testing.T) {
	p2c := ServiceKey{VIP: fkVIP, Port: 8000, Proto: TCP}
	f := fkNew(t,
		Service{Key: fkHTTP, Servers: []Server{fkServer(fkS1, 1)}},
		Service{Key: p2c, Scheduler: SchedulerP2C, Servers: []Server{fkServer(fkS2, 1)}},
	)
	counts := func() int {
		t.Helper()
		c, err := f.ActiveCounts()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c[fkHTTP]; ok {
			t.Fatalf("a Maglev service has open-flow counts: %v", c)
		}
		return c[p2c][fkS2]
	}
	a, b, c, d := fkFlow(p2c, fkClient, 1), fkFlow(p2c, fkClient, 2), fkFlow(p2c, fkClient, 3), fkFlow(p2c, fkClient, 4)
	steps := []struct {
		k     FlowKey
		syn   bool
		close bool
		want  int
	}{
		{a, true, false, 0},  // SYN: half-open, not counted
		{a, false, false, 1}, // ACK: established
		{b, true, false, 1},
		{b, false, false, 2},
		{a, false, true, 1},  // FIN
		{a, false, true, 1},  // retransmitted FIN: counted once
		{b, false, true, 0},  // RST
		{c, false, true, 0},  // a FIN of an unknown flow: nothing recorded
		{a, true, false, 0},  // SYN on the closed tuple: half-open
		{d, false, false, 0}, // a stray packet: half-open
		{d, false, false, 1}, // its next packet establishes it
	}
	for i, s := range steps {
		fkDispatch(t, f, s.k, s.syn, s.close)
		if got := counts(); got != s.want {
			t.Fatalf("step %d: count %d, want %d", i, got, s.want)
		}
	}
	fkDispatch(t, f, fkFlow(fkHTTP, fkClient, 1), true, false)

	// Idle expiry takes a flow out when a packet finds it idle.
	f.Advance(301 * time.Second)
	fkDispatch(t, f, a, false, true) // half-open a expired, the FIN forwarded
	if got := counts(); got != 1 {
		t.Fatalf("after expiry: count %d, want 1", got)
	}
	// Until then the count still holds d, which the table no longer
	// calls active: reconciling corrects that.
	if err := f.ReconcileActive(); err != nil {
		t.Fatal(err)
	}
	if got := counts(); got != 0 {
		t.Fatalf("after reconcile: count %d, want 0", got)
	}

	// Learnt and deleted flows move the counts too.
	if err := f.UpsertFlows([]Flow{{Key: b, Server: fkS2}, {Key: c, Server: fkS2, Closing: true}}); err != nil {
		t.Fatal(err)
	}
	if got := counts(); got != 1 {
		t.Fatalf("after learning one open, one closing flow: count %d, want 1", got)
	}
	if err := f.UpsertFlows([]Flow{{Key: b, Server: fkS2}}); err != nil {
		t.Fatal(err)
	}
	if got := counts(); got != 1 {
		t.Fatalf("after learning the same flow again: count %d, want 1", got)
	}
	if err := f.DeleteFlow(b); err != nil {
		t.Fatal(err)
	}
	if got := counts(); got != 0 {
		t.Fatalf("after deleting it: count %d, want 0", got)
	}

	// A service turning p2c starts from the counters' estimate.
	for p := range uint16(5) {
		fkDispatch(t, f, fkFlow(fkHTTP, fkClient, 100+p), true, false)
		fkDispatch(t, f, fkFlow(fkHTTP, fkClient, 100+p), false, false)
	}
	if err := f.UpsertService(Service{Key: fkHTTP, Scheduler: SchedulerP2C, Servers: []Server{fkServer(fkS1, 1)}}); err != nil {
		t.Fatal(err)
	}
	if svc := f.Services()[0]; svc.Key != fkHTTP || svc.Scheduler != SchedulerP2C {
		t.Fatalf("Services()[0] = %+v, want %v with p2c", svc, fkHTTP)
	}
	got, _ := f.ActiveCounts()
	if got[fkHTTP][fkS1] != 5 {
		t.Fatalf("counts after turning p2c: %v, want 5 for %v", got, fkS1)
	}
}

// TestFakeP2CSteersAway: a server that holds many open flows gets few new
// ones until the others catch up, where Maglev would give it its share.
func TestFakeP2CSteersAway(t *testing.T) {
	servers := []Server{fkServer(fkS1, 1), fkServer(fkS2, 1), fkServer(fkS3, 1), fkServer(fkS4, 1)}
	f := fkNew(t, Service{Key: fkHTTP, Scheduler: SchedulerP2C, Servers: servers})
	f.mu.Lock()
	f.services[fkHTTP].servers[fkS1].active = 1000
	f.mu.Unlock()
	got := map[netip.Addr]int{}
	for _, k := range fkManyFlows(fkHTTP, 2000) {
		got[fkDispatch(t, f, k, true, false)]++
	}
	t.Logf("new flows: %v", got)
	// s1 wins only when both candidates are s1: 1/16 of flows.
	if share := float64(got[fkS1]) / 2000; share > 0.1 {
		t.Errorf("%v, holding 1000 flows, got %.3f of new flows, want about 1/16", fkS1, share)
	}
}

// TestFakeP2CShares: p2c keeps the weights' long-run shares, both when
// every count is equal and when flows come and go.
func TestFakeP2CShares(t *testing.T) {
	weights := map[netip.Addr]uint32{fkS1: 1, fkS2: 2, fkS3: 3, fkS4: 4}
	var servers []Server
	for a, w := range weights {
		servers = append(servers, fkServer(a, w))
	}
	f := fkNew(t, Service{Key: fkHTTP, Scheduler: SchedulerP2C, Servers: servers})
	counts := map[netip.Addr]int{}
	for _, k := range fkManyFlows(fkHTTP, 20000) {
		counts[fkDispatch(t, f, k, true, false)]++
		fkDispatch(t, f, k, false, true) // back to equal (zero) counts
	}
	checkShares(t, "equal counts", counts, weights, 0.05)

	f = fkNew(t, Service{Key: fkHTTP, Scheduler: SchedulerP2C, Servers: servers})
	loop, err := closedLoop(fakeSend(f), fkHTTP, 400, 60000)
	if err != nil {
		t.Fatal(err)
	}
	checkShares(t, "closed loop", loop, weights, 0.05)
}

// Kernel tests.

// p2cService is a p2c service of four servers on the ingress interface.
func (h *harness) p2cService(key ServiceKey, weights ...uint32) Service {
	macs := []net.HardwareAddr{macS1, macS2, macS3, macS4}
	addrs := []netip.Addr{s1, s2, s3, s4}
	s := Service{Key: key, Scheduler: SchedulerP2C}
	for i, w := range weights {
		s.Servers = append(s.Servers, h.server(addrs[i], macs[i], w))
	}
	return s
}

// upsertP2C installs a p2c service of servers s1, s2, ... with the given
// weights and returns it and its weights by server.
func (h *harness) upsertP2C(key ServiceKey, weights ...uint32) (Service, map[netip.Addr]uint32) {
	svc := h.p2cService(key, weights...)
	h.upsert(svc)
	return svc, weightsOf(svc)
}

// slotOf is the server slot of a server of a service.
func (h *harness) slotOf(key ServiceKey, addr netip.Addr) uint32 {
	h.t.Helper()
	h.x.mu.Lock()
	defer h.x.mu.Unlock()
	be := h.x.services[key].servers[addr]
	if be == nil {
		h.t.Fatalf("no server %v in %v", addr, key)
	}
	return be.id
}

// setActive writes a server's open-flow count behind the executor's back.
func (h *harness) setActive(key ServiceKey, addr netip.Addr, n int64) {
	h.t.Helper()
	if err := h.x.objs.ServerActive.Update(h.slotOf(key, addr), n, ebpf.UpdateAny); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) activeRaw(key ServiceKey, addr netip.Addr) int64 {
	h.t.Helper()
	var n int64
	if err := h.x.objs.ServerActive.Lookup(h.slotOf(key, addr), &n); err != nil {
		h.t.Fatal(err)
	}
	return n
}

// p2cPair names the two candidates the data plane draws for a flow: the
// servers at the ring slots of its two hashes, read from the kernel's ring.
func (h *harness) p2cPair(k FlowKey) (netip.Addr, netip.Addr) {
	h.t.Helper()
	h.x.mu.Lock()
	st := h.x.services[k.Service()]
	byID := map[uint32]netip.Addr{}
	for a, be := range st.servers {
		byID[be.id] = a
	}
	h.x.mu.Unlock()
	var innerID ebpf.MapID
	if err := h.x.objs.Rings.Lookup(st.id, &innerID); err != nil {
		h.t.Fatal(err)
	}
	inner, err := ebpf.NewMapFromID(innerID)
	if err != nil {
		h.t.Fatal(err)
	}
	defer inner.Close()
	var ring []byte
	if err := inner.Lookup(uint32(0), &ring); err != nil {
		h.t.Fatal(err)
	}
	fk := flowKey(k)
	at := func(hash uint32) netip.Addr {
		slot := ringSlot(hash, h.x.cfg.RingSize)
		return byID[uint32(binary.NativeEndian.Uint16(ring[2*slot:]))]
	}
	return at(flowHash(fk, h.x.cfg.HashSeed)), at(flowHash(fk, h.x.cfg.HashSeed^p2cSeed))
}

// rawSend passes packets through the harness's data plane, without
// entering its namespace: only for use inside h.do, where one entry serves
// many packets.
func (h *harness) rawSend() sendFn {
	byMAC := map[string]netip.Addr{}
	h.x.mu.Lock()
	for _, st := range h.x.services {
		for a, be := range st.servers {
			byMAC[be.srv.MAC.String()] = a
		}
	}
	h.x.mu.Unlock()
	out := make([]byte, 256)
	return func(k FlowKey, flags uint8) (netip.Addr, error) {
		fr := tcp4From(k.Client.Addr(), k.Client.Port(), k.VIP.Port(), flags)
		fr.dst = k.VIP.Addr()
		in := fr.build()
		opts := &ebpf.RunOptions{Data: in, DataOut: out, Context: xdpMD{DataEnd: uint32(len(in)), IngressIfindex: uint32(h.in)}}
		act, err := h.x.objs.NdDispatch.Run(opts)
		if err != nil {
			return netip.Addr{}, err
		}
		if act != xdpTX {
			return netip.Addr{}, fmt.Errorf("flow %v flags %#x: %s", k, flags, actionNames[act])
		}
		a, ok := byMAC[net.HardwareAddr(opts.DataOut[:6]).String()]
		if !ok {
			return netip.Addr{}, fmt.Errorf("flow %v went to unknown MAC %x", k, opts.DataOut[:6])
		}
		return a, nil
	}
}

var macOf = map[netip.Addr]net.HardwareAddr{s1: macS1, s2: macS2, s3: macS3, s4: macS4}

// TestP2CFixtures: frames of new flows to a p2c service, byte for byte: the
// candidate with fewer open flows for its weight gets the flow.
func TestP2CFixtures(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	svc, weight := h.upsertP2C(key, 1, 2, 3, 4)

	// Flows whose two candidates differ.
	var ports []uint16
	for p := uint16(40000); len(ports) < 5; p++ {
		if a, b := h.p2cPair(FlowKey{Client: netip.AddrPortFrom(client4, p), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}); a != b {
			ports = append(ports, p)
		}
	}
	zero := func() {
		for _, s := range svc.Servers {
			h.setActive(key, s.Addr, 0)
		}
	}
	cases := []struct {
		name string
		// counts of the first and second candidate, from their weights
		counts func(wa, wb int64) (int64, int64)
		second bool // the second candidate wins
	}{
		{"second has fewer open flows", func(wa, wb int64) (int64, int64) { return 10 * wa, 0 }, true},
		{"first has fewer open flows", func(wa, wb int64) (int64, int64) { return 0, 10 * wb }, false},
		{"equal for their weights: the first", func(wa, wb int64) (int64, int64) { return 5 * wa, 5 * wb }, false},
		{"one over its weight's share loses", func(wa, wb int64) (int64, int64) { return 5*wa + 1, 5 * wb }, true},
		{"below zero reads as zero", func(wa, wb int64) (int64, int64) { return -100, 0 }, false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := h.with(t)
			zero()
			k := FlowKey{Client: netip.AddrPortFrom(client4, ports[i]), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
			a, b := h.p2cPair(k)
			na, nb := c.counts(int64(weight[a]), int64(weight[b]))
			h.setActive(key, a, na)
			h.setActive(key, b, nb)
			winner := a
			if c.second {
				winner = b
			}
			in := tcp4(ports[i], 80, tcpSYN).build()
			act, out := h.dispatch(in)
			if act != xdpTX {
				t.Fatalf("action %s, want TX", actionNames[act])
			}
			if want := withMACs(in, macOf[winner], macIn); !bytes.Equal(out, want) {
				t.Fatalf("candidates %v (%d open) and %v (%d open): went to %s\n got %x\nwant %x", a, na, b, nb, serverByMAC(out), out, want)
			}
			before := na
			if c.second {
				before = nb
			}
			if got := h.activeRaw(key, winner); got != before {
				t.Fatalf("winner's count %d after the SYN, want %d: a half-open flow is not open", got, before)
			}
			if act, out := h.dispatch(tcp4(ports[i], 80, tcpACK).build()); act != xdpTX || serverByMAC(out) != serverByMAC(withMACs(in, macOf[winner], macIn)) {
				t.Fatalf("the handshake's ACK went %s to %s, want %v", actionNames[act], serverByMAC(out), winner)
			}
			if got := h.activeRaw(key, winner); got != before+1 {
				t.Fatalf("winner's count %d after the ACK, want one more than before", got)
			}
		})
	}

	// A candidate the ring still names but which may take no new flow (the
	// moment between a weight change and the ring swap) never wins.
	t.Run("quiesced candidate loses", func(t *testing.T) {
		h := h.with(t)
		zero()
		k := FlowKey{Client: netip.AddrPortFrom(client4, ports[0]+10000), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
		a, b := h.p2cPair(k)
		for p := ports[0] + 10000; a == b; p++ {
			k.Client = netip.AddrPortFrom(client4, p)
			a, b = h.p2cPair(k)
		}
		h.setActive(key, a, 100)
		h.x.mu.Lock()
		be := h.x.services[key].servers[b]
		v, err := h.x.backendValue(h.x.services[key].id, be, SchedulerP2C)
		if err == nil {
			v.Flags |= beQuiesced
			err = h.x.writeBackend(be.id, v)
		}
		h.x.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		in := tcp4(k.Client.Port(), 80, tcpSYN).build()
		if act, out := h.dispatch(in); act != xdpTX || !bytes.Equal(out, withMACs(in, macOf[a], macIn)) {
			t.Fatalf("went %s to %s, want %v: %v is quiesced", actionNames[act], serverByMAC(out), a, b)
		}
	})
}

// TestP2CCounts: the kernel's open-flow counts move on SYN, FIN, RST, idle
// expiry and eviction, once per flow, and only for p2c services.
func TestP2CCounts(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16, IdleTimeout: time.Second})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	maglev := ServiceKey{VIP: vip4, Port: 81, Proto: TCP}
	h.upsert(h.p2cService(key, 1))
	h.upsert(Service{Key: maglev, Servers: []Server{h.server(s2, macS2, 1)}})
	count := func() int64 { h.t.Helper(); return h.activeRaw(key, s1) }
	steps := []struct {
		port  uint16
		flags uint8
		want  int64
	}{
		{1000, tcpSYN, 0}, // half-open: not open yet
		{1000, tcpACK, 1}, // established
		{1001, tcpSYN, 1},
		{1001, tcpACK, 2},
		{1000, tcpACK | tcpFIN, 1},
		{1000, tcpACK | tcpFIN, 1}, // retransmitted: counted once
		{1001, tcpRST, 0},
		{1002, tcpRST, 0}, // a close of an unknown flow: nothing recorded
		{1000, tcpSYN, 0}, // reuses the closed tuple
		{1000, tcpACK, 1},
		{1003, tcpACK, 1}, // mid-flow without an entry: half-open
		{1003, tcpACK | tcpPSH, 2},
	}
	for i, s := range steps {
		if act, _ := h.dispatch(tcp4(s.port, 80, s.flags).build()); act != xdpTX {
			t.Fatalf("step %d: %s", i, actionNames[act])
		}
		if got := count(); got != s.want {
			t.Fatalf("step %d (port %d flags %#x): count %d, want %d", i, s.port, s.flags, got, s.want)
		}
	}
	h.dispatch(tcp4(2000, 81, tcpSYN).build())
	if got := h.activeRaw(maglev, s2); got != 0 {
		t.Fatalf("a Maglev service's server was counted: %d", got)
	}
	if got, err := h.x.ActiveCounts(); err != nil || !reflect.DeepEqual(got, map[ServiceKey]map[netip.Addr]int{key: {s1: 2}}) {
		t.Fatalf("ActiveCounts = %v, %v", got, err)
	}

	// Idle expiry, noticed by the next packet: a RST after the timeout
	// takes the flow out (and is forwarded, leaving nothing).
	time.Sleep(2100 * time.Millisecond)
	h.dispatch(tcp4(1003, 80, tcpRST).build())
	if got := count(); got != 1 {
		t.Fatalf("after expiry: count %d, want 1", got)
	}
	if s := h.stats().Services[key].Servers[s1]; s.Expired != 1 {
		t.Fatalf("expired %d, want 1", s.Expired)
	}
	// Flow 1000 idled out silently: the table no longer calls it active.
	if err := h.x.ReconcileActive(); err != nil {
		t.Fatal(err)
	}
	if got := count(); got != 0 {
		t.Fatalf("after reconcile: %d, want 0", got)
	}
}

// TestP2CEviction: a SYN displaces a live half-open flow (which leaves its
// server's half-open count), never an established or closing one; user
// space may displace an established one, which leaves the open-flow count.
func TestP2CEviction(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: flowWays}) // one bucket
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(h.p2cService(key, 1))
	fk := func(p uint16) FlowKey {
		return FlowKey{Client: netip.AddrPortFrom(client4, p), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
	}
	half := func() int64 {
		t.Helper()
		n, err := h.x.halfOpenCount(h.slotOf(key, s1))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The oldest way holds a closing flow, the next oldest an open one.
	if err := h.x.UpsertFlows([]Flow{
		{Key: fk(1), Server: s1, Idle: 2 * time.Second, Closing: true},
		{Key: fk(2), Server: s1, Idle: 50 * time.Second},
	}); err != nil {
		t.Fatal(err)
	}
	h.dispatch(tcp4(3, 80, tcpSYN).build())
	h.dispatch(tcp4(3, 80, tcpACK).build()) // established
	h.dispatch(tcp4(4, 80, tcpSYN).build()) // half-open
	if got := h.activeRaw(key, s1); got != 2 || half() != 1 {
		t.Fatalf("open flows counted %d, half-open %d; want 2 and 1", got, half())
	}
	h.dispatch(tcp4(5, 80, tcpSYN).build()) // displaces half-open 4 only
	h.dispatch(tcp4(6, 80, tcpSYN).build()) // displaces half-open 5
	s := h.stats()
	if got := h.activeRaw(key, s1); got != 2 || half() != 1 || s.Global.FlowsEvicted != 0 || s.Global.HalfOpenEvicted != 2 || s.Services[key].Servers[s1].Expired != 0 || !s.Global.TablePressure {
		t.Fatalf("after two SYNs into a full bucket: count %d, half-open %d, %+v; want 2, 1, 2 half-open evicted, pressure", got, half(), s.Global)
	}
	for _, p := range []uint16{1, 2, 3, 6} {
		if _, ok, err := h.x.LookupFlow(fk(p)); err != nil || !ok {
			t.Fatalf("flow %d gone from the table (%v)", p, err)
		}
	}
	// A stray ACK of an unknown flow finds no free way: nothing recorded.
	h.dispatch(tcp4(7, 80, tcpACK).build())
	if _, ok, _ := h.x.LookupFlow(fk(7)); ok || h.stats().Global.StraysUnrecorded != 1 {
		t.Fatalf("a stray ACK displaced a flow: %+v", h.stats().Global)
	}
	// User space displaces the half-open flow first, then the oldest
	// live one (the open flow 2: the closing flow 1 is younger).
	if err := h.x.UpsertFlows([]Flow{{Key: fk(8), Server: s1}, {Key: fk(9), Server: s1}}); err != nil {
		t.Fatal(err)
	}
	s = h.stats()
	if got := h.activeRaw(key, s1); got != 3 || half() != 0 || s.Global.FlowsEvicted != 1 || s.Services[key].Servers[s1].Expired != 1 {
		t.Fatalf("after two learnt flows: count %d, half-open %d, evicted %d, expired %d; want 3, 0, 1, 1", got, half(), s.Global.FlowsEvicted, s.Services[key].Servers[s1].Expired)
	}
	active, err := h.x.ActiveFlows()
	if err != nil || active[key][s1] != 3 {
		t.Fatalf("table holds %v, %v; want 3 open flows", active, err)
	}
}

// TestReconcileActive: learnt and deleted flows keep the counts in step,
// and a count gone wrong is rewritten from the table.
func TestReconcileActive(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(h.p2cService(key, 1, 1, 1))
	for p := range uint16(60) {
		h.dispatch(tcp4(3000+p, 80, tcpSYN).build())
		h.dispatch(tcp4(3000+p, 80, tcpACK).build())
		if p%4 == 0 {
			h.dispatch(tcp4(3000+p, 80, tcpACK|tcpFIN).build())
		}
	}
	learnt := FlowKey{Client: netip.AddrPortFrom(client4, 4000), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}
	if err := h.x.UpsertFlows([]Flow{{Key: learnt, Server: s2}}); err != nil {
		t.Fatal(err)
	}
	if err := h.x.DeleteFlow(FlowKey{Client: netip.AddrPortFrom(client4, 3001), VIP: netip.AddrPortFrom(vip4, 80), Proto: TCP}); err != nil {
		t.Fatal(err)
	}
	if err := h.x.UpsertFlows([]Flow{{Key: learnt, Server: s3}}); err != nil { // moved
		t.Fatal(err)
	}
	truth := func() map[ServiceKey]map[netip.Addr]int { return must(h.x.ActiveFlows())(t) }
	counts := func() map[ServiceKey]map[netip.Addr]int { return must(h.x.ActiveCounts())(t) }
	want := truth()
	if got := counts(); !reflect.DeepEqual(got, want) {
		t.Fatalf("counts %v, table %v", got, want)
	}
	if n := want[key][s1] + want[key][s2] + want[key][s3]; n != 60-15-1+1 {
		t.Fatalf("table holds %d open flows, want 45", n)
	}

	h.setActive(key, s1, 1000)
	h.setActive(key, s2, -7)
	if got := counts(); got[key][s1] != 1000 || got[key][s2] != 0 {
		t.Fatalf("counts %v: want 1000 and a negative count read as 0", got)
	}
	if err := h.x.ReconcileActive(); err != nil {
		t.Fatal(err)
	}
	if got := counts(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after reconcile: counts %v, table %v", got, want)
	}
}

// TestP2CSteersAway: the kernel's p2c keeps new flows off a server holding
// many open flows; Maglev would give it a quarter.
func TestP2CSteersAway(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 16})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	h.upsert(h.p2cService(key, 1, 1, 1, 1))
	h.setActive(key, s1, 1000)
	send := h.rawSend()
	got := map[netip.Addr]int{}
	h.do(func() error {
		for i := range 2000 {
			client := netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 200)})
			a, err := send(fkFlow(key, client, uint16(10000+i)), tcpSYN)
			if err != nil {
				return err
			}
			got[a]++
		}
		return nil
	})
	t.Logf("new flows: %v", got)
	if share := float64(got[s1]) / 2000; share > 0.1 {
		t.Errorf("s1, holding 1000 flows, got %.3f of new flows, want about 1/16", share)
	}
	for _, s := range []netip.Addr{s2, s3, s4} {
		if got[s] < 550 {
			t.Errorf("%v got %d of 2000 new flows, want about 625", s, got[s])
		}
	}
}

// TestP2CDistribution: through the kernel, p2c keeps the weights' shares
// with equal (zero) counts and in a closed loop of flows coming and going.
func TestP2CDistribution(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 1 << 18})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	svc, weights := h.upsertP2C(key, 1, 2, 3, 4)
	send := h.rawSend()
	counts := map[netip.Addr]int{}
	h.do(func() error {
		for i := range 50000 {
			client := netip.AddrFrom4([4]byte{203, 0, 113, byte(i % 250)})
			k := fkFlow(key, client, uint16(1024+i/250))
			a, err := send(k, tcpSYN)
			if err != nil {
				return err
			}
			counts[a]++
			if _, err := send(k, tcpRST); err != nil { // back to zero counts
				return err
			}
		}
		return nil
	})
	checkShares(t, "equal counts", counts, weights, 0.04)

	h.upsert(Service{Key: key})
	h.upsert(svc)
	checkShares(t, "closed loop", h.closedLoop(send, key, 400, 60000), weights, 0.05)
}

// TestP2CSchedulerSwitch: a service turning p2c starts from its counters'
// estimate; turning back to Maglev stops the counting; a pinned data plane
// taken over keeps both the scheduler and the counts.
func TestP2CSchedulerSwitch(t *testing.T) {
	pin := "/sys/fs/bpf/" + randomName("ndtest")
	t.Cleanup(func() { os.RemoveAll(pin) })
	h := newHarness(t, Config{MaxFlows: 1 << 16, PinPath: pin})
	key := ServiceKey{VIP: vip4, Port: 80, Proto: TCP}
	svc := h.p2cService(key, 1, 1)
	svc.Scheduler = SchedulerMaglev
	h.upsert(svc)
	for p := range uint16(40) {
		h.dispatch(tcp4(5000+p, 80, tcpSYN).build())
		h.dispatch(tcp4(5000+p, 80, tcpACK).build())
	}
	h.dispatch(tcp4(5000, 80, tcpRST).build())
	if got, _ := h.x.ActiveCounts(); len(got) != 0 {
		t.Fatalf("Maglev service has counts: %v", got)
	}
	svc.Scheduler = SchedulerP2C
	h.upsert(svc)
	want, err := h.x.ActiveFlows()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := h.x.ActiveCounts()
	if !reflect.DeepEqual(got, want) || got[key][s1]+got[key][s2] != 39 {
		t.Fatalf("counts after turning p2c %v, want the table's %v (39 open)", got, want)
	}
	if s := h.x.Services(); s[0].Scheduler != SchedulerP2C {
		t.Fatalf("Services() = %+v, want p2c", s)
	}

	h.restart(false)
	if s := h.x.Services(); len(s) != 1 || s[0].Scheduler != SchedulerP2C {
		t.Fatalf("after takeover Services() = %+v, want one p2c service", s)
	}
	if after, _ := h.x.ActiveCounts(); !reflect.DeepEqual(after, got) {
		t.Fatalf("counts after takeover %v, want %v", after, got)
	}
	h.dispatch(tcp4(5001, 80, tcpRST).build())
	if after, _ := h.x.ActiveCounts(); after[key][s1]+after[key][s2] != 38 {
		t.Fatalf("a close after takeover: counts %v, want 38 in all", after)
	}

	svc.Scheduler = SchedulerMaglev
	h.upsert(svc)
	before := h.activeRaw(key, s1) + h.activeRaw(key, s2)
	h.dispatch(tcp4(5002, 80, tcpRST).build())
	h.dispatch(tcp4(6000, 80, tcpSYN).build())
	if after := h.activeRaw(key, s1) + h.activeRaw(key, s2); after != before {
		t.Fatalf("a Maglev service's counts moved: %d -> %d", before, after)
	}

	// Destroy unpins every map, the new ones included.
	if err := h.x.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) {
		t.Fatalf("pin path after Destroy: %v", err)
	}
}

func TestShrinkToward0(t *testing.T) {
	for _, c := range []struct{ d, slack, want int64 }{
		{5, 0, 5}, {-5, 0, -5}, {5, 3, 2}, {-5, 3, -2}, {3, 3, 0}, {-2, 3, 0}, {0, 0, 0},
	} {
		if got := shrinkToward0(c.d, c.slack); got != c.want {
			t.Errorf("shrinkToward0(%d, %d) = %d, want %d", c.d, c.slack, got, c.want)
		}
	}
}
