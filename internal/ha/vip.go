package ha

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// VIPs brings a group's cluster addresses up and down on this host and
// tells the network where they now live. Node calls it from one
// goroutine only.
type VIPs interface {
	// Up adds the addresses; addresses already present are not an error.
	Up() error
	// Announce sends gratuitous ARP for the IPv4 addresses and unsolicited
	// neighbour advertisements for the IPv6 ones, so that clients' and
	// routers' caches move to this host at once.
	Announce() error
	// Down removes the addresses; addresses already gone are not an error.
	Down() error
	// Close releases the resources; it does not remove the addresses.
	Close() error
}

// KernelVIPs is the VIPs of a Linux interface: addresses through netlink
// and announcements through an AF_PACKET socket bound to that interface,
// so nothing leaves by another interface. Both are opened by
// NewKernelVIPs in the calling thread's network namespace and stay there.
type KernelVIPs struct {
	ifname string
	addrs  []netip.Addr

	mu      sync.Mutex
	nl      *netlink.Handle
	ifindex int
	mac     net.HardwareAddr
	fd      int
	closed  bool
}

// NewKernelVIPs opens the interface ifname of the current network
// namespace for the addresses vips.
func NewKernelVIPs(ifname string, vips []netip.Addr) (*KernelVIPs, error) {
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	link, err := nl.LinkByName(ifname)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	mac := link.Attrs().HardwareAddr
	if len(mac) != 6 {
		nl.Close()
		return nil, fmt.Errorf("interface %s: no Ethernet address", ifname)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	// Protocol 0 receives nothing; the socket only sends, and only here.
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: link.Attrs().Index}); err != nil {
		unix.Close(fd)
		nl.Close()
		return nil, fmt.Errorf("bind packet socket to %s: %w", ifname, err)
	}
	addrs := make([]netip.Addr, len(vips))
	for i, a := range vips {
		addrs[i] = a.Unmap()
	}
	return &KernelVIPs{ifname: ifname, addrs: addrs, nl: nl, ifindex: link.Attrs().Index, mac: mac, fd: fd}, nil
}

func (k *KernelVIPs) nlAddr(a netip.Addr) *netlink.Addr {
	na := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
	if a.Is6() {
		// The address moves from a peer that still held it a moment ago:
		// duplicate address detection would only delay it.
		na.Flags = unix.IFA_F_NODAD
	}
	return na
}

func (k *KernelVIPs) link() netlink.Link {
	return &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: k.ifindex, Name: k.ifname}}
}

// forEach applies op to every address, under the lock, and joins the
// errors.
func (k *KernelVIPs) forEach(op func(netip.Addr) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return net.ErrClosed
	}
	var errs []error
	for _, a := range k.addrs {
		if err := op(a); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Up implements VIPs.
func (k *KernelVIPs) Up() error { return k.forEach(k.add) }

// Set replaces the addresses, for a group whose VIPs change while it runs.
// With up (the node is active) the new ones are added and announced and
// the dropped ones removed at once; otherwise the next Up adds the set.
func (k *KernelVIPs) Set(vips []netip.Addr, up bool) error {
	k.mu.Lock()
	next := make([]netip.Addr, len(vips))
	for i, a := range vips {
		next[i] = a.Unmap()
	}
	old := k.addrs
	k.addrs = next
	if k.closed {
		k.mu.Unlock()
		return net.ErrClosed
	}
	var errs []error
	added := false
	if up {
		for _, a := range next {
			if slices.Contains(old, a) {
				continue
			}
			added = true
			if err := k.add(a); err != nil {
				errs = append(errs, err)
			}
		}
		for _, a := range old {
			if slices.Contains(next, a) {
				continue
			}
			if err := k.remove(a); err != nil {
				errs = append(errs, err)
			}
		}
	}
	k.mu.Unlock()
	if added {
		errs = append(errs, k.Announce())
	}
	return errors.Join(errs...)
}

// Down implements VIPs.
func (k *KernelVIPs) Down() error { return k.forEach(k.remove) }

// add puts a on the interface; one already there is no error.
func (k *KernelVIPs) add(a netip.Addr) error {
	if err := k.nl.AddrAdd(k.link(), k.nlAddr(a)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to %s: %w", a, k.ifname, err)
	}
	return nil
}

// remove takes a off the interface; one already gone is no error.
func (k *KernelVIPs) remove(a netip.Addr) error {
	err := k.nl.AddrDel(k.link(), k.nlAddr(a))
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s from %s: %w", a, k.ifname, err)
	}
	return nil
}

