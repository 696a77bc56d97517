package manager

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/executor"
)

var key = executor.ServiceKey{VIP: netip.MustParseAddr("198.51.100.100"), Port: 80, Proto: executor.TCP}

func addr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(11 + i)}) }

// cluster simulates a port's servers under steady open-loop load: each
// interval the new flows split by the weights in the (fake) data plane, and
// each server's active flows follow Little's law with a queueing delay that
// grows as the server nears its capacity. The manager sees the counters,
// exactly as it sees the kernel's.
type cluster struct {
	t       *testing.T
	x       *executor.Fake
	m       *Manager
	now     time.Time
	n       int
	service []float64 // seconds per request, per server
	workers float64   // requests a server serves at once
	commits []Commit
	p2c     bool // the data plane splits flows as p2c would
	adv     map[netip.Addr]AdvisorReading
	host    map[netip.Addr]HostReading
	// probeRT makes the advisor read each server's response time: its
	// probe waits in the same queue as the work.
	probeRT bool
	// queues, when set, carries each server's backlog from one interval
	// to the next: what arrives beyond its capacity waits, and is still
	// waiting (and held open) in the intervals after.
	queues  bool
	backlog []float64
}

func newCluster(t *testing.T, n int, s Settings, props Proportions) *cluster {
	t.Helper()
	return newClusterScheduler(t, n, s, props, executor.SchedulerMaglev)
}

