package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/netns"
)

// network describes one of the lab's two L2 networks.
type network struct {
	id     byte   // 0 external, 1 internal: the fifth byte of its MACs
	bridge string // bridge name in the bridge namespace
	ifname string // host-side interface name
	net4   netip.Prefix
	net6   netip.Prefix
}

var (
	extNet = network{id: 0, bridge: "br0", ifname: "eth0", net4: ExtNet4, net6: ExtNet6}
	intNet = network{id: 1, bridge: "br1", ifname: "eth1", net4: IntNet4, net6: IntNet6}
)

func hostMAC(nw network, n int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0, 0, 0, nw.id, byte(n)}
}

// peerMAC is the MAC of the bridge-side end of host n's veth.
func peerMAC(nw network, n int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0, 0, 0, 0xf0 + nw.id, byte(n)}
}

func bridgeMAC(nw network) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0, 0, 0, 0xfe, nw.id}
}

func hostAddr4(p netip.Prefix, n int) netip.Addr {
	a := p.Addr().As4()
	a[3] = byte(n)
	return netip.AddrFrom4(a)
}

// hostAddr6 gives host n the address whose last group reads as n's decimal
// digits, so host 11 is ...::11 like its IPv4 198.51.100.11.
func hostAddr6(p netip.Prefix, n int) netip.Addr {
	v, err := strconv.ParseUint(strconv.Itoa(n), 16, 16)
	if err != nil {
		panic(fmt.Sprintf("host number %d: %v", n, err))
	}
	a := p.Addr().As16()
	a[14], a[15] = byte(v>>8), byte(v)
	return netip.AddrFrom16(a)
}

// role is a host to build.
type role struct {
	name  string // client, dispatcher, server1...
	short string // namespace and peer-name suffix: c, d, s1...
	num   int
}

func (l *Lab) build(ctx context.Context, dispatchers, servers int, attacker, router bool) error {
	step := func(err error) error {
		if err != nil {
			return err
		}
		return ctx.Err()
	}

	br, err := l.newNS("br")
	if err := step(err); err != nil {
		return err
	}
	l.Bridge = br
	if err := l.setUpBridges(); err != nil {
		return err
	}

	roles := []role{{"client", "c", ClientNum}, {"dispatcher", "d", DispatcherNum}}
	if dispatchers >= 2 {
		roles = append(roles, role{"dispatcher2", "d2", Dispatcher2Num})
	}
	if dispatchers >= 3 {
		roles = append(roles, role{"dispatcher3", "d3", Dispatcher3Num})
	}
	for i := range servers {
		roles = append(roles, role{fmt.Sprintf("server%d", i+1), fmt.Sprintf("s%d", i+1), FirstServer + i})
	}
	if router {
		h, err := l.newHost(role{"router", "r", RouterNum})
		if err := step(err); err != nil {
			return err
		}
		l.Router = &h
	}
	hosts := make([]Host, 0, len(roles))
	for _, r := range roles {
		if r.num == ClientNum && router {
			h, err := l.newClientBehindRouter(r)
			if err := step(err); err != nil {
				return err
			}
			hosts = append(hosts, h)
			continue
		}
		h, err := l.newHost(r)
		if err := step(err); err != nil {
			return err
		}
		hosts = append(hosts, h)
	}
	l.Client, l.Dispatcher, l.Servers = hosts[0], hosts[1], hosts[2:]
	if dispatchers >= 2 {
		l.Dispatcher2, l.Servers = &hosts[2], hosts[3:]
	}
	if dispatchers >= 3 {
		l.Dispatcher3, l.Servers = &hosts[3], hosts[4:]
	}
	if attacker {
		h, err := l.newHost(role{"attacker", "a", AttackerNum})
		if err := step(err); err != nil {
			return err
		}
		l.Attacker = &h
	}

	for _, d := range l.Dispatchers() {
		if err := step(l.setUpDispatcher(d)); err != nil {
			return err
		}
	}
	for i := range l.Servers {
		if err := step(l.setUpServer(&l.Servers[i])); err != nil {
			return err
		}
	}
	if router {
		for _, h := range l.Hosts()[1:] {
			if err := step(l.routeViaRouter(h)); err != nil {
				return err
			}
		}
	}
	l.logf("lab %s: %d dispatchers (VIPs on them: %v), %d servers, two networks: %v",
		l.Prefix, dispatchers, l.DispatcherVIPs, servers, l.TwoNetworks)
	return nil
}

// newNS creates a namespace named prefix-suffix and records it for Close.
func (l *Lab) newNS(suffix string) (*netns.NS, error) {
	ns, err := netns.New(l.Prefix + "-" + suffix)
	if err != nil {
		return nil, err
	}
	l.nss = append(l.nss, ns)
	return ns, nil
}

