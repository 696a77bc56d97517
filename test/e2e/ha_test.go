package e2e

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// Load of the failover tests: long-lived connections, each making a small
// request every pingPeriod, and a new connection every openPeriod.
const (
	haLongConns = 200
	pingPeriod  = 200 * time.Millisecond
	openPeriod  = 50 * time.Millisecond
	// afterTakeover is how long the load runs on after a takeover before
	// it is judged.
	afterTakeover = 3 * time.Second
)

// haLoad is the client's traffic through a failover.
type haLoad struct {
	lc *longConns
	p  *pinger
	o  *opener
}

func (h *haLab) startLoad(t *testing.T) *haLoad {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lc := openLong(ctx, t, h.lab.Client.NS, h.vip4(), haLongConns)
	return &haLoad{lc: lc, p: startPinger(lc, pingPeriod), o: startOpener(h.lab.Client.NS, h.vip4(), openPeriod)}
}

// finish stops the load and checks it: at least minSurvive of the
// long-lived connections kept working (a last exchange on each included),
// and every new connection started after newFrom succeeded.
func (l *haLoad) finish(t *testing.T, minSurvive float64, newFrom time.Time) {
	t.Helper()
	kept := l.stop(t, newFrom)
	if frac := float64(kept) / haLongConns; frac < minSurvive {
		t.Errorf("%.1f%% of the established connections kept working, want at least %.1f%%", 100*frac, 100*minSurvive)
	}
}

// stop stops the load, checks that every new connection started after
// newFrom succeeded, and returns how many long-lived connections kept
// working (a last exchange on each included).
func (l *haLoad) stop(t *testing.T, newFrom time.Time) (kept int) {
	t.Helper()
	opens := l.o.stop()
	stall, which := l.p.longestStall()
	failed := l.p.finish()
	shown := 0
	for i, err := range failed {
		if shown++; shown <= 5 {
			t.Logf("connection %d (to %s) broke: %v", i, l.lc.names[i], err)
		}
	}
	kept = haLongConns - len(failed)
	t.Logf("%d of %d long-lived connections kept working (%.1f%%); longest stall between replies %v (connection %d)",
		kept, haLongConns, 100*float64(kept)/haLongConns, stall.Round(time.Millisecond), which)
	checkNewAfter(t, opens, newFrom, int(afterTakeover/openPeriod)/2)
	return kept
}

