package e2e

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestGroupShadowOutlivesIdleTimeout is TestHAShadowOutlivesIdleTimeout
// for the group: the three dispatchers of TestGroupBehindRouter (the
// Maglev scheduler, static weights) with a 5 s idle timeout and refresh
// rounds every 500 ms. 300 connections open and exchange data every
// second; then the weights move on every node (server1 and server2 to 0,
// so that the ring sends their flows elsewhere), and the connections go
// on for longer than the idle timeout before a dispatcher dies (SIGKILL,
// link down). The router moves that dispatcher's flows to the others, and
// rehashes some between the survivors too. With the flow stream, whose
// refresh rounds keep every copy as fresh as its owner's entry, at least
// 99.9% of the connections survive; with the stream blocked on every node
// (the control), a moved flow meets a dispatcher that never saw it, which
// places it by the new tables, and a clear share breaks.
func TestGroupShadowOutlivesIdleTimeout(t *testing.T) {
	testutil.RequirePrivileged(t)
	shadowControl(t, groupConns, groupConns/20, groupCrash)
}

// groupCrash runs one crash as TestGroupShadowOutlivesIdleTimeout
// describes, the flow stream blocked or not, and returns the connections
// kept.
func groupCrash(t *testing.T, block bool) int {
	b := newGroupLab(t, fmt.Sprintf("  refresh: %s\n", shadowRefresh), func(c *nddConfig) {
		c.IdleTimeout = shadowIdle
		c.Ports[0].Scheduler = "maglev"
	})
	n0, n1, n2 := b.nodes[0], b.nodes[1], b.nodes[2]
	if block {
		for _, n := range b.nodes {
			blockFlowStream(t, n.host)
		}
	}
	received := func() (sum uint64) {
		for _, n := range b.nodes {
			sum += n.status(t).Counters.FlowsReceived
		}
		return sum
	}
	before := received()
	lc := openLong(t.Context(), t, b.lab.Client.NS, netip.AddrPortFrom(b.lab.VIP4, servicePort), groupConns)
	t.Logf("%d connections open, by server: %v", groupConns, lc.perServer())
	p := startPinger(lc, groupPing)
	time.Sleep(time.Second)

	// The weights move after the flows began: half the servers take no
	// new flow. Every node reads them from its file, so that each has
	// them even with the stream (which carries the leader's) blocked.
	for _, n := range b.nodes {
		for i := range n.cfg.Ports[0].Servers[:2] {
			n.cfg.Ports[0].Servers[i].Weight = 0
		}
		n.write(t)
		if _, err := n.api.Reload(); err != nil {
			t.Fatalf("%s: reload: %v", n.name, err)
		}
	}
	time.Sleep(shadowIdle + time.Second)
	recv := received() - before
	for _, n := range b.nodes {
		held, all := n.flowsHeld(t, lc, nil)
		t.Logf("%s holds %d of the %d connections' flows (%d in all) %v after the weights moved", n.name, held, groupConns, all, shadowIdle+time.Second)
	}
	t.Logf("the group received %d flow records", recv)
	switch {
	case block && recv != 0:
		t.Fatalf("the flow stream is blocked, yet the group received %d records", recv)
	case !block && recv < 2*groupConns:
		t.Errorf("the group received %d records for %d connections over %v: the refresh rounds do not reach it", recv, groupConns, shadowIdle)
	}

	at := time.Now()
	n2.proc.Kill()
	if err := b.lab.SetLink(n2.host, false); err != nil {
		t.Fatal(err)
	}
	b.waitNextHops(t, "dispatcher3 killed", at, n0, n1)
	time.Sleep(3 * time.Second)
	failed := p.stop()
	_, last := lc.exchange(4096, func(i int) bool { return failed[i] != nil })
	for i, err := range last {
		failed[i] = err
	}
	shown := 0
	for i, err := range failed {
		if shown++; shown <= 5 {
			t.Logf("connection %d (to %s) broke: %v", i, lc.names[i], err)
		}
	}
	kept := groupConns - len(failed)
	t.Logf("%d of %d connections kept their server through the crash (%.1f%%)", kept, groupConns, 100*float64(kept)/groupConns)
	return kept
}
