package lab_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// withPrefix returns the namespaces under /run/netns whose name starts with
// prefix.
// newLab builds a lab with opts, logging to t, that t.Cleanup closes.
func newLab(ctx context.Context, t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	opts.Logf = t.Logf
	l, err := lab.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func withPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	names, err := netns.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

func TestLab(t *testing.T) {
	testutil.RequirePrivileged(t)

	for _, tc := range []struct {
		name    string
		opts    lab.Options
		servers int
	}{
		{name: "one network", opts: lab.Options{}, servers: lab.DefaultServers},
		{name: "two networks", opts: lab.Options{Servers: 3, TwoNetworks: true}, servers: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := netns.List()
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			l := newLab(ctx, t, tc.opts)

			// One namespace per host plus the bridge's, all listed.
			made := withPrefix(t, l.Prefix)
			if want := 3 + tc.servers; len(made) != want {
				t.Errorf("lab made %d namespaces %v, want %d", len(made), made, want)
			}
			if len(l.Servers) != tc.servers {
				t.Fatalf("%d servers, want %d", len(l.Servers), tc.servers)
			}

			if err := l.Check(ctx); err != nil {
				t.Fatal(err)
			}
			checkAddressing(t, l)
			checkVIPs(t, l)
			checkVIPNeighbors(t, l)
			checkOffloadAndXDP(t, l)
			checkDirectReply(t, l)

			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if err := l.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if left := withPrefix(t, l.Prefix); len(left) != 0 {
				t.Errorf("namespaces left after Close: %v", left)
			}
			after, err := netns.List()
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range after {
				if !slices.Contains(before, n) && strings.HasPrefix(n, l.Prefix) {
					t.Errorf("namespace %s leaked", n)
				}
			}
		})
	}
}

// checkAddressing verifies the fixed addresses and MACs and Backends.
func checkAddressing(t *testing.T, l *lab.Lab) {
	t.Helper()
	if got := l.Client.MAC.String(); got != "02:00:00:00:00:02" {
		t.Errorf("client MAC %s", got)
	}
	if got := l.Dispatcher.Addr6.String(); got != "2001:db8::3" {
		t.Errorf("dispatcher IPv6 %s", got)
	}
	s1 := l.Servers[0]
	if s1.Addr4.String() != "198.51.100.11" || s1.Addr6.String() != "2001:db8::11" || s1.MAC.String() != "02:00:00:00:00:0b" {
		t.Errorf("server1 eth0: %s %s %s", s1.Addr4, s1.Addr6, s1.MAC)
	}
	if (l.Dispatcher.Int != nil) != l.TwoNetworks || (s1.Int != nil) != l.TwoNetworks || l.Client.Int != nil {
		t.Errorf("internal interfaces do not match TwoNetworks=%v", l.TwoNetworks)
	}
	for i, b := range l.Backends() {
		s := l.Servers[i]
		want, wantOut := &s.Iface, &l.Dispatcher.Iface
		if l.TwoNetworks {
			want, wantOut = s.Int, l.Dispatcher.Int
		}
		if b.Ifindex != wantOut.Ifindex || !bytes.Equal(b.SrcMAC, wantOut.MAC) ||
			!bytes.Equal(b.DstMAC, want.MAC) || b.Addr4 != want.Addr4 || b.Name != s.Name {
			t.Errorf("backend %d = %+v, want via %s to %s", i, b, wantOut.Ifname, want.MAC)
		}
	}
	if l.TwoNetworks {
		if got := l.Servers[1].Int.Addr4.String(); got != "203.0.113.12" {
			t.Errorf("server2 eth1 %s", got)
		}
	}
}

