package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
)

// Bounds of the group lab.
const (
	groupServers   = 4
	groupHold      = 3 * time.Second // BGP hold time: BIRD's least
	groupRouteWait = 20 * time.Second
	groupPing      = 200 * time.Millisecond
	groupWindow    = 10 * time.Second // a long-lived connection's wait for a reply
	groupOpenLimit = 256              // new connections in flight at once
	clockTicks     = 100              // USER_HZ, for /proc/<pid>/stat
)

// groupLab is the lab with its router and BIRD, echo servers on VIP4:80
// and one ndd per dispatcher.
type groupLab struct {
	nddNodes
	o    groupOptions
	bird *lab.BIRD
}

// measureGroup builds the lab for n dispatchers, runs the phases and
// always tears it down.
func measureGroup(ctx context.Context, o groupOptions, n int, logf func(string, ...any)) (r groupRun, err error) {
	r.Dispatchers = n
	g := &groupLab{nddNodes: nddNodes{name: "group", logf: logf}, o: o}
	defer closeInto(&err, g)
	if err := g.build(ctx, n); err != nil {
		return r, err
	}
	all := g.nodes
	ph, share, cost, err := g.phase(ctx, "steady", "", nil, all)
	r.Phases = append(r.Phases, ph)
	r.Share = share
	r.SyncBytesPer1k, r.CPUSecPer1k, r.CPUFraction, r.SyncRecordsPer1k = cost[0], cost[1], cost[2], cost[3]
	if err != nil || n < 2 {
		return r, err
	}
	last := all[n-1]
	// kill: SIGKILL and link down, as a host that dies.
	ph, _, _, err = g.phase(ctx, "kill", last.host.Name, func() error {
		last.proc.Kill()
		return g.lab.SetLink(last.host, false)
	}, all[:n-1])
	r.Phases = append(r.Phases, ph)
	if err != nil {
		return r, err
	}
	// add: the killed one back with an empty data plane, as a host that
	// rebooted; it announces once it holds its peers' flows.
	if err := last.proc.Destroy(); err != nil {
		return r, err
	}
	os.RemoveAll(g.pinPath(last.host))
	ph, _, _, err = g.phase(ctx, "add", last.host.Name, func() error {
		if err := g.lab.SetLink(last.host, true); err != nil {
			return err
		}
		return g.start(ctx, last)
	}, all)
	r.Phases = append(r.Phases, ph)
	if err != nil {
		return r, err
	}
	if err := g.waitSettled(ctx); err != nil {
		return r, err
	}
	// drain: the second dispatcher withdraws its route, ndd running.
	second := all[1]
	rest := slices.DeleteFunc(slices.Clone(all), func(x *nddNode) bool { return x == second })
	ph, _, _, err = g.phase(ctx, "drain", second.host.Name, func() error {
		_, err := second.api.BGPDrain(true)
		return err
	}, rest)
	r.Phases = append(r.Phases, ph)
	return r, err
}

func (g *groupLab) build(ctx context.Context, n int) (err error) {
	if err := g.prepare(ctx, g.o.ndd); err != nil {
		return err
	}
	if g.lab, err = newLab(ctx, lab.Options{Servers: groupServers, Dispatchers: n, Router: true}, g.logf); err != nil {
		return err
	}
	if err := g.startEchoes(); err != nil {
		return err
	}
	var peers []lab.BIRDPeer
	for _, d := range g.lab.Dispatchers() {
		peers = append(peers, lab.BIRDPeer{Name: strings.ReplaceAll(d.Name, "dispatcher", "d"), Addr: d.Addr4, ASN: lab.DispatcherASN})
	}
	if g.bird, err = g.lab.StartBIRD(ctx, lab.BIRDOptions{Dir: g.dir, Peers: peers, HoldTime: int(groupHold / time.Second)}); err != nil {
		return err
	}
	if err := g.writeKey(); err != nil {
		return err
	}
	for i, d := range g.lab.Dispatchers() {
		nd, err := g.addNode(d, 200-50*i, 10*time.Second)
		if err != nil {
			return err
		}
		if err := os.WriteFile(nd.cfg, []byte(g.config(nd, i)), 0o600); err != nil {
			return err
		}
	}
	for _, nd := range g.nodes {
		if err := g.start(ctx, nd); err != nil {
			return err
		}
	}
	if _, err := g.waitRoute(ctx, time.Now(), g.nodes); err != nil {
		return err
	}
	return g.waitSettled(ctx)
}

