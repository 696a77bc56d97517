package main

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestFeedbackStaticInLab runs the static variant end to end for a few
// seconds at a low rate: a lab, ndd in the dispatcher's namespace, the
// work servers, the open-loop client, the slow-down and the report.
func TestFeedbackStaticInLab(t *testing.T) {
	testutil.RequirePrivileged(t)
	ndd := testNDD(t)
	o, err := parseFeedbackOptions([]string{"--variants", "static", "--warmup", "0s", "--normal", "3s", "--slow", "4s", "--recovery", "2s",
		"--load", "0.3", "--ndd", ndd}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := runFeedbackBench(ctx, o, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	r.analyse()
	if len(r.Variants) != 1 {
		t.Fatalf("%d variants", len(r.Variants))
	}
	v := r.Variants[0]
	if v.Error != "" || v.Skipped != "" || len(v.Counts) != 9 {
		t.Fatalf("error %q, skipped %q, %d seconds sampled", v.Error, v.Skipped, len(v.Counts))
	}
	normal, slow := v.phaseResult(phNormal), v.phaseResult(phSlow)
	want := o.rate() * 3
	if float64(normal.Requests) < 0.8*want || float64(normal.Requests) > 1.2*want {
		t.Errorf("normal phase: %d requests, want about %.0f", normal.Requests, want)
	}
	if normal.Errors > 0 {
		t.Errorf("normal phase at 30%% load: %d errors %v", normal.Errors, normal.ErrorKinds)
	}
	for i, s := range v.Phases[1].Shares {
		if s < 0.15 || s > 0.35 {
			t.Errorf("%s got %.1f%% of the requests at equal weights", r.Servers[i], 100*s)
		}
	}
	for _, w := range v.Weights {
		for _, x := range w {
			if x != w[0] || x <= 0 {
				t.Fatalf("static weights %v", w)
			}
		}
	}
	// Server1 at 4x slower holds its 100 ms requests for 400 ms.
	if slow.P999 < 300*time.Millisecond || slow.P999 <= normal.P999 {
		t.Errorf("slow phase p99.9 %v, normal %v: server1's slow-down does not show", slow.P999, normal.P999)
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
