package executor

import (
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// AttachPass attaches an XDP program that returns XDP_PASS for every frame
// to the interface with the given index in the calling thread's network
// namespace. Closing the result detaches it.
//
// A veth only delivers frames sent to it with XDP_TX or XDP_REDIRECT when
// its receiving peer runs an XDP program, so labs attach this one to the
// peer of every interface the data plane transmits on. The kernel's choice of
// mode is tried first (native on veth), then generic mode.
func AttachPass(ifindex int) (io.Closer, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "nd_pass",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("load xdp pass program: %w", err)
	}
	// The link holds its own reference to the program.
	defer prog.Close()

	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex})
	if err != nil {
		var errGeneric error
		l, errGeneric = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPGenericMode})
		if errGeneric != nil {
			return nil, fmt.Errorf("attach xdp pass program to ifindex %d: %w (generic mode: %w)", ifindex, err, errGeneric)
		}
	}
	return l, nil
}