// config is dispatcher i's configuration: pinned data plane, the servers,
// BGP to the router and, with two or more, the active-active group.
func (g *groupLab) config(n *nddNode, i int) string {
	self := n.host
	var b strings.Builder
	fmt.Fprintf(&b, "interfaces: [%s]\ndata_plane:\n  pin_path: %s\napi:\n  socket: %s\nmanager:\n  policy: static\n",
		self.Ifname, g.pinPath(self), n.socket)
	fmt.Fprintf(&b, "clusters:\n  - vip: %s\n    ports:\n      - port: %d\n        servers:\n", g.lab.VIP4, servicePort)
	for _, s := range g.lab.Servers {
		fmt.Fprintf(&b, "          - {address: %s, weight: 1}\n", s.Addr4)
	}
	fmt.Fprintf(&b, "bgp:\n  asn: %d\n  router_id: %s\n  shutdown_grace: 1s\n  peers:\n    - {address: %s, asn: %d, hold_time: %s}\n",
		lab.DispatcherASN, self.Addr4, lab.Router4(), lab.RouterASN, groupHold)
	ds := g.lab.Dispatchers()
	if len(ds) < 2 {
		return b.String()
	}
	var peers []string
	for j, d := range ds {
		if j != i {
			peers = append(peers, fmt.Sprintf("%s:%d", d.Addr4, haPort))
		}
	}
	fmt.Fprintf(&b, "ha:\n  group: bench\n  mode: active-active\n  interface: %s\n  self: %s:%d\n  peers: [%s]\n  priority: %d\n  key_file: %s\n  interval: 100ms\n  dead_after: 600ms\n",
		self.Ifname, self.Addr4, haPort, strings.Join(peers, ", "), n.priority, g.key)
	return b.String()
}

