package executor

// The data plane's encodings of addresses, ports and keys.

import (
	"encoding/binary"
	"net/netip"
)

// Conversions between Go values and the kernel's layouts.

func addrWords(a netip.Addr) ([4]uint32, uint8) {
	var w [4]uint32
	if a.Is4() {
		b := a.As4()
		w[0] = binary.NativeEndian.Uint32(b[:])
		return w, afInet
	}
	b := a.As16()
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w, afInet6
}

func addrFrom(w [4]uint32, family uint8) netip.Addr {
	if family == afInet {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], w[0])
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b)
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(v uint16) uint16 { return htons(v) }

func svcKey(k ServiceKey) dispatchSvcKey {
	var sk dispatchSvcKey
	sk.Addr.Addr, sk.Family = addrWords(k.VIP)
	sk.Port = htons(k.Port)
	sk.Proto = uint8(k.Proto)
	return sk
}

func flowKey(k FlowKey) dispatchFlowKey {
	var fk dispatchFlowKey
	fk.Src.Addr, fk.Family = addrWords(k.Client.Addr())
	fk.Dst.Addr, _ = addrWords(k.VIP.Addr())
	fk.Sport = htons(k.Client.Port())
	fk.Dport = htons(k.VIP.Port())
	fk.Proto = uint8(k.Proto)
	return fk
}

// b2u is 1 for true.
func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
