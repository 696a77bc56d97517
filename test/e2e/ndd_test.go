package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// The tests below run ndd as a real process in the lab's dispatcher
// namespace, over a configuration file, and drive it through its control
// API while real TCP connections cross the data plane it loaded.

// TestNDDWeights: with weights 1:1:2:4, 4,000 new connections to VIP4:80
// all complete and ndd's counters agree with what the client saw. Under the
// Maglev scheduler each server's share is within 3 points of its weight's
// share; under the delay scheduler (the default), which sends each new flow
// to the server with the fewest open flows for its weight, within 20% of it
// (a closed loop of 16 clients on a shared 2-core machine: a server that
// answers more slowly rightly takes fewer).
func TestNDDWeights(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, c := range []struct {
		scheduler        string
		points, relative float64
	}{{scheduler: "maglev", points: 0.03}, {scheduler: "", relative: 0.2}} {
		name := c.scheduler
		if name == "" {
			name = "default"
		}
		t.Run(name, func(t *testing.T) {
			n := newNDDLab(t, []int{1, 1, 2, 4}, func(cfg *nddConfig) { cfg.Ports[0].Scheduler = c.scheduler })
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()

			const (
				conns   = 4000
				workers = 16
			)
			before := n.newFlows(t)
			res := runLoad(ctx, n.lab.Client.NS, n.vip4(), conns, workers, 64)
			after := n.newFlows(t)

			worst := n.checkLoad(t, res, conns)
			t.Logf("%d connections in %v; worst share is %.2f points off its weight's", res.completed(), res.elapsed.Round(time.Millisecond), 100*worst)
			if c.points > 0 && worst > c.points {
				t.Errorf("a server's share is %.2f points off its weight's, want at most %.0f", 100*worst, 100*c.points)
			}
			if c.relative > 0 {
				for i, s := range n.servers {
					share := float64(res.perServer[s.name]) / conns
					want := float64(n.weights[i]) / 8
					if math.Abs(share-want) > c.relative*want {
						t.Errorf("%s: share %.1f%%, want its weight's %.1f%% within %.0f%%", s.name, 100*share, 100*want, 100*c.relative)
					}
				}
			}
			// New flows are counted when established (the handshake's
			// ACK); one in a thousand (rounded up) may be missed where
			// packets of a flow race on two CPUs (a known gap, in the
			// session notes).
			counted := map[string]uint64{}
			for _, s := range n.servers {
				counted[s.name] = after[s.name] - before[s.name]
				got, want := counted[s.name], uint64(res.perServer[s.name])
				if got > want || want-got > (want+999)/1000 {
					t.Errorf("%s: ndd counted %d new flows, the client saw %d connections answered", s.name, got, want)
				} else if got != want {
					t.Logf("%s: ndd counted %d new flows, the client saw %d connections answered", s.name, got, want)
				}
			}
			t.Logf("new flows counted by ndd: %v", counted)
		})
	}
}

