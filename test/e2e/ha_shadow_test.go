package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// The shadow tests hold connections for longer than the data plane's idle
// timeout, short here so that the test is: a standby's copy of a flow that
// is never refreshed is gone by the time of the crash.
const (
	shadowIdle = 5 * time.Second
	// shadowRefresh is ha.refresh after the reload; the nodes start with
	// the longest the idle timeout allows.
	shadowRefresh      = 500 * time.Millisecond
	shadowRefreshFirst = shadowIdle / 2
)

// TestHAShadowOutlivesIdleTimeout: an HA pair with a 5 s idle timeout; 200
// connections open, then the weights move (half the servers to 0), and the
// connections go on for longer than the idle timeout before the active
// crashes. With the flow stream, whose refresh rounds keep the standby's
// copies as fresh as the active's, every connection survives; with the
// stream blocked (the control), the standby picks anew and a clear share
// breaks. On the way, ha.refresh is changed by a reload and the rounds
// follow it.
func TestHAShadowOutlivesIdleTimeout(t *testing.T) {
	testutil.RequirePrivileged(t)
	shadowControl(t, haLongConns, haLongConns/5, shadowCrash)
}

// shadowControl runs crash with the flow stream and, as the control, with
// it blocked; each returns the connections of total that survived. With
// the stream at least 99.9% must, and without it at least minLost must
// break, or the test would not tell the stream's work from luck.
func shadowControl(t *testing.T, total, minLost int, crash func(t *testing.T, block bool) int) {
	t.Helper()
	var synced, control int
	t.Run("synced", func(t *testing.T) {
		synced = crash(t, false)
		if min := (total*999 + 999) / 1000; synced < min {
			t.Errorf("%d of %d connections survived the crash, want at least 99.9%% (%d)", synced, total, min)
		}
	})
	t.Run("stream blocked", func(t *testing.T) {
		control = crash(t, true)
		if lost := total - control; lost < minLost {
			t.Errorf("with the flow stream blocked %d of %d connections broke, want at least %d: the test does not tell the stream's work from luck",
				lost, total, minLost)
		}
	})
	t.Logf("kept through the crash: %d of %d with the flow stream, %d of %d with it blocked", synced, total, control, total)
}

// shadowCrash runs one crash as TestHAShadowOutlivesIdleTimeout describes,
// the flow stream blocked or not, and returns the connections kept.
func shadowCrash(t *testing.T, block bool) int {
	h := newHALabWith(t, 4, fastTimers, false, func(n *haNode) {
		n.cfg.IdleTimeout = shadowIdle
		n.refresh = shadowRefreshFirst
	})
	a, s := h.nodes[0], h.nodes[1]
	checkRefresh(t, a, shadowRefreshFirst, shadowIdle/4)
	// ha.refresh changes on reload, and the rounds follow it.
	for _, n := range h.nodes {
		n.refresh = shadowRefresh
		n.reload(t)
	}
	checkRefresh(t, a, shadowRefresh, shadowRefresh)
	rounds := a.status(t).Counters.RefreshRounds
	time.Sleep(2 * time.Second)
	if got := a.status(t).Counters.RefreshRounds - rounds; got < 3 {
		t.Errorf("%d refresh rounds in 2 s every %v", got, shadowRefresh)
	}

	if block {
		blockFlowStream(t, a.host)
	}
	before := s.status(t).Counters.FlowsReceived
	load := h.startLoad(t)
	t.Logf("connections per server: %v", load.lc.perServer())
	time.Sleep(time.Second)
	// The weights move after the flows began: half the servers take no
	// new flow. Both nodes read it from their files, so that the standby
	// has the new weights even with the stream blocked.
	for _, n := range h.nodes {
		for i := range n.cfg.Ports[0].Servers[:2] {
			n.cfg.Ports[0].Servers[i].Weight = 0
		}
		n.reload(t)
	}
	time.Sleep(shadowIdle + time.Second)
	recv := s.status(t).Counters.FlowsReceived - before
	st := a.status(t).Counters
	t.Logf("%s received %d flow records; %s sent %d refreshed in %d rounds, %d bytes on its sync stream",
		s.name, recv, a.name, st.FlowsRefreshed, st.RefreshRounds, st.StreamBytesSent)
	switch {
	case block && recv != 0:
		t.Fatalf("the flow stream is blocked, yet %s received %d records", s.name, recv)
	case !block && recv < 2*haLongConns:
		t.Errorf("%s received %d records for %d connections over %v: the refresh rounds do not reach it", s.name, recv, haLongConns, shadowIdle)
	}

	killed := time.Now()
	a.crash(t)
	tookOver := waitState(t, s, ha.StateActive, 5*time.Second)
	t.Logf("%s active %v after %s was killed", s.name, tookOver.Sub(killed).Round(time.Millisecond), a.name)
	time.Sleep(afterTakeover)
	return load.stop(t, tookOver.Add(time.Second))
}

// checkRefresh fails the test unless n's refresh periods are est and cl.
func checkRefresh(t *testing.T, n *haNode, est, cl time.Duration) {
	t.Helper()
	if st := n.status(t); st.Refresh != est || st.RefreshClosing != cl {
		t.Errorf("%s refreshes every %v (closing %v), want %v (%v)", n.name, st.Refresh, st.RefreshClosing, est, cl)
	}
}

// blockFlowStream stops the synchronisation streams (TCP to the HA port)
// that leave host with a policy-routing rule in its namespace; heartbeats
// (UDP) pass. A new rule invalidates the routes that open connections
// cached, so the streams already open stop too.
func blockFlowStream(t *testing.T, host *lab.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := host.NS.Command(ctx, "ip", "rule", "add", "ipproto", "tcp", "dport", fmt.Sprint(haPort), "prohibit").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: ip rule: %v: %s", host.Name, err, out)
	}
}