func newClusterScheduler(t *testing.T, n int, s Settings, props Proportions, sched executor.Scheduler) *cluster {
	t.Helper()
	if s.Sensitivity == 0 {
		s.Sensitivity = DefaultSensitivity
	}
	c := &cluster{t: t, x: executor.NewFake(), n: n, workers: 4, now: time.Unix(1000, 0),
		adv: map[netip.Addr]AdvisorReading{}, host: map[netip.Addr]HostReading{}}
	svc := executor.Service{Key: key, Scheduler: sched}
	c.p2c = sched == executor.SchedulerP2C
	var port Port
	port.Key, port.Bound, port.Proportions = key, 100, props
	for i := range n {
		svc.Servers = append(svc.Servers, executor.Server{Addr: addr(i), MAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(i + 1)}, Ifindex: 1, Weight: 50})
		port.Servers = append(port.Servers, Server{Addr: addr(i), Weight: 50})
		c.service = append(c.service, 0.0109)
	}
	if err := c.x.UpsertService(svc); err != nil {
		t.Fatal(err)
	}
	m, err := New(s, Options{
		Executor: c.x,
		Commit: func(cm Commit) error {
			c.commits = append(c.commits, cm)
			return c.x.SetWeights(cm.Port, cm.Weights)
		},
		Advisor: func(name string, k executor.ServiceKey, a netip.Addr) (AdvisorReading, bool) {
			r, ok := c.adv[a]
			return r, ok
		},
		Host: func(a netip.Addr) (HostReading, bool) {
			r, ok := c.host[a]
			return r, ok
		},
		Now: func() time.Time { return c.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	c.m = m
	if err := m.SetPorts([]Port{port}); err != nil {
		t.Fatal(err)
	}
	m.Step() // the first computation only takes the counters' baseline
	return c
}

func (c *cluster) weights() []uint32 { return weightsOf(c.x, c.n) }

// weightsOf reads the weights of servers addr(0) to addr(n-1) of the one
// service x holds.
func weightsOf(x *executor.Fake, n int) []uint32 {
	out := make([]uint32, n)
	for _, s := range x.Services()[0].Servers {
		for i := range n {
			if s.Addr == addr(i) {
				out[i] = s.Weight
			}
		}
	}
	return out
}

// interval runs one manager interval with rate new flows per second.
func (c *cluster) interval(rate float64) {
	c.t.Helper()
	iv := c.m.Settings().Interval
	w := c.weights()
	var sum float64
	for _, x := range w {
		sum += float64(x)
	}
	st, err := c.x.Stats()
	if err != nil {
		c.t.Fatal(err)
	}
	lambdas := make([]float64, c.n)
	for i := range c.n {
		if sum > 0 {
			lambdas[i] = rate * float64(w[i]) / sum
		}
	}
	if c.p2c {
		lambdas = c.p2cSplit(rate, w)
	}
	if c.queues && c.backlog == nil {
		c.backlog = make([]float64, c.n)
	}
	for i := range c.n {
		lambda := lambdas[i]
		rt := c.responseTime(i, lambda)
		target := lambda * rt
		if c.queues {
			// A fluid queue: past its capacity a server's arrivals wait,
			// and it works its backlog off once it has room again.
			capacity := c.workers / c.service[i]
			q := math.Max(c.backlog[i]+(lambda-capacity)*iv.Seconds(), 0)
			target += (c.backlog[i] + q) / 2
			rt += q / capacity
			c.backlog[i] = q
		}
		// Flows that were open drain over about one response time; new
		// ones arrive at lambda.
		newFlows := uint64(math.Round(lambda * iv.Seconds()))
		prev := float64(st.Services[key].Servers[addr(i)].Active())
		closed := prev + float64(newFlows) - math.Round(target)
		if closed < 0 {
			closed = 0
		}
		if err := c.x.AddCounters(key, addr(i), executor.ServerStats{NewFlows: newFlows, Closed: uint64(closed)}); err != nil {
			c.t.Fatal(err)
		}
		if c.probeRT {
			c.adv[addr(i)] = AdvisorReading{Latency: time.Duration(rt * float64(time.Second))}
		}
	}
	c.now = c.now.Add(iv)
	c.m.Step()
}

// responseTime is server i's mean response time at arrival rate lambda.
func (c *cluster) responseTime(i int, lambda float64) float64 {
	capacity := c.workers / c.service[i]
	util := math.Min(lambda/capacity, 0.98)
	return c.service[i] / (1 - util)
}

// p2cSplit models the p2c scheduler at its best: it splits rate so that
// every server with weight holds the same active flows per unit of weight.
func (c *cluster) p2cSplit(rate float64, w []uint32) []float64 {
	lambdas := make([]float64, c.n)
	rts := make([]float64, c.n)
	for i := range c.n {
		rts[i] = c.service[i]
	}
	// Damped fixed-point iteration: undamped, a slow server's queueing
	// makes the split swing from one side to the other.
	for range 500 {
		var sum float64
		for i := range c.n {
			sum += float64(w[i]) / rts[i]
		}
		for i := range c.n {
			lambdas[i] = 0.9*lambdas[i] + 0.1*rate*float64(w[i])/rts[i]/sum
			rts[i] = c.responseTime(i, lambdas[i])
		}
	}
	return lambdas
}

func (c *cluster) share(i int) float64 {
	w := c.weights()
	var sum float64
	for _, x := range w {
		sum += float64(x)
	}
	return float64(w[i]) / sum
}

func TestEqualLoadCommitsNothing(t *testing.T) {
	c := newCluster(t, 4, Settings{}, Proportions{Active: 50, New: 50})
	for range 20 {
		c.interval(1000)
	}
	if len(c.commits) != 0 {
		t.Fatalf("equal servers under equal load: %d commits, first %+v", len(c.commits), c.commits[0])
	}
	r := c.m.Report()
	if len(r) != 1 || len(r[0].Servers) != 4 || r[0].Reason != "no change" {
		t.Fatalf("report: %+v", r)
	}
	for _, s := range r[0].Servers {
		if math.Abs(s.LMI-1) > 0.01 {
			t.Errorf("%v LMI %.3f, want 1", s.Server, s.LMI)
		}
	}
}

func TestSlowServerConvergesWithoutOscillating(t *testing.T) {
	c := newCluster(t, 4, Settings{}, Proportions{Active: 50, New: 50})
	c.service[0] *= 4 // server 0 becomes 4x slower
	var shares []float64
	for range 30 {
		c.interval(1000)
		shares = append(shares, c.share(0))
	}
	t.Logf("slow server share per interval: %s", fmtShares(shares))
	// Capacity shares: 0.25 : 1 : 1 : 1, so the slow server's is 1/13.
	capShare := 0.25 / 3.25
	if got := shares[len(shares)-1]; got > 1.3*capShare {
		t.Errorf("slow server's weight share %.3f, want at most 1.3x its capacity share %.3f (shares %v)", got, capShare, fmtShares(shares))
	}
	// Settled: within a few intervals the share stays within 15% of
	// where it ends, and the loop then stops committing.
	final := shares[len(shares)-1]
	settled := len(shares)
	for i := len(shares) - 1; i >= 0; i-- {
		if math.Abs(shares[i]-final) > 0.15*final {
			break
		}
		settled = i
	}
	if settled > 9 {
		t.Errorf("settled after %d intervals, want at most 10 (shares %v)", settled+1, fmtShares(shares))
	}
	if n := len(c.commits); n > 12 {
		t.Errorf("%d commits in 30 intervals: the loop never settles (shares %v)", n, fmtShares(shares))
	}
	if last := c.commits[len(c.commits)-1]; last.Change > 0 && c.m.Report()[0].Committed {
		t.Errorf("still committing in the last interval: %+v", last)
	}
}

func TestRecoveredServerComesBackWithoutFlood(t *testing.T) {
	c := newCluster(t, 4, Settings{}, Proportions{Active: 50, New: 50})
	c.service[0] *= 4
	for range 15 {
		c.interval(1000)
	}
	low := c.share(0)
	c.service[0] /= 4
	var shares []float64
	for range 15 {
		c.interval(1000)
		shares = append(shares, c.share(0))
	}
	t.Logf("recovered server share per interval: %s", fmtShares(shares))
	for i, s := range shares {
		if s > 1.5*0.25 {
			t.Fatalf("interval %d after recovery: share %.3f above 1.5x its capacity share (shares %v)", i+1, s, fmtShares(shares))
		}
	}
	back := -1
	for i, s := range shares {
		if s >= 0.9*0.25 {
			back = i + 1
			break
		}
	}
	if back < 0 || back > 6 {
		t.Errorf("recovered server back to 90%% of its share after %d intervals (from %.3f), want at most 6: %v", back, low, fmtShares(shares))
	}
}

func TestSensitivityThreshold(t *testing.T) {
	// Eight servers at 50; server 0's active flows read e times the mean.
	// With smoothing 1 it moves straight to its target (the others stay
	// inside the dead band): e = 1.3 moves it by about 12 of 400 (3%,
	// kept), e = 2 by 25 (6%, committed).
	const n = 8
	for _, tc := range []struct {
		excess float64
		commit bool
	}{{1.3, false}, {2, true}} {
		t.Run(fmt.Sprint(tc.excess), func(t *testing.T) {
			x := executor.NewFake()
			svc := executor.Service{Key: key}
			port := Port{Key: key, Bound: 100, Proportions: Proportions{Active: 100}}
			for i := range n {
				svc.Servers = append(svc.Servers, executor.Server{Addr: addr(i), MAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(i + 1)}, Ifindex: 1, Weight: 50})
				port.Servers = append(port.Servers, Server{Addr: addr(i), Weight: 50})
			}
			if err := x.UpsertService(svc); err != nil {
				t.Fatal(err)
			}
			var commits []Commit
			now := time.Unix(0, 0)
			m, err := New(Settings{Smoothing: 1, Sensitivity: 0.05}, Options{Executor: x,
				Commit: func(c Commit) error { commits = append(commits, c); return nil },
				Now:    func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			m.SetPorts([]Port{port})
			m.Step()
			x.AddCounters(key, addr(0), executor.ServerStats{NewFlows: uint64(1000 * tc.excess)})
			for i := 1; i < n; i++ {
				x.AddCounters(key, addr(i), executor.ServerStats{NewFlows: uint64(1000 * (n - tc.excess) / (n - 1))})
			}
			now = now.Add(2 * time.Second)
			m.Step()
			if got := len(commits) > 0; got != tc.commit {
				t.Fatalf("LMI %.2f: committed %v, want %v (report %+v)", tc.excess, got, tc.commit, m.Report()[0])
			}
			if !tc.commit && m.Report()[0].Reason != "below sensitivity" {
				t.Errorf("reason %q", m.Report()[0].Reason)
			}
		})
	}
}

func TestDeadBand(t *testing.T) {
	// A reading 5% off leaves every weight as it is.
	c := newCluster(t, 2, Settings{Smoothing: 1}, Proportions{Active: 100})
	c.x.AddCounters(key, addr(0), executor.ServerStats{NewFlows: 1050})
	c.x.AddCounters(key, addr(1), executor.ServerStats{NewFlows: 950})
	c.now = c.now.Add(2 * time.Second)
	c.m.Step()
	if r := c.m.Report()[0]; r.Reason != "no change" {
		t.Errorf("a 5%% difference moved weights: %+v", r)
	}
}

func TestOverloadedServerCoolsDownAndReturns(t *testing.T) {
	c := newCluster(t, 4, Settings{Interval: 2 * time.Second, CoolDown: 6 * time.Second}, Proportions{Active: 50, New: 50})
	c.interval(1000)
	// Server 2 suddenly holds ten times its share of open flows.
	c.x.AddCounters(key, addr(2), executor.ServerStats{NewFlows: 5000})
	c.now = c.now.Add(2 * time.Second)
	c.m.Step()
	if w := c.weights(); w[2] != 0 {
		t.Fatalf("overloaded server's weight %d, want 0 (weights %v, report %+v)", w[2], w, c.m.Report()[0].Servers[2])
	}
	last := c.commits[len(c.commits)-1]
	if !strings.Contains(last.Reason, StateCoolDown) {
		t.Errorf("commit reason %q, want cool-down", last.Reason)
	}
	// Its flows finish while it sits out.
	c.x.AddCounters(key, addr(2), executor.ServerStats{Closed: 5000})
	var ws []uint32
	for range 8 {
		c.interval(1000)
		ws = append(ws, c.weights()[2])
	}
	if ws[0] != 0 || ws[1] != 0 {
		t.Errorf("server came back before its cool-down ended: %v", ws)
	}
	returned := -1
	for i, w := range ws {
		if w > 0 {
			returned = i
			break
		}
	}
	if returned < 0 {
		t.Fatalf("server never came back: %v", ws)
	}
	peers := c.weights()[0]
	if first := ws[returned]; first > peers/2 {
		t.Errorf("came back at weight %d, peers at %d: flooded", first, peers)
	}
	for i := returned + 1; i < len(ws); i++ {
		if float64(ws[i]) > 2*float64(ws[i-1])+1 {
			t.Errorf("weight jumped %d -> %d after the return: %v", ws[i-1], ws[i], ws)
		}
	}
	if ws[len(ws)-1] < peers*3/4 {
		t.Errorf("back to %d after %d intervals, peers at %d: %v", ws[len(ws)-1], len(ws)-returned, peers, ws)
	}
}

func TestFixedServerKeepsItsWeight(t *testing.T) {
	c := newCluster(t, 3, Settings{}, Proportions{Active: 50, New: 50})
	c.service[1] *= 4
	ports := []Port{{Key: key, Bound: 100, Proportions: Proportions{Active: 50, New: 50}, Servers: []Server{
		{Addr: addr(0), Weight: 50}, {Addr: addr(1), Weight: 50, Fixed: true}, {Addr: addr(2), Weight: 50},
	}}}
	if err := c.m.SetPorts(ports); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		c.interval(800)
	}
	if w := c.weights(); w[1] != 50 {
		t.Errorf("fixed slow server's weight %d, want 50 (weights %v)", w[1], w)
	}
	c.adv[addr(1)] = AdvisorReading{Down: true, Err: "connection refused"}
	ports[0].Advisor = "http"
	c.m.SetPorts(ports)
	c.interval(800)
	if w := c.weights(); w[1] != 0 {
		t.Errorf("fixed server down: weight %d, want 0", w[1])
	}
}

func TestDownDisabledAndQuiesced(t *testing.T) {
	// Five servers, so that two out leave more than half in (no panic).
	c := newCluster(t, 5, Settings{}, Proportions{Active: 50, New: 50})
	ports := []Port{{Key: key, Bound: 100, Advisor: "http", Proportions: Proportions{Active: 50, New: 50}, Servers: []Server{
		{Addr: addr(0), Weight: 50}, {Addr: addr(1), Weight: 50}, {Addr: addr(2), Weight: 50},
		{Addr: addr(3), Weight: 50}, {Addr: addr(4), Weight: 50},
	}}}
	c.m.SetPorts(ports)
	c.interval(600)

	c.adv[addr(0)] = AdvisorReading{Down: true, Err: "timeout"}
	c.host[addr(1)] = HostReading{Disabled: true, Err: "no report for 12s"}
	c.interval(600)
	w := c.weights()
	if w[0] != 0 || w[1] != 0 || w[2] == 0 {
		t.Fatalf("weights %v, want down and disabled servers at 0", w)
	}
	rep := c.m.Report()[0]
	if rep.Servers[0].State != StateDown || rep.Servers[1].State != StateDisabled || rep.Servers[0].Note != "timeout" {
		t.Errorf("states %q %q, note %q", rep.Servers[0].State, rep.Servers[1].State, rep.Servers[0].Note)
	}
	last := c.commits[len(c.commits)-1]
	if !strings.Contains(last.Reason, "down") || !strings.Contains(last.Reason, "disabled") {
		t.Errorf("reason %q", last.Reason)
	}

	// Both recover; the operator quiesces server 0 meanwhile: quiesce wins.
	delete(c.adv, addr(0))
	c.host[addr(1)] = HostReading{Metrics: map[string]float64{"cpu": 40}}
	ports[0].Servers[0].Quiesced = true
	c.m.SetPorts(ports)
	for range 6 {
		c.interval(600)
	}
	w = c.weights()
	if w[0] != 0 {
		t.Errorf("quiesced server got weight %d", w[0])
	}
	if w[1] == 0 {
		t.Errorf("re-enabled server still at 0")
	}
}

func TestProportionsChangeLive(t *testing.T) {
	c := newCluster(t, 2, Settings{}, Proportions{Active: 50, New: 50})
	// The advisor sees server 1 three times slower than server 0, which
	// the flow counters do not show.
	c.adv[addr(0)] = AdvisorReading{Latency: 10 * time.Millisecond}
	c.adv[addr(1)] = AdvisorReading{Latency: 30 * time.Millisecond}
	port := Port{Key: key, Bound: 100, Advisor: "http", Proportions: Proportions{Active: 50, New: 50},
		Servers: []Server{{Addr: addr(0), Weight: 50}, {Addr: addr(1), Weight: 50}}}
	c.m.SetPorts([]Port{port})
	for range 5 {
		c.interval(200)
	}
	if w := c.weights(); w[0] != w[1] {
		t.Fatalf("advisor at 0%%: weights %v moved", w)
	}
	port.Proportions = Proportions{Active: 25, New: 25, Advisor: 50}
	if err := c.m.SetPorts([]Port{port}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		c.interval(200)
	}
	if w := c.weights(); w[0] <= w[1] {
		t.Fatalf("advisor at 50%%: weights %v, want server 0 (faster) ahead", w)
	}
	if r := c.m.Report()[0]; r.Proportions["advisor"] != 50 || r.Servers[1].AdvisorMS != 30 {
		t.Errorf("report %+v", r)
	}
	bad := port
	bad.Proportions = Proportions{Active: 50, New: 60}
	if err := c.m.SetPorts([]Port{bad}); err == nil {
		t.Error("proportions summing to 110 accepted")
	}
}

func TestBestServerPolicy(t *testing.T) {
	c := newCluster(t, 3, Settings{Policy: PolicyBest}, Proportions{Advisor: 100})
	c.adv[addr(0)] = AdvisorReading{Latency: 30 * time.Millisecond}
	c.adv[addr(1)] = AdvisorReading{Latency: 10 * time.Millisecond}
	c.adv[addr(2)] = AdvisorReading{Latency: 20 * time.Millisecond}
	port := Port{Key: key, Bound: 100, Advisor: "http", Proportions: Proportions{Advisor: 100},
		Servers: []Server{{Addr: addr(0), Weight: 50}, {Addr: addr(1), Weight: 50}, {Addr: addr(2), Weight: 50}}}
	if err := c.m.SetPorts([]Port{port}); err != nil {
		t.Fatal(err)
	}
	c.interval(300)
	if w := c.weights(); w[1] != 100 || w[0] != 0 || w[2] != 0 {
		t.Fatalf("best server weights %v, want all to server 1", w)
	}
	// Within the margin the best keeps its place; past it, it yields.
	c.adv[addr(2)] = AdvisorReading{Latency: 9 * time.Millisecond}
	n := len(c.commits)
	for range 3 {
		c.interval(300)
	}
	if len(c.commits) != n {
		t.Errorf("best server changed for a 10%% difference: %v", c.weights())
	}
	c.adv[addr(2)] = AdvisorReading{Latency: 5 * time.Millisecond}
	c.interval(300)
	if w := c.weights(); w[2] != 100 || w[1] != 0 {
		t.Errorf("weights %v, want all to server 2 once it is twice as fast", w)
	}
}

func TestStaticPolicyKeepsConfiguredWeights(t *testing.T) {
	c := newCluster(t, 2, Settings{Policy: PolicyStatic}, Proportions{Active: 50, New: 50})
	c.service[0] *= 4
	for range 6 {
		c.interval(600)
	}
	if w := c.weights(); w[0] != 50 || w[1] != 50 {
		t.Errorf("static policy moved weights: %v", w)
	}
	if err := c.m.SetSettings(Settings{Policy: PolicyDefault}); err != nil {
		t.Fatal(err)
	}
	for range 6 {
		c.interval(600)
	}
	if w := c.weights(); w[0] >= w[1] {
		t.Errorf("default policy after static: weights %v, want the slow server lower", w)
	}
}

func TestCustomMetricAndHost(t *testing.T) {
	c := newCluster(t, 2, Settings{HostMetric: "load1"}, Proportions{})
	c.host[addr(0)] = HostReading{Metrics: map[string]float64{"load1": 1, "queue": 90}}
	c.host[addr(1)] = HostReading{Metrics: map[string]float64{"load1": 1, "queue": 10}}
	port := Port{Key: key, Bound: 100, Proportions: Proportions{Active: 20, New: 20, Host: 20,
		Custom: []CustomMetric{{Name: "queue", Agent: "queue", Proportion: 40}}},
		Servers: []Server{{Addr: addr(0), Weight: 50}, {Addr: addr(1), Weight: 50}}}
	if err := c.m.SetPorts([]Port{port}); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		c.interval(300)
	}
	if w := c.weights(); w[0] >= w[1] {
		t.Errorf("custom queue metric 90 vs 10: weights %v", w)
	}
	if got := c.m.Report()[0].Servers[0].Custom["queue"]; got != 90 {
		t.Errorf("report custom %v", got)
	}
	bad := port
	bad.Proportions.Custom = []CustomMetric{{Name: "x", Proportion: 40}}
	if err := c.m.SetPorts([]Port{bad}); err == nil {
		t.Error("custom metric with no source accepted")
	}
}

func TestSettingsValidation(t *testing.T) {
	for _, s := range []Settings{{Smoothing: 0.5}, {Sensitivity: 2}, {Policy: "random"}, {Overload: 0.5}, {Interval: -1}, {Smoothing: 11}} {
		if err := s.Validate(); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
	if err := (Settings{}).Validate(); err != nil {
		t.Errorf("zero settings (defaults): %v", err)
	}
}

func directionChanges(v []float64) int {
	n, dir := 0, 0
	for i := 1; i < len(v); i++ {
		d := v[i] - v[i-1]
		if math.Abs(d) < 0.005 {
			continue
		}
		s := 1
		if d < 0 {
			s = -1
		}
		if dir != 0 && s != dir {
			n++
		}
		dir = s
	}
	return n
}

func fmtShares(v []float64) string {
	var b strings.Builder
	for _, x := range v {
		fmt.Fprintf(&b, "%.3f ", x)
	}
	return b.String()
}

func TestActiveAveragedOverTheInterval(t *testing.T) {
	c := newCluster(t, 2, Settings{}, Proportions{Active: 50, New: 50})
	// Server 0 holds 10 flows for most of the interval, and 90 at its
	// end: the manager reads the interval's average, not the spike.
	c.x.AddCounters(key, addr(0), executor.ServerStats{NewFlows: 10})
	for range 7 {
		c.m.sampleActive()
	}
	c.x.AddCounters(key, addr(0), executor.ServerStats{NewFlows: 80})
	c.now = c.now.Add(2 * time.Second)
	c.m.Step()
	if got := c.m.Report()[0].Servers[0].Active; got != 20 {
		t.Errorf("active read as %d, want the average (7x10 + 90)/8 = 20", got)
	}
	// The next interval starts afresh.
	c.now = c.now.Add(2 * time.Second)
	c.m.Step()
	if got := c.m.Report()[0].Servers[0].Active; got != 90 {
		t.Errorf("next interval: active %d, want 90", got)
	}
}

func TestNarrowStepDoesNotStrandAWeight(t *testing.T) {
	c := newCluster(t, 4, Settings{}, Proportions{Active: 50, New: 50})
	c.service[0] *= 4
	for range 6 {
		c.interval(1000)
	}
	c.service[0] /= 4
	// As after many turns back: the narrowest step, last move upward. Each
	// move it allows is far below the sensitivity threshold.
	st := c.m.ports[key].servers[addr(0)]
	st.step, st.dir = minStep, 1
	var shares []float64
	for range 10 {
		c.interval(1000)
		shares = append(shares, c.share(0))
	}
	if got := shares[len(shares)-1]; got < 0.2 {
		t.Errorf("a narrowed step held the recovered server at a %.3f share: %s", got, fmtShares(shares))
	}
}

// Under p2c the data plane evens out active flows per unit of weight and
// sends a slow server fewer new flows than its weight: read per unit of
// weight, that looked like a light load and raised the slow server's
// weight. Read as response time it lowers it, toward its capacity share,
// within a few intervals, and stays.
func TestP2CSlowServerWeightFalls(t *testing.T) {
	c := newClusterScheduler(t, 4, Settings{Sensitivity: DefaultSensitivity}, Proportions{Active: 50, New: 50}, executor.SchedulerP2C)
	for range 5 {
		c.interval(1000)
	}
	if len(c.commits) != 0 {
		t.Fatalf("equal servers under p2c: %d commits, first %+v", len(c.commits), c.commits[0])
	}
	c.service[0] *= 4
	var shares []float64
	for range 15 {
		c.interval(1000)
		shares = append(shares, c.share(0))
	}
	t.Logf("slow server's weight share per interval: %s", fmtShares(shares))
	final := shares[len(shares)-1]
	if final > 0.16 {
		t.Errorf("slow server's weight share %.3f, want well under its equal share 0.25 (toward its capacity share 0.077)", final)
	}
	for i, sh := range shares {
		if sh > 0.25+1e-9 {
			t.Errorf("interval %d: slow server's share rose to %.3f", i+1, sh)
		}
	}
	// Settled by the third interval: within 15% of where it ends from then on.
	for i := 2; i < len(shares); i++ {
		if math.Abs(shares[i]-final) > 0.15*final {
			t.Errorf("interval %d: share %.3f, not settled near %.3f (shares %s)", i+1, shares[i], final, fmtShares(shares))
		}
	}
	r := c.m.Report()[0]
	if r.Scheduler != "p2c" || r.Proportions["active"] != 100 || r.Proportions["new"] != 0 {
		t.Errorf("report: scheduler %q, proportions %v; want p2c with active 100 new 0", r.Scheduler, r.Proportions)
	}
	if r.Committed {
		t.Errorf("still committing 15 intervals on: %+v", r)
	}
	// Recovered, it is back on its configured weight within three
	// intervals (two readings to agree, then the move).
	c.service[0] /= 4
	shares = shares[:0]
	for range 6 {
		c.interval(1000)
		shares = append(shares, c.share(0))
	}
	if shares[2] < 0.25-1e-9 {
		t.Errorf("recovered server's weight share %s, want 0.25 by the third interval", fmtShares(shares))
	}
}

func TestResponseLoads(t *testing.T) {
	ok := []bool{true, true, true}
	// Server 0 holds twice the flows of server 1 for half the new flows:
	// four times its response time.
	got, enough := responseLoads([]float64{20, 10, 10}, []float64{50, 100, 100}, ok)
	if !enough {
		t.Fatal("300 new flows over 3 servers: not enough")
	}
	if math.Abs(got[0]/got[1]-4) > 1e-9 || math.Abs(got[1]-got[2]) > 1e-9 {
		t.Errorf("loads %v, want server 0 at 4x the others", got)
	}
	if math.Abs((got[0]+got[1]+got[2])/3-1) > 1e-9 {
		t.Errorf("loads %v: mean should be 1", got)
	}
	// Too few new flows (long-lived flows): no reading.
	if _, enough := responseLoads([]float64{20, 10, 10}, []float64{5, 5, 5}, ok); enough {
		t.Error("15 new flows over 3 servers read as enough")
	}
	// A server that took no new flow while holding some is the slowest.
	got, _ = responseLoads([]float64{30, 10, 10}, []float64{0, 100, 100}, ok)
	if got[0] <= got[1] {
		t.Errorf("loads %v: a server taking no new flows must read slowest", got)
	}
}

// The other way round: a weight whose step narrowed while it last went up
// (back to its configured weight) must still come down when its server
// slows down, even though each move its step allows is below the
// sensitivity threshold.
func TestNarrowStepDoesNotHoldAWeightUp(t *testing.T) {
	c := newCluster(t, 4, Settings{}, Proportions{Active: 50, New: 50})
	st := c.m.ports[key].servers[addr(0)]
	st.step, st.dir = minStep, 1
	c.service[0] *= 4
	var shares []float64
	for range 10 {
		c.interval(1000)
		shares = append(shares, c.share(0))
	}
	if got := shares[len(shares)-1]; got > 0.15 {
		t.Errorf("a narrowed step held the slow server at a %.3f share: %s", got, fmtShares(shares))
	}
}

// Under p2c the manager reads response times, which swing from interval to
// interval with the few long requests each server happens to get; the
// data plane absorbs such swings, and weights must not chase them.
func TestP2CNoiseDoesNotMoveWeights(t *testing.T) {
	c := newClusterScheduler(t, 4, Settings{Sensitivity: DefaultSensitivity}, Proportions{Active: 50, New: 50}, executor.SchedulerP2C)
	rng := rand.New(rand.NewPCG(1, 2))
	base := slices.Clone(c.service)
	for range 40 {
		for i := range c.service {
			c.service[i] = base[i] * (1 + 0.3*(2*rng.Float64()-1))
		}
		c.interval(1000)
	}
	if len(c.commits) != 0 {
		t.Fatalf("equal servers with ±30%% noise in their service times: %d commits, first %+v", len(c.commits), c.commits[0])
	}
}

// Under p2c one interval's reading moves no weight: a server slow for one
// interval only keeps its weight; slow for two, it loses it.
func TestP2COneIntervalMovesNothing(t *testing.T) {
	c := newClusterScheduler(t, 4, Settings{Sensitivity: DefaultSensitivity}, Proportions{Active: 50, New: 50}, executor.SchedulerP2C)
	for range 3 {
		c.interval(1000)
	}
	base := c.service[0]
	c.service[0] = 4 * base
	c.interval(1000)
	c.service[0] = base
	for range 3 {
		c.interval(1000)
	}
	if len(c.commits) != 0 {
		t.Fatalf("one slow interval: %d commits, first %+v", len(c.commits), c.commits[0])
	}
	c.service[0] = 4 * base
	c.interval(1000)
	c.interval(1000)
	if len(c.commits) == 0 || c.share(0) >= 0.25 {
		t.Fatalf("two slow intervals: %d commits, server 0's share %.3f", len(c.commits), c.share(0))
	}
}

// withAdvisor gives the cluster's port an advisor, weighed with props.
func (c *cluster) withAdvisor(props Proportions) {
	c.t.Helper()
	port := Port{Key: key, Bound: 100, Advisor: "http", Proportions: props}
	for i := range c.n {
		port.Servers = append(port.Servers, Server{Addr: addr(i), Weight: 50})
	}
	if err := c.m.SetPorts([]Port{port}); err != nil {
		c.t.Fatal(err)
	}
}

// latencies sets the advisor's reading of every server: slow ones at
// 100 ms, the rest at 10 ms.
func (c *cluster) latencies(slow ...int) {
	for i := range c.n {
		c.adv[addr(i)] = AdvisorReading{Latency: 10 * time.Millisecond}
	}
	for _, i := range slow {
		c.adv[addr(i)] = AdvisorReading{Latency: 100 * time.Millisecond}
	}
}

// states returns each server's state in the last report.
func (c *cluster) states() []string {
	var out []string
	for _, s := range c.m.Report()[0].Servers {
		out = append(out, s.State)
	}
	return out
}

// Two of eight servers read far above their peers in the same
// computation: only the worst cools down. The load it sheds changes what
// the other reads.
func TestOneCoolDownPerComputation(t *testing.T) {
	c := newCluster(t, 8, Settings{CoolDown: time.Minute}, Proportions{Advisor: 100})
	c.withAdvisor(Proportions{Advisor: 100})
	c.latencies()
	c.adv[addr(1)] = AdvisorReading{Latency: 200 * time.Millisecond}
	c.adv[addr(2)] = AdvisorReading{Latency: 210 * time.Millisecond}
	c.interval(2000)
	w := c.weights()
	r := c.m.Report()[0]
	if r.Servers[1].LMI <= 3 || r.Servers[2].LMI <= 3 {
		t.Fatalf("LMIs %.2f and %.2f: the test needs both above the overload threshold", r.Servers[1].LMI, r.Servers[2].LMI)
	}
	if w[2] != 0 {
		t.Fatalf("the worst server (210 ms against 10 ms) kept weight %d: %v", w[2], c.states())
	}
	if w[1] == 0 {
		t.Errorf("two servers cooled down in one computation: weights %v, states %v", w, c.states())
	}
	if note := r.Servers[1].Note; !strings.Contains(note, "kept in") {
		t.Errorf("note of the server held in: %q", note)
	}
}

// A different server looks overloaded every interval: at most a quarter
// of the port's servers (at least one) cool down at once, and the ones
// held in say why.
func TestCoolDownsAtMostAQuarterOfThePort(t *testing.T) {
	c := newCluster(t, 6, Settings{CoolDown: time.Minute}, Proportions{Advisor: 100})
	c.withAdvisor(Proportions{Advisor: 100})
	next := 0
	held := false
	for k := range 10 {
		// The next server still taking flows reads ten times its peers.
		w := c.weights()
		for w[next%c.n] == 0 {
			next++
		}
		c.latencies(next % c.n)
		c.interval(1500)
		out := 0
		for _, x := range c.weights() {
			if x == 0 {
				out++
			}
		}
		if out > 1 {
			t.Fatalf("interval %d: %d of 6 servers out at once (states %v)", k+1, out, c.states())
		}
		for _, s := range c.m.Report()[0].Servers {
			held = held || strings.Contains(s.Note, "cooling down already")
		}
		next++
	}
	if !held {
		t.Error("no server was ever held in by the limit: the test exercised nothing")
	}
}

// Cool-downs and servers gone down together never leave fewer than half
// of a port's servers taking new flows: with one server cooling down and
// two gone down out of four, the cool-down ends early. The two down are
// half the port: no panic, they stay out.
func TestCoolDownEndsEarlyToKeepHalfIn(t *testing.T) {
	c := newCluster(t, 4, Settings{CoolDown: time.Minute}, Proportions{Advisor: 100})
	c.withAdvisor(Proportions{Advisor: 100})
	c.latencies(0)
	c.interval(1000)
	if w := c.weights(); w[0] != 0 {
		t.Fatalf("overloaded server kept weight %d (states %v)", w[0], c.states())
	}
	c.latencies()
	c.interval(1000)
	c.adv[addr(1)] = AdvisorReading{Down: true, Err: "timeout"}
	c.adv[addr(2)] = AdvisorReading{Down: true, Err: "timeout"}
	c.interval(1000)
	w := c.weights()
	st := c.states()
	if w[1] != 0 || w[2] != 0 || st[1] != StateDown || st[2] != StateDown {
		t.Errorf("two of four servers down, half the port: weights %v, states %v; want them out", w, st)
	}
	if w[0] == 0 || w[3] == 0 {
		t.Fatalf("weights %v, states %v: fewer than half the servers in", w, st)
	}
	if w[0] > 50/4+1 {
		t.Errorf("server whose cool-down ended early came back at %d, want a gentle return from 12", w[0])
	}
	if note := c.m.Report()[0].Servers[0].Note; !strings.Contains(note, "ended early") {
		t.Errorf("note %q", note)
	}
}

// Every server in turn looks overloaded, over and over, as after a slow
// phase: each return starts at a quarter of the server's configured
// weight, whatever its peers' weights are at the time (they used to start
// at a quarter of the peers' mean, which shrank with each round), and the
// weights are back on their configured figures once the overloads stop.
func TestReturnsDoNotRatchetDown(t *testing.T) {
	c := newCluster(t, 4, Settings{Interval: 2 * time.Second, CoolDown: 2 * time.Second}, Proportions{Advisor: 100})
	c.withAdvisor(Proportions{Advisor: 100})
	prev := c.weights()
	var starts []uint32
	var hist [][]uint32
	for k := range 40 {
		c.latencies(k % c.n)
		c.interval(1000)
		w := c.weights()
		hist = append(hist, w)
		for i := range w {
			if prev[i] == 0 && w[i] > 0 {
				starts = append(starts, w[i])
			}
		}
		prev = w
	}
	if len(starts) < 3 {
		t.Fatalf("only %d returns in 40 intervals: the test exercised nothing (weights %v)", len(starts), hist)
	}
	for _, s := range starts {
		if s != 13 && s != 12 {
			t.Errorf("returns started at %v, want a quarter of the configured 50 each time (weights %v)", starts, hist)
			break
		}
	}
	c.latencies()
	for range 15 {
		c.interval(1000)
	}
	if w := c.weights(); !slices.Equal(w, []uint32{50, 50, 50, 50}) {
		t.Errorf("weights %v 15 intervals after the overloads stopped, want the configured 50 each", w)
	}
}

// The recovery after a slow phase, in the cluster model with queues: the
// slow server is back to speed, and a burst of long requests leaves three
// others with a backlog of a few seconds' work at once, so that all three
// read far above their peers for several intervals. Cool-downs take them
// out one a computation and at most a quarter of the port at once (they
// used to take all three out together, piling their load on the rest),
// and every weight is back on its configured figure once the backlogs
// are worked off.
func TestRecoveryBurstDoesNotCascade(t *testing.T) {
	props := Proportions{Active: 30, New: 30, Advisor: 40}
	c := newCluster(t, 8, Settings{Interval: 2 * time.Second}, props)
	c.withAdvisor(props)
	c.probeRT, c.queues = true, true
	const rate = 2000 // 68% of the port's capacity
	for range 5 {
		c.interval(rate)
	}
	c.service[0] *= 4
	for range 10 {
		c.interval(rate)
	}
	c.service[0] /= 4
	for i := 1; i <= 3; i++ {
		c.backlog[i] = 4000
	}
	prev := c.weights()
	var hist [][]uint32
	cooled := 0
	for k := range 20 {
		c.interval(rate)
		w := c.weights()
		hist = append(hist, w)
		out, started := 0, 0
		for i, x := range w {
			if x == 0 {
				out++
				if prev[i] > 0 {
					started++
				}
			}
		}
		cooled += started
		if out > 2 {
			t.Errorf("interval %d: %d of 8 servers out at once, want at most a quarter (weights %v)", k+1, out, w)
		}
		if started > 1 {
			t.Errorf("interval %d: %d cool-downs in one computation (weights %v)", k+1, started, w)
		}
		prev = w
	}
	if cooled < 2 {
		t.Fatalf("%d cool-downs after the burst: the test exercised nothing (weights %v)", cooled, hist)
	}
	if w := c.weights(); slices.ContainsFunc(w, func(x uint32) bool { return x != 50 }) {
		t.Errorf("weights %v at the end, want the configured 50 each (history %v)", w, hist)
	}
}

// A cool-down sheds its server's load on the rest: the interval after,
// their readings straddle two splits of the load, and none of them is
// judged overloaded on it; later, on steady readings, it is.
func TestNoCoolDownRightAfterTheWorkingSetChanged(t *testing.T) {
	c := newCluster(t, 8, Settings{CoolDown: time.Minute}, Proportions{Advisor: 100})
	c.withAdvisor(Proportions{Advisor: 100})
	c.latencies(1)
	c.interval(2000)
	if w := c.weights(); w[1] != 0 {
		t.Fatalf("overloaded server 1 kept weight %d", w[1])
	}
	c.latencies(2)
	c.interval(2000)
	if w := c.weights(); w[2] == 0 {
		t.Fatalf("server 2 cooled down on the interval right after server 1 went out: %v", w)
	}
	// Its weight, lowered meanwhile, must hold an interval too (its
	// counts belong to the old one).
	var ws []uint32
	for range 6 {
		c.interval(2000)
		ws = append(ws, c.weights()[2])
	}
	if !slices.Contains(ws, 0) {
		t.Errorf("server 2, overloaded at a steady split, never cooled down: weights %v", ws)
	}
}

// TestDroppedCommitKeepsNoBookkeeping: a decision the owner of the data
// plane drops on purpose (ErrNotApplied: stale, or a standby's) counts as
// no commit and moves no step bound; the same move, applied later, is the
// first.
func TestDroppedCommitKeepsNoBookkeeping(t *testing.T) {
	c := newCluster(t, 4, Settings{Interval: 2 * time.Second}, Proportions{Active: 50, New: 50})
	apply := c.m.commit
	dropped := 0
	c.m.commit = func(cm Commit) error {
		dropped++
		return fmt.Errorf("%w: test", ErrNotApplied)
	}
	c.service[0] *= 4
	for range 3 {
		c.interval(1000)
	}
	rep := c.m.Report()[0]
	if dropped == 0 {
		t.Fatal("the slow server asked for no move: nothing to drop")
	}
	if rep.Commits != 0 || rep.Committed {
		t.Errorf("after %d dropped decisions the report counts %d commits (committed %v, %q)", dropped, rep.Commits, rep.Committed, rep.Reason)
	}
	c.m.mu.Lock()
	st := c.m.ports[key].servers[addr(0)]
	dir, step := st.dir, st.step
	c.m.mu.Unlock()
	if dir != 0 || step != firstStep {
		t.Errorf("dropped decisions moved the step bookkeeping: dir %d step %.2f", dir, step)
	}
	c.m.commit = apply
	c.interval(1000)
	if rep := c.m.Report()[0]; rep.Commits != 1 {
		t.Errorf("the first applied move counts %d commits, want 1", rep.Commits)
	}
}

// TestHeldServerIsAbsent: a server the data plane holds only for its flows
// (unresolved) is absent to the manager, as one left out would be: no
// commit names it, and the others share the load.
func TestHeldServerIsAbsent(t *testing.T) {
	c := newCluster(t, 3, Settings{Interval: time.Second}, Proportions{Active: 50, New: 50})
	svc := c.x.Services()[0]
	svc.Servers[2].Weight, svc.Servers[2].Held = 0, true
	if err := c.x.UpsertService(svc); err != nil {
		t.Fatal(err)
	}
	c.service[0] = 0.03 // server 0 slow: the manager moves weights
	for range 20 {
		c.interval(200)
	}
	if len(c.commits) == 0 {
		t.Fatal("no commit: the test shows nothing")
	}
	for _, cm := range c.commits {
		if _, ok := cm.Weights[addr(2)]; ok {
			t.Fatalf("a commit names the held server: %v", cm.Weights)
		}
	}
	rep := c.m.Report()
	if len(rep) != 1 {
		t.Fatalf("report %+v", rep)
	}
	for _, s := range rep[0].Servers {
		if s.Server == addr(2) && s.State != StateAbsent {
			t.Errorf("held server reported %q, want %q", s.State, StateAbsent)
		}
	}
	if w := c.weights(); w[2] != 0 || w[1] <= w[0] {
		t.Errorf("weights %v: want the held server at 0, the slow one below the fast one", w)
	}
}
