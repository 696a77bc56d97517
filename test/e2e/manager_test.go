package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestNDDAdvisorThroughVIP: an advisor with target vip probes VIP:80 on
// each server, steered to it through the dispatcher's lo (the servers
// listen on the VIP only, so a probe of a server's own address would be
// refused and read as down). A server whose service stops is taken out at
// once (weight 0, no new connection reaches it) and comes back by itself
// when its service returns.
func TestNDDAdvisorThroughVIP(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := newNDDLab(t, []int{10, 10, 10, 10}, vipAdvisor)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	up := func() int {
		_, k := advisorsUp(t, "advisors", n.api)
		return k
	}
	waitFor(t, 10*time.Second, "the advisor finds all four servers up through the VIP", func() bool { return up() == 4 })

	victim := n.servers[1]
	weight := func() uint32 {
		for _, s := range n.portStatus(t, servicePort).Servers {
			if s.Address == n.addrOf[victim.name].String() {
				return s.Weight
			}
		}
		t.Fatalf("no %s in status", victim.name)
		return 0
	}
	victim.Stop()
	start := time.Now()
	waitFor(t, 5*time.Second, victim.name+" taken out", func() bool { return weight() == 0 })
	t.Logf("%s out %v after its service stopped", victim.name, time.Since(start).Round(time.Millisecond))

	res := runLoad(ctx, n.lab.Client.NS, n.vip4(), 200, loadWorkers, 64)
	per := checkAllComplete(t, res, 200, "connection while a server is out")
	if per[victim.name] != 0 {
		t.Errorf("%s, out, got %d new connections", victim.name, per[victim.name])
	}

	restarted := startReplyServer(t, &n.lab.Servers[1], n.lab.VIP4)
	n.byAddr[n.addrOf[victim.name]] = restarted
	waitFor(t, 5*time.Second, victim.name+" back", func() bool { return weight() > 0 })
	res = runLoad(ctx, n.lab.Client.NS, n.vip4(), 400, loadWorkers, 64)
	per = checkAllComplete(t, res, 400, "connection after the server came back")
	if per[victim.name] == 0 {
		t.Errorf("%s came back but got no new connections: %v", victim.name, per)
	}
	t.Logf("connections after the return: %v", per)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
