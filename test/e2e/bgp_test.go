package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// bgpStatus reads `ndctl bgp status --json` from the node.
func (n *bgpNode) bgpStatus(t *testing.T) nd.BGPStatus {
	t.Helper()
	var st nd.BGPStatus
	n.ndctlJSON(t, &st, "bgp", "status")
	return st
}

// silentPeer is an address on the lab's network where nothing answers.
const silentPeer = "198.51.100.77"

// TestBGPAnnounceECMPWithdraw runs two dispatchers peering with BIRD: both
// announce VIP4, BIRD installs one ECMP route through both and the client
// reaches the VIP through the router; a dispatcher whose servers are all
// quiesced withdraws while the other keeps announcing, and with none left
// the route is gone, coming back with the servers. The first dispatcher
// also has a peer that never answers, which holds up neither its start nor
// its announcements. VIP6 goes the same way over IPv6 sessions. Last, a reload changes the MED and communities the
// first dispatcher announces, which BIRD shows and acts on, and removes
// the silent peer. Killing the second's ndd moves the route at once.
func TestBGPAnnounceECMPWithdraw(t *testing.T) {
	testutil.RequirePrivileged(t)
	b := newBGPLab(t, 2, "", true, func(i int, d *lab.Host) string {
		extra := v6Peer()
		if i == 0 {
			extra += fmt.Sprintf("    - {address: %s, asn: 64999}\n", silentPeer)
		}
		return bgpSection(d, time.Second, "", extra)
	})
	n0, n1 := b.nodes[0], b.nodes[1]
	var at time.Time
	b.waitNextHops(t, "both dispatchers announce", time.Now(), n0, n1)
	// The IPv6 sessions may come up a little after the IPv4 routes.
	var up []string
	var err error
	for deadline := time.Now().Add(bgpTimeout); ; time.Sleep(50 * time.Millisecond) {
		if up, err = b.bird.Established(t.Context()); (err == nil && len(up) == 4) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || len(up) != 4 {
		t.Errorf("BIRD's established sessions: %v, %v; want both dispatchers over IPv4 and IPv6", up, err)
	}
	out := b.waitBIRD(t, "two BGP paths", func(out string) bool { return strings.Count(out, "BGP.as_path: 64513") == 2 })
	t.Logf("BIRD:\n%s", out)
	seen := map[string]bool{}
	for range 8 {
		seen[b.fetch(t, "ECMP route")] = true
	}
	t.Logf("the client reached %d servers through the router", len(seen))

	// IPv6: VIP6 over the IPv6 sessions, the same ECMP.
	deadline := time.Now().Add(bgpTimeout)
	for {
		hops, err := b.lab.RouterNextHops(b.lab.VIP6)
		if err != nil {
			t.Fatal(err)
		}
		if len(hops) == 2 {
			t.Logf("the router's route to %s goes through %v", b.lab.VIP6, hops)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the router's route to %s goes through %v, want both dispatchers", b.lab.VIP6, hops)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := fetchOnce(t.Context(), b.lab.Client.NS, netip.AddrPortFrom(b.lab.VIP6, servicePort), 1000); err != nil {
		t.Errorf("the client cannot reach %s through the router: %v", b.lab.VIP6, err)
	}

	// Peers sorted by address: the router, the silent one, the router
	// over IPv6.
	st := n0.bgpStatus(t)
	if len(st.Peers) != 3 || st.Peers[0].State != "established" || st.Peers[0].Advertised != 1 ||
		st.Peers[1].State == "established" || st.Peers[2].State != "established" || st.Peers[2].Advertised != 1 {
		t.Errorf("%s's peers: %+v", n0.name, st.Peers)
	}
	if len(st.VIPs) != 2 || !st.VIPs[0].Announced || !st.VIPs[1].Announced {
		t.Errorf("%s's VIPs: %+v", n0.name, st.VIPs)
	}

	// The second dispatcher's servers all quiesced: it alone withdraws.
	at = time.Now()
	n1.quiesce(t, true)
	d := b.waitNextHops(t, "dispatcher2's servers quiesced", at, n0)
	t.Logf("withdraw seen in the router's kernel %v after the quiescing began", d.Round(time.Millisecond))
	b.fetch(t, "one dispatcher announcing")
	if st := n1.bgpStatus(t); st.VIPs[0].Announced || st.VIPs[0].Reason != "no server can take new flows" || !st.VIPs[1].Announced {
		t.Errorf("%s's VIPs: %+v", n1.name, st.VIPs)
	}

	// Neither can serve: no route at all; then both come back.
	at = time.Now()
	n0.quiesce(t, true)
	d = b.waitNextHops(t, "every server quiesced", at)
	t.Logf("route gone from the router's kernel %v after the quiescing began", d.Round(time.Millisecond))
	n0.quiesce(t, false)
	n1.quiesce(t, false)
	b.waitNextHops(t, "servers back", time.Now(), n0, n1)
	b.fetch(t, "servers back")

	// A reload gives the first dispatcher's route MED 50 and a community:
	// BIRD shows them, and prefers the second's MED 0 (same neighbour AS),
	// so the ECMP route becomes a single one.
	// The same reload removes the silent peer.
	n0.bgp = strings.Replace(n0.bgp, fmt.Sprintf("    - {address: %s, asn: 64999}\n", silentPeer), "", 1)
	n0.bgp += fmt.Sprintf("  vips:\n    - {vip: %s, med: 50, communities: [\"64513:200\", no-export]}\n", lab.VIP4)
	n0.write(t)
	if err := n0.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	out = b.waitBIRD(t, "MED and communities after the reload", func(out string) bool {
		return strings.Contains(out, "BGP.med: 50") && strings.Contains(out, "(64513,200)") && strings.Contains(out, "(65535,65281)")
	})
	t.Logf("BIRD after the reload:\n%s", out)
	b.waitNextHops(t, "MED 50 against 0", time.Now(), n1)
	if st := n0.bgpStatus(t); len(st.Peers) != 2 || st.Peers[0].State != "established" || st.VIPs[0].MED != 50 {
		t.Errorf("%s after the reload: %+v", n0.name, st)
	}

	// The second's ndd killed: the kernel closes its sessions, BIRD drops
	// its routes at once (no hold time to wait) and the first's MED 50
	// route takes over.
	at = time.Now()
	n1.proc.Kill()
	d = b.waitNextHops(t, "dispatcher2's ndd killed", at, n0)
	t.Logf("kill -9: the router's route moved to the other dispatcher %v after the kill", d.Round(time.Millisecond))
	b.fetch(t, "after the kill")
}

// TestBGPDrainAndShutdown runs one dispatcher, its session with BIRD
// signed by a TCP MD5 key: `ndctl bgp drain` withdraws
// its route while established connections keep being forwarded; a reload
// with a bad bgp section is refused with its location, the route staying;
// and SIGTERM withdraws the route before ndd exits, ndd serving on for the
// shutdown grace. The router keeps a static fallback route to the
// dispatcher, below BIRD's: the packets of established flows that still
// arrive after a withdrawal.
func TestBGPDrainAndShutdown(t *testing.T) {
	testutil.RequirePrivileged(t)
	const grace = 3 * time.Second
	// The session is signed with TCP MD5 (RFC 2385), as many routers
	// require: GoBGP sets the key on its socket, BIRD on its own, in
	// network namespaces.
	const md5 = "nd-lab-md5-key"
	b := newBGPLab(t, 1, md5, false, func(i int, d *lab.Host) string { return bgpSection(d, grace, md5, "") })
	n := b.nodes[0]
	b.waitNextHops(t, "announced", time.Now(), n)
	if err := b.lab.AddRouterFallback(b.lab.VIP4, n.host.Addr4); err != nil {
		t.Fatal(err)
	}
	lc := openLong(t.Context(), t, b.lab.Client.NS, netip.AddrPortFrom(b.lab.VIP4, servicePort), 4)

	// Drain: withdrawn, the connections carry on.
	at := time.Now()
	out, stderr, code, err := runNDCTL(t, "--socket", n.cfg.Socket, "bgp", "drain")
	if err != nil || code != 0 || !strings.Contains(out, "drained") {
		t.Fatalf("ndctl bgp drain: exit %d, %v: %s%s", code, err, out, stderr)
	}
	d := b.waitNextHops(t, "drained", at)
	t.Logf("drain: route gone from the router's kernel %v after ndctl bgp drain started", d.Round(time.Millisecond))
	b.waitBIRD(t, "drained", func(out string) bool { return !strings.Contains(out, "BGP.as_path") })
	checkExchange(t, lc, "drained", nil)
	if st := n.bgpStatus(t); !st.Drained || st.VIPs[0].Announced {
		t.Errorf("drained status %+v", st)
	}
	if _, stderr, code, err := runNDCTL(t, "--socket", n.cfg.Socket, "bgp", "undrain"); err != nil || code != 0 {
		t.Fatalf("ndctl bgp undrain: exit %d, %v: %s", code, err, stderr)
	}
	b.waitNextHops(t, "undrained", time.Now(), n)

	// A bad bgp section: refused by --check and by a reload, with its
	// location; the route stays.
	good := n.bgp
	n.bgp = strings.Replace(good, "hold_time: 3s", "hold_time: 2s", 1)
	n.write(t)
	cmd := exec.Command(nddBinary(t), "--check", n.cfgPath)
	cout, _ := cmd.CombinedOutput()
	want := fmt.Sprintf("%s:", n.cfgPath)
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(cout), want) || !strings.Contains(string(cout), "bgp.peers[0].hold_time: 2s is not a hold time") {
		t.Errorf("ndd --check of a bad hold time: exit %d:\n%s", cmd.ProcessState.ExitCode(), cout)
	}
	_, stderr, code, _ = runNDCTL(t, "--socket", n.cfg.Socket, "config", "reload")
	if code == 0 || !strings.Contains(stderr, "bgp.peers[0].hold_time") || !strings.Contains(stderr, filepath.Base(n.cfgPath)+":") {
		t.Errorf("reload of a bad hold time: exit %d: %s", code, stderr)
	} else {
		t.Logf("reload refused: %s", strings.TrimSpace(stderr))
	}
	n.bgp = good
	n.write(t)
	if got, _ := b.lab.RouterNextHops(b.lab.VIP4); len(got) != 1 {
		t.Errorf("after the refused reload the router's route goes through %v", got)
	}

	// Live changes of the speaker: a new router id restarts it (BIRD sees
	// a new neighbour ID) and the route comes back; `announce: false`
	// withdraws the VIP alone, and its removal announces it again.
	reload := func(what, section string) {
		t.Helper()
		n.bgp = section
		n.write(t)
		if _, stderr, code, err := runNDCTL(t, "--socket", n.cfg.Socket, "config", "reload"); err != nil || code != 0 {
			t.Fatalf("%s: reload: exit %d, %v: %s", what, code, err, stderr)
		}
	}
	reload("router id", strings.Replace(good, "router_id: "+n.host.Addr4.String(), "router_id: 198.51.100.254", 1))
	neighbourID := regexp.MustCompile(`Neighbor ID:\s+198\.51\.100\.254`)
	deadline := time.Now().Add(bgpTimeout)
	for {
		out, _ := b.bird.Show(context.Background(), "protocols", "all")
		if neighbourID.MatchString(out) && strings.Contains(out, "Established") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("BIRD does not see the new router id:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.waitNextHops(t, "route back after the new router id", time.Now(), n)
	// A changed peer (its hold time) is re-created: its session starts
	// again, and the route comes back.
	changed := time.Now()
	reload("peer hold time", strings.Replace(good, "hold_time: 3s", "hold_time: 4s", 1))
	for {
		st := n.bgpStatus(t)
		if len(st.Peers) == 1 && st.Peers[0].State == "established" && st.Peers[0].Since.After(changed) {
			break
		}
		if time.Since(changed) > bgpTimeout {
			t.Fatalf("the peer's session did not start again after its hold time changed: %+v", st.Peers)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.waitNextHops(t, "route back after the peer was re-created", time.Now(), n)
	reload("announce: false", good+fmt.Sprintf("  vips:\n    - {vip: %s, announce: false}\n", b.lab.VIP4))
	b.waitNextHops(t, "announce: false", time.Now())
	if st := n.bgpStatus(t); len(st.VIPs) != 1 || st.VIPs[0].Announced || !strings.Contains(st.VIPs[0].Reason, "announce is false") {
		t.Errorf("VIPs after announce: false: %+v", st.VIPs)
	}
	reload("announce again", good)
	b.waitNextHops(t, "announced again", time.Now(), n)

	// SIGTERM: withdrawn first, ndd serving on for the grace, then gone.
	sent := time.Now()
	if err := n.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	withdrawn := b.waitNextHops(t, "SIGTERM", sent)
	if n.proc.Exited() {
		t.Fatalf("ndd exited before its route was withdrawn at the router (%v after SIGTERM)", withdrawn)
	}
	checkExchange(t, lc, "SIGTERM, within the grace", nil)
	deadline = time.Now().Add(grace + nddStopTimeout)
	for !n.proc.Exited() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	exited := time.Since(sent)
	if !n.proc.Exited() || n.proc.Err() != nil {
		t.Fatalf("ndd after SIGTERM: exited %t, %v", n.proc.Exited(), n.proc.Err())
	}
	t.Logf("SIGTERM: route gone from the router's kernel after %v, ndd exited after %v (grace %v)",
		withdrawn.Round(time.Millisecond), exited.Round(time.Millisecond), grace)
	if exited < grace || exited-withdrawn < grace-500*time.Millisecond {
		t.Errorf("ndd exited %v after SIGTERM, %v after its withdrawal: want the %v grace between", exited, exited-withdrawn, grace)
	}
	checkExchange(t, lc, "after ndd exited (pinned data plane)", nil)
}
