package main

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestGroupUsage: `ndbench group` refuses bad flags with a usage error and
// exit 2 before touching anything, and refuses to run unprivileged.
func TestGroupUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--dispatchers", "0"},
		{"--dispatchers", "4"},
		{"--dispatchers", "1,1"},
		{"--dispatchers", "1,x"},
		{"--dispatchers", ""},
		{"--duration", "1s"},
		{"--conns", "0"},
		{"--rate", "0"},
		{"--rate", "5000"},
		{"--timeout", "0s"},
		{"extra"},
	} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"group"}, args...), env{stdout: &out, stderr: &errb, euid: func() int { return 0 }}); code != 2 {
			t.Errorf("ndbench group %v: exit %d, want 2 (%s)", args, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"group", "--help"}, env{stdout: &out, stderr: &errb, euid: func() int { return 0 }}); code != 0 || !strings.Contains(errb.String(), "usage: ndbench group") {
		t.Errorf("ndbench group --help: exit %d, %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"group"}, env{stdout: &out, stderr: &errb, euid: func() int { return 1000 }}); code != 1 || !strings.Contains(errb.String(), "root") {
		t.Errorf("unprivileged ndbench group: exit %d, %q", code, errb.String())
	}
}

func TestGroupOptions(t *testing.T) {
	o, err := parseGroupOptions(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.dispatchers, []int{1, 2, 3}) || o.duration != 6*time.Second || o.conns != 100 || o.rate != 100 || o.out != "" {
		t.Errorf("defaults %+v", o)
	}
	o, err = parseGroupOptions([]string{"--dispatchers", " 3, 2", "--duration", "2s", "--out", "r.json"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.dispatchers, []int{3, 2}) || o.duration != 2*time.Second || o.out != "r.json" {
		t.Errorf("parsed %+v", o)
	}
	if _, err := parseGroupOptions([]string{"--dispatchers", "2,5"}, &bytes.Buffer{}); !errors.Is(err, errUsage) {
		t.Errorf("--dispatchers 2,5: %v, want a usage error", err)
	}
}

func TestParseStatTicks(t *testing.T) {
	// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
	line := "4242 (nd d) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 7 0 123 0 0\n"
	got, err := parseStatTicks(line)
	if err != nil || got != 175 {
		t.Errorf("parseStatTicks: %d, %v, want 175", got, err)
	}
	if _, err := parseStatTicks("4242 (ndd"); err == nil {
		t.Error("a line with no closing parenthesis parsed")
	}
}

func TestSteadyCosts(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a := nodeSample{packets: []uint64{100, 200, 300}, stream: 1000, records: 10, ticks: 50, at: t0}
	b := nodeSample{packets: []uint64{400, 500, 900}, stream: 21000, records: 810, ticks: 250, at: t0.Add(4 * time.Second)}
	share, cost := steadyCosts(a, b, 400)
	if want := []float64{0.25, 0.25, 0.5}; !slices.Equal(share, want) {
		t.Errorf("share %v, want %v", share, want)
	}
	// 20,000 bytes and 2 s of CPU over 400 flows, in 4 s.
	if cost != [4]float64{50_000, 5, 0.5, 2000} {
		t.Errorf("cost %v, want 50000 B, 5 s per 1k flows, 0.5 of a core, 2000 records per 1k flows", cost)
	}
}

func TestGroupReportTable(t *testing.T) {
	r := groupReport{Duration: "6s", Conns: 100, Rate: 100, CPUs: 2, Kernel: "6.x", Runs: []groupRun{
		{Dispatchers: 1, Share: []float64{1}, Phases: []groupPhase{{Name: "steady", Conns: 100, Kept: 100, NewOffered: 600, NewOK: 600, ConnRate: 100, P50: 800 * time.Microsecond, P99: 2 * time.Millisecond}}},
		{Dispatchers: 2, Share: []float64{0.482, 0.518}, SyncBytesPer1k: 230380, SyncRecordsPer1k: 2010, CPUSecPer1k: 1.95, CPUFraction: 0.097,
			Phases: []groupPhase{
				{Name: "steady", Conns: 100, Kept: 100, NewOffered: 600, NewOK: 600, ConnRate: 100},
				{Name: "kill", Event: "dispatcher2", RouteChange: 17500 * time.Microsecond, Conns: 100, Kept: 99, NewOffered: 600, NewOK: 598, ConnRate: 99.7},
			}, Error: "drain: boom"},
	}}
	var b bytes.Buffer
	r.writeTable(&b)
	// Columns compared with single spaces.
	var lines []string
	for l := range strings.Lines(b.String()) {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	out := strings.Join(lines, "\n")
	for _, want := range []string{
		"phases of 6s, 100 long-lived connections, 100 new connections/s offered; 2 CPUs",
		"2 kill dispatcher2 17.5 ms 99/100 598/600 99.7",
		"1 100.0% - - 0.000 0.000",
		"48.2% 51.8%",
		"2 48.2% 51.8% 230380 2010 1.950 0.097",
		"2 dispatchers stopped early: drain: boom",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