// waitSettled waits, with two or more dispatchers, until every node is
// alive to every other and holds its snapshot.
func (g *groupLab) waitSettled(ctx context.Context) error {
	if len(g.nodes) < 2 {
		return nil
	}
	deadline := time.Now().Add(haSettleWait)
	for {
		ok := true
		for _, n := range g.nodes {
			st, err := n.api.HAStatus()
			if err != nil || !st.ActiveActive || len(st.Peers) != len(g.nodes)-1 {
				ok = false
				break
			}
			for _, p := range st.Peers {
				ok = ok && p.Alive && p.SnapshotReceived
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the group did not settle in %v", haSettleWait)
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// waitRoute waits until the router's route to VIP4 goes through exactly
// the given dispatchers and returns the time since since.
func (g *groupLab) waitRoute(ctx context.Context, since time.Time, want []*nddNode) (time.Duration, error) {
	var addrs []netip.Addr
	for _, n := range want {
		addrs = append(addrs, n.host.Addr4)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for {
		got, err := g.lab.RouterNextHops(g.lab.VIP4)
		if err != nil {
			return 0, err
		}
		slices.SortFunc(got, netip.Addr.Compare)
		if slices.Equal(got, addrs) {
			return time.Since(since), nil
		}
		if time.Since(since) > groupRouteWait {
			return 0, fmt.Errorf("the router's next hops to %s are %v after %v, want %v", g.lab.VIP4, got, groupRouteWait, addrs)
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// nodeSample is what is read of the running nodes at a phase's ends.
type nodeSample struct {
	packets []uint64
	stream  uint64
	records uint64
	ticks   uint64
	at      time.Time
}

func (g *groupLab) sample() (nodeSample, error) {
	s := nodeSample{at: time.Now()}
	for _, n := range g.nodes {
		st, err := n.api.Status()
		if err != nil {
			return s, fmt.Errorf("%s: status: %w", n.host.Name, err)
		}
		var pk uint64
		for _, p := range st.Ports {
			pk += p.Packets
		}
		s.packets = append(s.packets, pk)
		if len(g.nodes) > 1 {
			hs, err := n.api.HAStatus()
			if err != nil {
				return s, fmt.Errorf("%s: ha status: %w", n.host.Name, err)
			}
			s.stream += hs.Counters.StreamBytesSent
			s.records += hs.Counters.FlowsSent
		}
		t, err := procTicks(n.proc.Pid())
		if err != nil {
			return s, err
		}
		s.ticks += t
	}
	return s, nil
}

// procTicks is a process's user + system time in clock ticks.
func procTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatTicks(string(b))
}

// parseStatTicks reads utime and stime (fields 14 and 15) of a
// /proc/<pid>/stat line; the command name, in parentheses, may hold
// spaces.
func parseStatTicks(s string) (uint64, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat %q: no command", s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("stat %q: too short", s)
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("stat %q: %w", s, err)
	}
	return u + st, nil
}

// phase opens the long-lived connections, opens new connections at the
// rate for the duration and, at half time, runs event (if any) and waits
// for the route to go through exactly after. For the steady phase (no
// event) it also returns the packet shares and [sync bytes per 1k, CPU
// seconds per 1k, CPU fraction, records per 1k].
func (g *groupLab) phase(ctx context.Context, name, target string, event func() error, after []*nddNode) (ph groupPhase, share []float64, cost [4]float64, err error) {
	ph = groupPhase{Name: name, Event: target, Conns: g.o.conns}
	g.logf("%d dispatcher(s): phase %s %s", len(g.nodes), name, target)
	pg, err := g.startPings(ctx, g.o.conns, groupPing, groupWindow)
	if err != nil {
		return ph, nil, cost, err
	}
	defer pg.stop()
	var before nodeSample
	if event == nil {
		if before, err = g.sample(); err != nil {
			return ph, nil, cost, err
		}
	}
	pctx, cancel := context.WithTimeout(ctx, g.o.duration)
	defer cancel()
	op := startOpener(pctx, g.lab, g.o.rate)
	if event != nil {
		if err := sleepCtx(ctx, g.o.duration/2); err != nil {
			return ph, nil, cost, err
		}
		at := time.Now()
		if err := event(); err != nil {
			return ph, nil, cost, fmt.Errorf("%s %s: %w", name, target, err)
		}
		if ph.RouteChange, err = g.waitRoute(ctx, at, after); err != nil {
			return ph, nil, cost, fmt.Errorf("%s %s: %w", name, target, err)
		}
		g.logf("%s %s: the route changed %v after the event", name, target, ph.RouteChange.Round(time.Millisecond))
	}
	lat, failed, offered, elapsed := op.wait()
	if event == nil {
		s, err := g.sample()
		if err != nil {
			return ph, nil, cost, err
		}
		share, cost = steadyCosts(before, s, len(lat))
		g.logf("steady: packets %v -> %v; stream bytes %d -> %d, flow records sent %d -> %d; CPU ticks %d -> %d",
			before.packets, s.packets, before.stream, s.stream, before.records, s.records, before.ticks, s.ticks)
	}
	// Every long-lived connection gets one more round after the load.
	if err := sleepCtx(ctx, 2*groupPing); err != nil {
		return ph, nil, cost, err
	}
	pg.stop()
	ph.Kept = pg.kept()
	ph.NewOffered, ph.NewOK, ph.NewFailed = offered, len(lat), failed
	ph.Seconds = elapsed.Seconds()
	if elapsed > 0 {
		ph.ConnRate = float64(len(lat)) / elapsed.Seconds()
	}
	slices.Sort(lat)
	ph.P50, ph.P99 = lab.Percentile(lat, 0.50), lab.Percentile(lat, 0.99)
	g.logf("%s: %d of %d long-lived kept; %d of %d new ok (%.1f/s), p50 %v p99 %v", name, ph.Kept, ph.Conns,
		ph.NewOK, ph.NewOffered, ph.ConnRate, ph.P50.Round(time.Microsecond), ph.P99.Round(time.Microsecond))
	return ph, share, cost, nil
}

// steadyCosts turns two samples around newFlows new connections into the
// packet shares and the costs per 1,000 new flows.
func steadyCosts(a, b nodeSample, newFlows int) (share []float64, cost [4]float64) {
	var total uint64
	for i := range b.packets {
		total += b.packets[i] - a.packets[i]
	}
	for i := range b.packets {
		share = append(share, float64(b.packets[i]-a.packets[i])/float64(max(total, 1)))
	}
	cpu := float64(b.ticks-a.ticks) / clockTicks
	if newFlows > 0 {
		cost[0] = float64(b.stream-a.stream) * 1000 / float64(newFlows)
		cost[1] = cpu * 1000 / float64(newFlows)
		cost[3] = float64(b.records-a.records) * 1000 / float64(newFlows)
	}
	if wall := b.at.Sub(a.at).Seconds(); wall > 0 {
		cost[2] = cpu / wall
	}
	return share, cost
}

// opener opens new connections to the VIP at a fixed rate until its
// context ends, each: connect, one line, its echo, close.
type opener struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	lat     []time.Duration
	failed  int
	offered int
	start   time.Time
	end     time.Time // when it stopped offering
	done    chan struct{}
}

func startOpener(ctx context.Context, l *lab.Lab, rate float64) *opener {
	op := &opener{start: time.Now(), done: make(chan struct{})}
	vip := netip.AddrPortFrom(l.VIP4, servicePort).String()
	sem := make(chan struct{}, groupOpenLimit)
	go func() {
		defer close(op.done)
		tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				op.end = time.Now()
				op.wg.Wait()
				return
			case <-tick.C:
			}
			// Open-loop: the connections due by now, so that a tick
			// the scheduler delayed or dropped is made up for.
			due := int(time.Since(op.start).Seconds()*rate) - op.offered
			for range due {
				op.offered++
				select {
				case sem <- struct{}{}:
				default:
					op.mu.Lock()
					op.failed++ // too many in flight: counts as a failure
					op.mu.Unlock()
					continue
				}
				op.wg.Go(func() {
					defer func() { <-sem }()
					d, err := openOne(l, vip)
					op.mu.Lock()
					defer op.mu.Unlock()
					if err != nil {
						op.failed++
						return
					}
					op.lat = append(op.lat, d)
				})
			}
		}
	}()
	return op
}

// wait waits for the opener to end and returns its latencies, failures,
// offers and how long it offered.
func (op *opener) wait() (lat []time.Duration, failed, offered int, elapsed time.Duration) {
	<-op.done
	elapsed = op.end.Sub(op.start)
	op.mu.Lock()
	defer op.mu.Unlock()
	return slices.Clone(op.lat), op.failed, op.offered, elapsed
}

func openOne(l *lab.Lab, vip string) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	c, err := l.Client.NS.DialContext(ctx, "tcp", vip)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(start.Add(requestTimeout))
	if _, err := c.Write([]byte("hello\n")); err != nil {
		return 0, err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	if got != "hello\n" {
		return 0, fmt.Errorf("echo %q", got)
	}
	return time.Since(start), nil
}

// close stops ndd, BIRD, the echo servers and the lab.
func (g *groupLab) close() error {
	return g.nddNodes.close(func() error {
		if g.bird == nil {
			return nil
		}
		return g.bird.Stop()
	})
}
