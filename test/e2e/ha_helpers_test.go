package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/mac"
	"github.com/nd-dispatcher/nd/internal/netns"
)

// The HA tests run two ndd processes, one in each of the lab's dispatcher
// namespaces, as one group over the lab's external network. Neither
// dispatcher holds the VIPs statically: the active adds and announces them.

const (
	haPort  = 7000
	haGroup = "e2e"
	// haStartTimeout bounds the wait for a settled group: one active, one
	// synchronised standby, the VIP reachable.
	haStartTimeout = 20 * time.Second
)

// haTimers are a group's heartbeat interval and dead-after; zero values
// leave ndd's defaults (0.5 s, 2 s).
type haTimers struct{ interval, deadAfter time.Duration }

// fastTimers keep the tests short where the defaults are not under test.
var fastTimers = haTimers{interval: 100 * time.Millisecond, deadAfter: 500 * time.Millisecond}

// haNode is one dispatcher of the group and the ndd that runs there, with
// its ha section.
type haNode struct {
	*nddNode
	self     netip.AddrPort
	peer     netip.AddrPort
	priority int
	preempt  bool
	timers   haTimers
	refresh  time.Duration // ha.refresh; 0 leaves the default
	mode     string        // ha.mode; "" leaves the default
	keyFile  string
}

// haLab is a two-dispatcher lab with reply servers on VIP4:80. nodes[0]
// runs in dispatcher with priority 200, nodes[1] in dispatcher2 with 100.
type haLab struct {
	*fixture
	dir   string
	nodes [2]*haNode
}

// yaml is the node's configuration: the usual one plus its ha section.
func (n *haNode) yaml() string {
	var b strings.Builder
	b.WriteString(n.cfg.yaml())
	fmt.Fprintf(&b, "ha:\n  group: %s\n  interface: %s\n  self: %s\n  peers: [%s]\n  priority: %d\n  preempt: %t\n  key_file: %s\n",
		haGroup, n.host.Ifname, n.self, n.peer, n.priority, n.preempt, n.keyFile)
	if n.timers.interval != 0 {
		fmt.Fprintf(&b, "  interval: %s\n  dead_after: %s\n", n.timers.interval, n.timers.deadAfter)
	}
	if n.refresh != 0 {
		fmt.Fprintf(&b, "  refresh: %s\n", n.refresh)
	}
	if n.mode != "" {
		fmt.Fprintf(&b, "  mode: %s\n", n.mode)
	}
	return b.String()
}

// reload writes the node's configuration file anew and has ndd read it.
func (n *haNode) reload(t *testing.T) {
	t.Helper()
	n.writeConfig(t, n.yaml())
	if _, err := n.api.Reload(); err != nil {
		t.Fatalf("%s: reload: %v", n.name, err)
	}
}

// newHALab builds the lab, checks it, starts the reply servers and both
// ndd processes with the given timers (preempt for the priority-200 node),
// and waits until nodes[0] is active with nodes[1] synchronised behind it.
// t.Cleanup stops both, destroys their pinned data planes and closes the lab.
func newHALab(t *testing.T, servers int, timers haTimers, preempt bool) *haLab {
	t.Helper()
	return newHALabWith(t, servers, timers, preempt, nil)
}

