package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/ifaddr"
)

// Steering sends an advisor's probe of a VIP to one chosen server.
//
// The dispatcher holds every VIP as a local address, so a connection from
// the dispatcher host to VIP:port would be answered by its own stack. With
// steering, the advisor's socket carries a mark (SO_MARK) allocated per
// server and binds the dispatcher's own address on the egress interface; a
// tc program on the egress of lo rewrites the marked frames' MACs and
// redirects them out of that interface to the server, as the XDP data plane
// forwards clients' frames. The server answers from the VIP to the
// dispatcher's own address. See docs/STEERING.md.
//
// Like BPF, a Steering must be made and used from the dispatcher's network
// namespace: lo, interface indexes and sysctls resolve in the caller's.
type Steering struct {
	opts SteeringOptions
	log  *slog.Logger

	mu       sync.Mutex
	objs     steerObjects
	detach   func() error // removes the attachment to lo
	tcx      link.Link    // the tcx link, nil with the tc fallback
	mode     string       // "tcx" or "tc"
	routes   map[netip.Addr]*steerRoute
	byMark   map[uint32]netip.Addr
	next     uint32 // the next slot to try: slots are reused as late as possible
	ifaces   map[int]*steerIface
	isClosed bool
}

// The reserved mark range and route table size by default. 0x4e44 is "ND".
const (
	DefaultSteerMarkBase  = 0x4e440000
	DefaultSteerMarkMask  = 0xffff0000
	DefaultSteerMaxRoutes = 4096
)

// Where the tc fallback puts its filter on lo's clsact egress hook: a
// fixed priority and handle, so that a new process replaces the filter an
// old one left behind rather than adding a second.
const (
	steerTCPriority = 0x4e44
	steerTCHandle   = 0x4e44
	steerTCName     = "nd_steer"
)

// SteeringOptions configure NewSteering. Zero values take the defaults.
type SteeringOptions struct {
	// MarkBase and MarkMask reserve the marks m with m&MarkMask ==
	// MarkBase for steering; the bits outside the mask number the routes
	// (slot 0 is never used). MarkMask must be a run of high bits and
	// leave at least one low bit; MarkBase must lie within it and not be
	// zero (unmarked traffic has mark 0). Default 0x4e440000/0xffff0000:
	// marks 0x4e440001 to 0x4e44ffff. Choose a range no other user of
	// skb->mark on the host touches: a frame on lo carrying a mark of the
	// range that no route owns is dropped.
	MarkBase uint32
	MarkMask uint32
	// MaxRoutes bounds the servers steered to at once. Default 4,096.
	MaxRoutes uint32
	// PinPath is a directory on a bpffs. With it the tcx attachment is
	// pinned there (as steer_lo) and outlives Close, like the dispatcher's
	// data plane; a later NewSteering with the same PinPath puts its program
	// in place of the pinned one, and Destroy removes it. Routes are not
	// kept: advisors route again when they start. Empty: Close detaches.
	PinPath string
	// Logger receives attach and sysctl messages. Default slog.Default().
	Logger *slog.Logger
}

