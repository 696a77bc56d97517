package executor

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// frame describes a test packet; build turns it into wire bytes with valid
// IPv4 header and TCP/UDP/ICMP checksums, so that fixtures look like traffic.
type frame struct {
	dstMAC, srcMAC net.HardwareAddr
	vlan           uint16 // 0: untagged
	src, dst       netip.Addr
	proto          uint8
	sport, dport   uint16
	tcpFlags       uint8
	ipOptions      []byte // IPv4 options, a multiple of 4 bytes
	hopByHop       bool   // IPv6: a hop-by-hop options header before L4
	fragment       bool   // IPv4: MF set; IPv6: a fragment header
	payload        []byte
	l4             []byte // if set, used as the whole L4 segment (ICMP)
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func checksum(parts ...[]byte) uint16 {
	var sum uint32
	for _, b := range parts {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func (f frame) segment() []byte {
	if f.l4 != nil {
		return append([]byte(nil), f.l4...)
	}
	switch f.proto {
	case 6:
		seg := make([]byte, 20, 20+len(f.payload))
		binary.BigEndian.PutUint16(seg[0:], f.sport)
		binary.BigEndian.PutUint16(seg[2:], f.dport)
		binary.BigEndian.PutUint32(seg[4:], 1000)
		binary.BigEndian.PutUint32(seg[8:], 2000)
		seg[12] = 5 << 4
		seg[13] = f.tcpFlags
		binary.BigEndian.PutUint16(seg[14:], 65535)
		return append(seg, f.payload...)
	case 17:
		seg := make([]byte, 8, 8+len(f.payload))
		binary.BigEndian.PutUint16(seg[0:], f.sport)
		binary.BigEndian.PutUint16(seg[2:], f.dport)
		binary.BigEndian.PutUint16(seg[4:], uint16(8+len(f.payload)))
		return append(seg, f.payload...)
	}
	return append([]byte(nil), f.payload...)
}

func (f frame) build() []byte {
	var out []byte
	out = append(out, f.dstMAC...)
	out = append(out, f.srcMAC...)
	if f.vlan != 0 {
		out = binary.BigEndian.AppendUint16(out, 0x8100)
		out = binary.BigEndian.AppendUint16(out, f.vlan)
	}
	seg := f.segment()
	if f.src.Is4() {
		out = binary.BigEndian.AppendUint16(out, 0x0800)
		hl := 20 + len(f.ipOptions)
		ip := make([]byte, hl)
		ip[0] = 4<<4 | byte(hl/4)
		binary.BigEndian.PutUint16(ip[2:], uint16(hl+len(seg)))
		binary.BigEndian.PutUint16(ip[4:], 0x1234)
		if f.fragment {
			binary.BigEndian.PutUint16(ip[6:], 0x2000)
		} else {
			binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
		}
		ip[8] = 64
		ip[9] = f.proto
		s, d := f.src.As4(), f.dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		copy(ip[20:], f.ipOptions)
		binary.BigEndian.PutUint16(ip[10:], checksum(ip))
		f.fillL4Checksum(seg, s[:], d[:])
		out = append(out, ip...)
		return append(out, seg...)
	}
	out = binary.BigEndian.AppendUint16(out, 0x86dd)
	var ext []byte
	next := f.proto
	if f.fragment {
		ext = append([]byte{next, 0, 0, 0x01, 0, 0, 0, 42}, ext...) // offset 0, M=1
		next = 44
	}
	if f.hopByHop {
		// PadN option filling the 8-byte header.
		ext = append([]byte{next, 0, 1, 4, 0, 0, 0, 0}, ext...)
		next = 0
	}
	ip := make([]byte, 40)
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+len(seg)))
	ip[6] = next
	ip[7] = 64
	s, d := f.src.As16(), f.dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	f.fillL4Checksum(seg, s[:], d[:])
	out = append(out, ip...)
	out = append(out, ext...)
	return append(out, seg...)
}

func (f frame) fillL4Checksum(seg, src, dst []byte) {
	var off int
	switch f.proto {
	case 6:
		off = 16
	case 17:
		off = 6
	case 1:
		binary.BigEndian.PutUint16(seg[2:], 0)
		binary.BigEndian.PutUint16(seg[2:], checksum(seg))
		return
	case 58:
		off = 2
	default:
		return
	}
	if len(seg) < off+2 || f.l4 != nil && f.proto != 58 {
		return
	}
	binary.BigEndian.PutUint16(seg[off:], 0)
	pseudo := append(append([]byte(nil), src...), dst...)
	if len(src) == 4 {
		pseudo = append(pseudo, 0, f.proto)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(seg)))
	} else {
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(seg)))
		pseudo = append(pseudo, 0, 0, 0, f.proto)
	}
	binary.BigEndian.PutUint16(seg[off:], checksum(pseudo, seg))
}

// withMACs returns a copy of raw with the Ethernet addresses replaced: the
// only change the dispatcher may make.
func withMACs(raw []byte, dst, src net.HardwareAddr) []byte {
	out := append([]byte(nil), raw...)
	copy(out[0:6], dst)
	copy(out[6:12], src)
	return out
}

// icmpError builds the ICMP (v4: type 3 code 4) or ICMPv6 (type 2) message a
// router sends to the VIP about a too-big packet the server sent from the VIP
// to the client; quoted is that packet's IP header and first bytes.
func icmpError(v4 bool, mtu uint32, quoted []byte) []byte {
	m := make([]byte, 8)
	if v4 {
		m[0], m[1] = 3, 4
		binary.BigEndian.PutUint16(m[6:], uint16(mtu))
	} else {
		m[0] = 2
		binary.BigEndian.PutUint32(m[4:], mtu)
	}
	return append(m, quoted...)
}
