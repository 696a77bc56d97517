package lab

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routerSysctls make the router forward both families and hash multipath
// routes on the L4 five-tuple, so that ECMP spreads flows (not hosts) over
// the dispatchers and keeps each flow on one.
var routerSysctls = [][2]string{
	{"net.ipv4.ip_forward", "1"},
	{"net.ipv6.conf.all.forwarding", "1"},
	{"net.ipv4.fib_multipath_hash_policy", "1"},
	{"net.ipv6.fib_multipath_hash_policy", "1"},
}

// newClientBehindRouter makes the client's namespace and joins it to the
// router by a veth pair, the client's eth0 and the router's eth1, on the
// client's network; the client's default routes go through the router.
func (l *Lab) newClientBehindRouter(r role) (Host, error) {
	rt := l.Router
	if err := SetSysctls(rt.NS, routerSysctls...); err != nil {
		return Host{}, err
	}
	ns, err := l.newNS(r.short)
	if err != nil {
		return Host{}, err
	}
	if err := SetSysctls(ns, hostSysctls...); err != nil {
		return Host{}, err
	}
	cnet := network{id: 2, ifname: "eth0", net4: ClientNet4, net6: ClientNet6}
	h := Host{Name: r.name, NS: ns, Iface: Iface{
		Ifname: "eth0", MAC: hostMAC(cnet, r.num),
		Addr4: hostAddr4(ClientNet4, r.num), Addr6: hostAddr6(ClientNet6, r.num),
	}}
	side := Iface{Ifname: "eth1", MAC: hostMAC(cnet, RouterNum),
		Addr4: hostAddr4(ClientNet4, RouterNum), Addr6: hostAddr6(ClientNet6, RouterNum)}
	rh, err := rt.NS.Netlink()
	if err != nil {
		return Host{}, err
	}
	ch, err := ns.Netlink()
	if err != nil {
		return Host{}, err
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: side.Ifname, HardwareAddr: side.MAC},
		PeerName:         h.Ifname,
		PeerHardwareAddr: h.MAC,
		PeerNamespace:    netlink.NsFd(ns.FD()),
	}
	if err := rh.LinkAdd(veth); err != nil {
		return Host{}, fmt.Errorf("add veth router/client: %w", err)
	}
	for _, end := range []struct {
		h   *netlink.Handle
		do  func(func() error) error
		ifc *Iface
	}{{rh, rt.NS.Do, &side}, {ch, ns.Do, &h.Iface}} {
		link, err := end.h.LinkByName(end.ifc.Ifname)
		if err != nil {
			return Host{}, err
		}
		end.ifc.Ifindex = link.Attrs().Index
		name := end.ifc.Ifname
		if err := end.do(func() error { return disableChecksumOffload(name) }); err != nil {
			return Host{}, err
		}
		if err := end.h.LinkSetUp(link); err != nil {
			return Host{}, fmt.Errorf("set %s up: %w", name, err)
		}
		for _, p := range []netip.Prefix{end.ifc.Prefix4(), end.ifc.Prefix6()} {
			if err := addAddr(end.h, link, p); err != nil {
				return Host{}, err
			}
		}
	}
	rt.Int = &side
	for _, gw := range []netip.Addr{side.Addr4, side.Addr6} {
		if err := ch.RouteAdd(&netlink.Route{LinkIndex: h.Ifindex, Gw: gw.AsSlice()}); err != nil {
			return Host{}, fmt.Errorf("client's default route via %s: %w", gw, err)
		}
	}
	l.logf("lab %s: client in netns %s behind the router", l.Prefix, ns.Name())
	return h, nil
}

