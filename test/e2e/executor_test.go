package e2e

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// Sizes of the runs. Replies are large so that traffic through the
// dispatcher (requests and acknowledgements) and traffic around it (the
// replies) differ by more than an order of magnitude.
const (
	loadConns   = 600      // connections per VIP family in the load test
	loadWorkers = 8        // connections in flight at once
	replySize   = 64 << 10 // bytes each server sends per connection
	// shareSlack is how far a server's share of connections may stray from
	// its weight's share. Loose on purpose: the strict distribution test
	// drives the program with BPF_PROG_RUN over 100,000 flows. At 600
	// connections one standard deviation of the 50% share is 2 points.
	shareSlack = 0.08
	// bypassRatio bounds the bytes the dispatcher may see as a fraction of
	// the bytes the servers sent back.
	bypassRatio = 0.10
)

var testWeights = []uint32{1, 1, 2, 4}

// TestExecutorE2E: real TCP connections from the client namespace to the
// VIPs reach servers in other namespaces that hold the VIPs on lo, and the
// servers' replies go straight to the client, on one shared network.
func TestExecutorE2E(t *testing.T) {
	testutil.RequirePrivileged(t)
	f := newFixture(t, lab.Options{}, testWeights)
	l := f.lab
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
		t.Run("load "+family(vip), func(t *testing.T) { testLoadAndBypass(ctx, t, f, vip) })
	}
	t.Run("undefined port", func(t *testing.T) { testUndefinedPort(ctx, t, f) })
	t.Run("dispatcher's own address", func(t *testing.T) { testOwnAddress(ctx, t, f) })
	t.Run("another host's MAC", func(t *testing.T) { testOtherHostMAC(ctx, t, f) })
	for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
		t.Run("quiesce "+family(vip), func(t *testing.T) { testQuiesce(ctx, t, f, vip) })
	}
}

// testLoadAndBypass opens loadConns connections to VIP:80, checks that all
// complete with their whole reply, that the shares follow the weights, that
// the data plane counted exactly the connections the client saw, and that
// the replies did not pass through the dispatcher.
func testLoadAndBypass(ctx context.Context, t *testing.T, f *fixture, vip netip.Addr) {
	l := f.lab
	d, c := &l.Dispatcher, &l.Client
	stBefore := f.stats(t)
	dBefore := readLinkStats(t, d.NS, d.Ifindex)
	cBefore := readLinkStats(t, c.NS, c.Ifindex)
	sentBefore := f.sent()

	res := runLoad(ctx, c.NS, netip.AddrPortFrom(vip, servicePort), loadConns, loadWorkers, replySize)
	f.settle(t)

	stAfter := f.stats(t)
	dDelta := readLinkStats(t, d.NS, d.Ifindex).sub(dBefore)
	cDelta := readLinkStats(t, c.NS, c.Ifindex).sub(cBefore)
	sent := uint64(f.sent() - sentBefore)

	worst := f.checkLoad(t, res, loadConns)
	t.Logf("%d connections in %v; worst share is %.1f points off its weight's", res.completed(), res.elapsed.Round(time.Millisecond), 100*worst)
	if worst > shareSlack {
		t.Errorf("a server's share is %.1f points off its weight's, want at most %.0f", 100*worst, 100*shareSlack)
	}

	// The data plane saw each connection as one new flow on the server
	// that answered it.
	svc := f.service(stAfter, vip).sub(f.service(stBefore, vip))
	f.checkNewFlows(t, svc, res)

	// The replies went around the dispatcher: it saw the requests and
	// acknowledgements only, while the client received every reply byte.
	forwarded := svc.bytes
	want := uint64(res.received)
	t.Logf("%s: servers sent %d bytes; client read %d payload bytes, its eth0 received %d bytes in %d frames",
		family(vip), sent, res.received, cDelta.rxBytes, cDelta.rxPackets)
	t.Logf("%s: dispatcher eth0 received %d bytes in %d frames (%.2f%% of the bytes sent by the servers); the data plane forwarded %d frames of %d bytes (%.2f%%)",
		family(vip), dDelta.rxBytes, dDelta.rxPackets, percent(dDelta.rxBytes, sent), svc.packets, forwarded, percent(forwarded, sent))
	if want != uint64(loadConns)*replySize {
		t.Errorf("client read %d payload bytes, want %d", want, uint64(loadConns)*replySize)
	}
	if sent < want {
		t.Errorf("servers sent %d bytes, less than the %d the client read", sent, want)
	}
	if cDelta.rxBytes < want {
		t.Errorf("client eth0 received %d bytes, less than the %d payload bytes read", cDelta.rxBytes, want)
	}
	if forwarded == 0 {
		t.Errorf("the data plane forwarded nothing for %v", f.key(vip))
	}
	if limit := uint64(bypassRatio * float64(sent)); dDelta.rxBytes > limit || forwarded > limit {
		t.Errorf("dispatcher eth0 received %d bytes and forwarded %d, want both under %d (%.0f%% of the %d reply bytes): replies pass through the dispatcher",
			dDelta.rxBytes, forwarded, limit, 100*bypassRatio, sent)
	}
	// The interface counters agree with the program's. (A veth running
	// XDP counts bytes without the Ethernet header, the program with it:
	// compare frames.)
	if dDelta.rxPackets < svc.packets {
		t.Errorf("dispatcher eth0 received %d frames, fewer than the %d the data plane forwarded from it", dDelta.rxPackets, svc.packets)
	}
}

