// Package lab builds network-namespace topologies for nd's tests, the demo
// and benchmarks.
//
// Every host is a named network namespace (see internal/netns) joined by a
// veth pair to a Linux bridge that lives in its own "bridge" namespace;
// nothing is added to the root namespace. The one-network topology puts the
// client, the dispatcher and the servers on 198.51.100.0/24 and
// 2001:db8::/64. With Options.TwoNetworks the dispatcher and the servers also
// share an internal network, 203.0.113.0/24 and 2001:db8:1::/64, as in the
// paper's figure 1: clients reach the dispatcher on the external network
// (eth0), the dispatcher forwards to the servers over the internal one
// (eth1), and the servers answer the clients directly over the external one.
//
// The servers hold the VIPs on lo and do not answer ARP for them; the
// dispatcher holds them on eth0 and answers ARP and NDP for them.
//
// With Options.Dispatchers = 2 a second dispatcher, dispatcher2, joins the
// same networks, so that two dispatchers can form a high-availability
// group; only the first holds the VIPs. With Options.NoDispatcherVIPs no
// dispatcher holds them: whichever is active adds and announces them (see
// internal/ha).
//
// With Options.SecondTier, dispatcher2 is a second-tier dispatcher: one
// "server" of the first dispatcher's cluster, which forwards on to servers
// of its own (a hierarchical set, docs/SCALEOUT.md). It then holds the VIPs
// on lo and answers no ARP for them, as a server does, so that it accepts
// the frames the first dispatcher forwards to its MAC while the client
// keeps sending the VIPs' traffic to the first dispatcher.
//
// With Options.Router the client moves behind a router, a namespace that
// joins the external network as host 1 (198.51.100.1, 2001:db8::1) and
// reaches the client over a network of its own, 203.0.113.0/24 and
// 2001:db8:2::/64 (router .1, client .2). The dispatchers hold no VIP: the
// router learns the VIPs from the dispatchers over BGP (StartBIRD runs BIRD
// 2 there) and spreads their traffic over them by ECMP. The servers and
// the dispatchers route the client network through the router.
//
// Addresses and MACs are fixed so that fixtures read well: host number n
// (client 2, dispatcher 3, dispatcher2 4, dispatcher3 6, servers 11, 12, ...) has 198.51.100.n,
// 2001:db8::n (the same digits, so server 1 is 2001:db8::11) and MAC
// 02:00:00:00:00:nn on eth0, and 203.0.113.n, 2001:db8:1::n and
// 02:00:00:00:01:nn on eth1.
//
// StartNDD runs the ndd daemon in one of a lab's hosts, for the demo, the
// benchmarks and the end-to-end tests, and Stop and Destroy take it and its
// pinned data plane down again.
//
// A Lab's namespaces outlive the process unless Close runs: own it with
// defer or t.Cleanup, and in long-running programs cancel on signals
// (signal.NotifyContext) so that the deferred Close runs. SweepStale removes
// what a killed process left behind.
package lab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/vishvananda/netlink"
)

// The networks and VIPs of every lab.
var (
	ExtNet4 = netip.MustParsePrefix("198.51.100.0/24")
	ExtNet6 = netip.MustParsePrefix("2001:db8::/64")
	// ClientNet4 and ClientNet6 are the client's network behind the
	// router, with Options.Router.
	ClientNet4 = netip.MustParsePrefix("203.0.113.0/24")
	ClientNet6 = netip.MustParsePrefix("2001:db8:2::/64")
	IntNet4    = netip.MustParsePrefix("203.0.113.0/24")
	IntNet6    = netip.MustParsePrefix("2001:db8:1::/64")
	VIP4       = netip.MustParseAddr("198.51.100.100")
	VIP6       = netip.MustParseAddr("2001:db8::100")
)

// Host numbers: the last byte of a host's addresses and MACs.
const (
	// RouterNum is the router's, with Options.Router.
	RouterNum     = 1
	ClientNum     = 2
	DispatcherNum = 3
	// Dispatcher2Num is the second dispatcher's, with Options.Dispatchers 2
	// or more; Dispatcher3Num the third's, with 3.
	Dispatcher2Num = 4
	Dispatcher3Num = 6
	// AttackerNum is the attacker's, with Options.Attacker.
	AttackerNum = 5
	FirstServer = 11
)

// MaxDispatchers is the most dispatchers a lab can have.
const MaxDispatchers = 3

// DefaultServers is the number of servers when Options.Servers is 0, and
// MaxServers the most a lab can have (servers stay below the VIP's .100).
const (
	DefaultServers = 4
	MaxServers     = 88
)

// Errors returned by this package.
var (
	ErrBadOptions = errors.New("bad lab options")
	ErrClosed     = errors.New("lab closed")
)

