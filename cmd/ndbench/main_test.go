package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

func TestSearch(t *testing.T) {
	tests := []struct {
		name     string
		lo, hi   float64
		capacity float64 // rates up to this pass
		maxSteps int
		want     float64
		within   float64 // the result may be this far below capacity
	}{
		{"doubling then bisection", 1000, 2000, 11_300, 20, 11_300, 0.03},
		{"first guess fails", 8000, 9000, 2500, 20, 2500, 0.03},
		{"capacity above the limit", 1000, 2000, 1e9, 20, 50_000, 0},
		{"nothing passes", 1000, 2000, 0, 20, 0, 0},
		{"bounded in steps", 1000, 2000, 11_300, 3, 4000, 0},
		{"bracket from a previous round", 0.85 * 6000, 1.15 * 6000, 6200, 20, 6200, 0.03},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSearch(tt.lo, tt.hi, 50_000, 0.025, tt.maxSteps)
			var tried []float64
			best, steps, err := s.run(context.Background(), func(_ context.Context, rate float64) (stepResult, error) {
				tried = append(tried, rate)
				return stepResult{Rate: rate, Sustained: rate <= tt.capacity}, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(steps) > tt.maxSteps || len(steps) != len(tried) {
				t.Errorf("%d steps recorded, %d tried, at most %d allowed", len(steps), len(tried), tt.maxSteps)
			}
			if best > math.Min(tt.capacity, 50_000) || best < tt.want*(1-tt.within) {
				t.Errorf("best %v, want %v (within %v); tried %v", best, tt.want, tt.within, tried)
			}
			seen := map[float64]int{}
			for _, r := range tried {
				if seen[r]++; seen[r] > 2 {
					t.Errorf("rate %v tried more than twice: %v", r, tried)
				}
				if r > 50_000 {
					t.Errorf("rate %v above the limit", r)
				}
			}
		})
	}
}

// TestSearchRetriesFailures: one failure, such as a burst of other work on
// the machine, does not cap the search; two at the same rate do.
func TestSearchRetriesFailures(t *testing.T) {
	s := newSearch(1000, 2000, 50_000, 0.025, 30)
	sunk := false
	var tried []float64
	best, _, err := s.run(context.Background(), func(_ context.Context, rate float64) (stepResult, error) {
		tried = append(tried, rate)
		if rate == 4000 && !sunk {
			sunk = true
			return stepResult{}, nil
		}
		return stepResult{Sustained: rate <= 11_300}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if best < 11_000 || best > 11_300 {
		t.Errorf("best %v after one spurious failure, want about 11300; tried %v", best, tried)
	}
	for i := 1; i < len(tried); i++ {
		if tried[i] == tried[i-1] && tried[i] != 4000 && tried[i] <= 11_300 {
			t.Errorf("a passing rate was retried: %v", tried)
		}
	}
}

func TestSearchStopsOnError(t *testing.T) {
	s := newSearch(1000, 2000, 50_000, 0.025, 20)
	boom := errors.New("boom")
	_, steps, err := s.run(context.Background(), func(context.Context, float64) (stepResult, error) {
		return stepResult{Sustained: true}, boom
	})
	if !errors.Is(err, boom) || len(steps) != 1 {
		t.Errorf("err %v after %d steps, want boom after 1", err, len(steps))
	}
}

func TestParseOptions(t *testing.T) {
	o, err := parseOptions(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.servers != 4 || o.rate != 1000 || o.duration != 2*time.Second || o.json {
		t.Errorf("defaults: %+v", o)
	}
	o, err = parseOptions([]string{"--servers", "2", "--duration", "1s", "--rate", "500", "--json"}, &bytes.Buffer{})
	if err != nil || o.servers != 2 || o.duration != time.Second || o.rate != 500 || !o.json {
		t.Errorf("flags: %+v, %v", o, err)
	}
	// Without the search a run's bound shrinks by more than half.
	lo, _ := parseOptions([]string{"--latency-only"}, &bytes.Buffer{})
	full, _ := parseOptions(nil, &bytes.Buffer{})
	if !lo.latencyOnly || 2*lo.worstCase() >= full.worstCase() {
		t.Errorf("--latency-only: %v, bound %v vs %v", lo.latencyOnly, lo.worstCase(), full.worstCase())
	}
	for _, args := range [][]string{
		{"--servers", "0"},
		{"--servers", "89"},
		{"--duration", "1ms"},
		{"--rate", "0"},
		{"--rate", "NaN"},
		{"--rate", "100000"},
		{"--rounds", "0"},
		{"--timeout", "0s"},
		{"extra"},
	} {
		if _, err := parseOptions(args, &bytes.Buffer{}); !errors.Is(err, errUsage) {
			t.Errorf("%q: err %v, want a usage error", args, err)
		}
	}
}

func TestHelp(t *testing.T) {
	var out, errw bytes.Buffer
	if code := run([]string{"--help"}, env{stdout: &out, stderr: &errw, euid: func() int { return 1000 }}); code != 0 {
		t.Errorf("exit %d", code)
	}
	for _, want := range []string{"usage: ndbench", "--servers", "--duration", "--rate", "--json", "root"} {
		if !strings.Contains(errw.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, errw.String())
		}
	}
}

func TestRefusesWithoutRoot(t *testing.T) {
	var out, errw bytes.Buffer
	code := run(nil, env{stdout: &out, stderr: &errw, euid: func() int { return 1000 }})
	if code != 1 || !strings.Contains(errw.String(), "must run as root") || out.Len() != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out.String(), errw.String())
	}
}