// testUndefinedPort: a connection to a port no service defines on the VIP
// is dropped by the data plane (the dial times out rather than being
// refused by the dispatcher's stack, which holds the VIPs) and counted as
// filtered; no server sees it.
func testUndefinedPort(ctx context.Context, t *testing.T, f *fixture) {
	l := f.lab
	for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
		before := f.stats(t).VIPs[vip].Filtered
		accepted := f.accepted()
		addr := netip.AddrPortFrom(vip, servicePort+1)
		start := time.Now()
		s, err := dial(ctx, l.Client.NS, addr, time.Second)
		if err == nil {
			s.close()
			t.Errorf("connection to %s succeeded, want it dropped", addr)
			continue
		}
		if !errIsTimeout(err) {
			t.Errorf("connection to %s: %v, want a timeout (a refusal means the dispatcher's stack saw the SYN)", addr, err)
		}
		after := f.stats(t).VIPs[vip].Filtered
		t.Logf("%s: dial gave up after %v (%v); filtered counter %d -> %d", addr, time.Since(start).Round(time.Millisecond), err, before, after)
		if after <= before {
			t.Errorf("%s: filtered counter stayed at %d", vip, after)
		}
		if got := f.accepted(); got != accepted {
			t.Errorf("servers accepted %d connections during the dial to %s", got-accepted, addr)
		}
		// The defined port of the same VIP still works.
		if _, err := fetchOnce(ctx, l.Client.NS, netip.AddrPortFrom(vip, servicePort), 1024); err != nil {
			t.Errorf("after the dropped dial: %v", err)
		}
	}
}

// testOtherHostMAC: a client whose neighbour entry for the VIP names a MAC
// no host has sends frames that the bridge floods to every port, the
// dispatcher's included. The data plane must not forward those copies (a
// NIC would not even have shown them to XDP): the dial times out, no server
// accepts it, and the frames are counted other_host.
func testOtherHostMAC(ctx context.Context, t *testing.T, f *fixture) {
	l := f.lab
	c := &l.Client
	h, err := c.NS.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	nobody := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	n := &netlink.Neigh{LinkIndex: c.Ifindex, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: l.VIP4.AsSlice(), HardwareAddr: nobody}
	if err := h.NeighSet(n); err != nil {
		t.Fatalf("point the client's entry for %s at %s: %v", l.VIP4, nobody, err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := h.NeighDel(n); err != nil {
				t.Errorf("restore the client's entry for %s: %v", l.VIP4, err)
			}
		}
	}
	defer restore()

	before := f.stats(t).Global.OtherHost
	accepted := f.accepted()
	addr := netip.AddrPortFrom(l.VIP4, servicePort)
	if s, err := dial(ctx, c.NS, addr, time.Second); err == nil {
		s.close()
		t.Errorf("connection to %s through %s succeeded: the dispatcher forwarded frames for another MAC", addr, nobody)
	}
	after := f.stats(t).Global.OtherHost
	t.Logf("frames to %s for %s: other_host %d -> %d", nobody, addr, before, after)
	if after <= before {
		t.Errorf("other_host counter stayed at %d", after)
	}
	if got := f.accepted(); got != accepted {
		t.Errorf("servers accepted %d connections sent to %s", got-accepted, nobody)
	}
	restore()
	if _, err := fetchOnce(ctx, c.NS, addr, 1024); err != nil {
		t.Errorf("after the client's entry was restored: %v", err)
	}
}