// Options configure New.
type Options struct {
	// Servers is the number of real servers; 0 means DefaultServers.
	Servers int
	// Prefix starts every namespace name. The default,
	// "ndlab<pid>-<random>", is unique to the process and lets SweepStale
	// find namespaces whose process has died.
	Prefix string
	// TwoNetworks adds the internal network between the dispatcher and the
	// servers.
	TwoNetworks bool
	// Dispatchers is the number of dispatchers, 1 (the default when 0) to
	// MaxDispatchers; the second one is dispatcher2, the third dispatcher3.
	Dispatchers int
	// NoDispatcherVIPs leaves the VIPs off the dispatchers' interfaces, for
	// software that moves them between dispatchers (internal/ha). The
	// client then reaches no VIP until one of them adds it.
	NoDispatcherVIPs bool
	// Attacker adds a host, attacker, on the external network only, from
	// which Flood sends spoofed packets.
	Attacker bool
	// Router puts the client behind a router on a network of its own;
	// the dispatchers then hold no VIP (see the package comment). Not
	// with TwoNetworks.
	Router bool
	// SecondTier makes dispatcher2 a second-tier dispatcher behind the
	// first (see the package comment): the VIPs on its lo, no ARP answers
	// for them. It needs Dispatchers 2 and the VIPs on the first
	// dispatcher (neither NoDispatcherVIPs nor Router).
	SecondTier bool
	// Logf, if set, receives progress messages.
	Logf func(format string, args ...any)
}

// Iface is one interface of a host.
type Iface struct {
	Ifname  string // name in the host's namespace: eth0 or eth1
	Ifindex int    // index in the host's namespace
	MAC     net.HardwareAddr
	Addr4   netip.Addr // the host's own address, without the VIPs
	Addr6   netip.Addr
	// The bridge-side end of the veth pair, in the lab's bridge namespace.
	Peer        string
	PeerIfindex int
}

// Prefix4 returns Addr4 with its network's prefix length.
func (i Iface) Prefix4() netip.Prefix { return netip.PrefixFrom(i.Addr4, 24) }

// Prefix6 returns Addr6 with its network's prefix length.
func (i Iface) Prefix6() netip.Prefix { return netip.PrefixFrom(i.Addr6, 64) }

// Host is one namespace of the lab. The embedded Iface is eth0, on the
// external network.
type Host struct {
	Name string // client, dispatcher, server1, server2, ...
	NS   *netns.NS
	Iface
	// Int is eth1, on the internal network; nil in a one-network lab and
	// on the client.
	Int *Iface
}

// Ifaces returns the host's interfaces: eth0, then eth1 if it has one.
func (h *Host) Ifaces() []*Iface {
	if h.Int != nil {
		return []*Iface{&h.Iface, h.Int}
	}
	return []*Iface{&h.Iface}
}

// Eth0 returns a netlink handle in h's namespace and h's eth0 there. The
// handle is the namespace's own: never close it.
func (h *Host) Eth0() (*netlink.Handle, netlink.Link, error) {
	nh, err := h.NS.Netlink()
	if err != nil {
		return nil, nil, err
	}
	link, err := nh.LinkByIndex(h.Ifindex)
	if err != nil {
		return nil, nil, err
	}
	return nh, link, nil
}

// Lab is a running topology. Its fields must not be changed.
type Lab struct {
	// Bridge is the namespace holding the bridges br0 (external) and br1
	// (internal) and the bridge-side ends of the veth pairs.
	Bridge     *netns.NS
	Client     Host
	Dispatcher Host
	// Dispatcher2 is the second dispatcher; nil unless Options.Dispatchers
	// is 2 or more. Dispatcher3 is the third; nil unless it is 3.
	Dispatcher2 *Host
	Dispatcher3 *Host
	// Attacker is nil unless Options.Attacker.
	Attacker *Host
	// Router is nil unless Options.Router; its eth1 (Int) is on the
	// client's network.
	Router      *Host
	Servers     []Host
	VIP4, VIP6  netip.Addr
	TwoNetworks bool
	// DispatcherVIPs is whether the first dispatcher holds the VIPs on
	// eth0 (false with Options.NoDispatcherVIPs).
	DispatcherVIPs bool
	// SecondTier is whether dispatcher2 holds the VIPs like a server
	// (Options.SecondTier).
	SecondTier bool
	Prefix     string

	logf   func(string, ...any)
	mu     sync.Mutex  // guards the fields below
	nss    []*netns.NS // every namespace made, bridge first
	closed bool
}

// Backend is what the dispatcher needs to forward a frame to one server:
// the interface to send it out of and the MAC addresses to write.
type Backend struct {
	Name    string
	Ifindex int              // the dispatcher's egress interface
	Ifname  string           // its name
	SrcMAC  net.HardwareAddr // the dispatcher's MAC on that interface
	DstMAC  net.HardwareAddr // the server's MAC on that network
	Addr4   netip.Addr       // the server's own addresses on that network
	Addr6   netip.Addr
}

