// Package ifaddr reads the host's interface addresses as netip values. It
// imports nothing of nd.
package ifaddr

import (
	"net"
	"net/netip"
)

// Prefixes turns the addresses that net.InterfaceAddrs and
// (*net.Interface).Addrs return into prefixes: each address (an IPv4-mapped
// one unmapped) with its prefix length. What is not an IP network is left
// out.
func Prefixes(addrs []net.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ones, _ := n.Mask.Size()
		ip = ip.Unmap()
		if ip.Is4() && len(n.Mask) == net.IPv6len {
			ones -= 96
		}
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out
}