func (o *SteeringOptions) fill() error {
	if o.MarkBase == 0 && o.MarkMask == 0 {
		o.MarkBase, o.MarkMask = DefaultSteerMarkBase, DefaultSteerMarkMask
	}
	if o.MaxRoutes == 0 {
		o.MaxRoutes = DefaultSteerMaxRoutes
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	slots := ^o.MarkMask
	switch {
	case slots == 0:
		return fmt.Errorf("%w: steering mark mask %#x leaves no bit to number routes", ErrInvalid, o.MarkMask)
	case slots&(slots+1) != 0:
		return fmt.Errorf("%w: steering mark mask %#x is not a run of high bits", ErrInvalid, o.MarkMask)
	case o.MarkBase == 0:
		return fmt.Errorf("%w: steering mark base is 0: unmarked traffic would fall in the range", ErrInvalid)
	case o.MarkBase&slots != 0:
		return fmt.Errorf("%w: steering mark base %#x has bits outside mask %#x", ErrInvalid, o.MarkBase, o.MarkMask)
	}
	return nil
}

// slots is how many marks the range has (slot 0 aside).
func (o SteeringOptions) slots() uint32 { return ^o.MarkMask }

// SteeringStats count what the steering program did since it was loaded.
type SteeringStats struct {
	Redirected uint64 // frames sent to a server
	NoRoute    uint64 // marked frames with no route, dropped
	BadFrame   uint64 // marked frames too short to rewrite, dropped
}

// Indexes of steer_stats (enum steer_counter in bpf/steer.c).
const (
	steerRedirected = iota
	steerNoRoute
	steerBadFrame
	steerCounters
)

type steerRoute struct {
	mark    uint32
	value   steerSteerRoute
	ifindex int
}

// steerIface is an interface steered to and the sysctls changed on it.
type steerIface struct {
	name    string
	changed []sysctlChange
}

type sysctlChange struct {
	key      string // dotted, as sysctl(8) names it
	old, new string
}

// NewSteering loads the steering program and attaches it to the egress of
// lo in the calling thread's network namespace, with tcx, or with a clsact
// filter where tcx is not available. The caller must Close it.
func NewSteering(o SteeringOptions) (*Steering, error) {
	return newSteering(o, false)
}

// newSteering does NewSteering; forceTC skips tcx so that tests reach the
// fallback on kernels that have tcx.
func newSteering(o SteeringOptions, forceTC bool) (*Steering, error) {
	if err := o.fill(); err != nil {
		return nil, err
	}
	s := &Steering{
		opts:   o,
		log:    o.Logger,
		routes: map[netip.Addr]*steerRoute{},
		byMark: map[uint32]netip.Addr{},
		next:   1,
		ifaces: map[int]*steerIface{},
	}
	if err := loadSteering(o, &s.objs); err != nil {
		return nil, err
	}
	lo, err := loopback()
	if err != nil {
		s.objs.Close()
		return nil, err
	}
	if err := s.attach(lo, forceTC); err != nil {
		s.objs.Close()
		return nil, err
	}
	return s, nil
}

// loadSteering loads bpf/steer.c with the options' mark range and size.
func loadSteering(o SteeringOptions, objs *steerObjects) error {
	spec, err := loadSteer()
	if err != nil {
		return fmt.Errorf("load steering spec: %w", err)
	}
	spec.Maps[steerMapSteerRoutes].MaxEntries = o.MaxRoutes
	for name, v := range map[string]uint32{
		steerVarSteerMarkBase: o.MarkBase,
		steerVarSteerMarkMask: o.MarkMask,
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	if err := spec.LoadAndAssign(objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load steering program: %+v", ve)
		}
		return fmt.Errorf("load steering program: %w", err)
	}
	return nil
}

func loopback() (*net.Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	for i := range ifs {
		if ifs[i].Flags&net.FlagLoopback != 0 {
			return &ifs[i], nil
		}
	}
	return nil, fmt.Errorf("%w: no loopback interface in this network namespace", ErrNotFound)
}

func (s *Steering) attach(lo *net.Interface, forceTC bool) error {
	prog := s.objs.NdSteer
	pin := ""
	if s.opts.PinPath != "" {
		if err := prepareBPFFS(s.opts.PinPath); err != nil {
			return err
		}
		pin = filepath.Join(s.opts.PinPath, "steer_lo")
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if err := l.Update(prog); err != nil {
				l.Close()
				return fmt.Errorf("replace steering program on %s: %w", lo.Name, err)
			}
			s.setTCX(l)
			s.log.Info("took over steering attachment", "interface", lo.Name, "pin", pin)
			return nil
		}
	}
	var tcxErr error
	if !forceTC {
		// First in line: a program before it that ends the chain with
		// TCX_PASS would keep probes from it, while unmarked frames go
		// on from here to the others unchanged.
		l, err := link.AttachTCX(link.TCXOptions{Interface: lo.Index, Program: prog, Attach: ebpf.AttachTCXEgress, Anchor: link.Head()})
		if err == nil {
			if pin != "" {
				if err := l.Pin(pin); err != nil {
					l.Close()
					return fmt.Errorf("pin steering link: %w", err)
				}
			}
			s.setTCX(l)
			s.log.Info("attached steering", "interface", lo.Name, "hook", "tcx egress")
			return nil
		}
		tcxErr = err
	}
	detach, err := attachTCEgress(lo.Index, prog)
	if err != nil {
		if tcxErr != nil {
			return fmt.Errorf("attach steering to %s: tcx: %w; tc: %w", lo.Name, tcxErr, err)
		}
		return fmt.Errorf("attach steering to %s: %w", lo.Name, err)
	}
	s.mode, s.detach = "tc", detach
	s.log.Info("attached steering", "interface", lo.Name, "hook", "clsact egress", "tcx_error", tcxErr)
	return nil
}

func (s *Steering) setTCX(l link.Link) {
	s.mode, s.tcx = "tcx", l
	s.detach = l.Close
}