// testOwnAddress: with the data plane attached, the dispatcher's own
// addresses still reach its stack: a listener there accepts the client's
// connection and echoes a line.
func testOwnAddress(ctx context.Context, t *testing.T, f *fixture) {
	l := f.lab
	d := &l.Dispatcher
	for _, a := range []netip.Addr{d.Addr4, d.Addr6} {
		addr := netip.AddrPortFrom(a, 9000)
		passed := f.stats(t).Global.Passed
		if err := echoOwn(ctx, t, l, addr); err != nil {
			t.Errorf("client to the dispatcher's own %s: %v", addr, err)
			continue
		}
		if now := f.stats(t).Global.Passed; now <= passed {
			t.Errorf("%s: the data plane's passed counter stayed at %d", addr, now)
		}
		t.Logf("%s: connection from the client accepted by the dispatcher's stack", addr)
	}
}

// testQuiesce: a long-lived connection keeps its server after the server's
// weight drops to 0, while new connections avoid that server.
func testQuiesce(ctx context.Context, t *testing.T, f *fixture, vip netip.Addr) {
	l := f.lab
	key := f.key(vip)
	vipPort := netip.AddrPortFrom(vip, servicePort)
	long, err := dial(ctx, l.Client.NS, vipPort, dialTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", vipPort, err)
	}
	defer long.close()
	name, err := long.get(1024)
	if err != nil {
		t.Fatalf("long-lived connection: %v", err)
	}
	var (
		quiesced *replyServer
		weight   uint32
	)
	for i, s := range f.servers {
		if s.name == name {
			quiesced, weight = s, f.weights[i]
		}
	}
	if quiesced == nil {
		t.Fatalf("reply from unknown server %q", name)
	}
	addr := quiesced.addr4
	if vip.Is6() {
		addr = quiesced.addr6
	}

	// The connection table names the server that answered.
	local := long.c.LocalAddr().(*net.TCPAddr).AddrPort()
	fk := executor.FlowKey{
		Client: netip.AddrPortFrom(local.Addr().Unmap(), local.Port()),
		VIP:    vipPort,
		Proto:  executor.TCP,
	}
	var (
		flow  executor.Flow
		found bool
	)
	f.do(t, func() (err error) {
		flow, found, err = f.x.LookupFlow(fk)
		return err
	})
	if !found || flow.Server != addr {
		t.Fatalf("flow %v: found %v, server %v; want %s (%v)", fk, found, flow.Server, name, addr)
	}

	f.do(t, func() error { return f.x.SetWeights(key, map[netip.Addr]uint32{addr: 0}) })
	t.Cleanup(func() {
		if err := l.Dispatcher.NS.Do(func() error {
			return f.x.SetWeights(key, map[netip.Addr]uint32{addr: weight})
		}); err != nil {
			t.Errorf("restore the weight of %s: %v", name, err)
		}
	})
	t.Logf("%s: quiesced %s (%v, weight %d -> 0) under the open connection %v", family(vip), name, addr, weight, fk)

	exchange := func(when string) {
		t.Helper()
		for range 4 {
			got, err := long.get(replySize)
			if err != nil {
				t.Fatalf("long-lived connection %s: %v", when, err)
			}
			if got != name {
				t.Fatalf("long-lived connection %s answered by %s, want %s", when, got, name)
			}
		}
	}
	exchange("after quiescing")

	const newConns = 200
	res := runLoad(ctx, l.Client.NS, vipPort, newConns, loadWorkers, 1024)
	for i, err := range res.errs {
		if i == 5 {
			break
		}
		t.Errorf("new connection: %v", err)
	}
	if got := res.completed(); got != newConns {
		t.Errorf("%d of %d new connections completed", got, newConns)
	}
	if n := res.perServer[name]; n != 0 {
		t.Errorf("quiesced %s took %d of %d new connections", name, n, newConns)
	}
	for i, s := range f.servers {
		if s != quiesced && f.weights[i] > 0 && res.perServer[s.name] == 0 {
			t.Errorf("%s took none of the new connections", s.name)
		}
	}
	t.Logf("%s: new connections per server after quiescing %s: %v", family(vip), name, res.perServer)

	exchange("after the new connections")
	var active map[executor.ServiceKey]map[netip.Addr]int
	f.do(t, func() (err error) {
		active, err = f.x.ActiveFlows()
		return err
	})
	if active[key][addr] < 1 {
		t.Errorf("connection table holds %d open flows of quiesced %s, want the long-lived one", active[key][addr], name)
	}
}

