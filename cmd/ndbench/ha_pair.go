package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/lab"
)

// haPair is the lab, the echo servers on VIP4:80 and one ndd per
// dispatcher. nodes[active] holds the VIP.
type haPair struct {
	nddNodes
	o haOptions
	// udpEchoes answer the path probe's datagrams on VIP4:80/udp.
	udpEchoes []net.PacketConn
	active    int
	// moved: the weights are moved (half the servers at 0), as after the
	// connections of a failover opened.
	moved bool
}

func newHAPair(ctx context.Context, o haOptions, logf func(string, ...any)) (_ *haPair, err error) {
	p := &haPair{nddNodes: nddNodes{name: "ha", logf: logf}, o: o}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.close())
		}
	}()
	if err := p.prepare(ctx, o.ndd); err != nil {
		return p, err
	}
	if p.lab, err = newCheckedLab(ctx, lab.Options{Servers: o.servers, Dispatchers: 2, NoDispatcherVIPs: true}, logf); err != nil {
		return p, err
	}
	if err := p.startEchoes(); err != nil {
		return p, err
	}
	vip := netip.AddrPortFrom(p.lab.VIP4, servicePort)
	for i := range p.lab.Servers {
		u, err := p.lab.Servers[i].NS.ListenPacket("udp4", vip.String())
		if err != nil {
			return p, fmt.Errorf("udp echo in %s: %w", p.lab.Servers[i].Name, err)
		}
		p.udpEchoes = append(p.udpEchoes, u)
		go lab.EchoDatagrams(u)
	}
	if err := p.writeKey(); err != nil {
		return p, err
	}
	ds := p.lab.Dispatchers()
	for i, d := range ds {
		n, err := p.addNode(d, 200-100*i, 30*time.Second)
		if err != nil {
			return p, err
		}
		n.peer = ds[1-i]
		if err := p.writeConfig(n); err != nil {
			return p, err
		}
	}
	for _, n := range p.nodes {
		if err := p.start(ctx, n); err != nil {
			return p, err
		}
	}
	p.active = 0
	return p, p.settle(ctx)
}

// config is one node's ndd configuration. The data plane is pinned, as by
// default: unpinned, it would stop the instant ndd is killed, and the
// kernel, which still holds the VIP, would reset every connection that
// reached it before the link went down.
func (p *haPair) config(n *nddNode) string {
	self := n.host
	var b strings.Builder
	fmt.Fprintf(&b, "interfaces: [%s]\ndata_plane:\n  pin_path: %s\n  idle_timeout: %s\napi:\n  socket: %s\nmanager:\n  policy: static\n",
		self.Ifname, p.pinPath(self), p.o.idle, n.socket)
	fmt.Fprintf(&b, "clusters:\n  - vip: %s\n    ports:\n", p.lab.VIP4)
	for _, proto := range []string{"tcp", "udp"} {
		fmt.Fprintf(&b, "      - port: %d\n        protocol: %s\n        servers:\n", servicePort, proto)
		for i, s := range p.lab.Servers {
			fmt.Fprintf(&b, "          - {address: %s, weight: %d}\n", s.Addr4, p.weight(i))
		}
	}
	fmt.Fprintf(&b, "ha:\n  group: bench\n  interface: %s\n  self: %s:%d\n  peers: [%s:%d]\n  priority: %d\n  interval: %s\n  dead_after: %s\n  key_file: %s\n",
		self.Ifname, self.Addr4, haPort, n.peer.Addr4, haPort, n.priority, p.o.interval, p.o.deadAfter, p.key)
	if p.o.refresh > 0 {
		fmt.Fprintf(&b, "  refresh: %s\n", p.o.refresh)
	}
	return b.String()
}

// weight is server i's weight: 1, or 0 for the first half of the servers
// once the weights moved (with one server, it keeps its weight).
func (p *haPair) weight(i int) int {
	if p.moved && i < len(p.lab.Servers)/2 {
		return 0
	}
	return 1
}

func (p *haPair) writeConfig(n *nddNode) error {
	return os.WriteFile(n.cfg, []byte(p.config(n)), 0o600)
}