// checkVIPs verifies that the servers hold the VIPs on lo with ARP for them
// off, and that the dispatcher holds them on eth0 and the client not at all.
func checkVIPs(t *testing.T, l *lab.Lab) {
	t.Helper()
	vips := []netip.Addr{l.VIP4, l.VIP6}
	for _, s := range l.Servers {
		if got := addrsOn(t, s.NS, "lo"); !containsAll(got, vips) {
			t.Errorf("%s lo has %v, want the VIPs", s.Name, got)
		}
		for _, ifc := range s.Ifaces() {
			if got := addrsOn(t, s.NS, ifc.Ifname); containsAny(got, vips) {
				t.Errorf("%s %s has a VIP: %v", s.Name, ifc.Ifname, got)
			}
		}
		for key, want := range map[string]string{
			"net.ipv4.conf.all.arp_ignore":   "1",
			"net.ipv4.conf.all.arp_announce": "2",
			"net.ipv4.conf.eth0.arp_ignore":  "1",
			"net.ipv4.conf.all.rp_filter":    "0",
			"net.ipv4.conf.eth0.rp_filter":   "0",
		} {
			if got, err := s.NS.ReadSysctl(key); err != nil || got != want {
				t.Errorf("%s: %s = %q, %v; want %s", s.Name, key, got, err, want)
			}
		}
	}
	if got := addrsOn(t, l.Dispatcher.NS, "eth0"); !containsAll(got, vips) {
		t.Errorf("dispatcher eth0 has %v, want the VIPs", got)
	}
	if got := addrsOn(t, l.Client.NS, "eth0"); containsAny(got, vips) {
		t.Errorf("client eth0 has a VIP: %v", got)
	}
}

// checkVIPNeighbors verifies that the client resolved the VIPs to the
// dispatcher: only the dispatcher answers ARP and NDP for them.
func checkVIPNeighbors(t *testing.T, l *lab.Lab) {
	t.Helper()
	for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
		mac, err := lab.Neighbor(l.Client.NS, l.Client.Ifindex, vip)
		if err != nil {
			t.Errorf("client neighbour for %s: %v", vip, err)
			continue
		}
		if !bytes.Equal(mac, l.Dispatcher.MAC) {
			t.Errorf("client resolves %s to %s, want the dispatcher's %s", vip, mac, l.Dispatcher.MAC)
		}
	}
	// An address nobody asked for has no entry.
	if _, err := lab.Neighbor(l.Client.NS, 0, netip.MustParseAddr("198.51.100.250")); !errors.Is(err, lab.ErrNoNeighbor) {
		t.Errorf("Neighbor(unused address) = %v, want ErrNoNeighbor", err)
	}
}

// checkOffloadAndXDP verifies that checksum offload is off on both ends of
// the dispatcher's veths and that the pass program sits on their bridge
// side.
func checkOffloadAndXDP(t *testing.T, l *lab.Lab) {
	t.Helper()
	bh, err := l.Bridge.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range l.Dispatcher.Ifaces() {
		peer, err := bh.LinkByIndex(ifc.PeerIfindex)
		if err != nil {
			t.Fatal(err)
		}
		if peer.Attrs().Name != ifc.Peer {
			t.Errorf("peer index %d is %s, want %s", ifc.PeerIfindex, peer.Attrs().Name, ifc.Peer)
		}
		if x := peer.Attrs().Xdp; x == nil || !x.Attached {
			t.Errorf("no XDP program on %s", ifc.Peer)
		}
	}
	if _, err := exec.LookPath("ethtool"); err != nil {
		t.Log("ethtool not installed: offload settings not checked")
		return
	}
	for _, c := range []struct {
		ns     *netns.NS
		ifname string
	}{{l.Dispatcher.NS, "eth0"}, {l.Bridge, l.Dispatcher.Peer}, {l.Servers[0].NS, "eth0"}, {l.Client.NS, "eth0"}} {
		out, err := c.ns.Command(t.Context(), "ethtool", "-k", c.ifname).CombinedOutput()
		if err != nil {
			t.Fatalf("ethtool -k %s: %v: %s", c.ifname, err, out)
		}
		for _, want := range []string{"rx-checksumming: off", "tx-checksumming: off"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s %s: ethtool -k lacks %q", c.ns.Name(), c.ifname, want)
			}
		}
	}
}