// TestNDDRepliesBypassDispatcher: the servers' replies go straight to the
// client. Over 300 connections of 64 KiB replies, the dispatcher's eth0
// receives and sends a small fraction of the reply bytes (the requests and
// acknowledgements it forwards), while the client's eth0 receives them all.
func TestNDDRepliesBypassDispatcher(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := newNDDLab(t, []int{1, 1, 2, 4}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const (
		conns = 300
		ratio = 0.05 // the most the dispatcher may see, as a fraction of the reply bytes
		// ownTraffic bounds the bytes the dispatcher may send besides
		// the frames it forwards: its own ARP and the like.
		ownTraffic = 16 << 10
	)
	l := n.lab
	d, c := &l.Dispatcher, &l.Client
	dBefore := readLinkStats(t, d.NS, d.Ifindex)
	cBefore := readLinkStats(t, c.NS, c.Ifindex)
	pBefore := n.portStatus(t, servicePort)
	sentBefore := n.sent()

	res := runLoad(ctx, c.NS, n.vip4(), conns, loadWorkers, replySize)
	n.settle(t)

	dDelta := readLinkStats(t, d.NS, d.Ifindex).sub(dBefore)
	cDelta := readLinkStats(t, c.NS, c.Ifindex).sub(cBefore)
	pAfter := n.portStatus(t, servicePort)
	sent := uint64(n.sent() - sentBefore)
	forwarded := pAfter.Bytes - pBefore.Bytes

	checkAllComplete(t, res, conns, "connection")
	t.Logf("servers sent %d reply bytes; the client read %d payload bytes, its eth0 received %d bytes in %d frames",
		sent, res.received, cDelta.rxBytes, cDelta.rxPackets)
	t.Logf("dispatcher eth0: received %d bytes in %d frames (%.2f%% of the reply bytes), sent %d bytes in %d frames (%.2f%%); ndd forwarded %d frames, %d bytes (%.2f%%)",
		dDelta.rxBytes, dDelta.rxPackets, percent(dDelta.rxBytes, sent), dDelta.txBytes, dDelta.txPackets, percent(dDelta.txBytes, sent),
		pAfter.Packets-pBefore.Packets, forwarded, percent(forwarded, sent))

	if want := uint64(conns) * replySize; uint64(res.received) != want || sent < want {
		t.Errorf("client read %d payload bytes and servers sent %d, want %d", res.received, sent, want)
	}
	if cDelta.rxBytes < sent {
		t.Errorf("client eth0 received %d bytes, fewer than the %d reply bytes", cDelta.rxBytes, sent)
	}
	if forwarded == 0 {
		t.Errorf("ndd's data plane forwarded nothing for %s", n.vip4())
	}
	limit := uint64(ratio * float64(sent))
	if dDelta.rxBytes > limit {
		t.Errorf("dispatcher eth0 received %d bytes, want under %d (%.0f%% of the %d reply bytes): replies pass through the dispatcher",
			dDelta.rxBytes, limit, 100*ratio, sent)
	}
	if dDelta.txBytes > limit {
		t.Errorf("dispatcher eth0 sent %d bytes, want under %d (%.0f%% of the %d reply bytes)", dDelta.txBytes, limit, 100*ratio, sent)
	}
	// What the dispatcher sent is what its data plane forwarded (the
	// clients' frames, sent back out of eth0 to the servers), give or take
	// a few frames of its own such as ARP: none of it is reply bytes.
	if own := int64(dDelta.txBytes) - int64(forwarded); own > ownTraffic {
		t.Errorf("dispatcher eth0 sent %d bytes more than its data plane forwarded, want at most %d", own, ownTraffic)
	} else {
		t.Logf("dispatcher eth0 sent %d bytes besides the frames ndd forwarded", max(own, 0))
	}
	if fwd := pAfter.Packets - pBefore.Packets; dDelta.rxPackets < fwd {
		t.Errorf("dispatcher eth0 received %d frames, fewer than the %d ndd forwarded from it", dDelta.rxPackets, fwd)
	}
}

// TestNDDQuiesce: a connection open while its server is quiesced through
// the API keeps working; new connections avoid the quiesced server;
// unquiescing brings it back.
func TestNDDQuiesce(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := newNDDLab(t, []int{1, 1, 2, 4}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const newConns = 200
	vip := n.vip4()

	long := openLong(ctx, t, n.lab.Client.NS, vip, 1)
	name := long.names[0]
	addr := n.addrOf[name]
	quiesce := func(q bool) {
		t.Helper()
		ch, err := n.api.SetServer(vip.Addr().String(), vip.Port(), "tcp", addr.String(), api.ServerPatch{Quiesce: &q})
		if err != nil {
			t.Fatalf("set server %s quiesce=%v: %v", addr, q, err)
		}
		t.Logf("set %s (%s) quiesce=%v: %s", name, addr, q, ch)
	}
	serverStatus := func() nd.ServerStatus {
		t.Helper()
		for _, s := range n.portStatus(t, servicePort).Servers {
			if s.Address == addr.String() {
				return s
			}
		}
		t.Fatalf("status lacks server %s", addr)
		return nd.ServerStatus{}
	}

	quiesce(true)
	if s := serverStatus(); s.State != nd.StateQuiesced || s.Weight != 0 || !s.Quiesced {
		t.Errorf("after quiesce, %s is %s with weight %d (quiesced %v), want quiesced with weight 0", addr, s.State, s.Weight, s.Quiesced)
	}
	checkExchange(t, long, "after quiesce", nil)
	// The connection table (ndctl flows) shows the open flow on its server.
	client := netip.MustParseAddrPort(long.sessions[0].c.LocalAddr().String())
	flows, err := n.api.Flows(api.FlowQuery{Client: client.Addr(), Server: addr, Protocol: "tcp"})
	if err != nil {
		t.Fatalf("flows: %v", err)
	}
	if i := slices.IndexFunc(flows.Flows, func(f api.Flow) bool { return f.Client == client.String() }); i < 0 ||
		flows.Flows[i].VIP != vip.String() || flows.Flows[i].Closing {
		t.Errorf("connection table lists %+v for server %s, want the open flow from %s to %s", flows.Flows, addr, client, vip)
	}
	res := runLoad(ctx, n.lab.Client.NS, vip, newConns, loadWorkers, 256)
	per := checkAllComplete(t, res, newConns, "new connection while quiesced")
	t.Logf("new connections while %s is quiesced: %v", name, per)
	if per[name] != 0 {
		t.Errorf("quiesced %s took %d of %d new connections", name, per[name], newConns)
	}
	for _, s := range n.servers {
		if s.name != name && per[s.name] == 0 {
			t.Errorf("%s took none of the new connections", s.name)
		}
	}
	checkExchange(t, long, "after new connections", nil)
	if s := serverStatus(); s.ActiveFlows < 1 {
		t.Errorf("quiesced %s shows %d active flows, want the long-lived one", addr, s.ActiveFlows)
	}

	quiesce(false)
	s := serverStatus()
	if s.State != nd.StateUp || s.Weight != s.ConfigWeight || s.Weight == 0 {
		t.Errorf("after unquiesce, %s is %s with weight %d (configured %d), want up with its configured weight", addr, s.State, s.Weight, s.ConfigWeight)
	}
	res = runLoad(ctx, n.lab.Client.NS, vip, newConns, loadWorkers, 256)
	per = checkAllComplete(t, res, newConns, "new connection after unquiesce")
	t.Logf("new connections after unquiescing %s: %v", name, per)
	if per[name] == 0 {
		t.Errorf("unquiesced %s took none of %d new connections", name, newConns)
	}
	checkExchange(t, long, "after unquiesce", nil)
}

// TestNDDLiveChanges: with 100 long-lived connections open, `server add`,
// `server remove` and `config apply` leave every connection to a remaining
// server working; new connections follow each change.
func TestNDDLiveChanges(t *testing.T) {
	testutil.RequirePrivileged(t)
	// server4 is not configured at first.
	n := newNDDLab(t, []int{1, 1, 2, -1}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const (
		longCount = 100
		newConns  = 200
	)
	vip := n.vip4()
	c := n.lab.Client.NS
	s1, s4 := n.servers[0].name, n.servers[3].name

	long := openLong(ctx, t, c, vip, longCount)
	t.Logf("long-lived connections per server: %v", long.perServer())
	checkExchange(t, long, "before any change", nil)

	// server add: server4 with weight 4.
	w := uint32(4)
	ch, err := n.api.AddServer(vip.Addr().String(), vip.Port(), "tcp", api.ServerRequest{Address: n.addrOf[s4].String(), Weight: &w})
	if err != nil {
		t.Fatalf("add server %s: %v", s4, err)
	}
	t.Logf("server add: %s", ch)
	n.waitReady(t)
	checkExchange(t, long, "after server add", nil)
	per := checkAllComplete(t, runLoad(ctx, c, vip, newConns, loadWorkers, 256), newConns, "new connection after server add")
	t.Logf("new connections after adding %s: %v", s4, per)
	if per[s4] == 0 {
		t.Errorf("added %s took none of %d new connections", s4, newConns)
	}

	// server remove: server1. Its connections may break; none other may.
	ch, err = n.api.RemoveServer(vip.Addr().String(), vip.Port(), "tcp", n.addrOf[s1].String())
	if err != nil {
		t.Fatalf("remove server %s: %v", s1, err)
	}
	t.Logf("server remove: %s", ch)
	toRemoved := func(i int) bool { return long.names[i] == s1 }
	checkExchange(t, long, "after server remove", toRemoved)
	per = checkAllComplete(t, runLoad(ctx, c, vip, newConns, loadWorkers, 256), newConns, "new connection after server remove")
	t.Logf("new connections after removing %s: %v", s1, per)
	if per[s1] != 0 {
		t.Errorf("removed %s took %d of %d new connections", s1, per[s1], newConns)
	}
	// What became of the connections to the removed server is not part of
	// the contract: probe them briefly and report.
	var (
		gone, alive int
		sample      error
	)
	for i, s := range long.sessions {
		if !toRemoved(i) {
			continue
		}
		timer := time.AfterFunc(time.Second, func() { s.c.SetDeadline(time.Now()) })
		if _, err := s.get(256); err != nil {
			gone++
			sample = err
		} else {
			alive++
		}
		timer.Stop()
		s.close()
		long.sessions[i] = nil
	}
	t.Logf("connections to removed %s: %d still answered, %d broke (e.g. %v)", s1, alive, gone, sample)

	// config apply: new weights for the remaining servers and a second port.
	cfg := n.cfg.clone()
	cfg.Ports[0].Servers = []serverConfig{
		{Addr: n.addrOf[n.servers[1].name], Weight: 3},
		{Addr: n.addrOf[n.servers[2].name], Weight: 1},
		{Addr: n.addrOf[s4], Weight: 2},
	}
	cfg.Ports = append(cfg.Ports, portConfig{Port: 8080, Servers: cfg.Ports[0].Servers})
	ch, err = n.api.ApplyConfig([]byte(cfg.yaml()))
	if err != nil {
		t.Fatalf("config apply: %v", err)
	}
	t.Logf("config apply: %s", ch)
	n.waitReady(t)
	for _, p := range n.portStatus(t, servicePort).Servers {
		if p.Address == n.addrOf[s4].String() && p.Weight != 2 {
			t.Errorf("after config apply %s has weight %d, want 2", s4, p.Weight)
		}
	}
	n.portStatus(t, 8080) // fails the test if the new port is missing
	checkExchange(t, long, "after config apply", nil)
	per = checkAllComplete(t, runLoad(ctx, c, vip, newConns, loadWorkers, 256), newConns, "new connection after config apply")
	t.Logf("new connections after config apply: %v", per)
	if per[s1] != 0 {
		t.Errorf("removed %s took %d new connections after config apply", s1, per[s1])
	}
}

// TestNDDUndefinedPortDropped: a SYN to a port the VIP does not serve is
// dropped by the data plane (the dial times out: a refusal would mean the
// dispatcher's own stack saw it), and counted; the dispatcher's own
// services and VIP:80 keep working.
func TestNDDUndefinedPortDropped(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := newNDDLab(t, []int{1, 1, 2, 4}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l := n.lab
	filtered := func() uint64 {
		t.Helper()
		st, err := n.api.Status()
		if err != nil {
			t.Fatalf("status: %v", err)
		}
		for _, v := range st.VIPs {
			if v.VIP == l.VIP4.String() {
				return v.Filtered
			}
		}
		return 0
	}

	before, accepted := filtered(), n.accepted()
	addr := netip.AddrPortFrom(l.VIP4, servicePort+1)
	start := time.Now()
	s, err := dial(ctx, l.Client.NS, addr, time.Second)
	switch {
	case err == nil:
		s.close()
		t.Errorf("connection to %s succeeded, want it dropped", addr)
	case !errIsTimeout(err):
		t.Errorf("connection to %s: %v, want a timeout (a refusal means the dispatcher's stack saw the SYN)", addr, err)
	}
	after := filtered()
	t.Logf("%s: dial gave up after %v (%v); ndd's filtered counter %d -> %d", addr, time.Since(start).Round(time.Millisecond), err, before, after)
	if after <= before {
		t.Errorf("filtered counter of %s stayed at %d", l.VIP4, after)
	}
	if got := n.accepted(); got != accepted {
		t.Errorf("servers accepted %d connections during the dial to %s", got-accepted, addr)
	}

	// The dispatcher host's own service, on its own address.
	d := &l.Dispatcher
	own := netip.AddrPortFrom(d.Addr4, 9000)
	if err := echoOwn(ctx, t, l, own); err != nil {
		t.Errorf("client to the dispatcher's own %s: %v", own, err)
	} else {
		t.Logf("%s: the dispatcher's own listener accepted the client and echoed", own)
	}

	if name, err := fetchOnce(ctx, l.Client.NS, n.vip4(), 256); err != nil {
		t.Errorf("%s after the dropped dial: %v", n.vip4(), err)
	} else {
		t.Logf("%s still served, by %s", n.vip4(), name)
	}
}

// TestNDDRestart: ndd killed with SIGKILL and restarted while 50
// connections are open: each keeps exchanging data with its server before
// the kill, while ndd is down (the pinned data plane forwards alone) and
// after the restart; new connections work while it is down and after.
func TestNDDRestart(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := newNDDLab(t, []int{1, 1, 2, 4}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const (
		longCount = 50
		newConns  = 200
	)
	c := n.lab.Client.NS
	long := openLong(ctx, t, c, n.vip4(), longCount)
	t.Logf("long-lived connections per server: %v", long.perServer())
	checkExchange(t, long, "before the kill", nil)

	if err := n.proc.Stop(syscall.SIGKILL, nddStopTimeout); err != nil {
		t.Fatalf("kill ndd: %v", err)
	}
	t.Logf("ndd killed: %v", n.proc.Err())
	checkExchange(t, long, "while ndd is down", nil)
	per := checkAllComplete(t, runLoad(ctx, c, n.vip4(), newConns, loadWorkers, 256), newConns, "new connection while ndd is down")
	t.Logf("new connections while ndd is down: %v", per)

	start := time.Now()
	n.start(t)
	t.Logf("ndd restarted and ready in %v", time.Since(start).Round(time.Millisecond))
	checkExchange(t, long, "after the restart", nil)
	per = checkAllComplete(t, runLoad(ctx, c, n.vip4(), newConns, loadWorkers, 256), newConns, "new connection after the restart")
	t.Logf("new connections after the restart: %v", per)
	for _, s := range n.servers {
		if per[s.name] == 0 {
			t.Errorf("%s took none of the new connections after the restart", s.name)
		}
	}
	var active uint64
	for _, s := range n.portStatus(t, servicePort).Servers {
		active += s.ActiveFlows
	}
	t.Logf("restarted ndd reports %d active flows on %s", active, n.vip4())
	if active < longCount {
		t.Errorf("restarted ndd reports %d active flows, want at least the %d long-lived connections", active, longCount)
	}
	checkExchange(t, long, "at the end", nil)
}

// badConfig is a configuration with one problem, and how its report must
// read: words it must contain, and the text of the line it must point at
// (empty: the location is not checked).
type badConfig struct {
	name  string
	yaml  string
	words []string
	line  string
}

// badConfigs derives the bad configurations from the good one.
func badConfigs(t *testing.T, n *nddLab) []badConfig {
	t.Helper()
	good := n.cfg.yaml()
	s := n.cfg.Ports[0].Servers
	replace := func(old, new string) string {
		t.Helper()
		if !strings.Contains(good, old) {
			t.Fatalf("configuration lacks %q:\n%s", old, good)
		}
		return strings.Replace(good, old, new, 1)
	}
	dup := n.cfg.clone()
	dup.Ports = append(dup.Ports, dup.Ports[0])
	second := fmt.Sprintf("- {address: %s, weight: %d}", s[1].Addr, s[1].Weight)
	return []badConfig{
		{
			name:  "unknown field",
			yaml:  replace(second, fmt.Sprintf("- {address: %s, wieght: %d}", s[1].Addr, s[1].Weight)),
			words: []string{"wieght", "unknown field"},
			line:  "wieght",
		},
		{
			name:  "duplicate VIP:port",
			yaml:  dup.yaml(),
			words: []string{"duplicate port 80/tcp", lab.VIP4.String()},
		},
		{
			name:  "bad address",
			yaml:  replace("address: "+s[0].Addr.String(), "address: 198.51.100.300"),
			words: []string{"198.51.100.300"},
			line:  "198.51.100.300",
		},
		{
			name:  "weight out of range",
			yaml:  replace(second, fmt.Sprintf("- {address: %s, weight: 1001}", s[1].Addr)),
			words: []string{"weight", "1001", "out of range"},
			line:  "1001",
		},
		{
			name:  "unknown interface",
			yaml:  replace("interfaces: [eth0]", "interfaces: [eth9]"),
			words: []string{"interface eth9"},
			line:  "eth9",
		},
	}
}

// lineOf returns the 1-based number of the first line of text that holds
// s, or of the second such line when second is set.
func lineOf(text, s string, second bool) int {
	seen := false
	for i, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			if !second || seen {
				return i + 1
			}
			seen = true
		}
	}
	return 0
}

// TestNDDBadConfigRejected: configurations with one problem each are
// refused by `config apply` and by `ndd --check`, with a message naming
// the problem and its line and column; the running configuration stays
// and traffic keeps flowing.
func TestNDDBadConfigRejected(t *testing.T) {
	testutil.RequirePrivileged(t)
	n := newNDDLab(t, []int{1, 1, 2, 4}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	cfgBefore, err := n.api.Config()
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	portBefore := n.portStatus(t, servicePort)
	located := regexp.MustCompile(`(?:^|[\s;])([^\s:;]+):(\d+):(\d+): `)

	// `ndd --check` accepts the running file.
	nddPath := nddBinary(t)
	stdout, stderr, code, err := runInNS(n.lab.Dispatcher.NS, nddPath, "--check", n.cfgPath)
	if err != nil || code != 0 {
		t.Fatalf("ndd --check of the good file: exit %d, %v: %s%s", code, err, stdout, stderr)
	}

	for _, bc := range badConfigs(t, n) {
		t.Run(bc.name, func(t *testing.T) {
			wantLine := 0
			if bc.line != "" {
				wantLine = lineOf(bc.yaml, bc.line, false)
			} else {
				wantLine = lineOf(bc.yaml, "- port: 80", true)
			}
			checkReport := func(how, file, msg string) {
				t.Helper()
				for _, w := range bc.words {
					if !strings.Contains(msg, w) {
						t.Errorf("%s: message %q does not mention %q", how, msg, w)
					}
				}
				m := located.FindStringSubmatch(msg)
				switch {
				case m == nil:
					t.Errorf("%s: message %q has no file:line:col", how, msg)
				case m[1] != file:
					t.Errorf("%s: message %q names %s, want %s", how, msg, m[1], file)
				case m[2] != fmt.Sprint(wantLine):
					t.Errorf("%s: message %q points at line %s, want %d", how, msg, m[2], wantLine)
				}
				t.Logf("%s: %s", how, msg)
			}

			// Through the API.
			_, err := n.api.ApplyConfig([]byte(bc.yaml))
			var ae *api.Error
			switch {
			case err == nil:
				t.Errorf("config apply accepted the configuration with a %s", bc.name)
			case !errors.As(err, &ae):
				t.Errorf("config apply: %v, want an API error", err)
			default:
				if ae.Status != http.StatusBadRequest {
					t.Errorf("config apply: status %d, want 400", ae.Status)
				}
				checkReport("config apply", "request", ae.Message)
			}

			// Through ndd --check, in the dispatcher's namespace, where
			// eth0 exists and eth9 does not.
			path := filepath.Join(n.dir, "bad.yaml")
			if err := os.WriteFile(path, []byte(bc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			stdout, stderr, code, err := runInNS(n.lab.Dispatcher.NS, nddPath, "--check", path)
			if err != nil {
				t.Fatal(err)
			}
			if code != 1 {
				t.Errorf("ndd --check: exit %d, want 1 (stdout %q)", code, stdout)
			}
			checkReport("ndd --check", path, strings.TrimSpace(stderr))
		})
	}

	// The running configuration stayed, and so did the data plane.
	cfgAfter, err := n.api.Config()
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if string(cfgAfter) != string(cfgBefore) {
		t.Errorf("running configuration changed:\nbefore:\n%s\nafter:\n%s", cfgBefore, cfgAfter)
	}
	portAfter := n.portStatus(t, servicePort)
	if len(portAfter.Servers) != len(portBefore.Servers) {
		t.Fatalf("status shows %d servers, before %d", len(portAfter.Servers), len(portBefore.Servers))
	}
	for i, s := range portAfter.Servers {
		b := portBefore.Servers[i]
		if s.Address != b.Address || s.Weight != b.Weight || s.State != b.State {
			t.Errorf("server %d is %s weight %d %s, was %s weight %d %s", i, s.Address, s.Weight, s.State, b.Address, b.Weight, b.State)
		}
	}
	const conns = 200
	per := checkAllComplete(t, runLoad(ctx, n.lab.Client.NS, n.vip4(), conns, loadWorkers, 256), conns, "connection after the refused configurations")
	t.Logf("connections after the refused configurations: %v", per)
}

// TestNDDAPITokenOverTCP: the API's TCP listener, on the dispatcher's own
// address and reached from the client's namespace, refuses requests
// without the bearer token or with a wrong one (401, nothing changed) and
// serves those with it.
func TestNDDAPITokenOverTCP(t *testing.T) {
	testutil.RequirePrivileged(t)
	const token = "e2e-token-0123456789abcdef"
	var listen netip.AddrPort
	n := newNDDLab(t, []int{1, 1, 2, 4}, func(c *nddConfig) {
		listen = netip.AddrPortFrom(netip.MustParseAddr("198.51.100.3"), 8443)
		c.Listen, c.Token = listen.String(), token
	})
	if listen.Addr() != n.lab.Dispatcher.Addr4 {
		t.Fatalf("the API listens on %s, the dispatcher's address is %s", listen.Addr(), n.lab.Dispatcher.Addr4)
	}
	client := &http.Client{
		Timeout: apiTimeout,
		Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return n.lab.Client.NS.DialContext(ctx, network, addr)
			},
		},
	}
	defer client.CloseIdleConnections()
	base := "http://" + listen.String()
	s4 := n.servers[3]
	patchPath := fmt.Sprintf("/v1/clusters/%s/ports/80/tcp/servers/%s", n.lab.VIP4, s4.addr4)

	call := func(method, path, auth, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s: 401 without WWW-Authenticate", method, path)
		}
		return resp.StatusCode, string(b)
	}
	weightOf4 := func() uint32 {
		t.Helper()
		for _, s := range n.portStatus(t, servicePort).Servers {
			if s.Address == s4.addr4.String() {
				return s.Weight
			}
		}
		t.Fatalf("status lacks %s", s4.addr4)
		return 0
	}

	cases := []struct {
		name, auth string
		want       int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong token", "Bearer e2e-token-wrong-0123456789", http.StatusUnauthorized},
		{"token without Bearer", token, http.StatusUnauthorized},
		{"right token", "Bearer " + token, http.StatusOK},
	}
	for _, tc := range cases {
		code, body := call(http.MethodGet, "/v1/status", tc.auth, "")
		t.Logf("GET /v1/status, %s: %d %s", tc.name, code, firstBytes(body, 100))
		if code != tc.want {
			t.Errorf("GET /v1/status with %s: %d, want %d: %s", tc.name, code, tc.want, body)
			continue
		}
		if code == http.StatusOK {
			var st nd.Status
			if err := json.Unmarshal([]byte(body), &st); err != nil || len(st.Ports) != 1 {
				t.Errorf("status over TCP: %v, %d ports: %s", err, len(st.Ports), body)
			}
		} else if !strings.Contains(body, "unauthorized") {
			t.Errorf("401 body %q does not say unauthorized", body)
		}
	}

	// A change without the token is refused and changes nothing; with it,
	// it is made.
	before := weightOf4()
	for _, auth := range []string{"", "Bearer e2e-token-wrong-0123456789"} {
		if code, body := call(http.MethodPatch, patchPath, auth, `{"weight":7}`); code != http.StatusUnauthorized {
			t.Errorf("PATCH %s with auth %q: %d, want 401: %s", patchPath, auth, code, body)
		}
	}
	if got := weightOf4(); got != before {
		t.Errorf("refused PATCH changed %s's weight from %d to %d", s4.addr4, before, got)
	}
	if code, body := call(http.MethodPatch, patchPath, "Bearer "+token, `{"weight":7}`); code != http.StatusOK {
		t.Errorf("PATCH %s with the token: %d, want 200: %s", patchPath, code, body)
	} else {
		t.Logf("PATCH with the token: %s", strings.TrimSpace(body))
	}
	if got := weightOf4(); got != 7 {
		t.Errorf("after the PATCH with the token %s's weight is %d, want 7", s4.addr4, got)
	}
	// The data plane is still in order.
	if _, err := fetchOnce(context.Background(), n.lab.Client.NS, n.vip4(), 256); err != nil {
		t.Errorf("%s after the API calls: %v", n.vip4(), err)
	}
}

func firstBytes(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			out = append(out, strings.TrimRight(line, "\n"))
		}
	}
	return strings.Join(out, "\n")
}
