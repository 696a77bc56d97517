package advisor

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

var (
	server1 = netip.MustParseAddr("198.51.100.2")
	server2 = netip.MustParseAddr("198.51.100.3")
	server3 = netip.MustParseAddr("198.51.100.4")
	vip1    = netip.MustParseAddr("198.51.100.100")
)

// events collects OnChange calls.
type events struct {
	mu  sync.Mutex
	all []Status
}

func (e *events) add(s Status) { e.mu.Lock(); e.all = append(e.all, s); e.mu.Unlock() }

func (e *events) list() []Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]Status(nil), e.all...)
}

// start runs r until the test ends.
func start(t *testing.T, r *Runner) {
	t.Helper()
	testutil.Start(t, "Run", 5*time.Second, r.Run)
}

// waitFor polls r's status of advisor/server until ok holds, or fails.
func waitFor(t *testing.T, r *Runner, advisor string, server netip.Addr, what string, ok func(Status) bool) Status {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var last Status
	for time.Now().Before(deadline) {
		for _, s := range r.Snapshot() {
			if s.Advisor == advisor && s.Server == server {
				last = s
				if ok(s) {
					return s
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s/%s: timed out waiting until %s; last status %+v", advisor, server, what, last)
	return last
}

func known(s Status) bool { return s.Known }

// script writes an executable shell script into a temporary directory and
// returns its argv.
func script(t *testing.T, body string) []string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "probe.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{"/bin/sh", p}
}

func customSpec(name string, argv []string, targets ...Target) Spec {
	return Spec{Name: name, Kind: KindCustom, Interval: 250 * time.Millisecond, Timeout: 240 * time.Millisecond,
		Command: argv, Targets: targets}
}

func TestCustomCommand(t *testing.T) {
	dir := t.TempDir()
	env := filepath.Join(dir, "env")
	r := New(Options{})
	specs := []Spec{
		customSpec("number", script(t, "echo 42.5\n"), Target{Server: server1, Port: 80}),
		customSpec("runtime", script(t, "sleep 0.1; echo fine\n"), Target{Server: server1, Port: 80}),
		customSpec("fails", script(t, "echo 'backend says no' >&2; exit 3\n"), Target{Server: server1, Port: 80}),
		customSpec("env", script(t, fmt.Sprintf("echo \"$ND_SERVER $ND_PORT $ND_VIP $ND_ADDRESS $ND_ADVISOR\" > %s\n", env)),
			Target{Server: server2, Port: 8080, VIP: vip1}),
		customSpec("missing", []string{filepath.Join(dir, "no-such-program")}, Target{Server: server1, Port: 80}),
	}
	// The slow command needs room to finish.
	specs[1].Interval, specs[1].Timeout = 400*time.Millisecond, 300*time.Millisecond
	if err := r.Set(specs); err != nil {
		t.Fatal(err)
	}
	start(t, r)

	s := waitFor(t, r, "number", server1, "known", known)
	if !s.Up || s.Latency != 42500*time.Microsecond {
		t.Errorf("number: %+v, want up with the printed 42.5 ms", s)
	}
	s = waitFor(t, r, "runtime", server1, "known", known)
	if !s.Up || s.Latency < 100*time.Millisecond || s.Latency > 280*time.Millisecond {
		t.Errorf("runtime: %+v, want up with about the 100 ms the command ran", s)
	}
	s = waitFor(t, r, "fails", server1, "known", known)
	if s.Up || !strings.Contains(s.Err, "exit status 3") || !strings.Contains(s.Err, "backend says no") {
		t.Errorf("fails: %+v, want down with the exit status and stderr", s)
	}
	s = waitFor(t, r, "missing", server1, "known", known)
	if s.Up || !strings.Contains(s.Err, "no-such-program") {
		t.Errorf("missing: %+v, want down naming the program", s)
	}
	waitFor(t, r, "env", server2, "known", known)
	b, err := os.ReadFile(env)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(b)), "198.51.100.3 8080 198.51.100.100 198.51.100.3:8080 env"; got != want {
		t.Errorf("command saw environment %q, want %q", got, want)
	}
}

// A command that outlives the timeout is killed with its children, and the
// round ends soon after the timeout.
func TestCustomTimeout(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	p := &Custom{Command: script(t, fmt.Sprintf("sleep 30 & echo $! > %s; wait\n", pidFile))}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	begin := time.Now()
	res := p.Probe(ctx, Target{Server: server1, Port: 80, Addr: netip.AddrPortFrom(server1, 80)})
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("probe took %v after a 100 ms timeout", took)
	}
	if !res.Down || !strings.Contains(res.Err, "deadline exceeded") {
		t.Errorf("result %+v, want down by timeout", res)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	fmt.Sscan(string(b), &pid)
	deadline := time.Now().Add(2 * time.Second)
	for {
		// Signal 0 probes for existence; a zombie is reaped by init soon.
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(st), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the command's child %d still runs after the timeout", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Hysteresis: the first round decides; then Fall failed rounds in a row
// mark the target down and Rise successful ones mark it up again.
func TestHysteresis(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	setState := func(s string) {
		if err := os.WriteFile(state, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setState("up")
	var ev events
	r := New(Options{OnChange: ev.add})
	spec := customSpec("h", script(t, fmt.Sprintf("grep -q up %s\n", state)), Target{Server: server1, Port: 80})
	spec.Rise, spec.Fall = 2, 3
	if err := r.Set([]Spec{spec}); err != nil {
		t.Fatal(err)
	}
	start(t, r)

	waitFor(t, r, "h", server1, "known", known)
	setState("down")
	waitFor(t, r, "h", server1, "down", func(s Status) bool { return s.Known && !s.Up })
	setState("up")
	waitFor(t, r, "h", server1, "up again", func(s Status) bool { return s.Up && s.Failures > 0 })

	got := ev.list()
	if len(got) != 3 {
		t.Fatalf("OnChange called %d times, want 3 (known up, down, up): %+v", len(got), got)
	}
	first, wentDown, cameUp := got[0], got[1], got[2]
	if !first.Up || first.Probes != 1 {
		t.Errorf("first event %+v, want up after the first round", first)
	}
	if wentDown.Up || wentDown.Failures != 3 {
		t.Errorf("down event %+v, want down after exactly 3 failed rounds (fall)", wentDown)
	}
	if wentDown.Err == "" || !wentDown.Since.After(first.Since) {
		t.Errorf("down event %+v: want an error and a later Since", wentDown)
	}
	okBefore := wentDown.Probes - wentDown.Failures
	if ok := cameUp.Probes - cameUp.Failures - okBefore; !cameUp.Up || ok != 2 {
		t.Errorf("up event %+v: %d successful rounds since going down, want 2 (rise)", cameUp, ok)
	}
}

// One failed round below Fall does not mark the target down.
func TestHysteresisAbsorbsBlip(t *testing.T) {
	count := filepath.Join(t.TempDir(), "count")
	// Fails on the third run only.
	argv := script(t, fmt.Sprintf("n=$(cat %[1]s 2>/dev/null || echo 0); n=$((n+1)); echo $n > %[1]s; [ $n -ne 3 ]\n", count))
	var ev events
	r := New(Options{OnChange: ev.add})
	spec := customSpec("blip", argv, Target{Server: server1, Port: 80})
	spec.Fall = 3
	if err := r.Set([]Spec{spec}); err != nil {
		t.Fatal(err)
	}
	start(t, r)
	s := waitFor(t, r, "blip", server1, "6 rounds", func(s Status) bool { return s.Probes >= 6 })
	if !s.Up || s.Failures < 1 {
		t.Errorf("status %+v, want up after a failure", s)
	}
	if got := ev.list(); len(got) != 1 {
		t.Errorf("OnChange events %+v, want only the first", got)
	}
}

// Retries turn a failed attempt into a successful round.
func TestRetries(t *testing.T) {
	for _, retries := range []int{0, 1} {
		t.Run(fmt.Sprint("retries=", retries), func(t *testing.T) {
			count := filepath.Join(t.TempDir(), "count")
			// Every other run fails.
			argv := script(t, fmt.Sprintf("n=$(cat %[1]s 2>/dev/null || echo 0); n=$((n+1)); echo $n > %[1]s; [ $((n %% 2)) -eq 1 ]\n", count))
			r := New(Options{})
			spec := customSpec("r", argv, Target{Server: server1, Port: 80})
			spec.Retries = retries
			if err := r.Set([]Spec{spec}); err != nil {
				t.Fatal(err)
			}
			start(t, r)
			s := waitFor(t, r, "r", server1, "4 rounds", func(s Status) bool { return s.Probes >= 4 })
			if retries == 0 && s.Failures < 2 {
				t.Errorf("without retries: %+v, want about every other round failed", s)
			}
			if retries == 1 && s.Failures != 0 {
				t.Errorf("with a retry: %+v, want no failed round", s)
			}
		})
	}
}

// Set keeps the state of unchanged advisor+target pairs, starts new ones,
// stops removed ones and restarts targets whose probe changed.
func TestSetKeepsState(t *testing.T) {
	var ev events
	r := New(Options{OnChange: ev.add})
	ok := script(t, "exit 0\n")
	t1, t2, t3 := Target{Server: server1, Port: 80}, Target{Server: server2, Port: 80}, Target{Server: server3, Port: 80}
	if err := r.Set([]Spec{customSpec("a", ok, t1, t2), customSpec("b", ok, t1)}); err != nil {
		t.Fatal(err)
	}
	start(t, r)
	before := waitFor(t, r, "a", server1, "3 rounds", func(s Status) bool { return s.Probes >= 3 })
	waitFor(t, r, "b", server1, "3 rounds", func(s Status) bool { return s.Probes >= 3 })

	// a: new timing, t2 dropped, t3 added; b: a different command.
	a := customSpec("a", ok, t1, t3)
	a.Interval, a.Rise = 300*time.Millisecond, 5
	if err := r.Set([]Spec{a, customSpec("b", script(t, "echo 7\n"), t1)}); err != nil {
		t.Fatal(err)
	}
	snap := r.Snapshot()
	if len(snap) != 3 {
		t.Fatalf("after Set: %+v, want a/t1, a/t3, b/t1", snap)
	}
	kept := snap[0]
	if kept.Advisor != "a" || kept.Server != server1 || kept.Probes < before.Probes || !kept.Up || !kept.Since.Equal(before.Since) {
		t.Errorf("kept target %+v lost its state (was %+v)", kept, before)
	}
	if snap[1].Server != server3 || snap[1].Probes > 1 {
		t.Errorf("new target %+v, want a fresh a/%s", snap[1], server3)
	}
	if snap[2].Advisor != "b" || snap[2].Probes > 1 {
		t.Errorf("b with a new command %+v, want fresh state", snap[2])
	}
	s := waitFor(t, r, "b", server1, "the new command's value", func(s Status) bool { return s.Known })
	if s.Latency != 7*time.Millisecond {
		t.Errorf("b after Set: %+v, want the new command's 7 ms", s)
	}
	waitFor(t, r, "a", server1, "more rounds", func(s Status) bool { return s.Probes >= kept.Probes+3 })
	for _, e := range ev.list() {
		if e.Advisor == "a" && e.Server == server1 && e.Probes > 1 {
			t.Errorf("kept target changed state on reconfiguration: %+v", e)
		}
	}
	// Removed targets are stopped: the runner reports nothing of them.
	for _, st := range r.Snapshot() {
		if st.Server == server2 {
			t.Errorf("removed target still reported: %+v", st)
		}
	}
	if err := r.Set(nil); err != nil {
		t.Fatal(err)
	}
	if s := r.Snapshot(); len(s) != 0 {
		t.Errorf("after Set(nil): %+v", s)
	}
}

// TestSetChangesIntervalAtOnce: a kept target whose interval a reload
// shortens from 20 s to 100 ms is probed at the new pace at once, not
// after the old interval runs out; lengthened to an hour, it is not probed
// again soon.
func TestSetChangesIntervalAtOnce(t *testing.T) {
	r := New(Options{})
	s := customSpec("a", script(t, "exit 0\n"), Target{Server: server1, Port: 80})
	s.Interval, s.Timeout = 20*time.Second, time.Second
	if err := r.Set([]Spec{s}); err != nil {
		t.Fatal(err)
	}
	start(t, r)
	first := waitFor(t, r, "a", server1, "the first round", func(s Status) bool { return s.Probes >= 1 })
	s.Interval, s.Timeout = 100*time.Millisecond, 90*time.Millisecond
	if err := r.Set([]Spec{s}); err != nil {
		t.Fatal(err)
	}
	fast := waitFor(t, r, "a", server1, "5 rounds at the new interval", func(s Status) bool { return s.Probes >= first.Probes+5 })

	s.Interval, s.Timeout = time.Hour, time.Second
	if err := r.Set([]Spec{s}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	// At most the round under way when Set ran.
	if st := r.Snapshot()[0]; st.Probes > fast.Probes+2 {
		t.Errorf("interval lengthened to an hour: %d rounds in the next 0.5 s", st.Probes-fast.Probes)
	}
}

// Without a ViaVIP hook, or when it fails, a vip-mode target is down with a
// clear error and no connection is attempted.
func TestVIPModeWithoutSteering(t *testing.T) {
	spec := Spec{Name: "v", Kind: KindTCP, Mode: ModeVIP, Interval: 30 * time.Millisecond,
		Targets: []Target{{Server: server1, Port: 80, VIP: vip1}}}
	t.Run("no hook", func(t *testing.T) {
		r := New(Options{})
		if err := r.Set([]Spec{spec}); err != nil {
			t.Fatal(err)
		}
		start(t, r)
		s := waitFor(t, r, "v", server1, "known", known)
		if s.Up || !strings.Contains(s.Err, "no ViaVIP dialer") || !strings.Contains(s.Err, "198.51.100.100:80") {
			t.Errorf("status %+v, want down saying no steering dialer is configured", s)
		}
	})
	t.Run("hook fails", func(t *testing.T) {
		calls := 0
		var mu sync.Mutex
		r := New(Options{ViaVIP: func(server, vip netip.Addr) (DialFunc, error) {
			mu.Lock()
			calls++
			mu.Unlock()
			return nil, fmt.Errorf("no steering program for %s", server)
		}})
		if err := r.Set([]Spec{spec}); err != nil {
			t.Fatal(err)
		}
		start(t, r)
		s := waitFor(t, r, "v", server1, "2 rounds", func(s Status) bool { return s.Probes >= 2 })
		if s.Up || !strings.Contains(s.Err, "no steering program for 198.51.100.2") {
			t.Errorf("status %+v, want down with the hook's error", s)
		}
		mu.Lock()
		defer mu.Unlock()
		if calls < 2 {
			t.Errorf("hook called %d times; a failed hook must be asked again next round", calls)
		}
	})
}