// checkDirectReply sends a datagram from each server's VIP straight to the
// client, the way a direct-server-return reply travels.
func checkDirectReply(t *testing.T, l *lab.Lab) {
	t.Helper()
	for _, fam := range []struct {
		network   string
		vip, dest netip.Addr
	}{{"udp4", l.VIP4, l.Client.Addr4}, {"udp6", l.VIP6, l.Client.Addr6}} {
		rx, err := l.Client.NS.ListenPacket(fam.network, netip.AddrPortFrom(fam.dest, 9000).String())
		if err != nil {
			t.Fatal(err)
		}
		defer rx.Close()
		for _, s := range l.Servers {
			tx, err := s.NS.ListenPacket(fam.network, netip.AddrPortFrom(fam.vip, 80).String())
			if err != nil {
				t.Fatal(err)
			}
			msg := []byte("reply from " + s.Name)
			_, err = tx.WriteTo(msg, net.UDPAddrFromAddrPort(netip.AddrPortFrom(fam.dest, 9000)))
			tx.Close()
			if err != nil {
				t.Fatal(err)
			}
			rx.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 100)
			n, from, err := rx.ReadFrom(buf)
			if err != nil {
				t.Fatalf("%s: no direct reply from %s: %v", fam.network, s.Name, err)
			}
			if got := from.(*net.UDPAddr).AddrPort(); got.Addr().Unmap() != fam.vip || !bytes.Equal(buf[:n], msg) {
				t.Errorf("got %q from %s, want %q from %s", buf[:n], got, msg, fam.vip)
			}
		}
	}
}

