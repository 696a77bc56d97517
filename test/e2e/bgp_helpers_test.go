package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// The BGP tests put the client behind a router running BIRD 2 (the Debian
// package bird2); each dispatcher runs ndd with a bgp section peering with
// it. The dispatchers hold no VIP: the client reaches VIP4 only through
// the routes BIRD learns from them and installs in the router's kernel.

const (
	// bgpHold is the hold time both sides propose: BIRD's least.
	bgpHold = 3 * time.Second
	// bgpTimeout bounds the wait for a route to come or go at the router.
	bgpTimeout = 20 * time.Second
)

// bgpNode is one dispatcher running ndd with a bgp section.
type bgpNode struct {
	*nddNode
	// v6 is a cluster of VIP6, as YAML list items of clusters; "" for
	// none. bgp is the configuration's bgp section.
	v6  string
	bgp string
}

// bgpLab is a lab with a router running BIRD, reply servers on VIP4:80
// and one ndd per dispatcher.
type bgpLab struct {
	*fixture
	dir   string
	bird  *lab.BIRD
	nodes []*bgpNode
}

// bgpSection is a dispatcher's bgp section: peering with the router (with
// a TCP MD5 password unless ""), and more peers' lines if given.
func bgpSection(d *lab.Host, grace time.Duration, password, extra string) string {
	pw := ""
	if password != "" {
		pw = fmt.Sprintf(", password: %q", password)
	}
	return fmt.Sprintf(`bgp:
  asn: %d
  router_id: %s
  shutdown_grace: %s
  peers:
    - {address: %s, asn: %d, hold_time: %s%s}
%s`, lab.DispatcherASN, d.Addr4, grace, lab.Router4(), lab.RouterASN, bgpHold, pw, extra)
}

// v6Peer is the line of a peering with the router over IPv6.
func v6Peer() string {
	return fmt.Sprintf("    - {address: %s, asn: %d, hold_time: %s}\n", lab.Router6(), lab.RouterASN, bgpHold)
}

// newBGPLab builds the lab with the given number of dispatchers, starts
// BIRD (with password as every session's TCP MD5 key, unless "") and the reply servers, and an ndd on every dispatcher with the bgp
// section that section returns for it. t.Cleanup undoes everything.
func newBGPLab(t *testing.T, dispatchers int, password string, v6 bool, section func(i int, d *lab.Host) string) *bgpLab {
	t.Helper()
	return newBGPLabServers(t, dispatchers, 2, password, v6, section, nil)
}

// newBGPLabServers is newBGPLab with the given number of servers, and
// tune, unless nil, applied to every node's configuration before it is
// first written.
func newBGPLabServers(t *testing.T, dispatchers, servers int, password string, v6 bool, section func(i int, d *lab.Host) string, tune func(*nddConfig)) *bgpLab {
	t.Helper()
	testutil.RequireCommands(t, "apt-get install bird2; scripts/setup does", "bird", "birdc")
	sweepStalePins(t)
	nddBinary(t)
	ndctlBinary(t)
	l := newLab(t, lab.Options{Servers: servers, Dispatchers: dispatchers, Router: true})
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	b := &bgpLab{fixture: &fixture{lab: l, byAddr: map[netip.Addr]*replyServer{}}, dir: t.TempDir()}
	port := portConfig{Port: servicePort}
	cluster6 := ""
	if v6 {
		cluster6 = fmt.Sprintf("  - vip: %s\n    ports:\n      - port: %d\n        servers:\n", l.VIP6, servicePort)
	}
	for i, be := range l.Backends() {
		vips := []netip.Addr{l.VIP4}
		if v6 {
			vips = append(vips, l.VIP6)
			cluster6 += fmt.Sprintf("          - {address: %s, weight: 1}\n", be.Addr6)
		}
		b.addReplyServer(t, i, be, vips...)
		port.Servers = append(port.Servers, serverConfig{Addr: be.Addr4, Weight: 1})
	}
	var peers []lab.BIRDPeer
	for _, d := range l.Dispatchers() {
		name := strings.ReplaceAll(d.Name, "dispatcher", "d")
		peers = append(peers, lab.BIRDPeer{Name: name, Addr: d.Addr4, ASN: lab.DispatcherASN, Password: password})
		if v6 {
			peers = append(peers, lab.BIRDPeer{Name: name + "v6", Addr: d.Addr6, ASN: lab.DispatcherASN, Password: password})
		}
	}
	var err error
	b.bird, err = l.StartBIRD(ctx, lab.BIRDOptions{Dir: b.dir, Peers: peers, HoldTime: int(bgpHold / time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("BIRD's log:\n%s", b.bird.LogTail(40))
		}
		if err := b.bird.Stop(); err != nil {
			t.Error(err)
		}
	})
	for i, d := range l.Dispatchers() {
		n := &bgpNode{nddNode: newNDDNode(t, l, b.dir, d, port, syscall.SIGKILL), bgp: section(i, d), v6: cluster6}
		if tune != nil {
			n.cfg = n.cfg.clone() // the nodes share port's servers
			tune(&n.cfg)
		}
		n.write(t)
		b.nodes = append(b.nodes, n)
	}
	for _, n := range b.nodes {
		n.start(t)
	}
	return b
}