func TestParseReply(t *testing.T) {
	names := []string{"server1", "server2"}
	ok := []byte(replyStatus + "Content-Length: 8\r\nConnection: close\r\n\r\nserver2\n")
	if i, err := parseReply(ok, names); err != nil || i != 1 {
		t.Errorf("got %d, %v", i, err)
	}
	for _, tt := range []struct {
		reply string
		want  error
	}{
		{"", errBadReply},
		{"HTTP/1.0 500 Oops\r\n\r\nserver1\n", errBadReply},
		{replyStatus + "Content-Length: 8\r\n", errBadReply},
		{replyStatus + "\r\nserver3\n", errWrongServer},
	} {
		if _, err := parseReply([]byte(tt.reply), names); !errors.Is(err, tt.want) {
			t.Errorf("%q: err %v, want %v", tt.reply, err, tt.want)
		}
	}
}

func TestPercentileAndMedian(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	if p := lab.Percentile(d, 0.5); p != 50 {
		t.Errorf("p50 %v", p)
	}
	if p := lab.Percentile(d, 0.99); p != 99 {
		t.Errorf("p99 %v", p)
	}
	if p := lab.Percentile(nil, 0.5); p != 0 {
		t.Errorf("empty p50 %v", p)
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median %v", m)
	}
}

func TestReport(t *testing.T) {
	rr := func(p50 time.Duration, maxRate float64) roundResult {
		return roundResult{XDPMode: "native", Latency: stepResult{P50: p50, P99: 2 * p50, Planned: 100, Sent: 100}, MaxRate: maxRate}
	}
	results := map[string][]roundResult{
		cfgDirect:  {rr(100*time.Microsecond, 10_000), rr(110*time.Microsecond, 11_000)},
		cfgTrivial: {rr(110*time.Microsecond, 9_000), rr(120*time.Microsecond, 9_500)},
		cfgND:      {rr(120*time.Microsecond, 8_800), rr(125*time.Microsecond, 9_400)},
	}
	o, _ := parseOptions([]string{"--rounds", "2"}, &bytes.Buffer{})
	r := newReport(o, results)
	if got := r.Ratios[0]; math.Abs(got.Value-122.5/105) > 1e-9 || got.Met == nil || *got.Met {
		t.Errorf("nd p50 / direct p50: %+v", got)
	}
	if got := r.Ratios[1]; math.Abs(got.Value-9100.0/9250) > 1e-9 || got.Met == nil || !*got.Met {
		t.Errorf("nd max / trivial max: %+v", got)
	}
	var table, js bytes.Buffer
	r.writeTable(&table)
	if !strings.Contains(table.String(), "MISSED") || !strings.Contains(table.String(), "met") {
		t.Errorf("table:\n%s", table.String())
	}
	if err := r.writeJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON does not parse back: %v", err)
	}
	// A run stopped before any round ends still reports, without ratios.
	empty := newReport(o, nil)
	if err := empty.writeJSON(&bytes.Buffer{}); err != nil {
		t.Errorf("empty report: %v", err)
	}
	if empty.Ratios[0].Met != nil {
		t.Errorf("a ratio of nothing has a verdict: %+v", empty.Ratios[0])
	}
}