// waitState polls n until it reports want, and returns when it did.
func waitState(t *testing.T, n *haNode, want ha.State, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, err := n.api.HAStatus()
		now := time.Now()
		if err == nil && st.State == want {
			return now
		}
		if now.After(deadline) {
			t.Fatalf("%s is not %s after %v (status %v, %v)", n.name, want, timeout, st.State, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestHACrashTakeover: with the default timers (heartbeats every 0.5 s,
// dead after 2 s), the active's host fails (ndd killed, its link down)
// while the client holds 200 connections and opens new ones. The standby
// is active within 2.5 s, 99% of the established connections keep working
// through it, new connections succeed, and the client's ARP entry for the
// VIP has moved to it.
func TestHACrashTakeover(t *testing.T) {
	testutil.RequirePrivileged(t)
	h := newHALab(t, 4, haTimers{}, false)
	a, s := h.nodes[0], h.nodes[1]
	before := s.status(t).Counters.FlowsReceived
	load := h.startLoad(t)
	time.Sleep(time.Second) // steady state: the standby has every flow
	if got := s.status(t).Counters.FlowsReceived - before; got < haLongConns {
		t.Errorf("%s received %d flow records for %d connections", s.name, got, haLongConns)
	}

	killed := time.Now()
	a.crash(t)
	tookOver := waitState(t, s, ha.StateActive, 5*time.Second)
	took := tookOver.Sub(killed)
	t.Logf("%s active %v after %s was killed", s.name, took.Round(time.Millisecond), a.name)
	if took > 2500*time.Millisecond {
		t.Errorf("takeover took %v, want at most 2.5s", took)
	}
	time.Sleep(afterTakeover)
	// New connections may fail while the VIP moves (a SYN to the dead
	// host); from a second after the takeover on, none may.
	load.finish(t, 0.99, tookOver.Add(time.Second))
	h.checkClientNeighbor(t, s)
	if st := s.status(t); st.Counters.Takeovers != 1 {
		t.Errorf("%s counts %d takeovers, want 1", s.name, st.Counters.Takeovers)
	}
}

// TestHAPlannedTakeover: `ndctl ha takeover` on the standby makes it active
// and returns; every established connection keeps working, new ones
// succeed, and the old active stands by holding no VIP.
func TestHAPlannedTakeover(t *testing.T) {
	testutil.RequirePrivileged(t)
	h := newHALab(t, 4, fastTimers, false)
	a, s := h.nodes[0], h.nodes[1]
	load := h.startLoad(t)
	time.Sleep(time.Second)

	start := time.Now()
	out, stderr, code, err := runNDCTL(t, "--socket", s.cfg.Socket, "ha", "takeover")
	took := time.Since(start)
	if err != nil || code != 0 {
		t.Fatalf("ndctl ha takeover: exit %d, %v: %s", code, err, stderr)
	}
	t.Logf("ndctl ha takeover returned in %v: %s", took.Round(time.Millisecond), strings.TrimSpace(out))
	if st := s.status(t); st.State != ha.StateActive {
		t.Errorf("after ndctl ha takeover returned, %s is %s", s.name, st.State)
	}
	time.Sleep(afterTakeover)
	load.finish(t, 1, start.Add(took))
	if st := a.status(t); st.State != ha.StateStandby {
		t.Errorf("%s is %s, want standby", a.name, st.State)
	}
	if v := a.vipsOnEth0(t); len(v) != 0 {
		t.Errorf("%s still holds %v on eth0", a.name, v)
	}
	if v := s.vipsOnEth0(t); len(v) != 1 || v[0] != h.lab.VIP4 {
		t.Errorf("%s holds %v on eth0, want the cluster's VIP %s", s.name, v, h.lab.VIP4)
	}
	h.checkClientNeighbor(t, s)
}

// TestHAReturn: the old active's host comes back after a crash. Without
// preempt it stays standby (and holds no VIP); with preempt it takes the
// VIPs back in an orderly handover that breaks no connection.
func TestHAReturn(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, preempt := range []bool{false, true} {
		name := "no preempt"
		if preempt {
			name = "preempt"
		}
		t.Run(name, func(t *testing.T) {
			h := newHALab(t, 2, fastTimers, preempt)
			a, s := h.nodes[0], h.nodes[1]
			a.crash(t)
			waitState(t, s, ha.StateActive, 3*time.Second)
			h.waitReachable(t, s, haStartTimeout) // s is the only node left

			// Connections made through the standby, now active.
			load := h.startLoad(t)
			time.Sleep(500 * time.Millisecond)
			a.revive(t)
			back := time.Now()
			if preempt {
				tookBack := waitState(t, a, ha.StateActive, 5*time.Second)
				waitState(t, s, ha.StateStandby, 2*time.Second)
				time.Sleep(afterTakeover)
				load.finish(t, 1, tookBack)
				if t.Failed() {
					h.logDataPlanes(t)
				}
				h.checkClientNeighbor(t, a)
				if v := s.vipsOnEth0(t); len(v) != 0 {
					t.Errorf("%s still holds %v on eth0", s.name, v)
				}
				return
			}
			waitState(t, a, ha.StateStandby, 5*time.Second)
			// Long enough for a preempting node to have acted.
			time.Sleep(afterTakeover)
			if st := a.status(t); st.State != ha.StateStandby {
				t.Errorf("%s without preempt is %s %v after it returned", a.name, st.State, time.Since(back).Round(time.Millisecond))
			}
			if st := s.status(t); st.State != ha.StateActive {
				t.Errorf("%s is %s, want active", s.name, st.State)
			}
			load.finish(t, 1, back)
			h.checkClientNeighbor(t, s)
			if v := a.vipsOnEth0(t); len(v) != 0 {
				t.Errorf("%s came back as a standby holding %v on eth0 (left from before its crash): it answers ARP for them", a.name, v)
			}
		})
	}
}

// TestHAForgedMessagesRejected: heartbeats and a synchronisation stream
// sealed with the wrong key, claiming to come from the group's nodes, are
// rejected and counted (as `ndctl ha status --json` shows), and change
// nothing: the active stays active, the standby standby, and the standby
// loads no forged flow.
func TestHAForgedMessagesRejected(t *testing.T) {
	testutil.RequirePrivileged(t)
	h := newHALab(t, 2, fastTimers, false)
	a, s := h.nodes[0], h.nodes[1]
	wrongKey := []byte("not-the-group-key-0123456789")
	beforeA, beforeS := a.ndctlStatus(t), s.ndctlStatus(t)

	const forged = 5
	for i := range forged {
		// To the active: "the standby is active, with the top priority".
		hbActive := []byte{byte(ha.StateActive), 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		if err := sendUDP(h.lab.Client.NS, a.self, forgedFrame(1, 0, s.self, uint64(1000+i), hbActive, wrongKey)); err != nil {
			t.Fatal(err)
		}
		// To the standby: "the active is stopping".
		hbStop := []byte{byte(ha.StateStopping), 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		if err := sendUDP(h.lab.Client.NS, s.self, forgedFrame(1, 0, a.self, uint64(1000+i), hbStop, wrongKey)); err != nil {
			t.Fatal(err)
		}
	}
	// A forged stream to the standby: one flow record.
	flow := []byte{0, 1, 0, 6, 4, 198, 51, 100, 2, 0x30, 0x39, 4, 198, 51, 100, 100, 0, 80, 4, 198, 51, 100, 11}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.lab.Client.NS.DialContext(ctx, "tcp", s.self.String())
	if err != nil {
		t.Fatalf("dial %s: %v", s.self, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(forgedFrame(2, 1, a.self, 1, flow, wrongKey)); err != nil {
		t.Fatalf("write forged flows: %v", err)
	}
	// The standby hangs up on a stream that fails authentication.
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("%s answered a forged stream", s.name)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("%s kept a forged stream open", s.name)
	}

	time.Sleep(10 * fastTimers.interval)
	afterA, afterS := a.ndctlStatus(t), s.ndctlStatus(t)
	if got := afterA.Counters.Rejected[ha.RejectAuth] - beforeA.Counters.Rejected[ha.RejectAuth]; got != forged {
		t.Errorf("%s rejected %d messages for authentication, want %d", a.name, got, forged)
	}
	if got := afterS.Counters.Rejected[ha.RejectAuth] - beforeS.Counters.Rejected[ha.RejectAuth]; got != forged+1 {
		t.Errorf("%s rejected %d messages for authentication, want %d", s.name, got, forged+1)
	}
	if afterA.State != ha.StateActive || afterS.State != ha.StateStandby {
		t.Errorf("after forged messages: %s is %s, %s is %s", a.name, afterA.State, s.name, afterS.State)
	}
	if afterA.Counters.StepDowns != beforeA.Counters.StepDowns || afterS.Counters.Takeovers != beforeS.Counters.Takeovers {
		t.Errorf("forged messages changed roles: %s step-downs %d -> %d, %s takeovers %d -> %d", a.name,
			beforeA.Counters.StepDowns, afterA.Counters.StepDowns, s.name, beforeS.Counters.Takeovers, afterS.Counters.Takeovers)
	}
	if afterS.Counters.FlowsReceived != beforeS.Counters.FlowsReceived {
		t.Errorf("%s loaded %d flows during the forgery", s.name, afterS.Counters.FlowsReceived-beforeS.Counters.FlowsReceived)
	}
	// The group still works.
	if _, err := fetchOnce(ctx, h.lab.Client.NS, h.vip4(), 64); err != nil {
		t.Errorf("after the forgery, the VIP does not answer: %v", err)
	}
}