// routeViaRouter routes the client's network from h (a dispatcher or a
// server) through the router; again if the route is there.
func (l *Lab) routeViaRouter(h *Host) error {
	nh, err := h.NS.Netlink()
	if err != nil {
		return err
	}
	for _, r := range []struct {
		dst netip.Prefix
		gw  netip.Addr
	}{{ClientNet4, l.Router.Addr4}, {ClientNet6, l.Router.Addr6}} {
		dst := &net.IPNet{IP: r.dst.Addr().AsSlice(), Mask: net.CIDRMask(r.dst.Bits(), r.dst.Addr().BitLen())}
		if err := nh.RouteReplace(&netlink.Route{LinkIndex: h.Ifindex, Dst: dst, Gw: r.gw.AsSlice()}); err != nil {
			return fmt.Errorf("%s: route %s via %s: %w", h.Name, r.dst, r.gw, err)
		}
	}
	return nil
}

// RouterNextHops returns the next hops of the router's kernel route to
// dst that BIRD installed (a host route, as BGP gives a VIP), none when it
// has no such route: two for an ECMP route over two dispatchers. Routes
// others added are left out.
func (l *Lab) RouterNextHops(dst netip.Addr) ([]netip.Addr, error) {
	if l.Router == nil {
		return nil, fmt.Errorf("%w: no router", ErrBadOptions)
	}
	h, err := l.Router.NS.Netlink()
	if err != nil {
		return nil, err
	}
	fam := netlink.FAMILY_V4
	if dst.Is6() {
		fam = netlink.FAMILY_V6
	}
	pfx := &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(dst.BitLen(), dst.BitLen())}
	routes, err := h.RouteListFiltered(fam, &netlink.Route{Dst: pfx}, netlink.RT_FILTER_DST)
	if err != nil {
		return nil, fmt.Errorf("router's routes to %s: %w", dst, err)
	}
	var out []netip.Addr
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() != pfx.String() || r.Protocol != unix.RTPROT_BIRD {
			continue
		}
		if a, ok := netip.AddrFromSlice(r.Gw); ok && r.Gw != nil {
			out = append(out, a.Unmap())
		}
		for _, nh := range r.MultiPath {
			if a, ok := netip.AddrFromSlice(nh.Gw); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out, nil
}

// Router4 is the router's address on the external network, where the
// dispatchers peer with it.
func Router4() netip.Addr { return hostAddr4(ExtNet4, RouterNum) }

// AddRouterFallback adds a static route to dst through gw in the router,
// with a metric above BIRD's so that BIRD's routes win while they exist:
// a stand-in for the paths by which packets of established flows still
// reach a dispatcher that withdrew its routes.
func (l *Lab) AddRouterFallback(dst, gw netip.Addr) error {
	if l.Router == nil {
		return fmt.Errorf("%w: no router", ErrBadOptions)
	}
	h, err := l.Router.NS.Netlink()
	if err != nil {
		return err
	}
	pfx := &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(dst.BitLen(), dst.BitLen())}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Router.Ifindex, Dst: pfx, Gw: gw.AsSlice(), Priority: 1000}); err != nil {
		return fmt.Errorf("router: fallback route to %s via %s: %w", dst, gw, err)
	}
	return nil
}

// Router6 is the router's IPv6 address on the external network.
func Router6() netip.Addr { return hostAddr6(ExtNet6, RouterNum) }

// SetLink sets host h's eth0 down or up, as a host that dies or is cut off
// and comes back. The kernel drops the routes through a link that goes
// down; up, the link gets its routes through the router back (with
// Options.Router). Its addresses stay.
func (l *Lab) SetLink(h *Host, up bool) error {
	nh, link, err := h.Eth0()
	if err != nil {
		return err
	}
	if !up {
		// Like IPv4's, the IPv6 addresses stay (the kernel would flush
		// them), as on a host whose cable is pulled.
		if err := h.NS.Sysctl("net.ipv6.conf."+h.Ifname+".keep_addr_on_down", "1"); err != nil {
			return err
		}
		if err := nh.LinkSetDown(link); err != nil {
			return fmt.Errorf("%s: set %s down: %w", h.Name, h.Ifname, err)
		}
		return nil
	}
	if err := nh.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s: set %s up: %w", h.Name, h.Ifname, err)
	}
	if l.Router != nil && h != l.Router {
		return l.routeViaRouter(h)
	}
	return nil
}
