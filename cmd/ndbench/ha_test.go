package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestHAUsage: `ndbench ha` refuses bad flags with a usage error and
// exit 2 before touching anything, and refuses to run unprivileged.
func TestHAUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--failovers", "0"},
		{"--conns", "0"},
		{"--period", "0s"},
		{"--interval", "1s", "--dead-after", "1500ms"},
		{"--servers", "9"},
		{"--window", "1s"},
		{"--idle-timeout", "500ms"},
		{"--hold", "0.5s"},
		{"--refresh", "6s"}, // over half the default idle timeout
		{"--idle-timeout", "2s", "--refresh", "50ms"},
		{"extra"},
	} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"ha"}, args...), env{stdout: &out, stderr: &errb, euid: func() int { return 0 }}); code != 2 {
			t.Errorf("ndbench ha %v: exit %d, want 2 (%s)", args, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"ha", "--help"}, env{stdout: &out, stderr: &errb, euid: func() int { return 0 }}); code != 0 || !strings.Contains(errb.String(), "usage: ndbench ha") {
		t.Errorf("ndbench ha --help: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"ha"}, env{stdout: &out, stderr: &errb, euid: func() int { return 1000 }}); code != 1 || !strings.Contains(errb.String(), "root") {
		t.Errorf("unprivileged ndbench ha: exit %d, %q", code, errb.String())
	}
}

// TestHAMeasure: the client's gap is the longest silence over all
// connections; a connection that broke or never answered after the
// takeover is lost.
func TestHAMeasure(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms ...int) []time.Time {
		var ts []time.Time
		for _, m := range ms {
			ts = append(ts, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return ts
	}
	pg := &pings{
		replies: [][]time.Time{
			at(-500, -10, 900, 910),   // survives, stall 910 ms
			at(-505, -5, 1200, 1210),  // survives, stall 1205 ms
			at(-500, -20),             // never answers again
			at(-500, -15, 1000, 1010), // broke afterwards
		},
		failed: []bool{false, false, false, true},
	}
	gap, stall, survived := pg.measure(t0, t0.Add(800*time.Millisecond))
	if gap != 905*time.Millisecond {
		t.Errorf("gap %v, want 905ms (from the last reply at -5ms to the first at 900ms)", gap)
	}
	if survived != 2 {
		t.Errorf("%d survived, want 2", survived)
	}
	if want := (910*time.Millisecond + 1205*time.Millisecond) / 2; stall != want {
		t.Errorf("median stall %v, want %v", stall, want)
	}
}