// TestReportXDPCost: the program's run time is reported per frame and per
// request as medians over the rounds that measured it, and nd's time beyond
// the trivial forwarder's as a share of direct's p50.
func TestReportXDPCost(t *testing.T) {
	rr := func(p50 time.Duration, runs uint64, runtime time.Duration, requests int) roundResult {
		return roundResult{Latency: stepResult{P50: p50}, XDP: xdpCost{Runs: runs, Runtime: runtime, Requests: requests}}
	}
	results := map[string][]roundResult{
		cfgDirect:  {rr(200*time.Microsecond, 0, 0, 0), rr(200*time.Microsecond, 0, 0, 0)},
		cfgTrivial: {rr(220*time.Microsecond, 400, 80*time.Microsecond, 100), rr(220*time.Microsecond, 400, 120*time.Microsecond, 100)},
		// The second round has no statistics: it must not pull the medians to 0.
		cfgND: {rr(230*time.Microsecond, 400, 480*time.Microsecond, 100), rr(230*time.Microsecond, 0, 0, 100)},
	}
	o, _ := parseOptions([]string{"--rounds", "2"}, &bytes.Buffer{})
	r := newReport(o, results)
	got := map[string]summary{}
	for _, s := range r.Configs {
		got[s.Config] = s
	}
	if s := got[cfgTrivial]; s.XDPNsPerPacket != 250 || s.XDPNsPerRequest != 1000 {
		t.Errorf("trivial: %v ns a frame, %v ns a request; want 250 and 1000", s.XDPNsPerPacket, s.XDPNsPerRequest)
	}
	if s := got[cfgND]; s.XDPNsPerPacket != 1200 || s.XDPNsPerRequest != 4800 {
		t.Errorf("nd: %v ns a frame, %v ns a request; want 1200 and 4800", s.XDPNsPerPacket, s.XDPNsPerRequest)
	}
	var table bytes.Buffer
	r.writeTable(&table)
	// (4.8 - 1.0) µs of 200 µs.
	if !strings.Contains(table.String(), "3.80 µs a request, 1.9% of direct's p50") {
		t.Errorf("table:\n%s", table.String())
	}
	results[cfgND] = []roundResult{rr(230*time.Microsecond, 0, 0, 100)}
	table.Reset()
	newReport(o, results).writeTable(&table)
	if !strings.Contains(table.String(), "not measured") {
		t.Errorf("without statistics the table should say so:\n%s", table.String())
	}
}

// TestRefusesOutsideTheClientNamespace: the socket factory's checks refuse
// a thread or a socket that is not in the namespace asked for, and refuse
// the namespace the process started in even when it is the one asked for.
// Asking the kernel which namespace holds a socket (SIOCGSKNS) needs
// CAP_NET_ADMIN: without it the test skips, saying so.
func TestRefusesOutsideTheClientNamespace(t *testing.T) {
	testutil.RequirePrivileged(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := statNS("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if err := checkThreadNS(nsID{dev: 1, ino: 2}); !errors.Is(err, errRefused) {
		t.Errorf("another namespace than the thread's: err %v, want refusal", err)
	}
	if self == startNS {
		if err := checkThreadNS(self); !errors.Is(err, errRefused) {
			t.Errorf("the namespace the process started in: err %v, want refusal", err)
		}
	}
	fd, err := newSocket()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := checkSocketNS(fd, nsID{dev: 1, ino: 2}); !errors.Is(err, errRefused) {
		t.Errorf("a socket of another namespace: err %v, want refusal", err)
	}
	if err := checkSocketNS(fd, self); err != nil {
		t.Errorf("a socket of the namespace asked for: %v", err)
	}
}

func TestRunRefusesTargetsOutsideTheLab(t *testing.T) {
	g := &generator{dead: make(chan struct{})}
	for _, a := range []string{"100.64.0.1:80", "10.0.0.1:80", "[2001:db8::1]:80"} {
		tg := target{addrs: []netip.AddrPort{netip.MustParseAddrPort(a)}, names: []string{"server1"}}
		if _, err := g.run(context.Background(), tg, 1000, time.Second); !errors.Is(err, errRefused) {
			t.Errorf("%s: err %v, want refusal", a, err)
		}
	}
}
