package neighbor

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// requestTimeout bounds each netlink request.
const requestTimeout = 5 * time.Second

// subscribeBuffer is the receive buffer asked for the neighbour
// subscription (the kernel caps it at net.core.rmem_max).
const subscribeBuffer = 1 << 20

// kernel holds the Resolver's netlink sockets, all bound to the namespace
// that was current at New: a handle for routes, links and resolution
// requests, a socket for targeted neighbour reads, and a reference to the
// namespace for subscriptions made later from any thread.
type kernel struct {
	mu     sync.RWMutex // read-held by every request; Close write-holds it
	closed bool
	ns     vns.NsHandle
	h      *netlink.Handle
	get    *nl.SocketHandle
}

func openKernel() (_ *kernel, err error) {
	ns, err := vns.Get()
	if err != nil {
		return nil, fmt.Errorf("open current network namespace: %w", err)
	}
	k := &kernel{ns: ns}
	defer func() {
		if err != nil {
			k.close()
		}
	}()
	if k.h, err = netlink.NewHandleAt(ns, unix.NETLINK_ROUTE); err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	if err := k.h.SetSocketTimeout(requestTimeout); err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	s, err := nl.GetNetlinkSocketAt(ns, vns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	k.get = &nl.SocketHandle{Socket: s}
	tv := unix.NsecToTimeval(requestTimeout.Nanoseconds())
	if err := s.SetSendTimeout(&tv); err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := s.SetReceiveTimeout(&tv); err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return k, nil
}

func (k *kernel) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	k.closed = true
	if k.h != nil {
		k.h.Close()
	}
	if k.get != nil {
		k.get.Close()
	}
	if k.ns.IsOpen() {
		k.ns.Close()
	}
}

// use read-locks k for one request; it fails once k is closed, so that no
// request falls back to a socket in whatever namespace the caller is in.
func (k *kernel) use() (release func(), err error) {
	k.mu.RLock()
	if k.closed {
		k.mu.RUnlock()
		return nil, ErrClosed
	}
	return k.mu.RUnlock, nil
}

// observe reads the route to a, the interface it leaves by, and the
// neighbour entry there. A route that rules a out is a verdict in the
// observation; the error is for failures to ask the kernel at all.
func (k *kernel) observe(a netip.Addr, allow map[string]bool) (observation, error) {
	o := observation{entry: Entry{Addr: a}}
	if err := checkAddr(a); err != nil {
		o.err = err
		return o, nil
	}
	release, err := k.use()
	if err != nil {
		return o, err
	}
	defer release()

	routes, err := k.h.RouteGet(a.AsSlice())
	if err != nil {
		var errno unix.Errno
		if errors.As(err, &errno) {
			switch errno {
			case unix.ENETUNREACH, unix.EHOSTUNREACH, unix.EACCES, unix.EINVAL:
				o.err = &addrError{kind: ErrNoRoute, msg: fmt.Sprintf("no route to server %s: %v", a, err)}
				return o, nil
			}
		}
		return o, fmt.Errorf("route lookup for %s: %w", a, err)
	}
	if len(routes) == 0 {
		o.err = &addrError{kind: ErrNoRoute, msg: fmt.Sprintf("no route to server %s", a)}
		return o, nil
	}
	rt := routes[0]
	link, err := k.h.LinkByIndex(rt.LinkIndex)
	if err != nil {
		return o, fmt.Errorf("route to %s: interface %d: %w", a, rt.LinkIndex, err)
	}
	o.entry.Ifindex, o.entry.Ifname = rt.LinkIndex, link.Attrs().Name
	if o.err = checkRoute(a, rt, o.entry.Ifname, link, allow); o.err != nil {
		return o, nil
	}

	n, err := k.neighGet(rt.LinkIndex, a)
	if err != nil {
		return o, err
	}
	o.found = n != nil
	if n != nil {
		o.nud = n.State
		if o.nud&nudValid != 0 && usableMAC(n.HardwareAddr) {
			o.entry.MAC = n.HardwareAddr
			o.entry.Resolved = true
		}
	}
	o.entry.State = stateName(o.found, o.nud)
	return o, nil
}

// checkAddr rules out addresses that cannot be real servers.
func checkAddr(a netip.Addr) error {
	why := ""
	switch {
	case a.Zone() != "":
		why = "has a zone; give the server's global address"
	case a.IsUnspecified():
		why = "is unspecified"
	case a.IsLoopback():
		why = "is a loopback address"
	case a.IsMulticast():
		why = "is a multicast address"
	case a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = "is the broadcast address"
	case a.Is6() && a.IsLinkLocalUnicast():
		why = "is link-local; give the server's global address"
	default:
		return nil
	}
	return &addrError{kind: ErrUnusable, msg: fmt.Sprintf("server address %s %s", a, why)}
}

