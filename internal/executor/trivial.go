package executor

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// The trivial forwarder's XDP actions.
const (
	trivialPass = 2 // XDP_PASS
	trivialTX   = 3 // XDP_TX
)

// trivialHeaderLen is the length of an Ethernet header (destination,
// source, EtherType): what the forwarder must be able to write.
const trivialHeaderLen = 14

// AttachTrivialForwarder attaches to the interface with the given index, in
// the calling thread's network namespace, an XDP program that sends every
// frame back out of the interface it came in on (XDP_TX) with its Ethernet
// destination rewritten to dstMAC and its source to srcMAC. It looks at
// nothing else: no parsing, no maps, no choice. Frames too short to hold an
// Ethernet header are passed to the stack. Closing the result detaches it.
//
// It is the baseline of benchmarks: the cost of the extra hop through the
// dispatcher alone, without any of nd's work. Like Attach it asks for native
// mode first and falls back to generic mode, so that the two are compared in
// the same mode.
func AttachTrivialForwarder(ifindex int, dstMAC, srcMAC net.HardwareAddr) (io.Closer, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("%w: trivial forwarder: ifindex %d", ErrInvalid, ifindex)
	}
	prog, err := newTrivialForwarder(dstMAC, srcMAC)
	if err != nil {
		return nil, err
	}
	// The link holds its own reference to the program.
	defer prog.Close()

	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err != nil {
		var errGeneric error
		l, errGeneric = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPGenericMode})
		if errGeneric != nil {
			return nil, fmt.Errorf("attach trivial forwarder to ifindex %d: %w (generic mode: %w)", ifindex, err, errGeneric)
		}
	}
	return l, nil
}

// newTrivialForwarder loads the forwarder's program.
func newTrivialForwarder(dstMAC, srcMAC net.HardwareAddr) (*ebpf.Program, error) {
	insns, err := trivialForwarderInsns(dstMAC, srcMAC)
	if err != nil {
		return nil, err
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "nd_trivial_fwd",
		Type:         ebpf.XDP,
		Instructions: insns,
		License:      "GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("load trivial forwarder: %w", err)
	}
	return prog, nil
}

// trivialForwarderInsns is the forwarder's program. The MACs are immediates:
// the program reads no map.
//
//	r2 = ctx->data; r3 = ctx->data_end
//	if r2 + 14 > r3: return XDP_PASS
//	write dstMAC at 0 and srcMAC at 6 (a word and a half-word each)
//	return XDP_TX
func trivialForwarderInsns(dstMAC, srcMAC net.HardwareAddr) (asm.Instructions, error) {
	if len(dstMAC) != 6 || len(srcMAC) != 6 {
		return nil, fmt.Errorf("%w: trivial forwarder: MACs %q and %q must be Ethernet addresses", ErrInvalid, dstMAC, srcMAC)
	}
	// Stores of immediates write the value's bytes in the machine's order;
	// reading the MAC's bytes in that order puts them back as they are.
	word := func(b []byte) int64 { return int64(int32(binary.NativeEndian.Uint32(b))) }
	half := func(b []byte) int64 { return int64(int16(binary.NativeEndian.Uint16(b))) }
	const short = "short"
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // xdp_md.data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // xdp_md.data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, trivialHeaderLen),
		asm.JGT.Reg(asm.R4, asm.R3, short),
		asm.StoreImm(asm.R2, 0, word(dstMAC[0:4]), asm.Word),
		asm.StoreImm(asm.R2, 4, half(dstMAC[4:6]), asm.Half),
		asm.StoreImm(asm.R2, 6, half(srcMAC[0:2]), asm.Half),
		asm.StoreImm(asm.R2, 8, word(srcMAC[2:6]), asm.Word),
		asm.Mov.Imm(asm.R0, trivialTX),
		asm.Return(),
		asm.Mov.Imm(asm.R0, trivialPass).WithSymbol(short),
		asm.Return(),
	}, nil
}