// newHALabWith is newHALab with edit applied to each node before its
// configuration is written.
func newHALabWith(t *testing.T, servers int, timers haTimers, preempt bool, edit func(*haNode)) *haLab {
	t.Helper()
	sweepStalePins(t)
	nddBinary(t) // build before the lab exists: a failed build leaves nothing behind
	ndctlBinary(t)
	l := newCheckedLab(t, lab.Options{Servers: servers, Dispatchers: 2, NoDispatcherVIPs: true})

	h := &haLab{fixture: &fixture{lab: l, byAddr: map[netip.Addr]*replyServer{}}, dir: t.TempDir()}
	port := portConfig{Port: servicePort}
	for i, b := range l.Backends() {
		h.addReplyServer(t, i, b, l.VIP4)
		h.weights = append(h.weights, 1)
		port.Servers = append(port.Servers, serverConfig{Addr: b.Addr4, Weight: 1})
	}
	keyFile := filepath.Join(h.dir, "ha.key")
	if err := os.WriteFile(keyFile, []byte("e2e-shared-ha-key-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ds := l.Dispatchers()
	for i, d := range ds {
		n := &haNode{
			nddNode:  newNDDNode(t, l, h.dir, d, port, syscall.SIGTERM),
			self:     netip.AddrPortFrom(d.Addr4, haPort),
			peer:     netip.AddrPortFrom(ds[1-i].Addr4, haPort),
			priority: 200 - 100*i,
			preempt:  preempt && i == 0,
			timers:   timers,
			keyFile:  keyFile,
		}
		if edit != nil {
			edit(n)
		}
		n.writeConfig(t, n.yaml())
		h.nodes[i] = n
	}
	// The first node leads before the second starts: started together on
	// a loaded machine, the second could miss the first's heartbeats for
	// the dead time, lead, and (without preemption) keep leading.
	h.nodes[0].start(t)
	waitFor(t, haStartTimeout, h.nodes[0].name+" active alone", func() bool {
		st, err := h.nodes[0].api.HAStatus()
		return err == nil && st.State == ha.StateActive
	})
	h.nodes[1].start(t)
	h.waitSettled(t, h.nodes[0], haStartTimeout)
	return h
}

// ndctlStatus reads the node's status as `ndctl ha status --json` prints it.
func (n *haNode) ndctlStatus(t *testing.T) ha.Status {
	t.Helper()
	var st ha.Status
	n.ndctlJSON(t, &st, "ha", "status")
	return st
}

// other is the node that is not n.
func (h *haLab) other(n *haNode) *haNode {
	if n == h.nodes[0] {
		return h.nodes[1]
	}
	return h.nodes[0]
}

// waitSettled waits until active is active, the other node is a standby
// that receives its flows, and the client reaches the VIP through it.
func (h *haLab) waitSettled(t *testing.T, active *haNode, timeout time.Duration) {
	t.Helper()
	standby := h.other(active)
	deadline := time.Now().Add(timeout)
	why := ""
	for time.Now().Before(deadline) {
		why = h.unsettled(active, standby)
		if why == "" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if why != "" {
		a, _ := active.api.HAStatus()
		s, _ := standby.api.HAStatus()
		t.Fatalf("HA group did not settle on %s within %v: %s\n%s: %+v\n%s: %+v", active.name, timeout, why, active.name, a, standby.name, s)
	}
	h.waitReachable(t, active, timeout)
}

// waitReachable waits until the client reaches the VIP, through n.
func (h *haLab) waitReachable(t *testing.T, n *haNode, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		_, err := fetchOnce(ctx, h.lab.Client.NS, h.vip4(), 64)
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the client cannot reach %s through %s: %v", h.vip4(), n.name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (h *haLab) unsettled(active, standby *haNode) string {
	if !active.running() || !standby.running() {
		return "an ndd is not running"
	}
	a, err := active.api.HAStatus()
	if err != nil {
		return fmt.Sprintf("%s: %v", active.name, err)
	}
	s, err := standby.api.HAStatus()
	if err != nil {
		return fmt.Sprintf("%s: %v", standby.name, err)
	}
	switch {
	case a.State != ha.StateActive:
		return fmt.Sprintf("%s is %s", active.name, a.State)
	case s.State != ha.StateStandby:
		return fmt.Sprintf("%s is %s", standby.name, s.State)
	case len(a.Peers) != 1 || !a.Peers[0].Synced:
		return fmt.Sprintf("%s does not stream to %s yet", active.name, standby.name)
	case s.Counters.SnapshotsReceived == 0:
		return fmt.Sprintf("%s has no snapshot yet", standby.name)
	case s.ConfigHash != a.ConfigHash:
		return fmt.Sprintf("%s does not hold %s's configuration yet", standby.name, active.name)
	}
	return ""
}

// crash is what the dispatcher's host dying looks like to the others: ndd
// is killed with SIGKILL and the host's eth0 goes down at once, so that
// neither its data plane (pinned, it would outlive ndd) nor its kernel
// (which still holds the VIPs) carries on for it. The kill comes first: a
// dying host does not react to its own link going down.
func (n *haNode) crash(t *testing.T) {
	t.Helper()
	n.proc.Kill()
	if err := n.lab.SetLink(n.host, false); err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
}

// revive brings the host's eth0 back and starts ndd again.
func (n *haNode) revive(t *testing.T) {
	t.Helper()
	if err := n.lab.SetLink(n.host, true); err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
	n.start(t)
}

// vipsOnEth0 returns the VIPs the node's eth0 holds.
func (n *haNode) vipsOnEth0(t *testing.T) []netip.Addr {
	t.Helper()
	h, link, err := n.host.Eth0()
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(link, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		if ip = ip.Unmap(); ip == lab.VIP4 || ip == lab.VIP6 {
			out = append(out, ip)
		}
	}
	return out
}

// vip4 is VIP4:80.
func (h *haLab) vip4() netip.AddrPort { return netip.AddrPortFrom(h.lab.VIP4, servicePort) }

// checkClientNeighbor fails the test unless the client sends VIP4's
// frames to n.
func (h *haLab) checkClientNeighbor(t *testing.T, n *haNode) {
	t.Helper()
	mac, err := lab.Neighbor(h.lab.Client.NS, h.lab.Client.Ifindex, h.lab.VIP4)
	if err != nil {
		t.Errorf("client's neighbour entry for %s: %v", h.lab.VIP4, err)
		return
	}
	if mac.String() != n.host.MAC.String() {
		t.Errorf("client resolves %s to %s, want %s's %s", h.lab.VIP4, mac, n.name, n.host.MAC)
	}
}

// ndctlBinary builds cmd/ndctl (once) and returns the binary's path.
func ndctlBinary(t *testing.T) string { return goBinary(t, "ndctl") }

// runNDCTL runs ndctl (it talks to ndd over the unix socket, so any
// namespace will do).
func runNDCTL(t *testing.T, args ...string) (stdout, stderr string, code int, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nddRunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ndctlBinary(t), args...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok && ee.Exited() {
		return o.String(), e.String(), ee.ExitCode(), nil
	}
	if err != nil {
		return o.String(), e.String(), -1, err
	}
	return o.String(), e.String(), 0, nil
}

// pinger exercises long-lived connections while a failover happens: each
// connection makes a small request every period and records when its
// replies came and its first error.
type pinger struct {
	lc     *longConns
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	ok     [][]time.Time // per connection, reply times
	errs   map[int]error
}

func startPinger(lc *longConns, period time.Duration) *pinger {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pinger{lc: lc, cancel: cancel, ok: make([][]time.Time, len(lc.sessions)), errs: map[int]error{}}
	for i, s := range lc.sessions {
		p.wg.Go(func() {
			// Spread the connections over the period.
			phase := time.Duration(i) * period / time.Duration(len(lc.sessions))
			select {
			case <-ctx.Done():
				return
			case <-time.After(phase):
			}
			tick := time.NewTicker(period)
			defer tick.Stop()
			for {
				name, err := s.get(64)
				if err == nil && name != lc.names[i] {
					err = fmt.Errorf("answered by %s, first by %s", name, lc.names[i])
				}
				p.mu.Lock()
				if err != nil {
					p.errs[i] = err
				} else {
					p.ok[i] = append(p.ok[i], time.Now())
				}
				p.mu.Unlock()
				if err != nil {
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	return p
}

// stop ends the pinging and returns the failures by connection.
func (p *pinger) stop() map[int]error {
	p.cancel()
	p.wg.Wait()
	return p.errs
}

// finish stops the pinging, makes a last exchange on every connection
// that had not failed, and returns the failures by connection.
func (p *pinger) finish() map[int]error {
	failed := p.stop()
	_, last := p.lc.exchange(4096, func(i int) bool { return failed[i] != nil })
	for i, err := range last {
		failed[i] = err
	}
	return failed
}

// longestStall returns, over the connections, the longest time between
// two consecutive replies, and which connection it was.
func (p *pinger) longestStall() (time.Duration, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var worst time.Duration
	which := -1
	for i, ts := range p.ok {
		for j := 1; j < len(ts); j++ {
			if g := ts[j].Sub(ts[j-1]); g > worst {
				worst, which = g, i
			}
		}
	}
	return worst, which
}

// opener opens a new connection to the VIP every period and records each
// attempt's start and outcome.
type opener struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	results []openResult
}

type openResult struct {
	start time.Time
	err   error
}

func startOpener(ns *netns.NS, addr netip.AddrPort, period time.Duration) *opener {
	ctx, cancel := context.WithCancel(context.Background())
	o := &opener{cancel: cancel}
	o.wg.Go(func() {
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			o.wg.Go(func() {
				start := time.Now()
				_, err := fetchOnce(ctx, ns, addr, 64)
				if ctx.Err() != nil {
					if waited := time.Since(start); waited > time.Second {
						err = fmt.Errorf("no answer in the %v before the load stopped: %w", waited.Round(time.Millisecond), err)
					} else {
						return // stopped, not failed
					}
				}
				o.mu.Lock()
				o.results = append(o.results, openResult{start, err})
				o.mu.Unlock()
			})
		}
	})
	return o
}

// stop ends the opening and returns the attempts in order of start.
func (o *opener) stop() []openResult {
	o.cancel()
	o.wg.Wait()
	o.mu.Lock()
	defer o.mu.Unlock()
	slices.SortFunc(o.results, func(a, b openResult) int { return a.start.Compare(b.start) })
	return o.results
}

// checkNewAfter fails the test unless every connection attempt started
// after from succeeded, and there were at least min of them.
func checkNewAfter(t *testing.T, rs []openResult, from time.Time, min int) {
	t.Helper()
	n, failed := 0, 0
	for _, r := range rs {
		if r.start.Before(from) {
			continue
		}
		n++
		if r.err != nil {
			failed++
			if failed <= 3 {
				t.Errorf("new connection at +%v after the takeover: %v", r.start.Sub(from).Round(time.Millisecond), r.err)
			}
		}
	}
	if failed > 0 || n < min {
		t.Errorf("%d of %d new connections after the takeover failed (want none, of at least %d)", failed, n, min)
	} else {
		t.Logf("%d new connections after the takeover, all answered", n)
	}
}

// forgedFrame builds an HA message as docs/HA.md lays it out, from sender,
// sealed with key: with the group's real key it would be accepted.
func forgedFrame(typ, channel byte, sender netip.AddrPort, seq uint64, payload, key []byte) []byte {
	f := fnv.New32a()
	f.Write([]byte(haGroup))
	b := make([]byte, 52, 52+len(payload)+sha256.Size)
	copy(b, "NDHA")
	b[4], b[5], b[6] = 2, typ, channel
	binary.BigEndian.PutUint32(b[8:], f.Sum32())
	a16 := sender.Addr().As16()
	copy(b[12:28], a16[:])
	binary.BigEndian.PutUint16(b[28:], sender.Port())
	binary.BigEndian.PutUint64(b[32:], uint64(time.Now().UnixNano()))
	binary.BigEndian.PutUint64(b[40:], seq)
	binary.BigEndian.PutUint32(b[48:], uint32(len(payload)))
	b = append(b, payload...)
	return append(b, mac.Sum(key, "nd-ha-frame-v2", b)...)
}

// sendUDP sends one datagram from the client's namespace.
func sendUDP(ns *netns.NS, to netip.AddrPort, b []byte) error {
	c, err := ns.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.WriteTo(b, net.UDPAddrFromAddrPort(to))
	return err
}

// logDataPlanes shows each node's view of its ports and servers, to tell
// a data-plane failure from a path one.
func (h *haLab) logDataPlanes(t *testing.T) {
	t.Helper()
	for _, n := range h.nodes {
		st, err := n.api.Status()
		if err != nil {
			t.Logf("%s: status: %v", n.name, err)
			continue
		}
		b, _ := json.Marshal(st.Ports)
		t.Logf("%s ports: %s", n.name, b)
	}
	for _, d := range h.lab.Dispatchers() {
		out, _ := d.NS.Command(context.Background(), "ip", "-s", "link", "show", "eth0").CombinedOutput()
		t.Logf("%s eth0:\n%s", d.Name, out)
	}
	out, _ := h.lab.Client.NS.Command(context.Background(), "ip", "neigh").CombinedOutput()
	t.Logf("client neighbours:\n%s", out)
}
