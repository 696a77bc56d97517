package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/netns"
)

// CheckPort is the UDP port on which Check's echo responders listen while
// it runs. Check must run before a load balancer is attached to the
// dispatcher, or while none serves this port.
const CheckPort = 7

// Bounds of one probe of Check.
const (
	probeAttempts = 10
	probeWait     = 300 * time.Millisecond
)

// ErrNoNeighbor reports a missing or unresolved neighbour entry.
var ErrNoNeighbor = errors.New("no resolved neighbour entry")

// Check asserts that the topology works before anyone measures load
// balancing through it. With a UDP exchange from inside the namespaces it
// resolves, and then verifies in both neighbour tables, the pairs
// client<->dispatcher, dispatcher<->each server on each network, and each
// server<->client; and it checks that the client resolves each VIP to the
// dispatcher's MAC, that is, that no server answers ARP or NDP for it.
func (l *Lab) Check(ctx context.Context) error {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return ErrClosed
	}
	stop, err := l.startEchoes()
	if err != nil {
		return fmt.Errorf("check lab %s: %w", l.Prefix, err)
	}
	defer stop()

	var errs []error
	for _, p := range l.probes() {
		if err := done(ctx); err != nil {
			if len(errs) == 0 {
				errs = append(errs, err)
			}
			break
		}
		if err := p.run(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("check lab %s: %w", l.Prefix, err)
	}
	l.logf("lab %s: check passed", l.Prefix)
	return nil
}

// probe is one exchange from src on from's interface fromIf to dst, which
// to holds on toIf.
type probe struct {
	from   *Host
	fromIf *Iface
	src    netip.Addr
	to     *Host
	toIf   *Iface
	dst    netip.Addr
}

func (l *Lab) probes() []probe {
	var ps []probe
	both := func(from *Host, fromIf *Iface, to *Host, toIf *Iface) {
		ps = append(ps,
			probe{from, fromIf, fromIf.Addr4, to, toIf, toIf.Addr4},
			probe{from, fromIf, fromIf.Addr6, to, toIf, toIf.Addr6})
	}
	c, d := &l.Client, &l.Dispatcher
	for _, d := range l.Dispatchers() {
		both(c, &c.Iface, d, &d.Iface)
	}
	if l.DispatcherVIPs {
		ps = append(ps,
			probe{c, &c.Iface, c.Addr4, d, &d.Iface, l.VIP4},
			probe{c, &c.Iface, c.Addr6, d, &d.Iface, l.VIP6})
	}
	// The paths of HA's heartbeats and synchronisation.
	ds := l.Dispatchers()
	for i, a := range ds {
		for _, b := range ds[i+1:] {
			both(a, &a.Iface, b, &b.Iface)
		}
	}
	for i := range l.Servers {
		s := &l.Servers[i]
		for _, d := range l.Dispatchers() {
			both(d, &d.Iface, s, &s.Iface)
			if d.Int != nil && s.Int != nil {
				both(d, d.Int, s, s.Int)
			}
		}
		both(s, &s.Iface, c, &c.Iface)
	}
	return ps
}

func (p probe) String() string {
	return fmt.Sprintf("%s %s (%s) -> %s %s (%s)", p.from.Name, p.src, p.fromIf.Ifname, p.to.Name, p.dst, p.toIf.Ifname)
}

// run exchanges a datagram with to's echo responder, then checks that each
// side resolved the other to the expected MAC.
func (p probe) run(ctx context.Context) error {
	if err := p.exchange(ctx); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if err := expectNeighbor(p.from.NS, p.fromIf.Ifindex, p.dst, p.toIf.MAC); err != nil {
		return fmt.Errorf("%s: %s's table: %w", p, p.from.Name, err)
	}
	if err := expectNeighbor(p.to.NS, p.toIf.Ifindex, p.src, p.fromIf.MAC); err != nil {
		return fmt.Errorf("%s: %s's table: %w", p, p.to.Name, err)
	}
	return nil
}

