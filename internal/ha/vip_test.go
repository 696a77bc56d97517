package ha

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

func TestGARPFrame(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 0x0a}
	vip := netip.MustParseAddr("198.51.100.100")
	for _, op := range []uint16{arpRequest, arpReply} {
		f := garpFrame(mac, vip, op)
		if len(f) != 42 {
			t.Fatalf("op %d: %d bytes", op, len(f))
		}
		if !bytes.Equal(f[0:6], broadcastMAC) || !bytes.Equal(f[6:12], mac) || binary.BigEndian.Uint16(f[12:]) != 0x0806 {
			t.Errorf("op %d: Ethernet header % x", op, f[:14])
		}
		arp := f[14:]
		if binary.BigEndian.Uint16(arp[6:]) != op || !bytes.Equal(arp[8:14], mac) {
			t.Errorf("op %d: ARP % x", op, arp)
		}
		if !bytes.Equal(arp[14:18], vip.AsSlice()) || !bytes.Equal(arp[24:28], vip.AsSlice()) {
			t.Errorf("op %d: sender and target are not both the VIP: % x", op, arp)
		}
		if op == arpReply && !bytes.Equal(arp[18:24], mac) {
			t.Errorf("reply's target MAC % x, want its own", arp[18:24])
		}
	}
}

func TestNAFrame(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 0x0b}
	vip := netip.MustParseAddr("2001:db8::100")
	f := naFrame(mac, vip)
	if !bytes.Equal(f[0:6], allNodesMAC) || binary.BigEndian.Uint16(f[12:]) != 0x86dd {
		t.Fatalf("Ethernet header % x", f[:14])
	}
	ip := f[14:54]
	icmp := f[54:]
	if ip[6] != 58 || ip[7] != 255 || int(binary.BigEndian.Uint16(ip[4:])) != len(icmp) {
		t.Errorf("IPv6 header % x", ip)
	}
	if !bytes.Equal(ip[24:40], allNodes.AsSlice()) || !bytes.Equal(ip[8:24], vip.AsSlice()) {
		t.Errorf("addresses % x", ip[8:40])
	}
	if icmp[0] != 136 || icmp[4] != 0x20 {
		t.Errorf("type %d flags %#x, want 136 with only override", icmp[0], icmp[4])
	}
	if !bytes.Equal(icmp[8:24], vip.AsSlice()) || icmp[24] != 2 || icmp[25] != 1 || !bytes.Equal(icmp[26:32], mac) {
		t.Errorf("target or option % x", icmp[8:])
	}
	// A message with its checksum in place sums to zero.
	if c := icmpv6Checksum(vip, allNodes, icmp); c != 0 {
		t.Errorf("checksum does not verify: %#x", c)
	}
}