// write writes the node's configuration file: the usual one, the VIP6
// cluster if any and the bgp section.
func (n *bgpNode) write(t *testing.T) {
	t.Helper()
	n.writeConfig(t, n.cfg.yaml()+n.v6+n.bgp)
}

// quiesce quiesces (or brings back) every server of the node's port.
func (n *bgpNode) quiesce(t *testing.T, q bool) {
	t.Helper()
	for _, s := range n.cfg.Ports[0].Servers {
		if _, err := n.api.SetServer(lab.VIP4.String(), servicePort, "tcp", s.Addr.String(), api.ServerPatch{Quiesce: &q}); err != nil {
			t.Fatalf("%s: quiesce %s %t: %v", n.name, s.Addr, q, err)
		}
	}
}

// waitNextHops waits until the router's kernel route to VIP4 goes through
// exactly the given dispatchers (none: no route), and returns how long
// after since that was seen.
func (b *bgpLab) waitNextHops(t *testing.T, what string, since time.Time, want ...*bgpNode) time.Duration {
	t.Helper()
	var addrs []netip.Addr
	for _, n := range want {
		addrs = append(addrs, n.host.Addr4)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	start := time.Now()
	var got []netip.Addr
	for time.Since(start) < bgpTimeout {
		var err error
		got, err = b.lab.RouterNextHops(b.lab.VIP4)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(got, netip.Addr.Compare)
		if slices.Equal(got, addrs) {
			d := time.Since(since)
			t.Logf("%s: the router's route to %s goes through %v after %v", what, b.lab.VIP4, addrs, d.Round(time.Millisecond))
			return d
		}
		time.Sleep(10 * time.Millisecond)
	}
	out, _ := b.bird.RouteAll(context.Background(), b.lab.VIP4)
	t.Fatalf("%s: the router's route to %s goes through %v, want %v; BIRD:\n%s", what, b.lab.VIP4, got, addrs, out)
	return 0
}

// waitBIRD waits until `birdc show route all for VIP4/32` satisfies ok.
func (b *bgpLab) waitBIRD(t *testing.T, what string, ok func(out string) bool) string {
	t.Helper()
	deadline := time.Now().Add(bgpTimeout)
	var out string
	for time.Now().Before(deadline) {
		out, _ = b.bird.RouteAll(context.Background(), b.lab.VIP4)
		if ok(out) {
			return out
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: BIRD shows:\n%s", what, out)
	return ""
}

// fetch makes one request from the client to VIP4:80 through the router.
func (b *bgpLab) fetch(t *testing.T, what string) string {
	t.Helper()
	name, err := fetchOnce(context.Background(), b.lab.Client.NS, netip.AddrPortFrom(b.lab.VIP4, servicePort), 1000)
	if err != nil {
		t.Fatalf("%s: the client cannot reach %s through the router: %v", what, b.lab.VIP4, err)
	}
	return name
}
