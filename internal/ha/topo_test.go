package ha_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// The test network: one bridge, a client and up to three dispatchers on
// 198.51.100.0/24 and 2001:db8::/64, with the VIPs .100 and ::100.
const (
	nsPrefix = "ndtha"
	haPort   = 7400
	interval = 100 * time.Millisecond
	dead     = 500 * time.Millisecond
	// settle bounds waits for a starting state, not the protocol's timing,
	// and leaves room for a loaded machine.
	settle = dead + 3*time.Second
)

var (
	vip4 = netip.MustParseAddr("198.51.100.100")
	vip6 = netip.MustParseAddr("2001:db8::100")
	key  = []byte("ha-test-key-0123456789")
)

type host struct {
	name  string
	ns    *netns.NS
	num   byte
	mac   net.HardwareAddr
	addr4 netip.Addr
	addr6 netip.Addr
	peer  string // the bridge-side end of its veth
}

func (h *host) self() netip.AddrPort { return netip.AddrPortFrom(h.addr4, haPort) }

type topo struct {
	t      *testing.T
	bridge *netns.NS
	client *host
	nd     []*host
}

// newTopo builds the bridge, the client (.2) and dispatchers .11, .12, ...
func newTopo(t *testing.T, dispatchers int) *topo {
	t.Helper()
	tp := &topo{t: t}
	tp.bridge = tp.newNS()
	for _, kv := range [][2]string{{"net.ipv6.conf.all.disable_ipv6", "1"}, {"net.ipv6.conf.default.disable_ipv6", "1"}} {
		must(t, tp.bridge.Sysctl(kv[0], kv[1]))
	}
	bh, err := tp.bridge.Netlink()
	must(t, err)
	snooping := false
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}, MulticastSnooping: &snooping}
	must(t, bh.LinkAdd(br))
	must(t, bh.LinkSetUp(br))
	tp.client = tp.addHost("client", 2)
	for i := range dispatchers {
		tp.nd = append(tp.nd, tp.addHost(fmt.Sprintf("nd%c", 'a'+i), byte(11+i)))
	}
	return tp
}

func (tp *topo) newNS() *netns.NS {
	return testutil.NewNS(tp.t, nsPrefix)
}

func (tp *topo) addHost(name string, num byte) *host {
	t := tp.t
	h := &host{
		name:  name,
		ns:    tp.newNS(),
		num:   num,
		mac:   net.HardwareAddr{2, 0, 0, 0, 0, num},
		addr4: netip.AddrFrom4([4]byte{198, 51, 100, num}),
		addr6: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: num}),
		peer:  fmt.Sprintf("v%d", num),
	}
	for _, kv := range [][2]string{
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
		{"net.ipv6.conf.all.accept_ra", "0"},
		{"net.ipv6.conf.default.accept_ra", "0"},
	} {
		must(t, h.ns.Sysctl(kv[0], kv[1]))
	}
	bh, err := tp.bridge.Netlink()
	must(t, err)
	hh, err := h.ns.Netlink()
	must(t, err)
	must(t, bh.LinkAdd(&netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: h.peer},
		PeerName:         "eth0",
		PeerHardwareAddr: h.mac,
		PeerNamespace:    netlink.NsFd(h.ns.FD()),
	}))
	peer, err := bh.LinkByName(h.peer)
	must(t, err)
	br, err := bh.LinkByName("br0")
	must(t, err)
	must(t, bh.LinkSetMaster(peer, br))
	must(t, bh.LinkSetUp(peer))
	eth0, err := hh.LinkByName("eth0")
	must(t, err)
	// Neighbour probes every 20 ms instead of 1 s: after a cut the
	// kernel's pending resolution would otherwise delay the first
	// heartbeat by up to a second, longer than this test's DeadAfter.
	for _, k := range []string{"net.ipv4.neigh.eth0.retrans_time_ms", "net.ipv6.neigh.eth0.retrans_time_ms"} {
		must(t, h.ns.Sysctl(k, "20"))
	}
	must(t, hh.LinkSetUp(eth0))
	for _, p := range []netip.Prefix{netip.PrefixFrom(h.addr4, 24), netip.PrefixFrom(h.addr6, 64)} {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		must(t, hh.AddrAdd(eth0, a))
	}
	return h
}

