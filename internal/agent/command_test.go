package agent

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestRunCommand(t *testing.T) {
	cases := []struct {
		name    string
		argv    []string
		timeout time.Duration
		want    float64
		wantErr string // substring; empty means a value
	}{
		{"number", []string{"sh", "-c", "echo 42.5"}, 5 * time.Second, 42.5, ""},
		{"spaces around", []string{"sh", "-c", "printf '  -3\\n\\n'"}, 5 * time.Second, -3, ""},
		{"no shell", []string{"echo", "7"}, 5 * time.Second, 7, ""},
		{"argv is not shell", []string{"echo", "7;", "echo", "8"}, 5 * time.Second, 0, "not one finite number"},
		{"garbage", []string{"sh", "-c", "echo hello"}, 5 * time.Second, 0, "not one finite number"},
		{"two numbers", []string{"sh", "-c", "echo 1 2"}, 5 * time.Second, 0, "not one finite number"},
		{"empty", []string{"true"}, 5 * time.Second, 0, "not one finite number"},
		{"infinite", []string{"echo", "Inf"}, 5 * time.Second, 0, "not one finite number"},
		{"nan", []string{"echo", "NaN"}, 5 * time.Second, 0, "not one finite number"},
		{"exit status", []string{"sh", "-c", "echo oops >&2; exit 3"}, 5 * time.Second, 0, "exit status 3: oops"},
		{"no such program", []string{"/nonexistent/nd-agent-test"}, 5 * time.Second, 0, "no such file"},
		{"too much output", []string{"sh", "-c", "head -c 10000 /dev/zero | tr '\\0' 1"}, 5 * time.Second, 0, "longer than"},
		{"timeout", []string{"sleep", "10"}, 200 * time.Millisecond, 0, "timed out"},
		// The shell's child holds stdout; the whole group must die.
		{"timeout with child", []string{"sh", "-c", "sleep 10; echo 1"}, 200 * time.Millisecond, 0, "timed out"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			r := runCommand(context.Background(), Command{Name: "x", Argv: c.argv, Interval: time.Minute, Timeout: c.timeout})
			if el := time.Since(start); el > c.timeout+2*time.Second {
				t.Errorf("took %v with timeout %v", el, c.timeout)
			}
			if c.wantErr == "" {
				if r.err != "" || r.value != c.want {
					t.Errorf("got %v, %q; want %v", r.value, r.err, c.want)
				}
				return
			}
			if !strings.Contains(r.err, c.wantErr) {
				t.Errorf("got %v, %q; want an error containing %q", r.value, r.err, c.wantErr)
			}
		})
	}
}

func TestCommandSchedule(t *testing.T) {
	dir := t.TempDir()
	// Each run appends a line and prints how many runs there were.
	cmd := Command{Name: "runs", Argv: []string{"sh", "-c", "echo x >> " + dir + "/n; wc -l < " + dir + "/n"},
		Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond}
	cache := newCommandCache([]Command{cmd})
	m, e := map[string]float64{}, map[string]string{}
	cache.fill(m, e)
	if e["runs"] != "not run yet" {
		t.Errorf("before the first run: %v %v", m, e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { cache.runSchedule(ctx, cmd); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, e = map[string]float64{}, map[string]string{}
		cache.fill(m, e)
		if m["runs"] >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5s: %v %v; want at least 3 runs", m, e)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("runSchedule did not stop with its context")
	}
}

func TestClip(t *testing.T) {
	long := strings.Repeat("é", 400) // 800 bytes
	c := clip(long)
	if len(c) > maxErrorLen || !strings.HasSuffix(c, "...") {
		t.Errorf("clip: %d bytes", len(c))
	}
	if got := clip("a\xffb"); got != "a?b" {
		t.Errorf("clip invalid UTF-8 = %q", got)
	}
}