// TestExecutorE2ETwoNetworks: with an internal network between dispatcher
// and servers, the dispatcher takes the clients' packets on eth0 and
// redirects them out of eth1; the servers answer the client over the
// external network, so the replies reach it without the dispatcher.
func TestExecutorE2ETwoNetworks(t *testing.T) {
	testutil.RequirePrivileged(t)
	f := newFixture(t, lab.Options{TwoNetworks: true}, testWeights)
	l := f.lab
	d, c := &l.Dispatcher, &l.Client
	if d.Int == nil {
		t.Fatal("two-network lab without an internal interface on the dispatcher")
	}
	for _, b := range l.Backends() {
		if b.Ifindex != d.Int.Ifindex {
			t.Fatalf("backend %s leaves through %s, want eth1", b.Name, b.Ifname)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const conns = 300
	for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
		t.Run(family(vip), func(t *testing.T) {
			stBefore := f.stats(t)
			d0, d1 := readLinkStats(t, d.NS, d.Ifindex), readLinkStats(t, d.NS, d.Int.Ifindex)
			s0, s1 := f.serverLinks(t, false), f.serverLinks(t, true)
			cBefore := readLinkStats(t, c.NS, c.Ifindex)
			sentBefore := f.sent()

			res := runLoad(ctx, c.NS, netip.AddrPortFrom(vip, servicePort), conns, loadWorkers, replySize)
			f.settle(t)

			stAfter := f.stats(t)
			d0 = readLinkStats(t, d.NS, d.Ifindex).sub(d0)
			d1 = readLinkStats(t, d.NS, d.Int.Ifindex).sub(d1)
			s0 = f.serverLinks(t, false).sub(s0)
			s1 = f.serverLinks(t, true).sub(s1)
			cDelta := readLinkStats(t, c.NS, c.Ifindex).sub(cBefore)
			sent := uint64(f.sent() - sentBefore)

			worst := f.checkLoad(t, res, conns)
			t.Logf("%d connections in %v; worst share is %.1f points off its weight's", res.completed(), res.elapsed.Round(time.Millisecond), 100*worst)
			svc := f.service(stAfter, vip).sub(f.service(stBefore, vip))
			f.checkNewFlows(t, svc, res)
			forwarded := svc.bytes
			want := uint64(res.received)

			t.Logf("servers sent %d bytes; client read %d payload bytes, its eth0 received %d bytes", sent, want, cDelta.rxBytes)
			t.Logf("dispatcher: eth0 received %d bytes (%.2f%% of the replies), data plane forwarded %d bytes (%.2f%%), eth1 received %d bytes",
				d0.rxBytes, percent(d0.rxBytes, sent), forwarded, percent(forwarded, sent), d1.rxBytes)
			t.Logf("servers: eth1 received %d bytes, eth0 sent %d bytes and received %d", s1.rxBytes, s0.txBytes, s0.rxBytes)

			if want != uint64(conns)*replySize {
				t.Errorf("client read %d payload bytes, want %d", want, uint64(conns)*replySize)
			}
			if cDelta.rxBytes < want {
				t.Errorf("client eth0 received %d bytes, less than the %d payload bytes read", cDelta.rxBytes, want)
			}
			if forwarded == 0 {
				t.Errorf("the data plane forwarded nothing for %v", f.key(vip))
			}
			limit := uint64(bypassRatio * float64(sent))
			if d0.rxBytes > limit || d1.rxBytes > limit {
				t.Errorf("dispatcher received %d bytes on eth0 and %d on eth1, want each under %d (%.0f%% of the %d reply bytes)",
					d0.rxBytes, d1.rxBytes, limit, 100*bypassRatio, sent)
			}
			// Requests reached the servers over the internal network and
			// replies left them over the external one.
			if s1.rxBytes < forwarded {
				t.Errorf("servers' eth1 received %d bytes, fewer than the %d the dispatcher forwarded", s1.rxBytes, forwarded)
			}
			if s0.txBytes < sent {
				t.Errorf("servers' eth0 sent %d bytes, fewer than the %d reply bytes", s0.txBytes, sent)
			}
			if s0.rxBytes > limit {
				t.Errorf("servers' eth0 received %d bytes: requests arrived over the external network", s0.rxBytes)
			}
		})
	}
}