// cut sets a host's bridge-side veth down (up=false) or up again: the host
// is then alive but hears and reaches nobody.
func (tp *topo) link(h *host, up bool) {
	bh, err := tp.bridge.Netlink()
	must(tp.t, err)
	l, err := bh.LinkByName(h.peer)
	must(tp.t, err)
	if up {
		must(tp.t, bh.LinkSetUp(l))
	} else {
		must(tp.t, bh.LinkSetDown(l))
	}
}

// running is a Node whose Run goes on in the background.
type running struct {
	*ha.Node
	h      *host
	cancel context.CancelFunc
	done   chan error

	mu      sync.Mutex
	flows   []ha.FlowRecord
	configs [][]byte
	states  []ha.State
}

type nodeOpt func(*ha.Config, *ha.Options)

// start runs a node on host h whose peers are the other dispatchers.
func (tp *topo) start(h *host, prio uint8, preempt bool, opts ...nodeOpt) *running {
	t := tp.t
	t.Helper()
	cfg := ha.Config{
		Group:     "test",
		Interface: "eth0",
		Self:      h.self(),
		Priority:  prio,
		Preempt:   preempt,
		Interval:  interval,
		DeadAfter: dead,
		Key:       key,
		VIPs:      []netip.Addr{vip4, vip6},
	}
	for _, o := range tp.nd {
		if o != h {
			cfg.Peers = append(cfg.Peers, o.self())
		}
	}
	r := &running{h: h, done: make(chan error, 1)}
	o := ha.Options{
		Dial:   h.ns.DialContext,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: testLogLevel()})).With("node", h.name),
		OnFlows: func(recs []ha.FlowRecord) error {
			r.mu.Lock()
			r.flows = append(r.flows, recs...)
			r.mu.Unlock()
			return nil
		},
		OnConfig: func(b []byte) error { r.mu.Lock(); r.configs = append(r.configs, b); r.mu.Unlock(); return nil },
		OnState:  func(s ha.State) { r.mu.Lock(); r.states = append(r.states, s); r.mu.Unlock() },
	}
	for _, f := range opts {
		f(&cfg, &o)
	}
	var err error
	must(t, h.ns.Do(func() error {
		r.Node, err = ha.New(cfg, o)
		return err
	}))
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// stop ends Run and waits for it; it is idempotent.
func (r *running) stop() {
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		panic("ha node did not stop")
	}
	r.done <- nil
}

func (r *running) received() []ha.FlowRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ha.FlowRecord(nil), r.flows...)
}

func (r *running) lastConfig() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.configs) == 0 {
		return nil
	}
	return r.configs[len(r.configs)-1]
}

// eventually polls cond every 10 ms until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	return testutil.Eventually(t, within, what, cond)
}

func actives(nodes ...*running) []*running {
	var a []*running
	for _, n := range nodes {
		if n.State() == ha.StateActive {
			a = append(a, n)
		}
	}
	return a
}

// hasAddr reports whether a is on h's eth0.
func hasAddr(t *testing.T, h *host, a netip.Addr) bool {
	hh, err := h.ns.Netlink()
	must(t, err)
	l, err := hh.LinkByName("eth0")
	must(t, err)
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := hh.AddrList(l, fam)
	must(t, err)
	for _, x := range addrs {
		if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == a {
			return true
		}
	}
	return false
}

// touch makes the client resolve a by sending it one datagram.
func (tp *topo) touch(a netip.Addr) {
	must(tp.t, tp.client.ns.Do(func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 9)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	}))
}

// clientMAC is the link-layer address the client's neighbour table holds
// for a, or nil.
func (tp *topo) clientMAC(a netip.Addr) net.HardwareAddr {
	hh, err := tp.client.ns.Netlink()
	must(tp.t, err)
	l, err := hh.LinkByName("eth0")
	must(tp.t, err)
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	neighs, err := hh.NeighList(l.Attrs().Index, fam)
	must(tp.t, err)
	for _, n := range neighs {
		if y, ok := netip.AddrFromSlice(n.IP); ok && y.Unmap() == a && n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 {
			return n.HardwareAddr
		}
	}
	return nil
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

func testLogLevel() slog.Level {
	if os.Getenv("ND_HA_DEBUG") != "" {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}