// Backends returns, for each server in order, how the dispatcher reaches
// it: over eth0 in a one-network lab, over eth1 with TwoNetworks.
func (l *Lab) Backends() []Backend { return l.BackendsVia(&l.Dispatcher) }

// BackendsVia is Backends as seen from dispatcher d, one of Dispatchers.
func (l *Lab) BackendsVia(d *Host) []Backend {
	out := d.forwardIface()
	bs := make([]Backend, len(l.Servers))
	for i := range l.Servers {
		s := l.Servers[i].forwardIface()
		bs[i] = Backend{
			Name:    l.Servers[i].Name,
			Ifindex: out.Ifindex,
			Ifname:  out.Ifname,
			SrcMAC:  out.MAC,
			DstMAC:  s.MAC,
			Addr4:   s.Addr4,
			Addr6:   s.Addr6,
		}
	}
	return bs
}

// forwardIface is the interface on which the dispatcher and the servers
// meet.
func (h *Host) forwardIface() *Iface {
	if h.Int != nil {
		return h.Int
	}
	return &h.Iface
}

// Dispatchers returns the dispatcher, then dispatcher2 and dispatcher3 if
// there are.
func (l *Lab) Dispatchers() []*Host {
	ds := []*Host{&l.Dispatcher}
	for _, d := range []*Host{l.Dispatcher2, l.Dispatcher3} {
		if d != nil {
			ds = append(ds, d)
		}
	}
	return ds
}

// Hosts returns the client, the dispatchers and the servers, in that order.
func (l *Lab) Hosts() []*Host {
	hs := append([]*Host{&l.Client}, l.Dispatchers()...)
	for i := range l.Servers {
		hs = append(hs, &l.Servers[i])
	}
	return hs
}

// New builds a lab. On any error, or if ctx ends first, it removes
// everything it made before returning. The caller must Close the result.
func New(ctx context.Context, o Options) (_ *Lab, err error) {
	if o.Servers == 0 {
		o.Servers = DefaultServers
	}
	if o.Servers < 0 || o.Servers > MaxServers {
		return nil, fmt.Errorf("%w: %d servers, want 1 to %d", ErrBadOptions, o.Servers, MaxServers)
	}
	if o.Dispatchers == 0 {
		o.Dispatchers = 1
	}
	if o.Dispatchers < 0 || o.Dispatchers > MaxDispatchers {
		return nil, fmt.Errorf("%w: %d dispatchers, want 1 to %d", ErrBadOptions, o.Dispatchers, MaxDispatchers)
	}
	if o.Router && o.TwoNetworks {
		return nil, fmt.Errorf("%w: a router and two networks: the client's network would be the internal one", ErrBadOptions)
	}
	if o.Router {
		o.NoDispatcherVIPs = true
	}
	if o.SecondTier && (o.Dispatchers != 2 || o.NoDispatcherVIPs) {
		return nil, fmt.Errorf("%w: a second tier needs 2 dispatchers, the first holding the VIPs", ErrBadOptions)
	}
	if o.Prefix == "" {
		o.Prefix = fmt.Sprintf("%s%d-%04x", sweepPrefix, os.Getpid(), rand.IntN(0x10000))
	}
	if len(o.Prefix)+len("-s88") > netns.MaxNameLen {
		return nil, fmt.Errorf("%w: prefix %q is too long", ErrBadOptions, o.Prefix)
	}
	l := &Lab{
		VIP4:           VIP4,
		VIP6:           VIP6,
		TwoNetworks:    o.TwoNetworks,
		DispatcherVIPs: !o.NoDispatcherVIPs,
		SecondTier:     o.SecondTier,
		Prefix:         o.Prefix,
		logf:           o.Logf,
	}
	if l.logf == nil {
		l.logf = func(string, ...any) {}
	}
	// Clean up on errors and on panics alike.
	ok := false
	defer func() {
		if !ok {
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
			}
		}
	}()
	if err := l.build(ctx, o.Dispatchers, o.Servers, o.Attacker, o.Router); err != nil {
		return nil, fmt.Errorf("build lab %s: %w", l.Prefix, err)
	}
	ok = true
	return l, nil
}

// Close detaches the lab's XDP programs and deletes its namespaces, which
// destroys its links. It is idempotent and safe to call from another
// goroutine, such as a signal handler's.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	// Hosts first, the bridge last.
	for i := len(l.nss) - 1; i >= 0; i-- {
		if err := l.nss[i].Close(); err != nil {
			errs = append(errs, err)
		}
	}
	l.nss = nil
	if len(errs) == 0 {
		l.logf("lab %s: removed", l.Prefix)
	}
	return errors.Join(errs...)
}
