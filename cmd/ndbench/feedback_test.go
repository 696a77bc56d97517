package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/lab"
)

func TestDrawWork(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	const n = 200_000
	slow := 0
	var sum time.Duration
	for range n {
		d := drawWork(r)
		switch d {
		case slowWork:
			slow++
		case fastWork:
		default:
			t.Fatalf("drew %v, want %v or %v", d, fastWork, slowWork)
		}
		sum += d
	}
	if f := float64(slow) / n; math.Abs(f-0.1) > 0.005 {
		t.Errorf("slow share %.4f, want 0.1", f)
	}
	if mean := sum / n; mean < 10700*time.Microsecond || mean > 11100*time.Microsecond {
		t.Errorf("mean service time %v, want about %v", mean, meanWork)
	}
	if meanWork != 10900*time.Microsecond {
		t.Errorf("meanWork %v, want 10.9ms", meanWork)
	}
}

func TestWorkQueueLimitsAndQueues(t *testing.T) {
	const limit, maxWait, clients = 3, 1000, 40
	q := newWorkQueue(limit, maxWait)
	var running, peak atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			if err := q.acquire(context.Background()); err != nil {
				t.Error(err)
				return
			}
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(2 * time.Millisecond)
			running.Add(-1)
			q.release()
		})
	}
	wg.Wait()
	if p := peak.Load(); p != limit {
		t.Errorf("%d requests in service at once, want at most and at some point exactly %d", p, limit)
	}
	if q.running != 0 || q.queued() != 0 {
		t.Errorf("after all: %d running, %d queued", q.running, q.queued())
	}
}

func TestWorkQueueFIFOAndOverflow(t *testing.T) {
	q := newWorkQueue(1, 3)
	if err := q.acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			if err := q.acquire(context.Background()); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			q.release()
		})
		// Wait until it is queued, so the queue's order is known.
		for q.queued() != i+1 {
			time.Sleep(time.Millisecond)
		}
	}
	if err := q.acquire(context.Background()); !errors.Is(err, errQueueFull) {
		t.Errorf("a fourth waiter: %v, want errQueueFull", err)
	}
	q.release()
	wg.Wait()
	if len(order) != 3 || order[0] != 0 || order[1] != 1 || order[2] != 2 {
		t.Errorf("served in order %v, want [0 1 2]", order)
	}
}

func TestWorkQueueCancel(t *testing.T) {
	q := newWorkQueue(1, 10)
	if err := q.acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := q.acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("acquire with an ended context: %v", err)
	}
	if q.queued() != 0 {
		t.Errorf("%d still queued after giving up", q.queued())
	}
	q.release()
	if err := q.acquire(context.Background()); err != nil {
		t.Errorf("the slot was not freed: %v", err)
	}
}

func TestWorkProtocol(t *testing.T) {
	for _, tt := range []struct {
		req   string
		want  time.Duration
		probe bool
		bad   bool
	}{
		{workRequest(fastWork), fastWork, false, false},
		{workRequest(slowWork), slowWork, false, false},
		{"GET / HTTP/1.0\r\nHost: x\r\n\r\n", fastWork, true, false},
		{"GET /-5 HTTP/1.0\r\n\r\n", 0, false, true},
		{"GET /99999999999 HTTP/1.0\r\n\r\n", 0, false, true},
		{"nonsense", 0, false, true},
		{"GET /5\r\n\r\n", 0, false, true},
	} {
		d, probe, err := parseWorkRequest([]byte(tt.req))
		if (err != nil) != tt.bad || d != tt.want || probe != tt.probe {
			t.Errorf("%q: %v %v %v, want %v %v bad=%v", tt.req, d, probe, err, tt.want, tt.probe, tt.bad)
		}
	}
	names := []string{"server1", "server2"}
	if i, err := parseWorkReply([]byte(workOK+"\r\nserver2\n"), names); i != 1 || err != nil {
		t.Errorf("ok reply: %d %v", i, err)
	}
	if i, err := parseWorkReply([]byte(workBusy+"\r\nserver1\n"), names); i != 0 || !errors.Is(err, errBusy) {
		t.Errorf("busy reply: %d %v", i, err)
	}
	if _, err := parseWorkReply([]byte(workOK+"\r\nserver9\n"), names); !errors.Is(err, errWrongServer) {
		t.Errorf("unknown server: %v", err)
	}
	if _, err := parseWorkReply([]byte("HTTP/1.1 404\r\n\r\n"), names); !errors.Is(err, errBadReply) {
		t.Errorf("bad status: %v", err)
	}
}

