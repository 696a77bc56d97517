package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// shareStatus is a status with one port, with the given packets and a
// server per count of new flows.
func shareStatus(packets uint64, newFlows ...uint64) nd.Status {
	p := nd.PortStatus{VIP: "198.51.100.100", Port: 80, Protocol: "tcp", Packets: packets}
	for i, n := range newFlows {
		p.Servers = append(p.Servers, nd.ServerStatus{Address: "198.51.100.1" + strconv.Itoa(i+1), NewFlows: n, ActiveFlows: n, NewFlowsRate: float64(n)})
	}
	return nd.Status{Ports: []nd.PortStatus{p}}
}

func TestMergeStatus(t *testing.T) {
	a, b := shareStatus(100, 1, 2), shareStatus(50, 10, 20)
	m := mergeStatus([]nd.Status{a, b})
	if p := m.Ports[0]; p.Packets != 150 || p.Servers[0].NewFlows != 11 || p.Servers[1].ActiveFlows != 22 || p.Servers[1].NewFlowsRate != 22 {
		t.Errorf("merged: %+v", p)
	}
	if a.Ports[0].Packets != 100 || a.Ports[0].Servers[0].NewFlows != 1 {
		t.Errorf("the first status changed: %+v", a.Ports[0])
	}
}

// shareColumns returns, for each dispatcher line of the last share table
// in out, its columns after the name and address.
func shareColumns(t *testing.T, out string) [][]string {
	t.Helper()
	i := strings.LastIndex(out, "  DISPATCHER")
	if i < 0 {
		t.Fatalf("no dispatchers' table in:\n%s", out)
	}
	var rows [][]string
	for _, line := range strings.Split(out[i:], "\n")[1:] {
		f := strings.Fields(line)
		if len(f) != 8 || !strings.HasPrefix(f[0], "dispatcher") {
			break
		}
		rows = append(rows, f[2:])
	}
	return rows
}

// percentSum adds the percentages of column col.
func percentSum(t *testing.T, rows [][]string, col int) float64 {
	t.Helper()
	sum := 0.0
	for _, r := range rows {
		v, err := strconv.ParseFloat(strings.TrimSuffix(r[col], "%"), 64)
		if err != nil {
			t.Fatalf("column %d of %v: %v", col, r, err)
		}
		sum += v
	}
	return sum
}

func TestLabShares(t *testing.T) {
	ds := []labDispatcher{{name: "dispatcher", addr: "198.51.100.3"}, {name: "dispatcher2", addr: "198.51.100.4"}, {name: "dispatcher3", addr: "198.51.100.6"}}
	s := newLabShares(ds)
	at := time.Unix(1000, 0)
	st := func(p uint64, n ...uint64) *nd.Status { x := shareStatus(p, n...); return &x }
	s.observe([]*nd.Status{st(10, 1, 1), st(20, 2, 2), st(30, 3, 3)}, at)
	// Over 2 s: 100, 300 and 0 packets more (the third unread), 10, 30
	// and 0 new flows.
	s.observe([]*nd.Status{st(110, 6, 6), st(320, 17, 17), nil}, at.Add(2*time.Second))
	var buf bytes.Buffer
	s.write(&buf)
	rows := shareColumns(t, buf.String())
	want := [][]string{
		{"50.0", "5.0", "25.0%", "25.0%", "25.0%", "25.0%"},
		{"150.0", "15.0", "75.0%", "75.0%", "75.0%", "75.0%"},
		{"-", "-", "0.0%", "0.0%", "0.0%", "0.0%"},
	}
	if len(rows) != 3 || strings.Join(rows[0], " ") != strings.Join(want[0], " ") ||
		strings.Join(rows[1], " ") != strings.Join(want[1], " ") || strings.Join(rows[2], " ") != strings.Join(want[2], " ") {
		t.Errorf("rows %v, want %v; output:\n%s", rows, want, buf.String())
	}
	// The third is read again: its counts since the first frame count.
	s.observe([]*nd.Status{st(110, 6, 6), st(320, 17, 17), st(130, 8, 8)}, at.Add(3*time.Second))
	buf.Reset()
	s.write(&buf)
	rows = shareColumns(t, buf.String())
	if got := rows[2][2] + " " + rows[2][4]; got != "100.0% 20.0%" {
		t.Errorf("the third's shares, last and all: %s; output:\n%s", got, buf.String())
	}
	for col := 2; col < 6; col++ {
		if sum := percentSum(t, rows, col); sum < 99.8 || sum > 100.2 {
			t.Errorf("column %d sums to %.1f%%", col, sum)
		}
	}
}

// TestLabDispatcherShares runs `ndctl lab --dispatchers 2` for a few
// seconds: every frame and the final view show each dispatcher's share of
// the packets and new flows, both dispatchers forward some, and the shares
// sum to 100%.
func TestLabDispatcherShares(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, bin := range []string{"bird", "birdc"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv(testutil.RequirePrivilegedEnv) != "" {
				t.Fatalf("%s is not installed (apt-get install bird2): %v", bin, err)
			}
			t.Skipf("%s is not installed (apt-get install bird2): %v", bin, err)
		}
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", dir, "github.com/nd-dispatcher/nd/cmd/ndd").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/ndd: %v\n%s", err, out)
	}
	h := newHarness(t)
	e := h.env()
	e.lab.lookPath = exec.LookPath
	e.tick = time.Second
	code := run(ctx, e, []string{"lab", "--dispatchers", "2", "--duration", "5s", "--rate", "100", "--dashboard", "off", "--ndd", filepath.Join(dir, "ndd")})
	out := h.stdout.String()
	if code != 0 {
		t.Fatalf("ndctl lab exited %d: %s\n%s", code, h.stderr.String(), out)
	}
	if n := strings.Count(out, "  DISPATCHER"); n < 4 {
		t.Errorf("%d share tables shown in 5 s, want one a second and a final one:\n%s", n, out)
	}
	final := out[strings.Index(out, "final, after"):]
	rows := shareColumns(t, final)
	t.Logf("final shares:\n%s", final[strings.LastIndex(final, "dispatchers:"):])
	if len(rows) != 2 {
		t.Fatalf("%d dispatchers in the final table, want 2:\n%s", len(rows), final)
	}
	for col := 4; col < 6; col++ { // since the start: packets, new flows
		if sum := percentSum(t, rows, col); sum < 99.8 || sum > 100.2 {
			t.Errorf("the shares since the start (column %d) sum to %.1f%%", col, sum)
		}
		for _, r := range rows {
			if r[col] == "0.0%" || r[col] == "-" {
				t.Errorf("a dispatcher forwarded nothing: %v", rows)
			}
		}
	}
}