// checkRoute rules out routes that do not reach a directly over Ethernet.
func checkRoute(a netip.Addr, rt netlink.Route, ifname string, link netlink.Link, allow map[string]bool) error {
	if rt.Type == unix.RTN_LOCAL {
		return &addrError{kind: ErrUnusable, msg: fmt.Sprintf("server %s is an address of this host", a)}
	}
	if gw := gateway(rt); gw != nil {
		return &addrError{kind: ErrViaGateway,
			msg: fmt.Sprintf("server %s is reached via gateway %s on %s, not on a directly connected network", a, gw, ifname)}
	}
	if rt.Type != unix.RTN_UNICAST {
		return &addrError{kind: ErrUnusable,
			msg: fmt.Sprintf("server %s: the route to it is of type %s, not unicast", a, routeType(rt.Type))}
	}
	if len(allow) > 0 && !allow[ifname] {
		return &addrError{kind: ErrInterface,
			msg: fmt.Sprintf("server %s is reached via %s, which is not among the allowed interfaces", a, ifname)}
	}
	if enc := link.Attrs().EncapType; enc != "ether" {
		return &addrError{kind: ErrUnusable,
			msg: fmt.Sprintf("server %s is reached via %s, which is not an Ethernet interface (%s)", a, ifname, enc)}
	}
	return nil
}

// gateway returns the route's next hop when it has one.
func gateway(rt netlink.Route) net.IP {
	if len(rt.Gw) > 0 && !rt.Gw.IsUnspecified() {
		return rt.Gw
	}
	if v, ok := rt.Via.(*netlink.Via); ok && v != nil && len(v.Addr) > 0 {
		return v.Addr
	}
	for _, nh := range rt.MultiPath {
		if len(nh.Gw) > 0 && !nh.Gw.IsUnspecified() {
			return nh.Gw
		}
		if v, ok := nh.Via.(*netlink.Via); ok && v != nil && len(v.Addr) > 0 {
			return v.Addr
		}
	}
	return nil
}

func routeType(t int) string {
	switch t {
	case unix.RTN_BROADCAST:
		return "broadcast"
	case unix.RTN_ANYCAST:
		return "anycast"
	case unix.RTN_MULTICAST:
		return "multicast"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	}
	return fmt.Sprintf("%d", t)
}

// usableMAC reports whether mac is an Ethernet unicast address.
func usableMAC(mac net.HardwareAddr) bool {
	if len(mac) != 6 || mac[0]&1 != 0 {
		return false
	}
	for _, b := range mac {
		if b != 0 {
			return true
		}
	}
	return false
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// neighGet reads the neighbour entry for a on ifindex with a targeted
// RTM_GETNEIGH; it returns nil when there is none. k must be in use.
func (k *kernel) neighGet(ifindex int, a netip.Addr) (*netlink.Neigh, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETNEIGH, 0)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: k.get}
	req.AddData(&netlink.Ndmsg{Family: uint8(family(a)), Index: uint32(ifindex)})
	req.AddData(nl.NewRtAttr(netlink.NDA_DST, a.AsSlice()))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWNEIGH)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read neighbour entry for %s on interface %d: %w", a, ifindex, err)
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	n, err := netlink.NeighDeserialize(msgs[0])
	if err != nil {
		return nil, fmt.Errorf("read neighbour entry for %s: %w", a, err)
	}
	return n, nil
}

// ask asks the kernel to resolve a on ifindex as if a packet were waiting
// for it (NTF_USE): a missing or failed entry becomes incomplete and the
// kernel broadcasts ARP or multicasts NDP; a stale one goes to delay and is
// verified by unicast. It must not be used on permanent entries, which it
// would turn into ordinary ones.
func (k *kernel) ask(ifindex int, a netip.Addr) error {
	release, err := k.use()
	if err != nil {
		return err
	}
	defer release()
	err = k.h.NeighSet(&netlink.Neigh{
		LinkIndex: ifindex,
		Family:    family(a),
		IP:        a.AsSlice(),
		Flags:     netlink.NTF_USE,
	})
	if err != nil {
		return fmt.Errorf("ask the kernel to resolve %s on interface %d: %w", a, ifindex, err)
	}
	return nil
}

// subscribe starts a subscription to neighbour updates in k's namespace,
// beginning with a dump of the existing entries. Updates arrive on ch until
// done is closed or the subscription fails; ch is closed then.
func (k *kernel) subscribe(ch chan<- netlink.NeighUpdate, done <-chan struct{}, onErr func(error)) error {
	release, err := k.use()
	if err != nil {
		return err
	}
	defer release()
	ns := k.ns
	return netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{
		Namespace:         &ns,
		ErrorCallback:     onErr,
		ListExisting:      true,
		ReceiveBufferSize: subscribeBuffer,
	})
}
