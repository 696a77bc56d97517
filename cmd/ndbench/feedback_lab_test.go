package main

import (
	"context"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestFeedbackInLab runs the cold-add scenario end to end, briefly and
// at a low rate, through nd and through HAProxy: a lab, ndd or haproxy in
// the dispatcher's namespace, fresh work servers per run, the open-loop
// client, the fourth server added live (ndd's API, HAProxy's admin
// socket), and the report.
func TestFeedbackInLab(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.RequireCommands(t, "scripts/setup installs it", "haproxy")
	r := runInLab(t, parseFeedbackOptions, []string{"--scenarios", "cold-add", "--balancers", "nd,haproxy", "--warmup", "1s",
		"--phase-scale", "0.15", "--load", "0.2"}, runFeedbackBench)
	r.analyse()
	if len(r.Scenarios) != 1 || len(r.Scenarios[0].Runs) != 2 {
		t.Fatalf("%d scenarios", len(r.Scenarios))
	}
	sc := r.Scenarios[0]
	three, _ := sc.phase(phThree)
	joined, _ := sc.phase(phJoined)
	for _, run := range sc.Runs {
		if run.Error != "" || run.Skipped != "" || len(run.Counts) != sc.seconds() {
			t.Fatalf("%s: error %q, skipped %q, %d seconds sampled", run.Balancer, run.Error, run.Skipped, len(run.Counts))
		}
		all := run.Measures.All
		if all.Requests == 0 || all.Errors > 0 {
			t.Errorf("%s: %d requests, errors %v", run.Balancer, all.Requests, all.ErrorKinds)
		}
		before, after := shares(run.Counts, three.From, three.To), shares(run.Counts, joined.From, joined.To)
		if before[3] != 0 || before[0] == 0 || before[1] == 0 || before[2] == 0 {
			t.Errorf("%s: shares before the join %v, want server4 none and the others some", run.Balancer, before)
		}
		if after[3] == 0 {
			t.Errorf("%s: server4 got nothing after it joined: %v", run.Balancer, after)
		}
		if run.Balancer == balND && (len(run.Weights) != sc.seconds() || run.Weights[0][3] != 0 || run.Weights[len(run.Weights)-1][3] == 0) {
			t.Errorf("nd's weights %v: server4 should go from 0 to its weight", run.Weights)
		}
	}
}

// TestHAProxyInLab starts HAProxy in a lab's dispatcher namespace from a
// generated configuration, passes requests through it to the servers,
// and stops it.
func TestHAProxyInLab(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.RequireCommands(t, "scripts/setup installs it", "haproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := newCheckedLab(ctx, lab.Options{Servers: 4}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := (&bench{lab: l}).prepareClient(); err != nil {
		t.Fatal(err)
	}
	o, _ := parseFeedbackOptions(nil, io.Discard)
	sc, _ := buildScenario(scEqual, o)
	vip := netip.AddrPortFrom(l.VIP4, servicePort)
	var names []string
	for i := range sc.Workers {
		h := &l.Servers[i]
		s, err := startWorkServer(ctx, h, 2, 100, vip, netip.AddrPortFrom(h.Addr4, servicePort))
		if err != nil {
			t.Fatal(err)
		}
		defer s.stop()
		names = append(names, h.Name)
	}
	b, _ := findBalancer(balHAProxyChecks)
	h, err := startHAProxy(ctx, b, sc, l, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer h.stop()
	g, err := startGenerator(ctx, &l.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer g.stop()
	recs, err := openLoop(ctx, g, vip, names, 100, time.Second, 1)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]int{}
	for _, r := range recs {
		if r.Err != "" {
			t.Errorf("request due at %v: %s", r.At, r.Err)
		}
		seen[r.Server]++
	}
	if len(recs) < 50 || len(seen) < 2 {
		t.Errorf("%d requests, answered by %v: want them spread over the servers", len(recs), seen)
	}
	if err := h.alive(); err != nil {
		t.Fatal(err)
	}
	if err := h.stop(); err != nil {
		t.Error(err)
	}
	if !h.Exited() {
		t.Error("haproxy still runs after stop")
	}
}

// testNDD builds cmd/ndd for one test and returns the binary's path.
func testNDD(t *testing.T) string {
	t.Helper()
	ndd, err := buildNDD(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ndd
}

// runInLab parses a bench's flags, args and --ndd with a fresh build of
// ndd, and runs the bench for a test, within 90 s; a failure ends the
// test.
func runInLab[O, R any](t *testing.T, parse func([]string, io.Writer) (O, error), args []string, run func(context.Context, O, func(string, ...any)) (R, error)) R {
	t.Helper()
	o, err := parse(append(args, "--ndd", testNDD(t)), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r, err := run(ctx, o, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