func (p probe) exchange(ctx context.Context) error {
	c, err := p.from.NS.ListenPacket(udp(p.src), netip.AddrPortFrom(p.src, 0).String())
	if err != nil {
		return err
	}
	defer c.Close()
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.dst, CheckPort))
	buf := make([]byte, 512)
	var lastErr error
	for attempt := range probeAttempts {
		if err := done(ctx); err != nil {
			return fmt.Errorf("no echo after %d attempts: %w", attempt, err)
		}
		token := fmt.Appendf(nil, "nd lab check %s #%d", p, attempt)
		if _, err := c.WriteTo(token, dst); err != nil {
			lastErr = err
			time.Sleep(probeWait) // e.g. EHOSTUNREACH after a failed resolution
			continue
		}
		deadline := time.Now().Add(probeWait)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		c.SetReadDeadline(deadline)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				lastErr = err
				break
			}
			ua, _ := from.(*net.UDPAddr)
			if ua == nil || ua.AddrPort().Addr().Unmap() != p.dst || !bytes.Equal(buf[:n], token) {
				continue // a late answer to an earlier attempt
			}
			return nil
		}
	}
	return fmt.Errorf("no echo after %d attempts: %w", probeAttempts, lastErr)
}

// done is ctx.Err, but also reports a deadline that has passed before the
// context's timer has fired.
func done(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

func udp(a netip.Addr) string {
	if a.Is4() {
		return "udp4"
	}
	return "udp6"
}

// startEchoes runs a UDP echo responder on CheckPort of every host address
// and of the dispatcher's VIPs. stop closes them and waits for their
// goroutines.
func (l *Lab) startEchoes() (stop func(), err error) {
	var (
		conns []net.PacketConn
		wg    sync.WaitGroup
	)
	stop = func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}
	listen := func(ns *netns.NS, a netip.Addr) error {
		c, err := ns.ListenPacket(udp(a), netip.AddrPortFrom(a, CheckPort).String())
		if err != nil {
			return err
		}
		conns = append(conns, c)
		wg.Go(func() { EchoDatagrams(c) })
		return nil
	}
	for _, h := range l.Hosts() {
		addrs := []netip.Addr{}
		for _, ifc := range h.Ifaces() {
			addrs = append(addrs, ifc.Addr4, ifc.Addr6)
		}
		if h == &l.Dispatcher && l.DispatcherVIPs {
			addrs = append(addrs, l.VIP4, l.VIP6)
		}
		for _, a := range addrs {
			if err := listen(h.NS, a); err != nil {
				stop()
				return nil, fmt.Errorf("echo responder on %s in %s: %w", a, h.Name, err)
			}
		}
	}
	return stop, nil
}

// EchoDatagrams answers every datagram on c with itself until c is
// closed.
func EchoDatagrams(c net.PacketConn) {
	buf := make([]byte, 512)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		c.WriteTo(buf[:n], from)
	}
}

// usable neighbour states: resolved, even if no longer confirmed.
const usableNUD = unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT

// Neighbor returns the MAC address to which ns has resolved ip on the
// interface ifindex (any interface if 0). It fails with ErrNoNeighbor if
// there is no entry or the entry is unresolved.
func Neighbor(ns *netns.NS, ifindex int, ip netip.Addr) (net.HardwareAddr, error) {
	h, err := ns.Netlink()
	if err != nil {
		return nil, err
	}
	family := netlink.FAMILY_V4
	if ip.Is6() {
		family = netlink.FAMILY_V6
	}
	neighs, err := h.NeighList(ifindex, family)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list neighbours in %s: %w", ns.Name(), err)
	}
	for _, n := range neighs {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok || a.Unmap() != ip {
			continue
		}
		if n.State&usableNUD == 0 || len(n.HardwareAddr) == 0 {
			return nil, fmt.Errorf("%w for %s in %s (state %#x)", ErrNoNeighbor, ip, ns.Name(), n.State)
		}
		return n.HardwareAddr, nil
	}
	return nil, fmt.Errorf("%w for %s in %s", ErrNoNeighbor, ip, ns.Name())
}

func expectNeighbor(ns *netns.NS, ifindex int, ip netip.Addr, want net.HardwareAddr) error {
	got, err := Neighbor(ns, ifindex, ip)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s resolves to %s, want %s", ip, got, want)
	}
	return nil
}
