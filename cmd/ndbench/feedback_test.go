package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
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
	s.serveOn(ln, s.serve)
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
	if math.Abs(o.capacity()-1467.9) > 1 || math.Abs(o.rate()-1027.5) > 1 || len(o.variants) != 4 || o.total() != 120*time.Second {
		t.Errorf("defaults: capacity %v rate %v variants %d total %v", o.capacity(), o.rate(), len(o.variants), o.total())
	}
	for _, args := range [][]string{
		{"--servers", "1"}, {"--workers", "0"}, {"--load", "0"}, {"--slow", "1500ms"},
		{"--variants", "static,bogus"}, {"--slowdown", "0.5"}, {"extra"}, {"--workers", "64", "--load", "2", "--servers", "8"},
	} {
		if _, err := parseFeedbackOptions(args, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	var out bytes.Buffer
	if code := run([]string{"feedback", "--help"}, env{stdout: &out, stderr: &out, euid: func() int { return 1000 }}); code != 0 || !strings.Contains(out.String(), "-variants") {
		t.Errorf("help: exit %d, %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"feedback"}, env{stdout: &out, stderr: &out, euid: func() int { return 1000 }}); code != 1 || !strings.Contains(out.String(), "must run as root") {
		t.Errorf("not root: exit %d, %q", code, out.String())
	}
}

func TestNDDConfigParses(t *testing.T) {
	l := &lab.Lab{VIP4: netip.MustParseAddr("198.51.100.100")}
	l.Dispatcher.Ifname = "eth0"
	for i := range 4 {
		l.Servers = append(l.Servers, lab.Host{Name: "s", Iface: lab.Iface{Addr4: netip.AddrFrom4([4]byte{198, 51, 100, byte(11 + i)})}})
	}
	v, _ := findVariant("static")
	y := nddConfig(v, l, "/tmp/x")
	c, err := config.Parse([]byte(y), "static.yaml")
	if err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	if c.Manager.Policy != config.PolicyStatic || len(c.Clusters) != 1 || len(c.Clusters[0].Ports[0].Servers) != 4 || c.DataPlane.PinPath != "" {
		t.Errorf("parsed %+v", c)
	}
	for _, w := range c.Clusters[0].Ports[0].Servers {
		if w.Weight != c.Clusters[0].Ports[0].Servers[0].Weight {
			t.Errorf("weights not equal: %+v", c.Clusters[0].Ports[0].Servers)
		}
	}
	for _, name := range []string{"manager-advisor", "p2c-manager"} {
		v, _ := findVariant(name)
		y := nddConfig(v, l, "/tmp/x")
		if !strings.Contains(y, v.port) {
			t.Errorf("%s: the port's setting is missing:\n%s", name, y)
		}
	}
}

// TestAnalyse runs the analysis over a synthetic run in which a manager
// moves server1's weight down 4 s after the slow-down and back 2 s after
// the recovery.
func TestAnalyse(t *testing.T) {
	o, _ := parseFeedbackOptions([]string{"--warmup", "0s", "--normal", "10s", "--slow", "20s", "--recovery", "20s"}, io.Discard)
	r := newFBReport(o)
	r.Servers = []string{"server1", "server2", "server3", "server4"}
	mk := func(name string, move bool) *fbVariant {
		v := &fbVariant{Name: name, Interval: 2 * time.Second}
		for s := range 50 {
			w1, c1 := 50.0, int64(250)
			if move && s >= 14 && s < 32 {
				w1, c1 = 12, 120
			}
			v.Counts = append(v.Counts, []int64{c1, 250, 250, 250})
			v.Weights = append(v.Weights, []float64{w1, 50, 50, 50})
			lat := 5 * time.Millisecond
			if s >= 10 && s < 30 && !move {
				lat = time.Second
			}
			for k := range 100 {
				v.records = append(v.records, record{At: time.Duration(s)*time.Second + time.Duration(k)*10*time.Millisecond, Latency: lat, Server: k % 4})
			}
		}
		return v
	}
	static, nd := mk("static", false), mk("manager-default", true)
	r.Variants = []*fbVariant{static, nd}
	r.analyse()
	if nd.ReactSlow < 3 || nd.ReactSlow > 6 {
		t.Errorf("reaction to the slow-down %d s, want 4 give or take the moving mean", nd.ReactSlow)
	}
	if nd.ReactRecovery < 1 || nd.ReactRecovery > 4 || nd.SettleSlow != 4 || nd.SettleRecovery != 2 {
		t.Errorf("recovery %d s, weights settle %d and %d s", nd.ReactRecovery, nd.SettleSlow, nd.SettleRecovery)
	}
	if static.ReactSlow != -2 || static.WeightsMoved || !nd.WeightsMoved {
		t.Errorf("static reacts %d, moved %v; nd moved %v", static.ReactSlow, static.WeightsMoved, nd.WeightsMoved)
	}
	met := map[string]bool{}
	for _, tg := range nd.Targets {
		met[tg.Name] = tg.Met
	}
	if !met["slow phase: p99.9 <= half of static's"] || !met["slow phase: no errors"] || !met["weights settle within 3 intervals of the slow-down"] {
		t.Errorf("targets %+v", nd.Targets)
	}
	if met["slow phase: server1 share <= 1.3x its capacity share"] {
		t.Errorf("share %.3f met the 1.3x target (capacity share %.3f)", nd.SettledSlowShare, r.capShare(phSlow))
	}
	if r.Best != "manager-default" {
		t.Errorf("best %q", r.Best)
	}
	var buf bytes.Buffer
	r.writeTable(&buf)
	if err := r.variantSVG(&buf, nd); err != nil {
		t.Fatal(err)
	}
	if err := r.compareSVG(&buf); err != nil {
		t.Fatal(err)
	}
}