// attachTCEgress puts prog on ifindex's clsact egress hook as a
// direct-action filter, adding the clsact qdisc if the interface has none.
// The returned function removes the filter and leaves the qdisc, which
// others may use.
func attachTCEgress(ifindex int, prog *ebpf.Program) (func() error, error) {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("add clsact qdisc: %w", err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    netlink.HANDLE_MIN_EGRESS,
			Handle:    netlink.MakeHandle(0, steerTCHandle),
			Protocol:  unix.ETH_P_ALL,
			Priority:  steerTCPriority,
		},
		Fd:           prog.FD(),
		Name:         steerTCName,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return nil, fmt.Errorf("add tc egress filter: %w", err)
	}
	return func() error {
		if err := netlink.FilterDel(filter); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove tc egress filter: %w", err)
		}
		return nil
	}, nil
}

// Hook says where the program is attached: "tcx" or "tc" (clsact).
func (s *Steering) Hook() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mode
}

// Route steers the marks it returns to server, whose MAC on the network of
// the interface ifindex is mac. It is idempotent: a server keeps its mark
// for as long as it is routed, and a call with a new MAC or interface
// updates the route in place. The first route through an interface sets
// the sysctls the replies need on it (see docs/STEERING.md).
func (s *Steering) Route(server netip.Addr, mac net.HardwareAddr, ifindex int) (uint32, error) {
	server = server.Unmap()
	if !server.IsValid() {
		return 0, fmt.Errorf("%w: steer to an invalid server address", ErrInvalid)
	}
	if len(mac) != 6 {
		return 0, fmt.Errorf("%w: steer to %s: MAC %q is not 6 bytes", ErrInvalid, server, mac)
	}
	ifi, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return 0, fmt.Errorf("%w: steer to %s: interface %d: %v", ErrNotFound, server, ifindex, err)
	}
	if ifi.Flags&net.FlagLoopback != 0 {
		return 0, fmt.Errorf("%w: steer to %s: %s is a loopback interface", ErrInvalid, server, ifi.Name)
	}
	if len(ifi.HardwareAddr) != 6 {
		return 0, fmt.Errorf("%w: steer to %s: %s has no Ethernet address", ErrInvalid, server, ifi.Name)
	}
	var v steerSteerRoute
	copy(v.DstMac[:], mac)
	copy(v.SrcMac[:], ifi.HardwareAddr)
	v.Ifindex = uint32(ifindex)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return 0, fmt.Errorf("steer to %s: %w", server, ErrClosed)
	}
	if err := s.prepareIface(ifi); err != nil {
		return 0, fmt.Errorf("steer to %s: %w", server, err)
	}
	if r, ok := s.routes[server]; ok {
		if r.value != v {
			if err := s.objs.SteerRoutes.Update(r.mark, &v, ebpf.UpdateExist); err != nil {
				return 0, fmt.Errorf("update steering route to %s: %w", server, err)
			}
			r.value, r.ifindex = v, ifindex
		}
		return r.mark, nil
	}
	if uint32(len(s.routes)) >= s.opts.MaxRoutes {
		return 0, fmt.Errorf("%w: steer to %s: %d routes", ErrFull, server, len(s.routes))
	}
	mark, ok := s.freeMark()
	if !ok {
		return 0, fmt.Errorf("%w: steer to %s: no free mark in %#x/%#x", ErrFull, server, s.opts.MarkBase, s.opts.MarkMask)
	}
	if err := s.objs.SteerRoutes.Update(mark, &v, ebpf.UpdateNoExist); err != nil {
		return 0, fmt.Errorf("add steering route to %s: %w", server, err)
	}
	s.routes[server] = &steerRoute{mark: mark, value: v, ifindex: ifindex}
	s.byMark[mark] = server
	s.log.Debug("steering route", "server", server, "mark", fmt.Sprintf("%#x", mark), "interface", ifi.Name, "mac", mac)
	return mark, nil
}

// freeMark takes the next unused slot after the last one handed out, so
// that a mark comes back into use as late as possible: a probe still
// holding a removed server's mark then fails instead of reaching another
// server. Routes never fill the range (MaxRoutes is checked first), so
// the scan ends within MaxRoutes+1 steps.
func (s *Steering) freeMark() (uint32, bool) {
	n := s.opts.slots()
	for range min(n, s.opts.MaxRoutes+1) {
		slot := s.next
		s.next++
		if s.next > n || s.next == 0 {
			s.next = 1
		}
		mark := s.opts.MarkBase | slot
		if _, used := s.byMark[mark]; !used {
			return mark, true
		}
	}
	return 0, false
}