// moveWeights moves the weights (or puts them back) in both nodes'
// files and has each running ndd reload its own, so that a standby holds
// the new weights even with the flow stream blocked.
func (p *haPair) moveWeights(moved bool) error {
	p.moved = moved
	for _, n := range p.nodes {
		if err := p.writeConfig(n); err != nil {
			return err
		}
		if !n.running() {
			continue
		}
		if _, err := n.api.Reload(); err != nil {
			return fmt.Errorf("%s: reload: %w", n.host.Name, err)
		}
	}
	return nil
}

// blockStream stops (or lets through again) the synchronisation streams
// that n's node dials, TCP to the HA port, with a policy-routing rule in
// its namespace; heartbeats (UDP) pass. A new rule invalidates the routes
// that open connections cached, so an open stream stops too.
func blockStream(ctx context.Context, n *nddNode, block bool) error {
	op := "add"
	if !block {
		op = "del"
	}
	out, err := n.host.NS.Command(ctx, "ip", "rule", op, "ipproto", "tcp", "dport", strconv.Itoa(haPort), "prohibit").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: ip rule %s: %w: %s", n.host.Name, op, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// settle waits until nodes[active] is active, the other a standby that
// holds the active's flows and configuration, and the client reaches the
// VIP.
func (p *haPair) settle(ctx context.Context) error {
	a, s := p.nodes[p.active], p.nodes[1-p.active]
	deadline := time.Now().Add(haSettleWait)
	why := ""
	for {
		why = ""
		as, aerr := a.api.HAStatus()
		ss, serr := s.api.HAStatus()
		switch {
		case aerr != nil || serr != nil:
			why = fmt.Sprint(errors.Join(aerr, serr))
		case as.State != ha.StateActive || ss.State != ha.StateStandby:
			why = fmt.Sprintf("%s is %s, %s is %s", a.host.Name, as.State, s.host.Name, ss.State)
		case len(as.Peers) != 1 || !as.Peers[0].Synced || ss.Counters.SnapshotsReceived == 0 || ss.ConfigHash != as.ConfigHash:
			why = fmt.Sprintf("%s not synchronised yet", s.host.Name)
		}
		if why == "" {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the pair did not settle in %v: %s", haSettleWait, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	for {
		c, err := p.dial(ctx)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the client cannot reach the VIP through %s: %w", a.host.Name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// failover opens the connections, lets them run, fails the active over
// (kind crash or planned), waits until every connection has answered again
// or the window has passed, and measures.
func (p *haPair) failover(ctx context.Context, kind string) (failover, error) {
	from, to := p.nodes[p.active], p.nodes[1-p.active]
	f := failover{Kind: kind, From: from.host.Name, To: to.host.Name, Conns: p.o.conns}
	blocked := kind == "crash-blocked"
	if blocked {
		if err := blockStream(ctx, from, true); err != nil {
			return f, err
		}
	}
	pg, err := p.startPings(ctx, p.o.conns, p.o.period, p.o.window)
	if err != nil {
		return f, err
	}
	defer pg.stop()
	probe, err := p.startPathProbe()
	if err != nil {
		return f, err
	}
	defer probe.stop()
	before, err := from.api.HAStatus()
	if err != nil {
		return f, err
	}
	held := time.Now()
	// The weights move once the connections are open: a flow that the
	// node taking over picks anew may land elsewhere. The connections
	// then run for longer than the idle timeout.
	time.Sleep(time.Second)
	if err := p.moveWeights(true); err != nil {
		return f, err
	}
	time.Sleep(p.o.hold - time.Second)
	after, err := from.api.HAStatus()
	if err != nil {
		return f, err
	}
	f.Hold = time.Since(held)
	f.Refreshed = after.Counters.FlowsRefreshed - before.Counters.FlowsRefreshed
	f.Rounds = after.Counters.RefreshRounds - before.Counters.RefreshRounds
	f.StreamBytes = after.Counters.StreamBytesSent - before.Counters.StreamBytesSent

	event := time.Now()
	switch kind {
	case "crash", "crash-blocked":
		// The kill first: a dying host does not react to its link going
		// down (and ndd taking servers out as it would).
		from.proc.Kill()
		if err := p.lab.SetLink(from.host, false); err != nil {
			return f, err
		}
		for {
			st, err := to.api.HAStatus()
			if err == nil && st.State == ha.StateActive {
				f.Control = time.Since(event)
				break
			}
			if time.Since(event) > p.o.window {
				return f, fmt.Errorf("%s not active %v after %s crashed", to.host.Name, p.o.window, from.host.Name)
			}
			time.Sleep(5 * time.Millisecond)
		}
	case "planned":
		if _, err := to.api.HATakeover(); err != nil {
			return f, fmt.Errorf("takeover by %s: %w", to.host.Name, err)
		}
		f.Control = time.Since(event)
	}
	p.active = 1 - p.active

	// Every connection answers again, or the window closes.
	end := event.Add(p.o.window)
	for time.Now().Before(end) && !pg.allAnsweredAfter(event.Add(f.Control)) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	pg.stop()
	probe.stop()
	f.Gap, f.Stall, f.Survived = pg.measure(event, event.Add(f.Control))
	f.PathGap = probe.gap(event.Add(-time.Second))

	if kind != "planned" {
		// The crashed host comes back, as a standby.
		if blocked {
			if err := blockStream(ctx, from, false); err != nil {
				return f, err
			}
		}
		if err := p.lab.SetLink(from.host, true); err != nil {
			return f, err
		}
		if err := p.start(ctx, from); err != nil {
			return f, err
		}
	}
	if err := p.moveWeights(false); err != nil {
		return f, err
	}
	return f, p.settle(ctx)
}

// measure returns the client's gap around event (the longest time with no
// reply on any connection, between a second before the event and the end),
// the median over surviving connections of their longest stall, and how
// many survived: answered after the node taking over was active, and never
// broke.
func (pg *pings) measure(event, active time.Time) (gap, stall time.Duration, survived int) {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	var all []time.Time
	var stalls []time.Duration
	from := event.Add(-time.Second)
	for i, rs := range pg.replies {
		var worst time.Duration
		for j, r := range rs {
			if r.Before(from) {
				continue
			}
			all = append(all, r)
			if j > 0 {
				worst = max(worst, r.Sub(rs[j-1]))
			}
		}
		if !pg.failed[i] && len(rs) > 0 && rs[len(rs)-1].After(active) {
			survived++
			stalls = append(stalls, worst)
		}
	}
	slices.SortFunc(all, func(a, b time.Time) int { return a.Compare(b) })
	for j := 1; j < len(all); j++ {
		gap = max(gap, all[j].Sub(all[j-1]))
	}
	return gap, median(stalls), survived
}

// close stops the ndd processes, the echo servers and the lab.
func (p *haPair) close() error {
	return p.nddNodes.close(func() error {
		for _, u := range p.udpEchoes {
			u.Close()
		}
		return nil
	})
}

// pathProbe sends a datagram to VIP4:80/udp every period from one socket,
// one flow that the standby learns like any other, and records when
// echoes come back. Unlike TCP it has no retransmission back-off, so its
// longest silence is when the path itself was broken.
type pathProbe struct {
	c       net.Conn
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	replies []time.Time
	once    sync.Once
}

func (p *haPair) startPathProbe() (*pathProbe, error) {
	c, err := p.lab.Client.NS.DialContext(context.Background(), "udp4", netip.AddrPortFrom(p.lab.VIP4, servicePort).String())
	if err != nil {
		return nil, fmt.Errorf("path probe: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pp := &pathProbe{c: c, cancel: cancel}
	pp.wg.Go(func() {
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				if ctx.Err() != nil {
					return
				}
				continue // e.g. ECONNREFUSED from an ICMP error
			}
			pp.mu.Lock()
			pp.replies = append(pp.replies, time.Now())
			pp.mu.Unlock()
		}
	})
	pp.wg.Go(func() {
		tick := time.NewTicker(p.o.period)
		defer tick.Stop()
		for seq := 0; ; seq++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			c.Write([]byte(strconv.Itoa(seq)))
		}
	})
	return pp, nil
}

func (pp *pathProbe) stop() {
	pp.once.Do(func() {
		pp.cancel()
		pp.c.Close()
		pp.wg.Wait()
	})
}

// gap is the longest time without an echo after from.
func (pp *pathProbe) gap(from time.Time) time.Duration {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	var g time.Duration
	for j := 1; j < len(pp.replies); j++ {
		if pp.replies[j].After(from) {
			g = max(g, pp.replies[j].Sub(pp.replies[j-1]))
		}
	}
	return g
}