func (l *Lab) networks() []network {
	if l.TwoNetworks {
		return []network{extNet, intNet}
	}
	return []network{extNet}
}

// hostSysctls make a host's addresses usable at once: nothing here routes
// or advertises.
var hostSysctls = [][2]string{
	{"net.ipv6.conf.all.accept_dad", "0"},
	{"net.ipv6.conf.default.accept_dad", "0"},
	{"net.ipv6.conf.all.accept_ra", "0"},
	{"net.ipv6.conf.default.accept_ra", "0"},
}

// SetSysctls sets each key of kvs to its value in ns.
func SetSysctls(ns *netns.NS, kvs ...[2]string) error {
	for _, kv := range kvs {
		if err := ns.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// setUpBridges makes br0 (and br1) in the bridge namespace, where IPv6 is
// off so that the bridge itself stays silent.
func (l *Lab) setUpBridges() error {
	if err := SetSysctls(l.Bridge, [2]string{"net.ipv6.conf.all.disable_ipv6", "1"}, [2]string{"net.ipv6.conf.default.disable_ipv6", "1"}); err != nil {
		return err
	}
	h, err := l.Bridge.Netlink()
	if err != nil {
		return err
	}
	snooping := false // flood NDP's multicast; no querier runs here
	for _, nw := range l.networks() {
		br := &netlink.Bridge{
			LinkAttrs:         netlink.LinkAttrs{Name: nw.bridge, HardwareAddr: bridgeMAC(nw)},
			MulticastSnooping: &snooping,
		}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("add bridge %s: %w", nw.bridge, err)
		}
		if err := h.LinkSetUp(br); err != nil {
			return fmt.Errorf("set bridge %s up: %w", nw.bridge, err)
		}
	}
	return nil
}

// newHost makes a host's namespace and its veth pairs, and gives them
// addresses. Only the client stays off the internal network.
func (l *Lab) newHost(r role) (Host, error) {
	ns, err := l.newNS(r.short)
	if err != nil {
		return Host{}, err
	}
	h := Host{Name: r.name, NS: ns}
	if err := SetSysctls(ns, hostSysctls...); err != nil {
		return Host{}, err
	}
	if err := SetSysctls(ns, [2]string{"net.ipv4.conf.all.rp_filter", "0"}, [2]string{"net.ipv4.conf.default.rp_filter", "0"}); err != nil {
		return Host{}, err
	}
	for _, nw := range l.networks() {
		if nw == intNet && (r.num == ClientNum || r.num == AttackerNum) {
			continue
		}
		ifc, err := l.connect(ns, nw, r)
		if err != nil {
			return Host{}, fmt.Errorf("connect %s to %s: %w", r.name, nw.bridge, err)
		}
		if nw == extNet {
			h.Iface = ifc
		} else {
			h.Int = &ifc
		}
	}
	l.logf("lab %s: %s in netns %s", l.Prefix, r.name, ns.Name())
	return h, nil
}

// connect joins ns to network nw with a veth pair made in the bridge
// namespace whose host end is created directly inside ns.
func (l *Lab) connect(ns *netns.NS, nw network, r role) (Iface, error) {
	ifc := Iface{
		Ifname: nw.ifname,
		MAC:    hostMAC(nw, r.num),
		Addr4:  hostAddr4(nw.net4, r.num),
		Addr6:  hostAddr6(nw.net6, r.num),
		Peer:   r.short + "-" + nw.ifname,
	}
	bh, err := l.Bridge.Netlink()
	if err != nil {
		return ifc, err
	}
	hh, err := ns.Netlink()
	if err != nil {
		return ifc, err
	}

	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: ifc.Peer, HardwareAddr: peerMAC(nw, r.num)},
		PeerName:         ifc.Ifname,
		PeerHardwareAddr: ifc.MAC,
		PeerNamespace:    netlink.NsFd(ns.FD()),
	}
	if err := bh.LinkAdd(veth); err != nil {
		return ifc, fmt.Errorf("add veth %s/%s: %w", ifc.Peer, ifc.Ifname, err)
	}
	peer, err := bh.LinkByName(ifc.Peer)
	if err != nil {
		return ifc, err
	}
	ifc.PeerIfindex = peer.Attrs().Index
	bridge, err := bh.LinkByName(nw.bridge)
	if err != nil {
		return ifc, err
	}
	if err := bh.LinkSetMaster(peer, bridge); err != nil {
		return ifc, fmt.Errorf("attach %s to %s: %w", ifc.Peer, nw.bridge, err)
	}
	if err := bh.LinkSetUp(peer); err != nil {
		return ifc, fmt.Errorf("set %s up: %w", ifc.Peer, err)
	}
	if err := l.Bridge.Do(func() error { return disableChecksumOffload(ifc.Peer) }); err != nil {
		return ifc, err
	}

	link, err := hh.LinkByName(ifc.Ifname)
	if err != nil {
		return ifc, err
	}
	ifc.Ifindex = link.Attrs().Index
	if err := SetSysctls(ns, [2]string{"net.ipv6.conf." + ifc.Ifname + ".accept_dad", "0"}, [2]string{"net.ipv4.conf." + ifc.Ifname + ".rp_filter", "0"}); err != nil {
		return ifc, err
	}
	if err := ns.Do(func() error { return disableChecksumOffload(ifc.Ifname) }); err != nil {
		return ifc, err
	}
	if err := hh.LinkSetUp(link); err != nil {
		return ifc, fmt.Errorf("set %s up: %w", ifc.Ifname, err)
	}
	for _, p := range []netip.Prefix{ifc.Prefix4(), ifc.Prefix6()} {
		if err := addAddr(hh, link, p); err != nil {
			return ifc, err
		}
	}
	return ifc, nil
}

