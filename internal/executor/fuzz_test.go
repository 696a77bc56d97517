package executor

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
)

// parsedFrame is an independent reading of a frame, to judge what the
// program did with it.
type parsedFrame struct {
	dst        netip.Addr
	proto      uint8
	dport      uint16
	fragment   bool
	icmpPTB    bool // ICMP fragmentation needed / ICMPv6 packet too big
	wellFormed bool // complete IP header and, for TCP/UDP, transport ports
}

func parseForFuzz(b []byte) (parsedFrame, bool) {
	var p parsedFrame
	if len(b) < 14 {
		return p, false
	}
	et := binary.BigEndian.Uint16(b[12:])
	off := 14
	if et == 0x8100 || et == 0x88a8 {
		if len(b) < 18 {
			return p, false
		}
		et = binary.BigEndian.Uint16(b[16:])
		off = 18
	}
	var l4 int
	switch et {
	case 0x0800:
		if len(b) < off+20 || b[off]>>4 != 4 || int(b[off]&0xf)*4 < 20 {
			return p, false
		}
		p.dst = netip.AddrFrom4([4]byte(b[off+16 : off+20]))
		p.proto = b[off+9]
		p.fragment = binary.BigEndian.Uint16(b[off+6:])&0x3fff != 0
		l4 = off + int(b[off]&0xf)*4
	case 0x86dd:
		if len(b) < off+40 || b[off]>>4 != 6 {
			return p, false
		}
		p.dst = netip.AddrFrom16([16]byte(b[off+24 : off+40]))
		p.proto = b[off+6]
		l4 = off + 40
		for range 4 {
			switch p.proto {
			case 0, 43, 60, 51:
				if len(b) < l4+2 {
					return p, true
				}
				n := (int(b[l4+1]) + 1) * 8
				if p.proto == 51 {
					n = (int(b[l4+1]) + 2) * 4
				}
				p.proto = b[l4]
				l4 += n
				continue
			case 44:
				p.fragment = true
			}
			break
		}
	default:
		return p, false
	}
	switch p.proto {
	case 6, 17:
		need := 8
		if p.proto == 6 {
			need = 20
		}
		if len(b) >= l4+need {
			p.dport = binary.BigEndian.Uint16(b[l4+2:])
			p.wellFormed = !p.fragment
		}
	case 1:
		p.icmpPTB = len(b) >= l4+8 && b[l4] == 3 && b[l4+1] == 4
	case 58:
		p.icmpPTB = len(b) >= l4+8 && b[l4] == 2
	}
	return p, true
}

// FuzzDispatch feeds arbitrary frames to the program in the fixture world:
// it must never forward anything but a well-formed frame to a VIP on a
// defined port (or a PMTU error about a flow), never change more than the
// Ethernet addresses of what it forwards, and never change a byte of what
// it passes.
func FuzzDispatch(f *testing.F) {
	h := fixtureWorld(f)
	defined := map[ServiceKey]bool{}
	for _, s := range h.x.Services() {
		defined[s.Key] = true
	}
	vips := map[netip.Addr]bool{vip4: true, vip6: true}
	serverMACs := [][]byte{macS1, macS2, macS3, macS4}

	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 1500 {
			return // the kernel feeds XDP no shorter frame; keep runs fast
		}
		act, out := h.with(t).dispatch(in)
		out = out[:len(in)]
		p, parsed := parseForFuzz(in)
		switch act {
		case xdpPass:
			if !bytes.Equal(out, in) {
				t.Fatalf("passed frame changed:\n in %x\nout %x", in, out)
			}
		case xdpTX, xdpRedirect:
			if !parsed || !vips[p.dst] {
				t.Fatalf("forwarded a frame not to a VIP: %x", in)
			}
			if !p.icmpPTB && (!p.wellFormed || !defined[ServiceKey{VIP: p.dst, Port: p.dport, Proto: Proto(p.proto)}]) {
				t.Fatalf("forwarded a frame that is not well formed or not for a defined port (%+v): %x", p, in)
			}
			if !bytes.Equal(out[12:], in[12:]) {
				t.Fatalf("forwarded frame changed beyond the Ethernet addresses:\n in %x\nout %x", in, out)
			}
			if !slices.ContainsFunc(serverMACs, func(m []byte) bool { return bytes.Equal(out[:6], m) }) {
				t.Fatalf("forwarded to unknown MAC %x", out[:6])
			}
		case xdpDrop:
			if parsed && !vips[p.dst] {
				t.Fatalf("dropped a frame not for a VIP: %x", in)
			}
		default:
			t.Fatalf("action %d", act)
		}
		if parsed && !vips[p.dst] && act != xdpPass {
			t.Fatalf("frame not for a VIP got %s", actionNames[act])
		}
	})
}

func fuzzSeeds() [][]byte {
	udp := frame{dstMAC: macIn, srcMAC: macClient, src: client4, dst: vip4, proto: 17, sport: 5353, dport: 53, payload: []byte("q")}
	v6 := frame{dstMAC: macIn, srcMAC: macClient, src: client6, dst: vip6, proto: 6, sport: 40000, dport: 80, tcpFlags: tcpSYN}
	hbh := v6
	hbh.hopByHop = true
	frag := udp
	frag.fragment = true
	vlan := tcp4(1, 80, tcpSYN)
	vlan.vlan = 7
	opts := tcp4(2, 80, tcpSYN)
	opts.ipOptions = []byte{1, 1, 1, 0}
	quoted := tcp4(80, 3, tcpACK)
	quoted.src, quoted.dst = vip4, client4
	ptb := frame{dstMAC: macIn, srcMAC: macClient, src: netip.MustParseAddr("203.0.113.1"), dst: vip4, proto: 1, l4: icmpError(true, 1400, quoted.build()[14:54])}
	nonVIP := tcp4(4, 80, tcpSYN)
	nonVIP.dst = netip.MustParseAddr("198.51.100.200")
	return [][]byte{
		tcp4(40000, 80, tcpSYN).build(), tcp4(40000, 80, tcpACK).build(), tcp4(5, 443, tcpSYN).build(),
		tcp4(6, 8080, tcpSYN).build(), tcp4(7, 8081, tcpSYN).build(),
		udp.build(), v6.build(), hbh.build(), frag.build(), vlan.build(), opts.build(), ptb.build(), nonVIP.build(),
		tcp4(8, 80, tcpSYN).build()[:40],
		tcp4(9, 8082, tcpSYN).build(), tcp4(9, 8082, tcpACK|tcpFIN).build(), tcp4(10, 8082, tcpRST).build(),
		frame{dstMAC: macIn, srcMAC: macClient, src: client6, dst: vip6, proto: 17, sport: 5353, dport: 8082, payload: []byte("p2c")}.build(),
	}
}
