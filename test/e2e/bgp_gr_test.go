package e2e

import (
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// routeWatch polls the router's route to the VIP and remembers the longest
// time it had no next hop.
type routeWatch struct {
	mu      sync.Mutex
	gone    time.Time // when the route went, zero while it is there
	longest time.Duration
	stop    chan struct{}
	done    chan struct{}
}

func watchRoute(b *bgpLab) *routeWatch {
	w := &routeWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			hops, err := b.lab.RouterNextHops(b.lab.VIP4)
			now := time.Now()
			w.mu.Lock()
			switch {
			case (err != nil || len(hops) == 0) && w.gone.IsZero():
				w.gone = now
			case err == nil && len(hops) > 0 && !w.gone.IsZero():
				w.longest = max(w.longest, now.Sub(w.gone))
				w.gone = time.Time{}
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return w
}

// end stops the watch and returns the longest gap, counting one still open.
func (w *routeWatch) end() time.Duration {
	close(w.stop)
	<-w.done
	if !w.gone.IsZero() {
		w.longest = max(w.longest, time.Since(w.gone))
	}
	return w.longest
}

// TestBGPGracefulRestart: with bgp.graceful_restart a lone dispatcher's
// ndd killed (a crash) leaves its route at the router while the pinned
// data plane forwards on; the ndd started again over that data plane
// announces with the restart flag, and the route never leaves the router's
// table; SIGTERM keeps it too. The connections carry on throughout. The
// control, the same lab after a reload turned graceful restart off: a
// crash takes the route away at once.
func TestBGPGracefulRestart(t *testing.T) {
	testutil.RequirePrivileged(t)
	// Short, so that the test sees the router keep the route past it: the
	// restarted ndd's routes replaced the stale ones, not the timer.
	const restart = 5 * time.Second
	section := func(d *lab.Host, gr time.Duration) string {
		return bgpSection(d, time.Second, "", fmt.Sprintf("  graceful_restart: %s\n", gr))
	}
	b := newBGPLab(t, 1, "", false, func(i int, d *lab.Host) string { return section(d, restart) })
	n := b.nodes[0]
	b.waitNextHops(t, "announced", time.Now(), n)
	lc := openLong(t.Context(), t, b.lab.Client.NS, netip.AddrPortFrom(b.lab.VIP4, servicePort), 4)
	established := func(what string) {
		t.Helper()
		waitFor(t, 15*time.Second, what, func() bool {
			st, err := n.api.BGPStatus()
			return err == nil && len(st.Peers) == 1 && st.Peers[0].State == "established" && len(st.VIPs) == 1 && st.VIPs[0].Announced
		})
	}
	exited := func(what string) {
		t.Helper()
		waitFor(t, 10*time.Second, what, func() bool { return n.proc.Exited() })
	}

	w := watchRoute(b)
	n.proc.Kill()
	exited("ndd killed")
	time.Sleep(1500 * time.Millisecond)
	checkExchange(t, lc, "ndd crashed, its routes kept", nil)
	n.start(t)
	established("the restarted ndd's session")
	time.Sleep(restart + time.Second)
	checkExchange(t, lc, "ndd restarted, past the restart time", nil)

	if err := n.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited("ndd stopped by SIGTERM")
	time.Sleep(time.Second)
	checkExchange(t, lc, "ndd stopped, its routes kept", nil)
	n.start(t)
	established("the session after SIGTERM")
	time.Sleep(time.Second)
	if gap := w.end(); gap > 0 {
		t.Errorf("with graceful restart the router was without the route for %v across a crash and a stop", gap)
	} else {
		t.Logf("with graceful restart the route stayed at the router through a crash and a SIGTERM, the connections kept")
	}

	// The control: graceful restart off (the sessions restart without
	// it), then a crash.
	n.bgp = section(n.host, 0)
	n.write(t)
	if _, stderr, code, err := runNDCTL(t, "--socket", n.cfg.Socket, "config", "reload"); err != nil || code != 0 {
		t.Fatalf("reload without graceful restart: exit %d, %v: %s", code, err, stderr)
	}
	time.Sleep(2 * time.Second) // the session closed and opened again
	established("the session without graceful restart")
	b.waitNextHops(t, "announced without graceful restart", time.Now(), n)
	at := time.Now()
	n.proc.Kill()
	gone := b.waitNextHops(t, "ndd killed without graceful restart", at)
	t.Logf("without graceful restart the route left the router %v after the crash", gone.Round(time.Millisecond))
	n.start(t)
}
