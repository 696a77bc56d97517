package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// The group test (issue 13): three dispatchers in one active-active HA
// group behind a BIRD router with ECMP over the L4 five-tuple, each
// announcing VIP4 over BGP, four servers.

const (
	groupDispatchers = 3
	groupServers     = 4
	groupConns       = 300
	// groupPing is how often each long-lived connection exchanges data.
	groupPing = time.Second
	// groupOpen is how often the client opens a new connection.
	groupOpen = 50 * time.Millisecond
	// groupSettle is how long the load runs after each change.
	groupSettle = 4 * time.Second
	// groupWeight is every server's configured weight: room for the
	// manager to move it both ways.
	groupWeight = 20
	// groupInterval is the manager's interval.
	groupInterval = 500 * time.Millisecond
	// groupSlow is how much longer a slow server takes to answer the
	// advisor's probes, and groupWave how long each server is slow in
	// turn: the manager lowers the slow one's weight while it raises the
	// last one's again, and commits new weights nearly every interval.
	groupSlow = 60 * time.Millisecond
	groupWave = 1500 * time.Millisecond
	// groupHealthPort is where each server answers the advisor.
	groupHealthPort = 8080
)

// groupTimers: a node is dead after 600 ms of silence; one that starts
// waits at most 1.2 s for a silent peer's snapshot.
var groupTimers = haTimers{interval: 100 * time.Millisecond, deadAfter: 600 * time.Millisecond}

// groupAddrs are the dispatchers' addresses on the external network.
func groupAddrs() []netip.Addr {
	var out []netip.Addr
	for _, num := range []int{lab.DispatcherNum, lab.Dispatcher2Num, lab.Dispatcher3Num}[:groupDispatchers] {
		a := lab.ExtNet4.Addr().As4()
		a[3] = byte(num)
		out = append(out, netip.AddrFrom4(a))
	}
	return out
}

// haSection is dispatcher i's ha section in active-active mode, every
// other dispatcher its peer; the first has the highest priority (leads).
func haSection(d *lab.Host, i int, keyFile string) string {
	var peers []string
	for j, a := range groupAddrs() {
		if j != i {
			peers = append(peers, netip.AddrPortFrom(a, haPort).String())
		}
	}
	return fmt.Sprintf("ha:\n  group: %s\n  mode: active-active\n  interface: %s\n  self: %s\n  peers: [%s]\n  priority: %d\n  key_file: %s\n  interval: %s\n  dead_after: %s\n",
		haGroup, d.Ifname, netip.AddrPortFrom(d.Addr4, haPort), strings.Join(peers, ", "), 200-50*i, keyFile,
		groupTimers.interval, groupTimers.deadAfter)
}

// newGroupLab builds the group's lab: groupDispatchers dispatchers in one
// active-active HA group (extraHA, lines of its ha section, added to
// each), each announcing VIP4 to the router over BGP, groupServers
// servers, tune applied to every node's configuration. It returns once
// every dispatcher announces and the group has settled.
func newGroupLab(t *testing.T, extraHA string, tune func(*nddConfig)) *bgpLab {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "ha.key")
	if err := os.WriteFile(keyFile, []byte("e2e-shared-ha-key-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := newBGPLabServers(t, groupDispatchers, groupServers, "", false, func(i int, d *lab.Host) string {
		if d.Addr4 != groupAddrs()[i] {
			t.Fatalf("%s has %s, want %s", d.Name, d.Addr4, groupAddrs()[i])
		}
		return bgpSection(d, time.Second, "", "") + haSection(d, i, keyFile) + extraHA
	}, tune)
	b.waitNextHops(t, "every dispatcher announces", time.Now(), b.nodes...)
	b.waitGroupSettled(t, b.nodes...)
	for _, n := range b.nodes {
		if st := n.bgpStatus(t); len(st.VIPs) != 1 || !st.VIPs[0].Announced {
			t.Fatalf("%s's VIPs: %+v", n.name, st.VIPs)
		}
	}
	return b
}