// addAddr adds p to link, without duplicate address detection.
func addAddr(h *netlink.Handle, link netlink.Link, p netip.Prefix) error {
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", p, link.Attrs().Name, err)
	}
	return nil
}

// setUpDispatcher gives dispatcher d the VIPs on eth0 if it is the first
// one and they are not left to HA, so that it answers ARP and NDP for
// them (a second dispatcher would race it for the answers), and attaches the
// XDP pass program to the bridge-side peers of its interfaces so that
// frames it sends with XDP_TX or XDP_REDIRECT are delivered (xdppass.go).
func (l *Lab) setUpDispatcher(d *Host) error {
	if l.DispatcherVIPs && d == &l.Dispatcher {
		h, eth0, err := d.Eth0()
		if err != nil {
			return err
		}
		for _, p := range []netip.Prefix{netip.PrefixFrom(l.VIP4, 32), netip.PrefixFrom(l.VIP6, 128)} {
			if err := addAddr(h, eth0, p); err != nil {
				return err
			}
		}
	}
	if l.Dispatcher2 != nil {
		// A NIC drops unicast frames for other MACs before XDP sees them;
		// a veth does not. When a dispatcher's link goes down the bridge
		// floods the frames that were for it to the other one. nd's data
		// plane leaves frames for other MACs to the stack (frame_for_us in
		// bpf/dispatch.c), but the kernel would still spend a NAPI pass on
		// each: flooding no unknown unicast to the dispatchers makes the
		// lab behave like NICs on a switch.
		// (Broadcasts, ARP included, still reach them; they chatter, so
		// the bridge learns where they are.)
		bh, err := l.Bridge.Netlink()
		if err != nil {
			return err
		}
		for _, ifc := range d.Ifaces() {
			peer, err := bh.LinkByIndex(ifc.PeerIfindex)
			if err != nil {
				return err
			}
			if err := bh.LinkSetFlood(peer, false); err != nil {
				return fmt.Errorf("stop unicast flooding to %s: %w", ifc.Peer, err)
			}
		}
	}
	if l.SecondTier && d == l.Dispatcher2 {
		if err := l.holdVIPsHidden(d); err != nil {
			return err
		}
	}
	for _, ifc := range d.Ifaces() {
		if err := attachXDPPass(l.Bridge, ifc.Peer); err != nil {
			return err
		}
	}
	return nil
}

// setUpServer puts the VIPs on the server's lo and keeps the server from
// answering ARP for them, as direct server return needs.
func (l *Lab) setUpServer(s *Host) error { return l.holdVIPsHidden(s) }

// holdVIPsHidden puts the VIPs on s's lo and keeps s from answering ARP
// for them (and from using them as the source of its own ARP requests):
// a server, or a second-tier dispatcher.
func (l *Lab) holdVIPsHidden(s *Host) error {
	h, err := s.NS.Netlink()
	if err != nil {
		return err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	for _, p := range []netip.Prefix{netip.PrefixFrom(l.VIP4, 32), netip.PrefixFrom(l.VIP6, 128)} {
		if err := addAddr(h, lo, p); err != nil {
			return err
		}
	}
	sysctls := [][2]string{
		{"net.ipv4.conf.all.arp_ignore", "1"},
		{"net.ipv4.conf.all.arp_announce", "2"},
	}
	for _, ifc := range s.Ifaces() {
		sysctls = append(sysctls,
			[2]string{"net.ipv4.conf." + ifc.Ifname + ".arp_ignore", "1"},
			[2]string{"net.ipv4.conf." + ifc.Ifname + ".arp_announce", "2"})
	}
	return SetSysctls(s.NS, sysctls...)
}