// TestWorkServerRespectsC serves real connections over loopback (in the
// test's own namespace, no root needed): with C workers and requests of
// 50 ms, 4C requests at once take about 4 rounds, and at most C are in
// service at any moment.
func TestWorkServerRespectsC(t *testing.T) {
	const c = 2
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no loopback: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &workServer{name: "server1", q: newWorkQueue(c, 100), ctx: ctx, cancel: cancel}
	s.setSlowdown(1)
	s.Serve(ln, s.serve)
	defer s.stop()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 4*c)
	for range 4 * c {
		wg.Go(func() {
			conn, err := net.Dial("tcp4", ln.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			io.WriteString(conn, workRequest(50*time.Millisecond))
			b, _ := io.ReadAll(conn)
			if _, err := parseWorkReply(b, []string{"server1"}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	took := time.Since(start)
	if took < 190*time.Millisecond || took > 2*time.Second {
		t.Errorf("%d requests of 50ms on %d workers took %v, want about 200ms", 4*c, c, took)
	}
	if s.q.peak != c {
		t.Errorf("peak %d in service, want %d", s.q.peak, c)
	}
	if n := s.requests.Load(); n != 4*c {
		t.Errorf("counted %d requests, want %d", n, 4*c)
	}
}

func TestSummarise(t *testing.T) {
	var recs []record
	for i := range 1000 {
		recs = append(recs, record{At: time.Duration(i) * time.Millisecond, Latency: time.Duration(i+1) * time.Millisecond})
	}
	recs = append(recs, record{At: 10 * time.Millisecond, Err: "timeout"}, record{At: 2 * time.Second, Latency: time.Hour})
	s := summarise(recs, 0, time.Second)
	if s.Requests != 1001 || s.Errors != 1 || s.ErrorKinds["timeout"] != 1 {
		t.Errorf("counts %+v", s)
	}
	if s.P50 != 500*time.Millisecond || s.P99 != 990*time.Millisecond || s.P999 != 999*time.Millisecond || s.Max != time.Second {
		t.Errorf("p50 %v p99 %v p99.9 %v max %v", s.P50, s.P99, s.P999, s.Max)
	}
	if s.Mean != 500500*time.Microsecond {
		t.Errorf("mean %v", s.Mean)
	}
}

func TestShares(t *testing.T) {
	counts := [][]int64{{10, 30}, {0, 0}, {20, 20}}
	got := shares(counts, 0, 3)
	if math.Abs(got[0]-0.375) > 1e-9 || math.Abs(got[1]-0.625) > 1e-9 {
		t.Errorf("shares %v", got)
	}
	s := shareSeries(counts, 0)
	if s[0] != 0.25 || !math.IsNaN(s[1]) || s[2] != 0.5 {
		t.Errorf("series %v", s)
	}
	m := movingMean(s, 3)
	if m[0] != 0.25 || m[1] != 0.375 || m[2] != 0.5 {
		t.Errorf("moving mean %v", m)
	}
}

func TestReactionTime(t *testing.T) {
	// 25% until 10, then falling to 8% by 14, with one noisy point.
	xs := make([]float64, 30)
	for i := range xs {
		switch {
		case i < 10:
			xs[i] = 0.25
		case i < 14:
			xs[i] = 0.25 - float64(i-9)*0.04
		default:
			xs[i] = 0.08
		}
	}
	xs[15] = 0.2
	if got := reactionTime(xs, 10, 30, 0.08, 0.02, 3); got != 6 {
		t.Errorf("reaction %d, want 6 (in band from 16 on; 14 is broken by the point at 15)", got)
	}
	if got := reactionTime(xs, 10, 30, 0.5, 0.02, 3); got != -1 {
		t.Errorf("never in band: %d", got)
	}
	if got := reactionTime(xs, 0, 30, 0.25, 0.02, 3); got != 0 {
		t.Errorf("already there: %d", got)
	}
}

func TestSettleTime(t *testing.T) {
	a := []float64{0.5, 0.5, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1}
	b := []float64{0.5, 0.5, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9}
	if got := settleTime([][]float64{a, b}, 1, 10, 0.1, 0.01); got != 3 {
		t.Errorf("settle %d, want 3", got)
	}
	osc := []float64{0.5, 0.1, 0.5, 0.1, 0.5, 0.1}
	if got := settleTime([][]float64{osc}, 0, 6, 0.1, 0.01); got != -1 {
		t.Errorf("oscillating to the end: %d, want -1", got)
	}
}

func TestDirectionChanges(t *testing.T) {
	for _, tt := range []struct {
		xs   []float64
		want int
	}{
		{[]float64{1, 2, 3, 4}, 0},
		{[]float64{1, 2, 1, 2, 1}, 3},
		{[]float64{1, 1.001, 0.999, 1.002, 5}, 0}, // jitter under minMove
		{[]float64{1, math.NaN(), 3, 2}, 1},
		{nil, 0},
	} {
		if got := directionChanges(tt.xs, 0.01); got != tt.want {
			t.Errorf("%v: %d, want %d", tt.xs, got, tt.want)
		}
	}
	if s := span([]float64{0.2, math.NaN(), 0.5, 0.3}); math.Abs(s-0.3) > 1e-12 {
		t.Errorf("span %v", s)
	}
}

func TestWeightShares(t *testing.T) {
	ws := weightShares([][]float64{{50, 50, 100}, {0, 0, 0}, {math.NaN(), 1, 1}})
	if ws[0][0] != 0.25 || ws[2][0] != 0.5 || !math.IsNaN(ws[0][1]) || !math.IsNaN(ws[1][2]) {
		t.Errorf("weight shares %v", ws)
	}
}

func TestSVGIsWellFormed(t *testing.T) {
	var buf bytes.Buffer
	pts := []float64{1, 2, math.NaN(), 4, math.Inf(1), 3}
	err := writeSVG(&buf, `title with <&> "quotes"`, len(pts),
		[]svgBand{{From: 1, To: 3, Label: "slow & <x>", Fill: "#fde0dd"}},
		[]svgPanel{
			{Title: "linear", Unit: "%", Series: []svgSeries{{Name: "a<b", Color: "#000", Points: pts}}},
			{Title: "log", YMax: 1000, LogMin: 1, Series: []svgSeries{{Name: "b", Color: "#f00", Dashed: true, Points: pts}}},
		})
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(&buf)
	paths, root := 0, ""
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			if se.Name.Local == "path" {
				paths++
				for _, a := range se.Attr {
					if a.Name.Local == "d" && strings.Contains(a.Value, "NaN") {
						t.Errorf("a path holds NaN: %s", a.Value)
					}
				}
			}
		}
	}
	if root != "svg" || paths != 2 {
		t.Errorf("root %q, %d paths; want svg and 2", root, paths)
	}
}

func TestFeedbackOptions(t *testing.T) {
	o, err := parseFeedbackOptions(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.workers != 8 || len(o.scenarios) != 7 || len(o.balancers) != 5 || o.phaseScale != 1 {
		t.Errorf("defaults: %d workers, %d scenarios, %d balancers, scale %g", o.workers, len(o.scenarios), len(o.balancers), o.phaseScale)
	}
	if e := o.estimate(); e < 15*time.Minute || e > 22*time.Minute {
		t.Errorf("a default run takes about %v, want about 20 minutes", e)
	}
	q, err := parseFeedbackOptions([]string{"--quick"}, io.Discard)
	if err != nil || q.estimate() > o.estimate()/2 {
		t.Errorf("--quick: %v, %v", q.estimate(), err)
	}
	for _, args := range [][]string{
		{"--workers", "1"}, {"--load", "0"}, {"--phase-scale", "0.01"}, {"--warmup", "1500ms"},
		{"--scenarios", "equal,bogus"}, {"--scenarios", "equal,equal"}, {"--balancers", "nd,nginx"},
		{"--slowdown", "0.5"}, {"extra"}, {"--workers", "7", "--scenarios", "sizes"}, {"--workers", "64", "--load", "1.5"},
	} {
		if _, err := parseFeedbackOptions(args, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	var out bytes.Buffer
	if code := run([]string{"feedback", "--help"}, env{stdout: &out, stderr: &out, euid: func() int { return 1000 }}); code != 0 ||
		!strings.Contains(out.String(), "-scenarios") || !strings.Contains(out.String(), "-balancers") {
		t.Errorf("help: exit %d, %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"feedback"}, env{stdout: &out, stderr: &out, euid: func() int { return 1000 }}); code != 1 || !strings.Contains(out.String(), "must run as root") {
		t.Errorf("not root: exit %d, %q", code, out.String())
	}
}

func TestScenarios(t *testing.T) {
	o, _ := parseFeedbackOptions(nil, io.Discard)
	perServer := 8 / meanWork.Seconds() // 734/s
	for _, name := range scenarioNames {
		sc, err := buildScenario(name, o)
		if err != nil {
			t.Fatal(err)
		}
		at := 0
		for _, p := range sc.Phases {
			if p.From != at || p.To < p.From {
				t.Errorf("%s: phases not contiguous: %+v", name, sc.Phases)
			}
			at = p.To
		}
		if sc.Phases[0].Name != phWarmup || sc.Phases[0].To != 5 {
			t.Errorf("%s: first phase %+v, want 5 s of warm-up", name, sc.Phases[0])
		}
		for _, e := range sc.Events {
			if e.At < 0 || e.At >= sc.seconds() || e.Server >= len(sc.Workers) {
				t.Errorf("%s: event %+v out of range", name, e)
			}
		}
		if len(sc.Weights) != len(sc.Workers) || math.Abs(sc.Rate-0.7*sc.Capacity) > 1e-9 {
			t.Errorf("%s: %d weights, %d servers, rate %v", name, len(sc.Weights), len(sc.Workers), sc.Rate)
		}
		var want float64
		switch name {
		case scSlowStart, scSlowSpell:
			want = 3.25 * perServer // the slow server counts as a quarter
		case scSinkholeFailing, scSinkholePassing, scColdAdd:
			want = 3 * perServer
		case scEqual:
			want = 4 * perServer
		case scSizes:
			want = 3.5 * perServer
		}
		if math.Abs(sc.Capacity-want) > 1 {
			t.Errorf("%s: capacity %.0f, want %.0f", name, sc.Capacity, want)
		}
	}
	spell, _ := buildScenario(scSlowSpell, o)
	if slow, _ := spell.phase(phSlow); slow.To-slow.From != 15 {
		t.Errorf("slow spell of %d s, want 15", slow.To-slow.From)
	}
	sizes, _ := buildScenario(scSizes, o)
	if !slices.Equal(sizes.Workers, []int{4, 8, 16}) || math.Abs(sizes.weightShare(2)-4.0/7) > 1e-9 {
		t.Errorf("sizes: workers %v, weight shares %v", sizes.Workers, sizes.weightShares())
	}
	add, _ := buildScenario(scColdAdd, o)
	if e, ok := add.event(evAdd); !ok || e.Server != add.Late || add.Late != 3 {
		t.Errorf("cold-add: late %d, events %+v", add.Late, add.Events)
	}
}

func testLab(n int) *lab.Lab {
	l := &lab.Lab{VIP4: netip.MustParseAddr("198.51.100.100")}
	l.Dispatcher.Ifname = "eth0"
	for i := range n {
		l.Servers = append(l.Servers, lab.Host{Name: fmt.Sprintf("server%d", i+1), Iface: lab.Iface{Addr4: netip.AddrFrom4([4]byte{198, 51, 100, byte(11 + i)})}})
	}
	return l
}

func TestNDDConfigParses(t *testing.T) {
	l := testLab(4)
	o, _ := parseFeedbackOptions(nil, io.Discard)
	for _, name := range scenarioNames {
		sc, _ := buildScenario(name, o)
		for _, b := range fbBalancers[:2] {
			y := nddConfig(b, sc, l, "/tmp/x")
			c, err := config.Parse([]byte(y), name+".yaml")
			if err != nil {
				t.Fatalf("%s %s: %v\n%s", name, b.Name, err, y)
			}
			port := c.Clusters[0].Ports[0]
			want := len(sc.Workers)
			if sc.Late >= 0 {
				want--
			}
			if len(port.Servers) != want || port.Advisor != "health" || c.DataPlane.PinPath != "" || len(c.Advisors) != 1 || c.Advisors[0].HTTP.Path != "/health" {
				t.Errorf("%s %s: parsed %+v", name, b.Name, c)
			}
			// Out of the box: no manager section, no scheduler but p2c's.
			if strings.Contains(y, "manager") || strings.Contains(y, "scheduler") != (b.scheduler != "") {
				t.Errorf("%s %s: not the defaults:\n%s", name, b.Name, y)
			}
			if name == scSizes && (port.Servers[0].Weight != 25 || port.Servers[2].Weight != 100) {
				t.Errorf("sizes weights %+v", port.Servers)
			}
		}
	}
}

func TestHAProxyConfig(t *testing.T) {
	l := testLab(4)
	o, _ := parseFeedbackOptions(nil, io.Discard)
	add, _ := buildScenario(scColdAdd, o)
	addrs, names := []netip.Addr{}, []string{}
	for _, s := range l.Servers {
		addrs, names = append(addrs, s.Addr4), append(names, s.Name)
	}
	checks, _ := findBalancer(balHAProxyChecks)
	plain, _ := findBalancer(balHAProxy)
	c := haproxyConfig(checks, add, l.VIP4, addrs, names, "/run/x/haproxy.sock")
	for _, want := range []string{
		"mode tcp", "balance leastconn", "bind 198.51.100.100:80", "option httpchk GET /health",
		"stats socket /run/x/haproxy.sock mode 600 level admin",
		"server server1 198.51.100.11:80 weight 50 check inter 1s fall 2 rise 2\n",
		"server server4 198.51.100.14:80 weight 50 check inter 1s fall 2 rise 2 disabled\n",
	} {
		if !strings.Contains(c, want) {
			t.Errorf("haproxy-checks config lacks %q:\n%s", want, c)
		}
	}
	p := haproxyConfig(plain, add, l.VIP4, addrs, names, "/run/x/haproxy.sock")
	if strings.Contains(p, "check") || !strings.Contains(p, "server server2 198.51.100.12:80 weight 50\n") {
		t.Errorf("haproxy config without checks:\n%s", p)
	}
	sizes, _ := buildScenario(scSizes, o)
	s := haproxyConfig(plain, sizes, l.VIP4, addrs[:3], names[:3], "/run/x/haproxy.sock")
	if !strings.Contains(s, "server1 198.51.100.11:80 weight 25\n") || !strings.Contains(s, "server3 198.51.100.13:80 weight 100\n") || strings.Contains(s, "server4") {
		t.Errorf("sizes:\n%s", s)
	}
	// The oracle knows a server slow from the start before the first
	// request, and nothing else in advance.
	oracle, _ := findBalancer(balHAProxyOracle)
	slowStart, _ := buildScenario(scSlowStart, o)
	spell, _ := buildScenario(scSlowSpell, o)
	if c := haproxyConfig(oracle, slowStart, l.VIP4, addrs, names, "/run/x/haproxy.sock"); !strings.Contains(c, "server server1 198.51.100.11:80 weight 50 disabled\n") ||
		strings.Contains(c, "server2 198.51.100.12:80 weight 50 disabled") {
		t.Errorf("oracle, slow-start:\n%s", c)
	}
	if c := haproxyConfig(oracle, spell, l.VIP4, addrs, names, "/run/x/haproxy.sock"); strings.Contains(c, "disabled") {
		t.Errorf("oracle, slow-spell:\n%s", c)
	}
	if c := haproxyConfig(plain, slowStart, l.VIP4, addrs, names, "/run/x/haproxy.sock"); strings.Contains(c, "disabled") {
		t.Errorf("haproxy without the oracle's knowledge, slow-start:\n%s", c)
	}
	equal, _ := buildScenario(scEqual, o)
	if equal.changes() || !spell.changes() || add.changes() {
		t.Errorf("changes: equal %v, slow-spell %v, cold-add %v", equal.changes(), spell.changes(), add.changes())
	}
	// HAProxy itself accepts it, where it is installed (checking binds
	// nothing).
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Logf("no haproxy installed: config not checked by haproxy itself")
		return
	}
	for _, cfg := range []string{c, p, s} {
		f := filepath.Join(t.TempDir(), "haproxy.cfg")
		if err := os.WriteFile(f, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "-c", "-q", "-f", f).CombinedOutput(); err != nil {
			t.Errorf("haproxy -c: %v: %s\n%s", err, out, cfg)
		}
	}
}

func TestHAProxyRefusesOutsideLab(t *testing.T) {
	if _, err := checkHAProxyPlace(nil, netip.MustParseAddr("198.51.100.100")); !errors.Is(err, errOutsideLab) {
		t.Errorf("no host: %v", err)
	}
	if _, err := checkHAProxyPlace(&lab.Host{Name: "dispatcher"}, netip.MustParseAddr("198.51.100.100")); !errors.Is(err, errOutsideLab) {
		t.Errorf("no namespace: %v", err)
	}
}

func TestSinkholeServer(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no loopback: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &workServer{name: "server1", q: newWorkQueue(1, 100), ctx: ctx, cancel: cancel}
	s.setSlowdown(1)
	s.Serve(ln, s.serve)
	defer s.stop()
	ask := func(req string) []byte {
		conn, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, req)
		b, _ := io.ReadAll(conn)
		return b
	}
	names := []string{"server1"}
	health := "GET /health HTTP/1.0\r\n\r\n"
	if _, err := parseWorkReply(ask(health), names); err != nil {
		t.Errorf("well: /health %v", err)
	}
	s.setSink(sinkFailing)
	if i, err := parseWorkReply(ask(workRequest(fastWork)), names); i != 0 || !errors.Is(err, errServerError) || fbErrorKind(err) != "http-500" {
		t.Errorf("sinkhole: work %d %v", i, err)
	}
	if _, err := parseWorkReply(ask(health), names); !errors.Is(err, errServerError) {
		t.Errorf("sinkhole failing: /health %v", err)
	}
	s.setSink(sinkPassing)
	if _, err := parseWorkReply(ask(health), names); err != nil {
		t.Errorf("sinkhole passing: /health %v", err)
	}
	if _, err := parseWorkReply(ask(workRequest(slowWork)), names); !errors.Is(err, errServerError) {
		t.Errorf("sinkhole passing: work %v", err)
	}
	if n := s.requests.Load(); n != 2 {
		t.Errorf("counted %d work requests, want 2 (probes are not counted)", n)
	}
}

func TestDetection(t *testing.T) {
	nan := math.NaN()
	xs := []float64{0.25, 0.25, 0.3, 0.2, 0.1, 0.15, 0.05, 0, nan, 0}
	if got := detection(xs, 2, 10, 0.125); got != 4 {
		t.Errorf("detection %d, want 4 (below from second 6 on; 4 is undone by 5)", got)
	}
	if got := detection(xs, 0, 6, 0.125); got != -1 {
		t.Errorf("not below at the end: %d, want -1", got)
	}
	if got := detection([]float64{0, 0, 0}, 0, 3, 0.1); got != 0 {
		t.Errorf("below throughout: %d", got)
	}
	recs := []record{{At: time.Second, Err: "http-500"}, {At: 3 * time.Second, Err: "timeout"}, {At: 3 * time.Second}, {At: 5 * time.Second, Err: "x"}}
	if n := failedFrom(recs, 2*time.Second, 5*time.Second); n != 1 {
		t.Errorf("failed from 2 s to 5 s: %d", n)
	}
	if p := perMinute([]int{0, 1, 0, 2, 0, 0}, 0, 6); p != 30 {
		t.Errorf("per minute %v", p)
	}
	if d := maxRelDev([]float64{0.15, 0.3, 0.55}, []float64{1.0 / 7, 2.0 / 7, 4.0 / 7}); math.Abs(d-0.05) > 0.001 {
		t.Errorf("deviation %v", d)
	}
}

func TestTargetChecks(t *testing.T) {
	good := latencyStats{Requests: 1000, Mean: 12 * time.Millisecond, P99: 105 * time.Millisecond, P999: 240 * time.Millisecond}
	bad := latencyStats{Requests: 1000, Mean: 14 * time.Millisecond, P99: 120 * time.Millisecond, P999: 400 * time.Millisecond}
	m := fbMeasures{All: latencyStats{Requests: 3000}, ShareReact: 2, ShareReturn: 3, WeightSettle: 3, WeightReturn: 1, WeightsMoved: true}
	count := func(ts []fbTarget) (met int) {
		for _, x := range ts {
			if x.Met {
				met++
			}
		}
		return met
	}
	if ts := slowTargets(m, good, true, true); len(ts) != 8 || count(ts) != 8 {
		t.Errorf("good slow run: %+v", ts)
	}
	if ts := slowTargets(m, good, false, false); len(ts) != 5 {
		t.Errorf("HAProxy slow-start: %d targets, want 5 (none on weights or recovery)", len(ts))
	}
	m2 := m
	m2.All.Errors, m2.ShareReact, m2.WeightReturn = 1, 4, -1
	if ts := slowTargets(m2, bad, true, true); count(ts) != 2 {
		t.Errorf("bad slow run: %+v", ts)
	}
	sink := fbMeasures{SinkRequests: 1000, SinkFailed: 10, Detect: 2, FailedAfterDetect: 0, SinkMaxShare: 0.27}
	if ts := sinkTargets(sink, 0.25); count(ts) != 3 {
		t.Errorf("good sinkhole (1.0%%, none after, 27%% within noise of 25%%): %+v", ts)
	}
	sink.SinkFailed, sink.FailedAfterDetect, sink.SinkMaxShare = 11, 1, 0.6
	if ts := sinkTargets(sink, 0.25); count(ts) != 0 {
		t.Errorf("bad sinkhole: %+v", ts)
	}
	sink.Detect, sink.FailedAfterDetect = -1, 0
	if ts := sinkTargets(sink, 0.25); ts[1].Met {
		t.Errorf("never detected counts as met: %+v", ts[1])
	}
	ha := latencyStats{Requests: 1000, Mean: 12 * time.Millisecond, P999: 200 * time.Millisecond}
	if ts := equalTargets(latencyStats{Requests: 1000, Mean: 12600 * time.Microsecond, P999: 210 * time.Millisecond}, ha, true); count(ts) != 2 {
		t.Errorf("within 5%%: %+v", ts)
	}
	if ts := equalTargets(latencyStats{Requests: 1000, Mean: 12700 * time.Microsecond, P999: 211 * time.Millisecond}, ha, true); count(ts) != 0 {
		t.Errorf("beyond 5%%: %+v", ts)
	}
	if ts := equalTargets(good, ha, false); len(ts) != 1 || ts[0].Met {
		t.Errorf("no HAProxy: %+v", ts)
	}
	join := fbMeasures{All: latencyStats{Requests: 100}, ShareReact: 3, JoinMaxShare: 0.375}
	if ts := coldAddTargets(join, 0.25); count(ts) != 3 {
		t.Errorf("good join: %+v", ts)
	}
	join.ShareReact, join.JoinMaxShare, join.All.Errors = -1, 0.38, 2
	if ts := coldAddTargets(join, 0.25); count(ts) != 0 {
		t.Errorf("bad join: %+v", ts)
	}
	w := []float64{1.0 / 7, 2.0 / 7, 4.0 / 7}
	if ts := sizesTargets(fbMeasures{RestShares: w, RestDev: 0.1}, w, true); count(ts) != 2 {
		t.Errorf("good sizes: %+v", ts)
	}
	if ts := sizesTargets(fbMeasures{RestShares: w, RestDev: 0.11, CommitsPerMin: 2}, w, true); count(ts) != 0 {
		t.Errorf("bad sizes: %+v", ts)
	}
	if ts := sizesTargets(fbMeasures{RestShares: w}, w, false); len(ts) != 1 {
		t.Errorf("HAProxy has no commits target: %+v", ts)
	}
	if ts := beats(good, bad, "haproxy"); count(ts) != 3 {
		t.Errorf("beats: %+v", ts)
	}
	if ts := beats(bad, good, "haproxy"); count(ts) != 1 {
		t.Errorf("does not beat (errors tie): %+v", ts)
	}
}

// synthRun makes a run of sc with 1,000 requests a second, server i
// getting share(t, i) of second t's, nd's weights weight(t, i) (nil: a
// balancer without weights), and each request's latency and error from
// lat(t, server).
func synthRun(sc *scenario, name string, nd bool, share func(t, i int) float64, weight func(t, i int) float64, lat func(t, i int) (time.Duration, string)) *fbRun {
	run := &fbRun{Balancer: name, nd: nd}
	n := len(sc.Workers)
	run.Commits = make([]int, sc.seconds())
	for t := range sc.seconds() {
		counts := make([]int64, n)
		ws := make([]float64, n)
		for i := range n {
			counts[i] = int64(math.Round(1000 * share(t, i)))
			if weight != nil {
				ws[i] = weight(t, i)
			}
		}
		run.Counts = append(run.Counts, counts)
		if weight != nil {
			run.Weights = append(run.Weights, ws)
			if t > 0 && !slices.Equal(ws, run.Weights[t-1]) {
				run.Commits[t]++
			}
		}
		k := 0
		for i := range n {
			for range counts[i] {
				d, e := lat(t, i)
				run.records = append(run.records, record{At: time.Duration(t)*time.Second + time.Duration(k)*time.Millisecond, Latency: d, Server: i, Err: e})
				k++
			}
		}
	}
	return run
}

func TestAnalyseScenarios(t *testing.T) {
	o, _ := parseFeedbackOptions([]string{"--warmup", "2s"}, io.Discard)
	fast := func(int, int) (time.Duration, string) { return 5 * time.Millisecond, "" }
	equal := func(int, int) float64 { return 0.25 }
	targetsMet := func(run *fbRun) (met, all int) {
		for _, tg := range run.Targets {
			all++
			if tg.Met {
				met++
			}
		}
		return
	}

	// slow-spell: nd moves server1's weight 2 s after the slow-down and
	// back 1 s after the recovery, its share follows; HAProxy's share
	// does not move and its slow phase has a 400 ms tail.
	spell, _ := buildScenario(scSlowSpell, o)
	slow, _ := spell.phase(phSlow)
	inSlow := func(t, lag int) bool { return t >= slow.From+lag && t < slow.To+lag }
	ndShare := func(t, i int) float64 {
		if inSlow(t, 1) {
			return [4]float64{0.08, 0.92 / 3, 0.92 / 3, 0.92 / 3}[i]
		}
		return 0.25
	}
	ndWeight := func(t, i int) float64 {
		if i == 0 && inSlow(t, 1) {
			return 12
		}
		return 50
	}
	nd := synthRun(spell, balND, true, ndShare, ndWeight, fast)
	ha := synthRun(spell, balHAProxy, false, equal, nil, func(t, i int) (time.Duration, string) {
		if i == 0 && inSlow(t, 0) {
			return 400 * time.Millisecond, ""
		}
		return 5 * time.Millisecond, ""
	})
	r := &fbReport{Workers: 8, Load: 0.7, Slowdown: 4, Scenarios: []*fbScenario{{scenario: spell, Servers: []string{"server1", "server2", "server3", "server4"}, Runs: []*fbRun{nd, ha}}}}
	r.analyse()
	if m, all := targetsMet(nd); m != all || all != 8 {
		t.Errorf("slow-spell nd: %d of %d met: %+v (measures %+v)", m, all, nd.Targets, nd.Measures)
	}
	if nd.Measures.WeightSettle != 1 || nd.Measures.WeightReturn != 1 || nd.Measures.ShareReact < 0 || nd.Measures.ShareReact > 3 {
		t.Errorf("slow-spell nd measures %+v", nd.Measures)
	}
	if ha.Measures.ShareReact != -2 || len(ha.Targets) != 6 {
		t.Errorf("slow-spell haproxy: react %d, %d targets", ha.Measures.ShareReact, len(ha.Targets))
	}
	if len(nd.Versus) != 3 || !nd.Versus[1].Met {
		t.Errorf("nd against haproxy: %+v", nd.Versus)
	}

	// A sinkhole detected 2 s in: its failures stop there.
	sinkSc, _ := buildScenario(scSinkholeFailing, o)
	sink, _ := sinkSc.phase(phSink)
	gone := func(t int) bool { return t >= sink.From+2 }
	snd := synthRun(sinkSc, balND, true, func(t, i int) float64 {
		if gone(t) {
			return [4]float64{0, 1.0 / 3, 1.0 / 3, 1.0 / 3}[i]
		}
		return 0.25
	}, func(t, i int) float64 {
		if i == 0 && gone(t) {
			return 0
		}
		return 50
	}, func(t, i int) (time.Duration, string) {
		if i == 0 && t >= sink.From {
			return 0, "http-500"
		}
		return 5 * time.Millisecond, ""
	})
	sr := &fbReport{Scenarios: []*fbScenario{{scenario: sinkSc, Servers: []string{"server1", "server2", "server3", "server4"}, Runs: []*fbRun{snd}}}}
	sr.analyse()
	sm := snd.Measures
	if sm.Detect != 2 || sm.FailedAfterDetect != 0 || sm.SinkFailed != 500 || math.Abs(float64(sm.SinkRequests)-30000) > 100 || math.Abs(sm.SinkMaxShare-0.25) > 0.01 {
		t.Errorf("sinkhole measures %+v", sm)
	}
	if m, all := targetsMet(snd); m != 2 || all != 3 || snd.Targets[0].Met {
		t.Errorf("sinkhole targets (1.7%% failed: the first missed) %+v", snd.Targets)
	}

	// Cold add and sizes.
	addSc, _ := buildScenario(scColdAdd, o)
	joined, _ := addSc.phase(phJoined)
	cnd := synthRun(addSc, balND, true, func(t, i int) float64 {
		if t < joined.From {
			return [4]float64{1.0 / 3, 1.0 / 3, 1.0 / 3, 0}[i]
		}
		return 0.25
	}, func(t, i int) float64 {
		if i == 3 && t < joined.From {
			return 0
		}
		return 50
	}, fast)
	sizesSc, _ := buildScenario(scSizes, o)
	znd := synthRun(sizesSc, balND, true, func(t, i int) float64 { return [3]float64{0.15, 0.29, 0.56}[i] },
		func(t, i int) float64 { return [3]float64{25, 50, 100}[i] }, fast)
	eqSc, _ := buildScenario(scEqual, o)
	end := synthRun(eqSc, balND, true, equal, func(int, int) float64 { return 50 }, fast)
	eha := synthRun(eqSc, balHAProxyChecks, false, equal, nil, fast)
	r2 := &fbReport{Scenarios: []*fbScenario{
		{scenario: addSc, Servers: []string{"server1", "server2", "server3", "server4"}, Runs: []*fbRun{cnd}},
		{scenario: sizesSc, Servers: []string{"server1", "server2", "server3"}, Runs: []*fbRun{znd}},
		{scenario: eqSc, Servers: []string{"server1", "server2", "server3", "server4"}, Runs: []*fbRun{end, eha}},
	}}
	r2.analyse()
	for _, run := range []*fbRun{cnd, znd, end} {
		if m, all := targetsMet(run); m != all || all == 0 {
			t.Errorf("%d of %d met: %+v (measures %+v)", m, all, run.Targets, run.Measures)
		}
	}
	if cnd.Measures.JoinMaxShare != 0.25 || cnd.Measures.ShareReact > 1 {
		t.Errorf("cold-add measures %+v", cnd.Measures)
	}
	if znd.Measures.CommitsPerMin != 0 || znd.Measures.RestDev > 0.06 {
		t.Errorf("sizes measures %+v", znd.Measures)
	}

	// A run cut short (Ctrl-C) is analysed as far as it went.
	short := synthRun(addSc, balHAProxy, false, equal, nil, fast)
	short.Counts = short.Counts[:3]
	r3 := &fbReport{Scenarios: []*fbScenario{{scenario: addSc, Servers: []string{"server1", "server2", "server3", "server4"}, Runs: []*fbRun{short}}}}
	r3.analyse()
	if short.CutShort == "" || len(short.Counts) != addSc.seconds() || short.Measures.ShareReact != -1 {
		t.Errorf("cut short: %q, %d seconds, react %d", short.CutShort, len(short.Counts), short.Measures.ShareReact)
	}

	// The report and every plot.
	var buf bytes.Buffer
	r.Scenarios = append(r.Scenarios, sr.Scenarios[0])
	r.Scenarios = append(r.Scenarios, r2.Scenarios...)
	r.writeTable(&buf)
	for _, want := range []string{"== slow-spell", "== sinkhole-failing", "summary", "MISSED", "beats haproxy: p99.9"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
	dir := t.TempDir()
	if err := r.writeFiles(dir); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.svg"))
	if len(files) != 1+5+5 { // latency; per scenario a compare and nd's run
		t.Errorf("%d plots: %v", len(files), files)
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		d := xml.NewDecoder(bytes.NewReader(b))
		for {
			_, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: not well-formed: %v", f, err)
			}
		}
		if bytes.Contains(b, []byte("NaN")) {
			t.Errorf("%s holds NaN", f)
		}
	}
}