// Announce implements VIPs.
func (k *KernelVIPs) Announce() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return net.ErrClosed
	}
	var errs []error
	send := func(frame []byte, dst net.HardwareAddr, proto uint16) {
		sa := &unix.SockaddrLinklayer{Ifindex: k.ifindex, Protocol: htons(proto), Halen: 6}
		copy(sa.Addr[:], dst)
		if err := unix.Sendto(k.fd, frame, 0, sa); err != nil {
			errs = append(errs, fmt.Errorf("send on %s: %w", k.ifname, err))
		}
	}
	for _, a := range k.addrs {
		if a.Is4() {
			// Linux updates an existing entry from a gratuitous request
			// and from a reply whose target is its sender; other stacks
			// prefer one or the other, so send both.
			send(garpFrame(k.mac, a, arpRequest), broadcastMAC, unix.ETH_P_ARP)
			send(garpFrame(k.mac, a, arpReply), broadcastMAC, unix.ETH_P_ARP)
		} else {
			send(naFrame(k.mac, a), allNodesMAC, unix.ETH_P_IPV6)
		}
	}
	return errors.Join(errs...)
}

// Close implements VIPs.
func (k *KernelVIPs) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	k.nl.Close()
	return unix.Close(k.fd)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

var (
	broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	allNodesMAC  = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
	allNodes     = netip.MustParseAddr("ff02::1")
)

const (
	arpRequest = 1
	arpReply   = 2
)

// garpFrame builds an Ethernet frame carrying a gratuitous ARP for vip:
// sender and target protocol addresses are both vip. A reply names the
// sender's own MAC as target hardware address, which is what Linux
// requires to treat a reply as gratuitous.
func garpFrame(mac net.HardwareAddr, vip netip.Addr, op uint16) []byte {
	b := make([]byte, 0, 42)
	b = append(b, broadcastMAC...)
	b = append(b, mac...)
	b = binary.BigEndian.AppendUint16(b, unix.ETH_P_ARP)
	b = binary.BigEndian.AppendUint16(b, 1)      // hardware: Ethernet
	b = binary.BigEndian.AppendUint16(b, 0x0800) // protocol: IPv4
	b = append(b, 6, 4)
	b = binary.BigEndian.AppendUint16(b, op)
	ip := vip.As4()
	b = append(b, mac...)
	b = append(b, ip[:]...)
	if op == arpReply {
		b = append(b, mac...)
	} else {
		b = append(b, 0, 0, 0, 0, 0, 0)
	}
	return append(b, ip[:]...)
}

// naFrame builds an unsolicited neighbour advertisement for vip to all
// nodes: override set, solicited clear, with the target link-layer
// address option. The source is vip itself, which the node has just
// added without duplicate address detection.
func naFrame(mac net.HardwareAddr, vip netip.Addr) []byte {
	icmp := make([]byte, 0, 32)
	icmp = append(icmp, 136, 0, 0, 0)  // type, code, checksum
	icmp = append(icmp, 0x20, 0, 0, 0) // override
	t := vip.As16()
	icmp = append(icmp, t[:]...)
	icmp = append(icmp, 2, 1) // option: target link-layer address, 8 bytes
	icmp = append(icmp, mac...)
	binary.BigEndian.PutUint16(icmp[2:], icmpv6Checksum(vip, allNodes, icmp))

	b := make([]byte, 0, 14+40+len(icmp))
	b = append(b, allNodesMAC...)
	b = append(b, mac...)
	b = binary.BigEndian.AppendUint16(b, unix.ETH_P_IPV6)
	b = append(b, 0x60, 0, 0, 0) // version 6, no class or flow label
	b = binary.BigEndian.AppendUint16(b, uint16(len(icmp)))
	b = append(b, unix.IPPROTO_ICMPV6, 255) // next header; hop limit 255 as NDP requires
	s, d := vip.As16(), allNodes.As16()
	b = append(b, s[:]...)
	b = append(b, d[:]...)
	return append(b, icmp...)
}

func icmpv6Checksum(src, dst netip.Addr, msg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	s, d := src.As16(), dst.As16()
	add(s[:])
	add(d[:])
	sum += uint32(len(msg))
	sum += unix.IPPROTO_ICMPV6
	add(msg)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
