package e2e

import (
	"context"
	"math"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// A hierarchical set of dispatchers (issue 13, docs/SCALEOUT.md
// "Hierarchical sets"): the first-tier ndd, on the lab's dispatcher (A),
// has VIP4:80 over server1, server2 and dispatcher2 (B); B runs ndd with
// VIP4:80 over server3 and server4. B holds the VIP on lo and answers no
// ARP for it (lab.Options.SecondTier), so A forwards to B's MAC as to any
// server, B's data plane forwards on by MAC rewrite, and B's servers answer
// the client directly.

// tierName is how the tests name the second tier in per-server counts.
const tierName = "dispatcher2"

// newTieredLab builds the two tiers with the weights A gives server1,
// server2 and B, and B gives server3 and server4. Both use the Maglev
// scheduler, so that shares follow weights closely.
func newTieredLab(t *testing.T, aWeights [3]uint32, bWeights [2]uint32) (a, b *nddLab) {
	t.Helper()
	// A's configuration: server3 and server4 left out (weight -1), B added.
	a = newNDDLabWith(t, lab.Options{Dispatchers: 2, SecondTier: true},
		[]int{int(aWeights[0]), int(aWeights[1]), -1, -1}, func(c *nddConfig) {
			// newNDDLabWith has not kept the lab yet: B's address is
			// fixed (lab.Dispatcher2Num), as in every lab.
			bAddr := netip.AddrFrom4([4]byte{198, 51, 100, lab.Dispatcher2Num})
			c.Ports[0].Scheduler = "maglev"
			c.Ports[0].Servers = append(c.Ports[0].Servers, serverConfig{Addr: bAddr, Weight: aWeights[2]})
		})
	d2 := a.lab.Dispatcher2
	if d2.Addr4 != netip.AddrFrom4([4]byte{198, 51, 100, lab.Dispatcher2Num}) {
		t.Fatalf("dispatcher2 is %s, not the address configured at the first tier", d2.Addr4)
	}
	a.nameOf[d2.Addr4], a.addrOf[tierName] = tierName, d2.Addr4

	b = &nddLab{fixture: a.fixture, dir: t.TempDir(), addrOf: a.addrOf, nameOf: a.nameOf, host: d2}
	port := portConfig{Port: servicePort, Scheduler: "maglev"}
	for i, w := range bWeights {
		port.Servers = append(port.Servers, serverConfig{Addr: a.lab.Servers[2+i].Addr4, Weight: w})
	}
	b.cfg = nddConfig{
		PinPath:    newPinPath(),
		Socket:     filepath.Join(b.dir, "ndd.sock"),
		Interfaces: []string{d2.Ifname},
		Ports:      []portConfig{port},
	}
	b.cfgPath = filepath.Join(b.dir, "nd.yaml")
	b.writeConfig(t, b.cfg)
	b.api = apiClient(t, b.cfg.Socket)
	t.Cleanup(func() { b.teardown(t) })
	b.start(t)
	return a, b
}

// checkShare fails the test unless got of total is want of the whole
// within tol (a fraction, points/100), and logs it.
func checkShare(t *testing.T, what string, got, total int, want, tol float64) {
	t.Helper()
	share := float64(got) / float64(total)
	if math.Abs(share-want) > tol {
		t.Errorf("%s: %d of %d (%.1f%%), want %.1f%% within %.0f points", what, got, total, 100*share, 100*want, 100*tol)
	} else {
		t.Logf("%s: %d of %d (%.1f%%, want %.1f%%)", what, got, total, 100*share, 100*want)
	}
}

// checkCounted fails the test unless ndd counted, between before and
// after, the new flows the client saw each named server answer (one in a
// thousand may be missed: see TestNDDWeights).
func checkCounted(t *testing.T, who string, before, after map[string]uint64, saw map[string]int) {
	t.Helper()
	for name := range after {
		got, want := after[name]-before[name], uint64(saw[name])
		if got > want || want-got > (want+999)/1000 {
			t.Errorf("%s counted %d new flows to %s, the client saw %d", who, got, name, want)
		}
	}
}

// TestHierarchicalSets: two tiers of dispatchers on one segment.
//
//   - Every connection through the VIP completes; the client resolves the
//     VIP to A's MAC only (B answers no ARP for it).
//   - A's weights decide the second tier's share (server3 + server4 over
//     all), and B spreads what it gets over its servers by its weights;
//     A's count of new flows to B equals the connections B's servers
//     answered, and B's counts per server agree with the client.
//   - B's servers answer the client directly: B's eth0 carries under 5%
//     of their reply bytes.
//   - Changing B's weight at A moves the second tier's share.
//   - Quiescing B at A sends no new flow to the second tier, while the
//     connections already open through B keep working.
func TestHierarchicalSets(t *testing.T) {
	testutil.RequirePrivileged(t)
	a, b := newTieredLab(t, [3]uint32{1, 1, 2}, [2]uint32{1, 3})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l := a.lab
	vip := a.vip4()
	const conns = 2000

	// tierShares runs conns new connections and checks the shares, given
	// B's weight at A out of A's total and B's own weights.
	tierShares := func(when string, aWant map[string]float64, bWant map[string]float64) {
		t.Helper()
		aBefore, bBefore := a.newFlows(t), b.newFlows(t)
		res := runLoad(ctx, l.Client.NS, vip, conns, loadWorkers, 64)
		aAfter, bAfter := a.newFlows(t), b.newFlows(t)
		per := checkAllComplete(t, res, conns, when)
		t.Logf("%s: answered by %v in %v", when, per, res.elapsed.Round(time.Millisecond))
		tier := per["server3"] + per["server4"]
		// Through A: each direct server and the whole second tier.
		for name, want := range aWant {
			got := per[name]
			if name == tierName {
				got = tier
			}
			checkShare(t, when+": at A, "+name, got, conns, want, 0.04)
		}
		// Within the second tier: B's split of what A sent it.
		if tier == 0 {
			t.Fatalf("%s: the second tier answered none of %d connections", when, conns)
		}
		for name, want := range bWant {
			checkShare(t, when+": at B, "+name, per[name], tier, want, 0.06)
		}
		saw := map[string]int{"server1": per["server1"], "server2": per["server2"], tierName: tier}
		checkCounted(t, "A", aBefore, aAfter, saw)
		checkCounted(t, "B", bBefore, bAfter, per)
		t.Logf("%s: A counted %v, B counted %v (cumulative)", when, aAfter, bAfter)
	}

	tierShares("weights 1:1:2 at A", map[string]float64{"server1": 0.25, "server2": 0.25, tierName: 0.5},
		map[string]float64{"server3": 0.25, "server4": 0.75})

	// Direct server return across both tiers: B's servers answer the
	// client, so B's eth0 carries the requests and acknowledgements that
	// A forwards and B forwards again, not the replies.
	const bigConns = 200
	bLink := func() linkStats { return readLinkStats(t, l.Dispatcher2.NS, l.Dispatcher2.Ifindex) }
	linkBefore, bPort := bLink(), b.portStatus(t, servicePort)
	res := runLoad(ctx, l.Client.NS, vip, bigConns, loadWorkers, replySize)
	b.settle(t)
	linkDelta := bLink().sub(linkBefore)
	per := checkAllComplete(t, res, bigConns, "64 KiB reply")
	tierBytes := uint64(per["server3"]+per["server4"]) * replySize
	forwarded := b.portStatus(t, servicePort).Bytes - bPort.Bytes
	t.Logf("64 KiB replies: %v; dispatcher2's eth0 received %d bytes in %d frames and sent %d, its servers' replies %d bytes; B forwarded %d bytes",
		per, linkDelta.rxBytes, linkDelta.rxPackets, linkDelta.txBytes, tierBytes, forwarded)
	if forwarded == 0 {
		t.Errorf("B's data plane forwarded nothing")
	}
	if limit := tierBytes / 20; linkDelta.rxBytes > limit || linkDelta.txBytes > limit {
		t.Errorf("dispatcher2's eth0 received %d and sent %d bytes, want each under %d (5%% of its servers' reply bytes): replies pass through it",
			linkDelta.rxBytes, linkDelta.txBytes, limit)
	}

	// The client reaches the VIP through A only: B holds it hidden.
	if mac, err := lab.Neighbor(l.Client.NS, l.Client.Ifindex, l.VIP4); err != nil {
		t.Errorf("client's neighbour entry for %s: %v", l.VIP4, err)
	} else if mac.String() != l.Dispatcher.MAC.String() {
		t.Errorf("client resolves %s to %s, want the first tier's %s (not dispatcher2's %s)", l.VIP4, mac, l.Dispatcher.MAC, l.Dispatcher2.MAC)
	}

	setB := func(p api.ServerPatch) {
		t.Helper()
		ch, err := a.api.SetServer(vip.Addr().String(), vip.Port(), "tcp", l.Dispatcher2.Addr4.String(), p)
		if err != nil {
			t.Fatalf("set dispatcher2 at A: %v", err)
		}
		t.Logf("set dispatcher2 at A: %s", ch)
	}
	w := uint32(6)
	setB(api.ServerPatch{Weight: &w})
	tierShares("weights 1:1:6 at A", map[string]float64{"server1": 0.125, "server2": 0.125, tierName: 0.75},
		map[string]float64{"server3": 0.25, "server4": 0.75})

	// Quiesce B at A with connections open through both tiers.
	long := openLong(ctx, t, l.Client.NS, vip, 48)
	perLong := long.perServer()
	throughB := perLong["server3"] + perLong["server4"]
	t.Logf("long-lived connections: %v (%d through dispatcher2)", perLong, throughB)
	if throughB == 0 || perLong["server3"] == 0 || perLong["server4"] == 0 {
		t.Fatalf("no long-lived connection on one of dispatcher2's servers: %v", perLong)
	}
	q := true
	setB(api.ServerPatch{Quiesce: &q})
	for _, s := range a.portStatus(t, servicePort).Servers {
		if s.Address != l.Dispatcher2.Addr4.String() {
			continue
		}
		if s.State != nd.StateQuiesced || s.Weight != 0 {
			t.Errorf("dispatcher2 at A is %s with weight %d, want quiesced with weight 0", s.State, s.Weight)
		}
		if s.ActiveFlows < uint64(throughB) {
			t.Errorf("A shows %d active flows to dispatcher2, want at least the %d long-lived ones", s.ActiveFlows, throughB)
		}
	}
	checkExchange(t, long, "after quiescing dispatcher2 at A", nil)
	const newConns = 300
	res = runLoad(ctx, l.Client.NS, vip, newConns, loadWorkers, 64)
	per = checkAllComplete(t, res, newConns, "new connection while dispatcher2 is quiesced")
	t.Logf("new connections while dispatcher2 is quiesced at A: %v", per)
	if n := per["server3"] + per["server4"]; n != 0 {
		t.Errorf("the quiesced second tier took %d of %d new connections", n, newConns)
	}
	if per["server1"] == 0 || per["server2"] == 0 {
		t.Errorf("a first-tier server took none of the new connections: %v", per)
	}
	checkExchange(t, long, "after new connections", nil)
}

// TestHierarchicalSetsAdvisor: a tcp advisor at A in vip mode probes B as
// it probes a server, VIP:80 steered to B's MAC, and B forwards the probes
// to its own servers: B is up at A, and B counts new flows while the
// client is idle. When both of B's servers are quiesced at B, A's probes
// fail and A takes B down; B is up again when they return. (In server mode A would probe B's own address, where
// nothing listens: see docs/SCALEOUT.md, "Hierarchical sets".)
func TestHierarchicalSetsAdvisor(t *testing.T) {
	testutil.RequirePrivileged(t)
	a, b := newTieredLab(t, [3]uint32{1, 1, 2}, [2]uint32{1, 1})
	cfg := a.cfg.clone()
	vipAdvisor(&cfg)
	before := b.newFlows(t)
	ch, err := a.api.ApplyConfig([]byte(cfg.yaml()))
	if err != nil {
		t.Fatalf("apply A's configuration with an advisor: %v", err)
	}
	t.Logf("A: %s", ch)

	deadline := time.Now().Add(10 * time.Second)
	var probed int
	for {
		sts, up := advisorsUp(t, "A's advisors", a.api)
		after := b.newFlows(t)
		probed = int(after["server3"] - before["server3"] + after["server4"] - before["server4"])
		// Several rounds each, so that B's counts show the probes.
		if up == 3 && probed >= 4 {
			for _, s := range sts {
				t.Logf("A's advisor on %s: up, latency %v", s.Server, s.Latency)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s, %d of A's 3 advisor targets up and B forwarded %d probes: %+v", up, probed, sts)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("B forwarded %d of A's probes to its servers, the client idle", probed)
	for _, s := range a.portStatus(t, servicePort).Servers {
		if s.State != nd.StateUp {
			t.Errorf("at A, %s is %s (%s), want up", s.Address, s.State, s.Reason)
		}
	}

	// B with nothing to serve: both its servers quiesced at B, A's probes
	// find no server behind B, and A's advisor takes B down (weight 0 at
	// A); B is back when they return.
	quiesceAtB := func(q bool) {
		t.Helper()
		for _, s := range a.lab.Servers[2:] {
			if _, err := b.api.SetServer(lab.VIP4.String(), servicePort, "tcp", s.Addr4.String(), api.ServerPatch{Quiesce: &q}); err != nil {
				t.Fatalf("set %s quiesce=%v at B: %v", s.Name, q, err)
			}
		}
	}
	waitB := func(up bool) {
		t.Helper()
		start := time.Now()
		for {
			sts, err := a.api.Advisors()
			if err != nil {
				t.Fatalf("A's advisors: %v", err)
			}
			i := slices.IndexFunc(sts, func(s advisor.Status) bool { return s.Server == a.lab.Dispatcher2.Addr4 })
			var weight uint32
			for _, s := range a.portStatus(t, servicePort).Servers {
				if s.Address == a.lab.Dispatcher2.Addr4.String() {
					weight = s.Weight
				}
			}
			// The daemon applies the advisor's verdict just after it.
			if i >= 0 && sts[i].Known && sts[i].Up == up && up == (weight > 0) {
				t.Logf("A's advisor finds dispatcher2 up=%v (%q) after %v; its weight at A is %d", up, sts[i].Err, time.Since(start).Round(time.Millisecond), weight)
				return
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("after 10s, dispatcher2 has weight %d at A, A's advisors say %+v; want up=%v", weight, sts, up)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	quiesceAtB(true)
	waitB(false)
	quiesceAtB(false)
	waitB(true)
}
