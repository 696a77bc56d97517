package executor

// Attaching the dispatcher to interfaces: XDP on the ingress, the
// interface MACs the data plane checks, and the transmit ports of redirects.

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Attach implements Executor. With a pin path, an interface the data plane is
// already attached to (by an earlier process) gets the new program in place,
// without a moment of detachment.
func (b *BPF) Attach(ifindex int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.links[ifindex]; ok {
		return nil
	}
	ifi, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("attach xdp to ifindex %d: %w", ifindex, err)
	}
	pin := ""
	if b.cfg.PinPath != "" {
		pin = filepath.Join(b.cfg.PinPath, fmt.Sprintf("link_%d", ifindex))
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if err := l.Update(b.objs.NdDispatch); err != nil {
				l.Close()
				return fmt.Errorf("replace xdp program on %s: %w", ifi.Name, err)
			}
			b.links[ifindex] = l
			b.log.Info("took over xdp attachment", "interface", ifi.Name)
			return errors.Join(b.setIngressMAC(ifi), b.addTxPort(ifindex))
		}
	}
	mode := "native"
	l, err := link.AttachXDP(link.XDPOptions{Program: b.objs.NdDispatch, Interface: ifindex, Flags: link.XDPDriverMode})
	if err != nil {
		mode = "generic"
		l, err = link.AttachXDP(link.XDPOptions{Program: b.objs.NdDispatch, Interface: ifindex, Flags: link.XDPGenericMode})
	}
	if err != nil {
		return fmt.Errorf("attach xdp to %s: %w", ifi.Name, err)
	}
	if pin != "" {
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("pin xdp link of %s: %w", ifi.Name, err)
		}
	}
	b.links[ifindex] = l
	b.log.Info("attached xdp", "interface", ifi.Name, "mode", mode)
	return errors.Join(b.setIngressMAC(ifi), b.addTxPort(ifindex))
}

// setIngressMAC tells the program the interface's own MAC, so that it
// leaves frames for other hosts' MACs to the stack (frame_for_us in
// bpf/dispatch.c). An interface without an Ethernet address, or beyond
// maxIfindex, is not checked, and says so.
func (b *BPF) setIngressMAC(ifi *net.Interface) error {
	if len(ifi.HardwareAddr) != 6 || ifi.Index >= maxIfindex {
		b.log.Warn("frames on this interface are dispatched whatever their destination MAC",
			"interface", ifi.Name, "ifindex", ifi.Index, "mac", ifi.HardwareAddr.String())
		return nil
	}
	v := dispatchIfMac{Known: 1}
	copy(v.Addr[:], ifi.HardwareAddr)
	if err := b.objs.IfMacs.Update(uint32(ifi.Index), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("record the MAC of %s: %w", ifi.Name, err)
	}
	return nil
}

// Detach implements Executor.
func (b *BPF) Detach(ifindex int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	l, ok := b.links[ifindex]
	if !ok {
		return fmt.Errorf("%w: not attached to ifindex %d", ErrNotFound, ifindex)
	}
	delete(b.links, ifindex)
	if b.cfg.PinPath != "" {
		if err := l.Unpin(); err != nil {
			l.Close()
			return fmt.Errorf("unpin xdp link of ifindex %d: %w", ifindex, err)
		}
	}
	err := l.Close()
	if ifindex < maxIfindex {
		// The index may come back as another interface with another MAC.
		if merr := b.objs.IfMacs.Update(uint32(ifindex), &dispatchIfMac{}, ebpf.UpdateAny); merr != nil {
			err = errors.Join(err, fmt.Errorf("forget the MAC of ifindex %d: %w", ifindex, merr))
		}
	}
	return err
}

func (b *BPF) addTxPort(ifindex int) error {
	if b.txPorts[ifindex] {
		return nil
	}
	if err := b.objs.TxPorts.Update(uint32(ifindex), uint32(ifindex), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("add ifindex %d to tx_ports: %w", ifindex, err)
	}
	b.txPorts[ifindex] = true
	return nil
}

func (b *BPF) ifaceMAC(ifindex int) (net.HardwareAddr, error) {
	if mac, ok := b.ifMACs[ifindex]; ok {
		return mac, nil
	}
	ifi, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("egress interface %d: %w", ifindex, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("%w: egress interface %s has no Ethernet address", ErrInvalid, ifi.Name)
	}
	b.ifMACs[ifindex] = ifi.HardwareAddr
	return ifi.HardwareAddr, nil
}
