package executor

import (
	"encoding/binary"
	"unsafe"
)

// The data plane's hashes (bpf/hash.h), for user space to find what the
// kernel finds: a flow's table bucket and ring slot, a VIP's filter bit.

func hashWord(h, k uint32) uint32 {
	k *= 0xcc9e2d51
	k = k<<15 | k>>17
	k *= 0x1b873593
	h ^= k
	h = h<<13 | h>>19
	return h*5 + 0xe6546b64
}

func hashFinal(h uint32) uint32 {
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// flowHash hashes struct flow_key as the kernel does: all ten words of an
// IPv6 key, the four that can be non-zero of an IPv4 key.
func flowHash(k dispatchFlowKey, seed uint32) uint32 {
	const size = uint32(unsafe.Sizeof(dispatchFlowKey{}))
	var raw [8]byte
	binary.NativeEndian.PutUint16(raw[0:], k.Sport)
	binary.NativeEndian.PutUint16(raw[2:], k.Dport)
	raw[4], raw[5], raw[6], raw[7] = k.Proto, k.Family, k.Pad[0], k.Pad[1]
	ports := binary.NativeEndian.Uint32(raw[0:])
	tail := binary.NativeEndian.Uint32(raw[4:])
	h := seed
	if k.Family == afInet {
		h = hashWord(h, k.Src.Addr[0])
		h = hashWord(h, k.Dst.Addr[0])
		h = hashWord(h, ports)
		h = hashWord(h, tail)
		return hashFinal(h ^ 16)
	}
	for _, w := range k.Src.Addr {
		h = hashWord(h, w)
	}
	for _, w := range k.Dst.Addr {
		h = hashWord(h, w)
	}
	h = hashWord(h, ports)
	h = hashWord(h, tail)
	return hashFinal(h ^ size)
}

// p2cSeed is P2C_SEED: the p2c scheduler's second candidate is the flow
// hashed under seed ^ p2cSeed.
const p2cSeed = 0x5bd1e995

// p2cLoad is one side of the p2c comparison (nd_p2c_pick): a candidate's
// open flows, read as the kernel reads them, times the other's weight.
func p2cLoad(active int64, otherWeight uint32) uint64 {
	return uint64(min(max(active, 0), 0xffffffff)) * uint64(otherWeight)
}

// addrHash picks a VIP's bit in vip_bloom.
func addrHash(w [4]uint32, family uint8) uint32 {
	h := hashWord(0x9e3779b9^uint32(family), w[0])
	if family == afInet6 {
		h = hashWord(h, w[1])
		h = hashWord(h, w[2])
		h = hashWord(h, w[3])
	}
	return hashFinal(h)
}

// scale, ringSlot and bucketIndex mirror bpf/hash.h.
func scale(hash, n uint32) uint32 { return uint32(uint64(hash) * uint64(n) >> 32) }

func ringSlot(hash, ringSize uint32) uint32 { return scale(hash<<16|hash>>16, ringSize) }

func bucketIndex(hash, nbuckets uint32) uint32 { return scale(hash, nbuckets) }

// svcHash picks a service's home slot in svc_index: the first five words of
// struct svc_key (the sixth is padding).
func svcHash(k dispatchSvcKey) uint32 {
	var raw [4]byte
	binary.NativeEndian.PutUint16(raw[0:], k.Port)
	raw[2], raw[3] = k.Proto, k.Family
	h := uint32(0x85ebca6b)
	for _, w := range k.Addr.Addr {
		h = hashWord(h, w)
	}
	h = hashWord(h, binary.NativeEndian.Uint32(raw[:]))
	return hashFinal(h)
}

// svcFilterBit is svc_filter_bit in bpf/hash.h: the svc_bloom bit of a
// service, from its VIP's addrHash and its port in network byte order.
func svcFilterBit(ah uint32, port uint16, proto uint8) uint32 {
	return ((ah ^ (uint32(port) | uint32(proto)<<16)) * 0x9e3779b1) >> 16
}