func addrsOn(t *testing.T, ns *netns.NS, ifname string) []netip.Addr {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	link, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

func containsAll(have, want []netip.Addr) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func containsAny(have, want []netip.Addr) bool {
	for _, w := range want {
		if slices.Contains(have, w) {
			return true
		}
	}
	return false
}

// TestNewCleansUpOnError makes New fail half-way, on a name that is taken,
// and checks that it removed what it had made.
func TestNewCleansUpOnError(t *testing.T) {
	testutil.RequirePrivileged(t)

	prefix := fmt.Sprintf("ndlt%d-e", os.Getpid())
	blocker, err := netns.New(prefix + "-s2")
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close()

	l, err := lab.New(t.Context(), lab.Options{Prefix: prefix, Servers: 3})
	if err == nil {
		l.Close()
		t.Fatal("New succeeded on a taken namespace name")
	}
	if !errors.Is(err, netns.ErrExists) {
		t.Errorf("New = %v, want ErrExists", err)
	}
	if left := withPrefix(t, prefix); !slices.Equal(left, []string{blocker.Name()}) {
		t.Errorf("namespaces left after a failed New: %v", left)
	}
}

func TestNewCancelled(t *testing.T) {
	testutil.RequirePrivileged(t)

	prefix := fmt.Sprintf("ndlt%d-c", os.Getpid())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := lab.New(ctx, lab.Options{Prefix: prefix}); !errors.Is(err, context.Canceled) {
		t.Errorf("New with a cancelled context = %v", err)
	}
	if left := withPrefix(t, prefix); len(left) != 0 {
		t.Errorf("namespaces left: %v", left)
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []lab.Options{{Servers: -1}, {Servers: lab.MaxServers + 1}, {Prefix: strings.Repeat("x", 80)},
		{Dispatchers: -1}, {Dispatchers: lab.MaxDispatchers + 1}, {Router: true, TwoNetworks: true},
		{SecondTier: true}, {SecondTier: true, Dispatchers: 3}, {SecondTier: true, Dispatchers: 2, NoDispatcherVIPs: true},
		{SecondTier: true, Dispatchers: 2, Router: true}} {
		if _, err := lab.New(t.Context(), o); !errors.Is(err, lab.ErrBadOptions) {
			t.Errorf("New(%+v) = %v, want ErrBadOptions", o, err)
		}
	}
}

// TestSweepStale leaves a namespace named as by a dead process and one
// named as by this live one, and checks that only the first is swept.
func TestSweepStale(t *testing.T) {
	testutil.RequirePrivileged(t)

	// A pid that was just alive and is now gone.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	stale, err := netns.New(fmt.Sprintf("ndlab%d-0000-br", dead))
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	live, err := netns.New(fmt.Sprintf("ndlab%d-0000-sw", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()

	removed, err := lab.SweepStale(t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(removed, stale.Name()) || slices.Contains(removed, live.Name()) {
		t.Errorf("SweepStale removed %v; want %s and not %s", removed, stale.Name(), live.Name())
	}
	if left := withPrefix(t, stale.Name()); len(left) != 0 {
		t.Errorf("%s still exists", stale.Name())
	}
	if left := withPrefix(t, live.Name()); len(left) != 1 {
		t.Errorf("%s was removed", live.Name())
	}
}

// TestCheckFindsBrokenLink detaches a server's veth from the bridge and
// expects Check to name that server.
func TestCheckFindsBrokenLink(t *testing.T) {
	testutil.RequirePrivileged(t)

	l := newLab(t.Context(), t, lab.Options{Servers: 2})

	h, err := l.Bridge.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	peer, err := h.LinkByIndex(l.Servers[1].PeerIfindex)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetNoMaster(peer); err != nil {
		t.Fatal(err)
	}
	// A failing probe retries for a few seconds; the deadline keeps the
	// test short.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	start := time.Now()
	err = l.Check(ctx)
	if err == nil {
		t.Fatal("Check passed with server2 cut off")
	}
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
	if !strings.Contains(err.Error(), "-> server2") {
		t.Errorf("Check error does not name server2: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("Check overran its context")
	}
}

// TestLabTwoDispatchers builds the topology of an HA pair: two dispatchers
// on the same bridge, neither holding the VIPs. It checks the second
// dispatcher's addressing and XDP pass programs, that the client cannot
// reach a VIP until a dispatcher adds it, and that it then resolves the VIP
// to that dispatcher.
func TestLabTwoDispatchers(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := newLab(ctx, t, lab.Options{Servers: 2, Dispatchers: 2, NoDispatcherVIPs: true})
	if made := withPrefix(t, l.Prefix); len(made) != 6 {
		t.Errorf("lab made namespaces %v, want 6 (bridge, client, 2 dispatchers, 2 servers)", made)
	}
	d2 := l.Dispatcher2
	if d2 == nil || len(l.Dispatchers()) != 2 || len(l.Servers) != 2 || l.DispatcherVIPs {
		t.Fatalf("dispatcher2 %v, %d dispatchers, %d servers, dispatcher VIPs %v", d2, len(l.Dispatchers()), len(l.Servers), l.DispatcherVIPs)
	}
	if d2.Name != "dispatcher2" || d2.Addr4.String() != "198.51.100.4" || d2.Addr6.String() != "2001:db8::4" || d2.MAC.String() != "02:00:00:00:00:04" {
		t.Errorf("dispatcher2: %s %s %s %s", d2.Name, d2.Addr4, d2.Addr6, d2.MAC)
	}
	if hs := l.Hosts(); len(hs) != 5 || hs[2] != d2 || hs[3] != &l.Servers[0] {
		t.Errorf("Hosts() order is wrong")
	}
	for i, b := range l.BackendsVia(d2) {
		if b.Ifindex != d2.Ifindex || !bytes.Equal(b.SrcMAC, d2.MAC) || !bytes.Equal(b.DstMAC, l.Servers[i].MAC) {
			t.Errorf("backend %d via dispatcher2 = %+v", i, b)
		}
	}
	if err := l.Check(ctx); err != nil {
		t.Fatal(err)
	}
	vips := []netip.Addr{l.VIP4, l.VIP6}
	for _, d := range l.Dispatchers() {
		if got := addrsOn(t, d.NS, "eth0"); containsAny(got, vips) {
			t.Errorf("%s eth0 has a VIP: %v", d.Name, got)
		}
	}
	for _, s := range l.Servers {
		if got := addrsOn(t, s.NS, "lo"); !containsAll(got, vips) {
			t.Errorf("%s lo has %v, want the VIPs", s.Name, got)
		}
	}
	bh, err := l.Bridge.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range l.Dispatchers() {
		peer, err := bh.LinkByIndex(d.PeerIfindex)
		if err != nil {
			t.Fatal(err)
		}
		if x := peer.Attrs().Xdp; x == nil || !x.Attached {
			t.Errorf("no XDP program on %s", d.Peer)
		}
		// As behind a NIC's MAC filter, a dispatcher gets no frame for
		// another's MAC.
		if pi, err := bh.LinkGetProtinfo(peer); err != nil || pi.Flood {
			t.Errorf("%s: unicast flooding on (%+v, %v)", d.Peer, pi, err)
		}
	}

	// Nobody answers for the VIP: the client's datagram finds no one.
	vip := netip.AddrPortFrom(l.VIP4, 9)
	if err := udpRoundTrip(l.Client.NS, l.Client.Addr4, vip, 600*time.Millisecond); err == nil {
		t.Errorf("the client reached %s with no dispatcher holding it", vip)
	}
	// What HA's active does: add the VIP on dispatcher2's eth0.
	h, eth0, err := d2.Eth0()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: l.VIP4.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	ln, err := d2.NS.ListenPacket("udp4", vip.String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go lab.EchoDatagrams(ln)
	// The failed attempt left an unresolved entry; retry until it clears.
	var rtErr error
	for range 10 {
		if rtErr = udpRoundTrip(l.Client.NS, l.Client.Addr4, vip, time.Second); rtErr == nil {
			break
		}
	}
	if rtErr != nil {
		t.Fatalf("no echo from %s on dispatcher2: %v", vip, rtErr)
	}
	if mac, err := lab.Neighbor(l.Client.NS, l.Client.Ifindex, l.VIP4); err != nil || !bytes.Equal(mac, d2.MAC) {
		t.Errorf("client resolves %s to %s (%v), want dispatcher2's %s", l.VIP4, mac, err, d2.MAC)
	}
}

// udpRoundTrip sends one datagram from src in ns to dst and waits up to
// wait for it to come back.
func udpRoundTrip(ns *netns.NS, src netip.Addr, dst netip.AddrPort, wait time.Duration) error {
	c, err := ns.ListenPacket("udp4", netip.AddrPortFrom(src, 0).String())
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.WriteTo([]byte("ha lab"), net.UDPAddrFromAddrPort(dst)); err != nil {
		time.Sleep(wait)
		return err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 64)
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ha lab" {
		return fmt.Errorf("echo %q", buf[:n])
	}
	return nil
}

// TestLabThreeDispatchers builds three dispatchers behind the router (which
// Check does not cover: its probes expect the client on the external
// network): the third's addressing, and SetLink, which keeps the addresses and restores the routes through the
// router when the link comes back.
func TestLabThreeDispatchers(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l := newLab(ctx, t, lab.Options{Servers: 1, Dispatchers: 3, Router: true})
	d3 := l.Dispatcher3
	if d3 == nil || len(l.Dispatchers()) != 3 || l.Dispatchers()[2] != d3 || len(l.Servers) != 1 {
		t.Fatalf("dispatcher3 %v, %d dispatchers, %d servers", d3, len(l.Dispatchers()), len(l.Servers))
	}
	if d3.Name != "dispatcher3" || d3.Addr4.String() != "198.51.100.6" || d3.Addr6.String() != "2001:db8::6" || d3.MAC.String() != "02:00:00:00:00:06" {
		t.Errorf("dispatcher3: %s %s %s %s", d3.Name, d3.Addr4, d3.Addr6, d3.MAC)
	}
	routes := func() string {
		out, err := d3.NS.Command(ctx, "ip", "-4", "route", "show", lab.ClientNet4.String()).CombinedOutput()
		if err != nil {
			t.Fatalf("ip route: %v: %s", err, out)
		}
		out6, err := d3.NS.Command(ctx, "ip", "-6", "route", "show", lab.ClientNet6.String()).CombinedOutput()
		if err != nil {
			t.Fatalf("ip route: %v: %s", err, out6)
		}
		return string(out) + string(out6)
	}
	if r := routes(); !strings.Contains(r, "via 198.51.100.1") || !strings.Contains(r, "via 2001:db8::1") {
		t.Fatalf("dispatcher3's routes to the client network: %q", r)
	}
	if err := l.SetLink(d3, false); err != nil {
		t.Fatal(err)
	}
	if r := routes(); r != "" {
		t.Errorf("routes through a link that is down: %q", r)
	}
	if err := l.SetLink(d3, true); err != nil {
		t.Fatal(err)
	}
	if r := routes(); !strings.Contains(r, "via 198.51.100.1") || !strings.Contains(r, "via 2001:db8::1") {
		t.Errorf("dispatcher3's routes after the link came back: %q", r)
	}
	if got := addrsOn(t, d3.NS, "eth0"); !containsAll(got, []netip.Addr{d3.Addr4, d3.Addr6}) {
		t.Errorf("dispatcher3's eth0 after the link came back: %v", got)
	}
}