// serverRoutes adds (op "add") or removes ("del") a prohibit route to
// every server in the node's namespace: with it, the node can resolve
// none of them.
func (n *bgpNode) serverRoutes(t *testing.T, op string) {
	t.Helper()
	for _, s := range n.cfg.Ports[0].Servers {
		out, err := n.host.NS.Command(t.Context(), "ip", "route", op, "prohibit", netip.PrefixFrom(s.Addr, 32).String()).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: ip route %s prohibit %s: %v: %s", n.name, op, s.Addr, err, out)
		}
	}
}

// flowsHeld returns how many of the connections' flows (not those of
// skip) the node's connection table holds, each with the server that
// answered the connection, and the number of VIP4 flows it holds.
func (n *bgpNode) flowsHeld(t *testing.T, lc *longConns, skip map[int]bool) (held, all int) {
	t.Helper()
	res, err := n.api.Flows(api.FlowQuery{VIP: lab.VIP4, Limit: nd.MaxFlowsListed})
	if err != nil {
		t.Fatalf("%s: flows: %v", n.name, err)
	}
	server := map[string]string{}
	for _, f := range res.Flows {
		server[f.Client] = f.Server
	}
	for i, s := range lc.sessions {
		if skip[i] || s == nil {
			continue
		}
		if srv, ok := server[s.c.LocalAddr().String()]; ok && srv != "" {
			held++
		}
	}
	return held, len(res.Flows)
}

// waitGroupSettled waits until the first node leads and every running
// node holds a snapshot from every other running node.
func (b *bgpLab) waitGroupSettled(t *testing.T, running ...*bgpNode) {
	t.Helper()
	waitFor(t, haStartTimeout, "the group settled", func() bool {
		for _, n := range running {
			st, err := n.api.HAStatus()
			if err != nil || !st.ActiveActive {
				return false
			}
			if n == b.nodes[0] && st.State != ha.StateActive {
				return false
			}
			for _, p := range st.Peers {
				for _, o := range running {
					if o != n && p.Addr.Addr() == o.host.Addr4 && (!p.Alive || !p.SnapshotReceived) {
						return false
					}
				}
			}
		}
		return true
	})
}

// managedGroup makes every node's port one whose weights the manager moves:
// the Maglev scheduler (the weights are the tables), room to move (weight
// groupWeight each), an HTTP advisor on each server's health port and the
// default policy reading it alone, every change committed (sensitivity 0)
// and no cool-down (a slow server stays in, at a low weight).
func managedGroup(c *nddConfig) {
	p := &c.Ports[0]
	p.Scheduler, p.Advisor = "maglev", "health"
	for i := range p.Servers {
		p.Servers[i].Weight = groupWeight
	}
	c.Manager = fmt.Sprintf("  policy: default\n  interval: %s\n  sensitivity: 0\n  overload: 0\n  proportions: {advisor: 100}\n", groupInterval)
	c.Advisors = fmt.Sprintf("advisors:\n  - {name: health, kind: http, target: server, port: %d, interval: 200ms, timeout: 150ms, rise: 1, fall: 3}\n",
		groupHealthPort)
}

// healthServers answer the advisor on every server's own address, each
// after its delay: a slow server is one whose replies take longer.
type healthServers struct {
	delay  []atomic.Int64 // nanoseconds, by server
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startHealthServers serves the health port in every server of l until
// the test ends.
func startHealthServers(t *testing.T, l *lab.Lab) *healthServers {
	t.Helper()
	h := &healthServers{delay: make([]atomic.Int64, len(l.Servers))}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() { h.cancel(); h.wg.Wait() })
	for i := range l.Servers {
		srv := &l.Servers[i]
		ln, err := srv.NS.Listen("tcp", netip.AddrPortFrom(srv.Addr4, groupHealthPort).String())
		if err != nil {
			t.Fatalf("%s: health port: %v", srv.Name, err)
		}
		hs := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
			time.Sleep(time.Duration(h.delay[i].Load()))
		})}
		h.wg.Go(func() { hs.Serve(ln) })
		h.wg.Go(func() {
			<-h.ctx.Done()
			hs.Close()
		})
	}
	return h
}

