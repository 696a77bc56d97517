package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestHAActiveActive: a group started active-standby switches to
// active-active by a reload of ha.mode: the active gives its VIP up to the
// routing and each node streams its flows to the other. The client's next
// hop for the VIP is then set by hand (a static neighbour entry, as a
// route would): connections open through dispatcher A, the weights move,
// the next hop becomes B, and every connection carries on with its server
// through B; connections opened through B carry on when the next hop goes
// back to A. A reload back to active-standby brings the VIP up on one node.
func TestHAActiveActive(t *testing.T) {
	testutil.RequirePrivileged(t)
	h := newHALab(t, 4, fastTimers, false)
	a, b := h.nodes[0], h.nodes[1]
	for _, n := range h.nodes {
		n.mode = "active-active"
		n.reload(t)
	}
	deadline := time.Now().Add(haStartTimeout)
	for why := "?"; why != ""; {
		why = ""
		as, bs := a.status(t), b.status(t)
		switch {
		case !as.ActiveActive || !bs.ActiveActive:
			why = "a node is not active-active"
		case len(a.vipsOnEth0(t)) != 0:
			why = a.name + " still holds the VIP"
		case !as.Peers[0].Synced || !bs.Peers[0].Synced || as.Counters.SnapshotsReceived == 0:
			why = "the nodes do not stream to each other yet"
		}
		if why != "" && time.Now().After(deadline) {
			t.Fatalf("after the reload to active-active: %s", why)
		}
		time.Sleep(50 * time.Millisecond)
	}

	h.steerClient(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := b.status(t).Counters.FlowsReceived
	viaA := openLong(ctx, t, h.lab.Client.NS, h.vip4(), 200)
	pa := startPinger(viaA, pingPeriod)
	time.Sleep(time.Second)
	if got := b.status(t).Counters.FlowsReceived - before; got < 200 {
		t.Errorf("%s received %d flow records for 200 connections through %s", b.name, got, a.name)
	}
	t.Logf("connections through %s per server: %v", a.name, viaA.perServer())
	// The weights move: B would pick anew differently.
	for _, n := range h.nodes {
		for i := range n.cfg.Ports[0].Servers[:2] {
			n.cfg.Ports[0].Servers[i].Weight = 0
		}
		n.reload(t)
	}

	packets := h.packets(t, b)
	h.steerClient(t, b)
	time.Sleep(2 * time.Second)
	if got := h.packets(t, b) - packets; got < 1000 {
		t.Fatalf("%s forwarded %d packets after the client's next hop moved to it", b.name, got)
	}
	viaB := openLong(ctx, t, h.lab.Client.NS, h.vip4(), 100)
	pb := startPinger(viaB, pingPeriod)
	time.Sleep(time.Second)
	h.steerClient(t, a)
	time.Sleep(2 * time.Second)

	for _, c := range []struct {
		what string
		lc   *longConns
		p    *pinger
	}{{"opened through " + a.name, viaA, pa}, {"opened through " + b.name, viaB, pb}} {
		failed := c.p.finish()
		shown := 0
		for i, err := range failed {
			if shown++; shown <= 5 {
				t.Errorf("connection %d %s (to %s) broke: %v", i, c.what, c.lc.names[i], err)
			}
		}
		t.Logf("%d of %d connections %s kept working across both moves", len(c.lc.names)-len(failed), len(c.lc.names), c.what)
	}

	// Back to active-standby by a reload: the elected active brings the
	// VIP up again, the other holds none.
	for _, n := range h.nodes {
		n.mode = "active-standby"
		n.reload(t)
	}
	deadline = time.Now().Add(haStartTimeout)
	for why := "?"; why != ""; {
		why = ""
		as, bs := a.status(t), b.status(t)
		holders := 0
		for _, n := range h.nodes {
			if len(n.vipsOnEth0(t)) != 0 {
				holders++
			}
		}
		switch {
		case as.ActiveActive || bs.ActiveActive:
			why = "a node is still active-active"
		case holders != 1:
			why = fmt.Sprintf("%d nodes hold the VIP", holders)
		}
		if why != "" && time.Now().After(deadline) {
			t.Fatalf("after the reload back to active-standby: %s", why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// steerClient makes n the client's next hop for the VIP: a permanent
// neighbour entry, as a route to n would.
func (h *haLab) steerClient(t *testing.T, n *haNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := h.lab.Client
	out, err := c.NS.Command(ctx, "ip", "neigh", "replace", h.lab.VIP4.String(), "lladdr", n.host.MAC.String(),
		"dev", c.Ifname, "nud", "permanent").CombinedOutput()
	if err != nil {
		t.Fatalf("steer the client to %s: %v: %s", n.name, err, out)
	}
	h.checkClientNeighbor(t, n)
}

// packets is the packets n's data plane forwarded for the VIP's ports.
func (h *haLab) packets(t *testing.T, n *haNode) uint64 {
	t.Helper()
	st, err := n.api.Status()
	if err != nil {
		t.Fatalf("%s: status: %v", n.name, err)
	}
	var sum uint64
	for _, p := range st.Ports {
		sum += p.Packets
	}
	return sum
}
