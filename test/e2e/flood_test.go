package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestNDDSYNFlood: an attacker namespace floods the VIP with spoofed SYNs
// from random sources in 203.0.113.0/24, as fast as it can, for a bounded
// time, while the client holds 200 long-lived connections through the VIP
// and keeps opening new ones, with an advisor probing every server. No
// long-lived connection breaks, at least 99% of the new ones succeed, no
// server is taken out and no weight moves, the open-flow counts stay those
// of the client's connections, the flood shows as half-open flows and table
// pressure, and the half-open counts return to zero after it.
func TestNDDSYNFlood(t *testing.T) {
	testutil.RequirePrivileged(t)
	const (
		floodFor = 20 * time.Second
		long     = 200
		webPort  = 8080
	)
	// The manager as it runs out of the box (not the fixture's static
	// policy), with an HTTP advisor probing each server every half second.
	n := newNDDLabWith(t, lab.Options{Attacker: true}, []int{10, 10, 10, 10}, func(c *nddConfig) {
		c.Manager = "  policy: default\n"
		c.Advisors = fmt.Sprintf("advisors:\n  - {name: web, kind: http, target: server, port: %d, interval: 500ms, timeout: 400ms, rise: 1, fall: 2, http: {path: /}}\n", webPort)
		c.Ports[0].Advisor = "web"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := range n.lab.Servers {
		stop, err := lab.ServeHTTP(ctx, &n.lab.Servers[i], netip.AddrPortFrom(n.lab.Servers[i].Addr4, webPort))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	waitFor(t, 10*time.Second, "the advisor finds all four servers up", func() bool {
		st, err := n.api.Advisors()
		if err != nil {
			return false
		}
		up := 0
		for _, s := range st {
			if s.Known && s.Up {
				up++
			}
		}
		return up == 4
	})

	// The advisor's verdict reaches the data plane with the manager's next
	// commit: the weights read before the flood must be the ones after it.
	waitFor(t, 10*time.Second, "every server back at its configured weight", func() bool {
		for _, s := range n.portStatus(t, servicePort).Servers {
			if s.Weight != s.ConfigWeight {
				return false
			}
		}
		return true
	})

	lc := openLong(ctx, t, n.lab.Client.NS, n.vip4(), long)
	weights := func() map[string]uint32 {
		m := map[string]uint32{}
		for _, s := range n.portStatus(t, servicePort).Servers {
			m[s.Address] = s.Weight
		}
		return m
	}
	before := weights()

	flood := &lab.Flood{
		Attacker: n.lab.Attacker, DstMAC: n.lab.Dispatcher.MAC, Target: n.vip4(),
		Sources: netip.MustParsePrefix("203.0.113.0/24"), Duration: floodFor, MaxPackets: lab.MaxFloodPackets,
	}
	var (
		wg       sync.WaitGroup
		fres     lab.FloodResult
		ferr     error
		load     loadResult
		maxHalf  uint64
		pressure bool
		moved    []string
	)
	wg.Go(func() { fres, ferr = flood.Run(ctx) })
	wg.Go(func() {
		// New connections, 500 a second (a batch a second, a few at a
		// time) for the flood's length.
		load = loadResult{perServer: map[string]int{}}
		start := time.Now()
		for i := range int(floodFor / time.Second) {
			r := runLoad(ctx, n.lab.Client.NS, n.vip4(), 500, loadWorkers, 64)
			for k, v := range r.perServer {
				load.perServer[k] += v
			}
			load.errs = append(load.errs, r.errs...)
			time.Sleep(time.Until(start.Add(time.Duration(i+1) * time.Second)))
		}
		load.elapsed = time.Since(start)
	})
	for end := time.Now().Add(floodFor); time.Now().Before(end); time.Sleep(time.Second) {
		st, err := n.api.Status()
		if err != nil {
			t.Fatalf("status during the flood: %v", err)
		}
		var half uint64
		for _, s := range st.Ports[0].Servers {
			half += s.HalfOpenFlows
			if w := before[s.Address]; s.Weight != w {
				moved = append(moved, s.Address)
			}
		}
		maxHalf = max(maxHalf, half)
		pressure = pressure || st.Global.TablePressure
		checkExchange(t, lc, "during the flood", nil)
	}
	wg.Wait()
	if ferr != nil {
		t.Fatalf("flood: %v", ferr)
	}
	checkExchange(t, lc, "after the flood", nil)
	t.Logf("flood: %d spoofed SYNs in %v (%.0f a second); at most %d half-open flows counted; pressure seen: %v",
		fres.Sent, fres.Elapsed.Round(time.Millisecond), fres.Rate(), maxHalf, pressure)

	// New connections: at least 99% succeed.
	failed, done := len(load.errs), load.completed()
	t.Logf("new connections during the flood: %d completed in %v, %d failed, %v", done, load.elapsed.Round(time.Millisecond), failed, load.perServer)
	if done == 0 || float64(failed) > 0.01*float64(done+failed) {
		t.Errorf("%d of %d new connections failed during the flood, want at most 1%%: %v", failed, done+failed, load.errs[:min(len(load.errs), 5)])
	}
	if len(moved) > 0 {
		t.Errorf("weights moved during the flood (servers %v): before %v, now %v", moved, before, weights())
	}
	if maxHalf == 0 {
		t.Errorf("no half-open flow was ever counted: the flood did not reach the table")
	}

	// The open-flow counts are the client's connections, not the flood's.
	var active uint64
	for _, s := range n.portStatus(t, servicePort).Servers {
		active += s.ActiveFlows
	}
	if active > long+2*loadWorkers {
		t.Errorf("%d flows counted open after the flood, want about the %d long-lived connections", active, long)
	}
	// The half-open counts return to zero once the flood's flows time out
	// and ndd reconciles (every 15 s).
	waitFor(t, 40*time.Second, "half-open counts back to zero", func() bool {
		var half uint64
		for _, s := range n.portStatus(t, servicePort).Servers {
			half += s.HalfOpenFlows
		}
		return half == 0
	})
	checkExchange(t, lc, "after the half-open timeout", nil)
}

// TestNDDServerKilledUnderLoad: a server dies (its link goes down: SYNs to
// it vanish, nothing answers) while the client opens connections through
// the VIP. Once the advisor has taken it out, no connection fails because
// of the table: a connection whose SYN went to the dead server just before
// is picked again on its SYN's retransmission instead of following its
// half-open entry back to the dead server.
func TestNDDServerKilledUnderLoad(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := newNDDLab(t, []int{10, 10, 10, 10}, vipAdvisor)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	victim := n.lab.Servers[1]
	weight := func() uint32 {
		for _, s := range n.portStatus(t, servicePort).Servers {
			if s.Address == victim.Addr4.String() {
				return s.Weight
			}
		}
		t.Fatalf("no %s in status", victim.Name)
		return 0
	}
	waitFor(t, 10*time.Second, "the victim up", func() bool { return weight() > 0 })

	type attempt struct {
		start time.Time
		err   error
	}
	var (
		mu       sync.Mutex
		attempts []attempt
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	for range loadWorkers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				start := time.Now()
				_, err := fetchOnce(ctx, n.lab.Client.NS, n.vip4(), 64)
				mu.Lock()
				attempts = append(attempts, attempt{start, err})
				mu.Unlock()
			}
		})
	}
	time.Sleep(time.Second)
	killed := time.Now()
	err := victim.NS.Do(func() error {
		l, err := netlink.LinkByName(victim.Ifname)
		if err != nil {
			return err
		}
		return netlink.LinkSetDown(l)
	})
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("take %s's link down: %v", victim.Name, err)
	}
	waitFor(t, 5*time.Second, victim.Name+" taken out", func() bool { return weight() == 0 })
	out := time.Now()
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()

	// A connection whose first SYN, or its first retransmission (a second
	// later), left after the server was taken out must be accepted; one
	// started after that must complete. (One whose handshake the server
	// completed just before its link went down fails later, reading: not
	// the table's doing.)
	var failed, covered, early int
	for _, a := range attempts {
		switch {
		case a.start.Before(killed):
		case a.start.Add(time.Second).After(out):
			covered++
			if a.err != nil && (strings.HasPrefix(a.err.Error(), "dial ") || a.start.After(out)) {
				failed++
				if failed <= 5 {
					t.Errorf("connection started %v after the kill: %v", a.start.Sub(killed).Round(time.Millisecond), a.err)
				}
			}
		case a.err != nil:
			early++
		}
	}
	t.Logf("%s taken out %v after its link went down; %d connections since whose SYN or its retransmission came after: %d failed; %d earlier ones failed",
		victim.Name, out.Sub(killed).Round(time.Millisecond), covered, failed, early)
	if covered == 0 {
		t.Errorf("no connection attempted after the server was taken out")
	}
}