// rotate makes one server at a time slow by slow, each for each, in turn,
// until the test ends: while one slows down, the one before recovers.
func (h *healthServers) rotate(slow, each time.Duration) {
	h.wg.Go(func() {
		tick := time.NewTicker(each)
		defer tick.Stop()
		for k := 0; ; k++ {
			for i := range h.delay {
				d := time.Duration(0)
				if i == k%len(h.delay) {
					d = slow
				}
				h.delay[i].Store(int64(d))
			}
			select {
			case <-h.ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
}

// weightWatch records each change of the nodes' weights of VIP4:80 as
// their APIs show them, polled every 100 ms until the test ends.
type weightWatch struct {
	mu      sync.Mutex
	changes map[*bgpNode][]time.Time
	last    map[*bgpNode]string
}

func watchWeights(t *testing.T, nodes ...*bgpNode) *weightWatch {
	w := &weightWatch{changes: map[*bgpNode][]time.Time{}, last: map[*bgpNode]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, n := range nodes {
				st, err := n.api.Status()
				if err != nil {
					continue // killed, or restarting
				}
				var ws []string
				for _, p := range st.Ports {
					for _, s := range p.Servers {
						ws = append(ws, fmt.Sprint(s.Weight))
					}
				}
				now := strings.Join(ws, " ")
				w.mu.Lock()
				if prev, ok := w.last[n]; ok && prev != now {
					w.changes[n] = append(w.changes[n], time.Now())
				}
				w.last[n] = now
				w.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	return w
}

// count is how many times n's weights changed in [from, to].
func (w *weightWatch) count(n *bgpNode, from, to time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := 0
	for _, at := range w.changes[n] {
		if !at.Before(from) && !at.After(to) {
			k++
		}
	}
	return k
}

// now is n's weights as last seen.
func (w *weightWatch) now(n *bgpNode) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last[n]
}

// groupPhase runs the long-lived connections' exchanges and the new
// connections around one change.
type groupPhase struct {
	name string
	lc   *longConns
	idx  []int // the index in the whole set of each of lc's connections
	p    *pinger
	o    *opener
	// The weights: the leader's and those of the followers that follow
	// it throughout the phase must change.
	start     time.Time
	w         *weightWatch
	leader    *bgpNode
	followers []*bgpNode
}

// startPhase starts pinging the connections still alive (not in broken)
// and opening new ones, and watches the weights of the leader (the first
// node) and of the followers given.
func (b *bgpLab) startPhase(name string, all *longConns, broken map[int]bool, w *weightWatch, followers ...*bgpNode) *groupPhase {
	ph := &groupPhase{name: name, lc: &longConns{}, start: time.Now(), w: w, leader: b.nodes[0], followers: followers}
	for i, s := range all.sessions {
		if !broken[i] {
			ph.lc.sessions = append(ph.lc.sessions, s)
			ph.lc.names = append(ph.lc.names, all.names[i])
			ph.idx = append(ph.idx, i)
		}
	}
	ph.p = startPinger(ph.lc, groupPing)
	ph.o = startOpener(b.lab.Client.NS, netip.AddrPortFrom(b.lab.VIP4, servicePort), groupOpen)
	return ph
}

// finish stops the phase and checks it: at least minKept of the pinged
// connections kept their server throughout, and every new connection
// started after from succeeded. It adds the broken connections to broken
// and returns how many were kept.
func (ph *groupPhase) finish(t *testing.T, from time.Time, minKept float64, broken map[int]bool) int {
	t.Helper()
	errs := ph.p.stop()
	stall, which := ph.p.longestStall()
	rs := ph.o.stop()
	for j, err := range errs {
		broken[ph.idx[j]] = true
		if len(errs) <= 5 {
			t.Logf("%s: connection %d (to %s) broke: %v", ph.name, ph.idx[j], ph.lc.names[j], err)
		}
	}
	kept := len(ph.lc.sessions) - len(errs)
	share := float64(kept) / float64(len(ph.lc.sessions))
	t.Logf("%s: %d of %d long-lived connections kept their server (%.2f%%); longest gap between replies %v (connection %d)",
		ph.name, kept, len(ph.lc.sessions), 100*share, stall.Round(time.Millisecond), which)
	if share < minKept {
		t.Errorf("%s: %d of %d long-lived connections kept (%.2f%%), want at least %.1f%%", ph.name, kept, len(ph.lc.sessions), 100*share, 100*minKept)
	}
	checkNewAfter(t, rs, from, int(groupSettle/groupOpen)/2)
	ph.checkWeights(t)
	return kept
}

// checkWeights fails the test unless the leader's manager committed new
// weights in at least half of the phase's intervals, and every
// follower watched took some of them.
func (ph *groupPhase) checkWeights(t *testing.T) {
	t.Helper()
	end := time.Now()
	intervals := int(end.Sub(ph.start) / groupInterval)
	k := ph.w.count(ph.leader, ph.start, end)
	msg := fmt.Sprintf("%s: the leader's weights changed %d times in %d manager intervals (now %s)", ph.name, k, intervals, ph.w.now(ph.leader))
	for _, f := range ph.followers {
		n := ph.w.count(f, ph.start, end)
		msg += fmt.Sprintf("; %s's %d times", f.name, n)
		if n == 0 {
			t.Errorf("%s: %s's weights never changed: it does not follow the leader's", ph.name, f.name)
		}
	}
	t.Log(msg)
	if k < intervals/2 {
		t.Errorf("%s: the leader's weights changed %d times in %d intervals, want at least %d: the manager is not moving them", ph.name, k, intervals, intervals/2)
	}
}

// TestGroupBehindRouter is issue 13's acceptance: three dispatchers, one
// active-active group, each announcing VIP4 to a BIRD router that spreads
// the flows over them (ECMP, L4 hash); four servers under the Maglev
// scheduler; 300 long-lived connections each exchanging data every
// second, new connections every 50 ms. After the long-lived connections
// opened, the servers turn slow one after the other (the slow one's
// health replies 60 ms late), for 1.5 s each, and the leader's manager
// moves their weights down and up throughout (so that the ring no longer
// places the connections where they are: only the shared flow records
// keep them); each phase checks that the leader committed new weights in
// at least half of its intervals and that the followers took them. Then:
//
//	(a) a dispatcher dies (SIGKILL, link down): the router withdraws its
//	    route; at least 99.9% of the long-lived connections keep their
//	    server, although the router rehashes flows between the surviving
//	    dispatchers too; every new connection after the withdrawal works;
//	(b) another is drained (ndctl bgp drain): 100% kept;
//	(c) the dead one comes back with an empty data plane (a host that
//	    rebooted): it announces only once it holds the snapshots of its
//	    peers, and with them every long-lived connection's flow; 100% kept;
//	(d) the drained one is undrained: 100% kept;
//	(e) the second is cut off (link down, ndd running): the router drops
//	    its route when the hold time (3 s) expires; at least 99.9% kept
//	    (the flows hashed to it stall until then), every new connection
//	    after the withdrawal works;
//	(f) the third can reach no server: it withdraws, the first keeps
//	    announcing; 100% kept.
//	(g) the third's servers back: it announces again, the flows it held
//	    for them intact; 100% kept.
func TestGroupBehindRouter(t *testing.T) {
	testutil.RequirePrivileged(t)
	b := newGroupLab(t, "", managedGroup)
	health := startHealthServers(t, b.lab)
	n0, n1, n2 := b.nodes[0], b.nodes[1], b.nodes[2]

	// The long-lived connections, spread by the router over the three.
	ctx := t.Context()
	lc := openLong(ctx, t, b.lab.Client.NS, netip.AddrPortFrom(b.lab.VIP4, servicePort), groupConns)
	t.Logf("%d long-lived connections open, by server: %v", groupConns, lc.perServer())
	for _, n := range b.nodes {
		var held, all int
		deadline := time.Now().Add(5 * time.Second)
		for held != groupConns && time.Now().Before(deadline) {
			held, all = n.flowsHeld(t, lc, nil)
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("%s holds %d of the %d long-lived connections' flows (%d flows in all)", n.name, held, groupConns, all)
		if held != groupConns {
			t.Errorf("%s holds %d of the %d long-lived connections' flows: the group shares them", n.name, held, groupConns)
		}
	}

	// The weights move: the servers turn slow one after the other, the
	// leader's manager lowers the slow one's weight and raises the last
	// one's again, nearly every interval, and the others follow.
	w := watchWeights(t, b.nodes...)
	moved := time.Now()
	health.rotate(groupSlow, groupWave)
	waitFor(t, 10*time.Second, "the leader's manager moves the weights and the others follow", func() bool {
		return w.count(n0, moved, time.Now()) >= 2 && w.count(n1, moved, time.Now()) >= 1 && w.count(n2, moved, time.Now()) >= 1
	})
	t.Logf("the weights moved: %s", w.now(n0))
	checkExchange(t, lc, "weights moved", nil)
	broken := map[int]bool{}

	// (a) The third dispatcher dies: its ndd killed, its link down.
	ph := b.startPhase("(a) a dispatcher killed", lc, broken, w, n1)
	time.Sleep(groupSettle / 2)
	at := time.Now()
	n2.proc.Kill()
	if err := b.lab.SetLink(n2.host, false); err != nil {
		t.Fatal(err)
	}
	killToRoute := b.waitNextHops(t, "dispatcher3 killed", at, n0, n1)
	withdrawn := time.Now()
	time.Sleep(groupSettle)
	keptA := ph.finish(t, withdrawn, 0.999, broken)

	// (b) The second dispatcher drained.
	ph = b.startPhase("(b) a dispatcher drained", lc, broken, w, n1)
	time.Sleep(groupSettle / 2)
	at = time.Now()
	if _, err := n1.api.BGPDrain(true); err != nil {
		t.Fatal(err)
	}
	drainToRoute := b.waitNextHops(t, "dispatcher2 drained", at, n0)
	withdrawn = time.Now()
	time.Sleep(groupSettle)
	keptB := ph.finish(t, withdrawn, 1, broken)

	// (c) The third comes back, as a host that rebooted: its data plane
	// gone, it announces once it has learnt the group's flows.
	if err := n2.proc.Destroy(); err != nil {
		t.Fatal(err)
	}
	ph = b.startPhase("(c) a dispatcher back", lc, broken, w, n1)
	time.Sleep(groupSettle / 2)
	if err := b.lab.SetLink(n2.host, true); err != nil {
		t.Fatal(err)
	}
	at = time.Now()
	n2.start(t)
	var sawLearning bool
	var reason string
	for deadline := time.Now().Add(bgpTimeout); ; time.Sleep(20 * time.Millisecond) {
		st, err := n2.api.BGPStatus()
		if err == nil && len(st.VIPs) == 1 {
			if strings.HasPrefix(st.VIPs[0].Reason, "learning the group's flows") {
				sawLearning, reason = true, st.VIPs[0].Reason
			}
			if st.VIPs[0].Announced {
				break
			}
		}
		if time.Now().After(deadline) {
			for _, cmd := range [][]string{{"ip", "addr"}, {"ip", "route"}, {"ip", "neigh"}, {"ping", "-c1", "-W1", lab.Router4().String()}} {
				out, err := n2.host.NS.Command(context.Background(), cmd[0], cmd[1:]...).CombinedOutput()
				t.Logf("dispatcher3: %v (%v):\n%s", cmd, err, out)
			}
			t.Fatalf("dispatcher3 did not announce again within %v: %+v %v; ha %+v", bgpTimeout, st, err, n2.status(t))
		}
	}
	// Announced: it holds both peers' snapshots, and so their flows.
	hst := n2.status(t)
	for _, p := range hst.Peers {
		if !p.SnapshotReceived {
			t.Errorf("dispatcher3 announced without %s's snapshot: %+v", p.Addr, hst.Peers)
		}
	}
	held, all := n2.flowsHeld(t, lc, broken)
	t.Logf("dispatcher3 announced %v after its ndd started, holding %d of the %d live long-lived connections' flows (%d in all); while learning it said %q (seen: %t)",
		time.Since(at).Round(time.Millisecond), held, groupConns-len(broken), all, reason, sawLearning)
	if held != groupConns-len(broken) {
		t.Errorf("dispatcher3 announced holding %d of the %d live long-lived connections' flows", held, groupConns-len(broken))
	}
	b.waitNextHops(t, "dispatcher3 back", at, n0, n2)
	back := time.Now()
	time.Sleep(groupSettle)
	keptC := ph.finish(t, back, 1, broken)

	// And the drained one undrained: all three again.
	ph = b.startPhase("(d) the drained dispatcher undrained", lc, broken, w, n1, n2)
	time.Sleep(groupSettle / 2)
	at = time.Now()
	if _, err := n1.api.BGPDrain(false); err != nil {
		t.Fatal(err)
	}
	b.waitNextHops(t, "dispatcher2 undrained", at, n0, n1, n2)
	back = time.Now()
	time.Sleep(groupSettle)
	keptD := ph.finish(t, back, 1, broken)

	// (e) The second is cut off (its link down, its ndd running): nothing
	// tells the router, which drops the route when the hold time expires.
	// Meanwhile the flows hashed to it stall (their packets are lost) and
	// retransmit; after, they continue through the others.
	ph = b.startPhase("(e) a dispatcher cut off", lc, broken, w, n2)
	time.Sleep(groupSettle / 2)
	at = time.Now()
	if err := b.lab.SetLink(n1.host, false); err != nil {
		t.Fatal(err)
	}
	cutToRoute := b.waitNextHops(t, "dispatcher2 cut off", at, n0, n2)
	// The hold time runs from the last keepalive (BIRD's every second).
	if cutToRoute < bgpHold/2 {
		t.Errorf("the route moved %v after the link went down, before the hold time (%v) could expire: what told the router?", cutToRoute, bgpHold)
	}
	withdrawn = time.Now()
	time.Sleep(groupSettle)
	keptE := ph.finish(t, withdrawn, 0.999, broken)

	// (f) The third can reach no server (a route in its namespace rules
	// them all out, as a lost link to their network would): it withdraws
	// the VIP, while the first, which still has servers, keeps announcing.
	ph = b.startPhase("(f) a dispatcher without servers", lc, broken, w)
	time.Sleep(groupSettle / 2)
	at = time.Now()
	n2.serverRoutes(t, "add")
	noServerToRoute := b.waitNextHops(t, "dispatcher3 without servers", at, n0)
	withdrawn = time.Now()
	if st := n2.bgpStatus(t); st.VIPs[0].Announced || st.VIPs[0].Reason != "no server can take new flows" {
		t.Errorf("%s without servers: %+v", n2.name, st.VIPs)
	}
	if st := n0.bgpStatus(t); !st.VIPs[0].Announced {
		t.Errorf("%s, with its servers: %+v", n0.name, st.VIPs)
	}
	time.Sleep(groupSettle)
	keptF := ph.finish(t, withdrawn, 1, broken)

	// (g) Its servers back, the third announces again at once: it held
	// them while it could not reach them, so the flows it had still name
	// their servers and the connections the router sends it again carry on.
	ph = b.startPhase("(g) a dispatcher's servers back", lc, broken, w)
	time.Sleep(groupSettle / 2)
	at = time.Now()
	n2.serverRoutes(t, "del")
	backToRoute := b.waitNextHops(t, "dispatcher3's servers back", at, n0, n2)
	announced := time.Now()
	time.Sleep(groupSettle)
	keptG := ph.finish(t, announced, 1, broken)

	t.Logf("summary: kill -9 to route change %v, drain to route change %v, link cut to route change %v (hold time %v), no server to route change %v, servers back to route change %v; kept (a) %d, (b) %d, (c) %d, (d) %d, (e) %d, (f) %d, (g) %d of %d long-lived connections",
		killToRoute.Round(time.Millisecond), drainToRoute.Round(time.Millisecond), cutToRoute.Round(time.Millisecond), bgpHold,
		noServerToRoute.Round(time.Millisecond), backToRoute.Round(time.Millisecond), keptA, keptB, keptC, keptD, keptE, keptF, keptG, groupConns)
	for _, n := range []*bgpNode{n0, n2} {
		held, all := n.flowsHeld(t, lc, broken)
		t.Logf("%s holds %d of the live long-lived connections' flows at the end (%d flows in all)", n.name, held, all)
	}
}
