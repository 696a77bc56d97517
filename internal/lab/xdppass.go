package lab

//go:generate clang-14 -O2 -Wall -Werror -target bpf -mcpu=v3 -I/usr/include/x86_64-linux-gnu -c ../../bpf/lab_pass.c -o xdppass_bpfel.o

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/netns"
)

// xdpPassObject is bpf/lab_pass.c, compiled (go generate): an XDP program
// that passes every frame.
//
//go:embed xdppass_bpfel.o
var xdpPassObject []byte

// attachXDPPass attaches the lab's pass program to the interface named
// ifname in namespace ns with iproute2 (the kernel's choice of mode:
// native on veth). Attached through netlink, it stays until the interface
// goes with the lab's namespaces; the object file is needed only to load.
func attachXDPPass(ns *netns.NS, ifname string) error {
	f, err := os.CreateTemp("", "ndlab-xdppass-*.o")
	if err != nil {
		return fmt.Errorf("write the xdp pass program: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(xdpPassObject)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write the xdp pass program: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "ip", "link", "set", "dev", ifname, "xdp", "obj", f.Name(), "sec", "xdp").CombinedOutput()
	if err != nil {
		return fmt.Errorf("attach the xdp pass program to %s: %w: %s", ifname, err, strings.TrimSpace(string(out)))
	}
	return nil
}