// Unroute stops steering to server. Probes still using its mark are
// dropped on lo: a steered dial then times out (it is never answered by
// the local stack). ErrNotFound if server is not routed.
func (s *Steering) Unroute(server netip.Addr) error {
	server = server.Unmap()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return fmt.Errorf("unroute %s: %w", server, ErrClosed)
	}
	r, ok := s.routes[server]
	if !ok {
		return fmt.Errorf("%w: no steering route to %s", ErrNotFound, server)
	}
	if err := s.objs.SteerRoutes.Delete(r.mark); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("remove steering route to %s: %w", server, err)
	}
	delete(s.routes, server)
	delete(s.byMark, r.mark)
	return nil
}

// Mark returns the mark steered to server, if it is routed.
func (s *Steering) Mark(server netip.Addr) (uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.routes[server.Unmap()]
	if !ok {
		return 0, false
	}
	return r.mark, true
}

// Stats sums the program's counters over CPUs.
func (s *Steering) Stats() (SteeringStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return SteeringStats{}, ErrClosed
	}
	var out [steerCounters]uint64
	for i := range out {
		var per []uint64
		if err := s.objs.SteerStats.Lookup(uint32(i), &per); err != nil {
			return SteeringStats{}, fmt.Errorf("read steering counter %d: %w", i, err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return SteeringStats{Redirected: out[steerRedirected], NoRoute: out[steerNoRoute], BadFrame: out[steerBadFrame]}, nil
}

// DialFunc returns a dial function, as http.Transport.DialContext takes,
// whose connections are steered to server with source as their local
// address: the dispatcher's own address on the interface that reaches
// server, of the family of the addresses dialled. The mark is looked up at
// each dial, so that once server is unrouted a dial fails at once with
// ErrNotFound rather than timing out.
func (s *Steering) DialFunc(server, source netip.Addr) (func(ctx context.Context, network, address string) (net.Conn, error), error) {
	if !source.IsValid() {
		return nil, fmt.Errorf("%w: steered dial to %s needs a source address", ErrInvalid, server)
	}
	if _, ok := s.Mark(server); !ok {
		return nil, fmt.Errorf("%w: no steering route to %s", ErrNotFound, server)
	}
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		mark, ok := s.Mark(server)
		if !ok {
			return nil, fmt.Errorf("dial %s via %s: %w: no steering route", address, server, ErrNotFound)
		}
		return SteeredDialer(mark, source, 0).DialContext(ctx, network, address)
	}, nil
}

// InterfaceSource returns the address a steered probe of the given family
// should come from: the first global unicast address of that family on the
// interface ifindex for which isVIP (nil: none is) is false, since the
// dispatcher holds its VIPs on the same interfaces as its own addresses.
// ErrNotFound if there is none.
func InterfaceSource(ifindex int, ipv6 bool, isVIP func(netip.Addr) bool) (netip.Addr, error) {
	ifi, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: interface %d: %v", ErrNotFound, ifindex, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s: %w", ifi.Name, err)
	}
	for _, p := range ifaddr.Prefixes(addrs) {
		ip := p.Addr()
		if ip.Is6() != ipv6 || !ip.IsGlobalUnicast() || (isVIP != nil && isVIP(ip)) {
			continue
		}
		return ip, nil
	}
	family := "IPv4"
	if ipv6 {
		family = "IPv6"
	}
	return netip.Addr{}, fmt.Errorf("%w: no %s address of its own on %s to steer probes from", ErrNotFound, family, ifi.Name)
}

// SteeredDialer returns a dialer whose sockets carry mark (SO_MARK, which
// needs CAP_NET_ADMIN) and are bound to source before they connect. The
// source must be the dispatcher's own address on the egress interface, not
// a VIP: the server answers to it, and from a VIP it would answer itself.
// Zero timeout means none (the context still bounds the dial).
func SteeredDialer(mark uint32, source netip.Addr, timeout time.Duration) *net.Dialer {
	source = source.Unmap()
	return &net.Dialer{
		Timeout: timeout,
		Control: func(network, _ string, c syscall.RawConn) error {
			return steerSocket(c, network, mark, source)
		},
	}
}

// steerSocket marks and binds a socket. It binds itself, rather than
// through Dialer.LocalAddr, so that one dialer serves TCP and UDP alike.
func steerSocket(c syscall.RawConn, network string, mark uint32, source netip.Addr) error {
	if !source.IsValid() {
		return fmt.Errorf("%w: steered socket needs a source address", ErrInvalid)
	}
	var sa unix.Sockaddr
	switch {
	case strings.HasSuffix(network, "4") && source.Is4():
		sa = &unix.SockaddrInet4{Addr: source.As4()}
	case strings.HasSuffix(network, "6") && source.Is6():
		sa6 := &unix.SockaddrInet6{Addr: source.As16()}
		if z := source.Zone(); z != "" {
			ifi, err := net.InterfaceByName(z)
			if err != nil {
				return fmt.Errorf("steered socket: zone of %s: %w", source, err)
			}
			sa6.ZoneId = uint32(ifi.Index)
		}
		sa = sa6
	default:
		return fmt.Errorf("%w: steered %s socket cannot bind source %s of the other family", ErrInvalid, network, source)
	}
	var opErr error
	err := c.Control(func(fd uintptr) {
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
			opErr = fmt.Errorf("set SO_MARK %#x: %w", mark, err)
			return
		}
		if strings.HasPrefix(network, "tcp") {
			// Pick the port at connect, by 4-tuple, not at bind: many
			// probes from one source address then need no more ports
			// than there are distinct destinations. Best effort.
			_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		}
		if err := unix.Bind(int(fd), sa); err != nil {
			opErr = fmt.Errorf("bind %s: %w", source, err)
		}
	})
	if err != nil {
		return err
	}
	return opErr
}

// prepareIface sets what replies steered through ifi need, once per
// interface. A reply comes from the VIP, an address local to this host, to
// the dispatcher's own address: IPv4 drops it as a martian unless
// accept_local is on, and strict reverse-path filtering drops it when the
// VIP is held on another interface than ifi, so strict (1) becomes loose
// (2) on ifi. IPv6 has neither check.
func (s *Steering) prepareIface(ifi *net.Interface) error {
	if st, ok := s.ifaces[ifi.Index]; ok && st.name == ifi.Name {
		return nil
	}
	st := &steerIface{name: ifi.Name}
	conf := "net.ipv4.conf." + ifi.Name + "."
	set := func(key, value string) error {
		old, err := readSysctl(key)
		if err != nil {
			return err
		}
		if old == value {
			return nil
		}
		if err := writeSysctl(key, value); err != nil {
			return err
		}
		st.changed = append(st.changed, sysctlChange{key: key, old: old, new: value})
		s.log.Info("steering set sysctl", "key", key, "value", value, "was", old)
		return nil
	}
	if err := set(conf+"accept_local", "1"); err != nil {
		return err
	}
	all, err := readSysctl("net.ipv4.conf.all.rp_filter")
	if err != nil {
		return err
	}
	own, err := readSysctl(conf + "rp_filter")
	if err != nil {
		return err
	}
	// The kernel applies the larger of the two.
	if max(atoiOr0(all), atoiOr0(own)) == 1 {
		if err := set(conf+"rp_filter", "2"); err != nil {
			return err
		}
	}
	s.ifaces[ifi.Index] = st
	return nil
}

func atoiOr0(v string) int {
	n, _ := strconv.Atoi(v)
	return n
}

// sysctlPath maps a dotted key to its file. Only the leaf and the fixed
// prefix split at dots: an interface name may hold dots itself.
func sysctlPath(key string) string {
	const conf = "net.ipv4.conf."
	if rest, ok := strings.CutPrefix(key, conf); ok {
		if i := strings.LastIndexByte(rest, '.'); i > 0 {
			return filepath.Join("/proc/sys/net/ipv4/conf", rest[:i], rest[i+1:])
		}
	}
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(sysctlPath(key))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(key, value string) error {
	if err := os.WriteFile(sysctlPath(key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// Close releases the steering program. Without a pin path it detaches from
// lo and puts back the sysctls it changed (those still holding its
// values); with one, the attachment and the sysctls stay for the next
// process, as Destroy would not leave them.
func (s *Steering) Close() error {
	return s.close(s.opts.PinPath == "")
}

// Destroy detaches, removes the pin and restores the sysctls, pin path or
// not.
func (s *Steering) Destroy() error {
	return s.close(true)
}

func (s *Steering) close(teardown bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return nil
	}
	s.isClosed = true
	var errs []error
	if s.tcx != nil && s.opts.PinPath != "" && teardown {
		if err := s.tcx.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin steering link: %w", err))
		}
	}
	switch {
	case s.tcx != nil:
		// A pinned link stays attached when closed.
		errs = append(errs, s.tcx.Close())
	case teardown && s.detach != nil:
		errs = append(errs, s.detach())
	}
	if teardown {
		for _, st := range s.ifaces {
			for i := len(st.changed) - 1; i >= 0; i-- {
				c := st.changed[i]
				// Leave a value someone changed since alone.
				if cur, err := readSysctl(c.key); err != nil || cur != c.new {
					continue
				}
				if err := writeSysctl(c.key, c.old); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	s.ifaces = nil
	errs = append(errs, s.objs.Close())
	return errors.Join(errs...)
}
