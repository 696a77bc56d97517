package lab_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// fakeNDD stands in for ndd, to test how StartNDD and friends drive a
// process: it records its arguments and the namespace it runs in, and its
// configuration file says how it behaves (serve, exit at once, or ignore
// SIGTERM; whether --destroy fails).
const fakeNDD = `#!/bin/sh
if [ "$1" = --destroy ]; then
	if grep -q 'destroy: fail' "$3"; then echo "cannot destroy: pins busy" >&2; exit 1; fi
	readlink /proc/self/ns/net > "$3.destroyed"
	exit 0
fi
echo "args: $*"
case $(sed -n 's/^mode: //p' "$2") in
exit) echo "bad configuration" >&2; exit 3 ;;
deaf) trap '' TERM ;;
*) trap 'echo stopping; exit 0' TERM ;;
esac
readlink /proc/self/ns/net > "$2.ready"
while :; do sleep 0.05; done
`

// fakeHost is a namespace of its own, as a lab host, with the fake ndd
// and a directory for its files.
type fakeHost struct {
	host *lab.Host
	bin  string
	dir  string
	nsID string // what readlink /proc/self/ns/net says inside
}

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	testutil.RequirePrivileged(t)
	ns, err := netns.New(netns.OwnedName("ndtndd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	f := &fakeHost{host: &lab.Host{Name: "dispatcher", NS: ns}, dir: t.TempDir()}
	f.bin = filepath.Join(f.dir, "ndd")
	if err := os.WriteFile(f.bin, []byte(fakeNDD), 0o755); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(ns.Path(), &st); err != nil {
		t.Fatal(err)
	}
	f.nsID = fmt.Sprintf("net:[%d]", st.Ino)
	return f
}

// start writes config and starts the fake ndd on it with o, the binary,
// configuration and log filled in. It returns the configuration's path.
func (f *fakeHost) start(t *testing.T, config string, o lab.NDDOptions) (*lab.NDD, string) {
	t.Helper()
	o.Binary, o.Config, o.Log = f.bin, filepath.Join(f.dir, "nd.yaml"), filepath.Join(f.dir, "ndd.log")
	if err := os.WriteFile(o.Config, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := lab.StartNDD(f.host, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p, o.Config
}

// fileReady is ready once path exists.
func fileReady(path string) func() error {
	return func() error {
		_, err := os.Stat(path)
		return err
	}
}

func TestNDDLifecycle(t *testing.T) {
	f := newFakeHost(t)
	p, cfg := f.start(t, "mode: serve\n", lab.NDDOptions{Args: []string{"--log-level", "warn"}, OwnGroup: true})
	if err := p.WaitReady(context.Background(), 5*time.Second, fileReady(cfg+".ready")); err != nil {
		t.Fatalf("wait: %v\nlog: %s", err, p.LogTail(10))
	}
	if p.Exited() || p.Err() != nil {
		t.Fatalf("exited %v (%v) while serving", p.Exited(), p.Err())
	}
	if got, _ := os.ReadFile(cfg + ".ready"); strings.TrimSpace(string(got)) != f.nsID {
		t.Errorf("ran in namespace %q, want the host's %s", got, f.nsID)
	}
	if err := p.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !p.Exited() || p.Err() != nil {
		t.Errorf("after SIGTERM: exited %v, status %v; want a clean exit", p.Exited(), p.Err())
	}
	want := "args: --config " + cfg + " --log-level warn\nstopping"
	if got := p.LogTail(10); got != want {
		t.Errorf("log %q, want %q", got, want)
	}
	if got := p.LogTail(1); got != "stopping" {
		t.Errorf("last line %q, want %q", got, "stopping")
	}
	if err := p.Stop(syscall.SIGTERM, time.Second); !errors.Is(err, lab.ErrNDDExited) {
		t.Errorf("second stop: %v, want ErrNDDExited", err)
	}
	if err := p.Destroy(); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if got, _ := os.ReadFile(cfg + ".destroyed"); strings.TrimSpace(string(got)) != f.nsID {
		t.Errorf("--destroy ran in namespace %q, want the host's %s", got, f.nsID)
	}
}

func TestNDDExitsEarly(t *testing.T) {
	f := newFakeHost(t)
	p, cfg := f.start(t, "mode: exit\ndestroy: fail\n", lab.NDDOptions{})
	err := p.WaitReady(context.Background(), 5*time.Second, fileReady(cfg+".ready"))
	if !errors.Is(err, lab.ErrNDDExited) || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("wait: %v, want ErrNDDExited with exit status 3", err)
	}
	if err := p.Stop(syscall.SIGTERM, time.Second); !errors.Is(err, lab.ErrNDDExited) || !strings.Contains(err.Error(), "before SIGTERM") {
		t.Errorf("stop: %v, want ErrNDDExited before SIGTERM", err)
	}
	if got := p.LogTail(1); got != "bad configuration" {
		t.Errorf("log's last line %q", got)
	}
	if err := p.Destroy(); err == nil || !strings.Contains(err.Error(), "cannot destroy: pins busy") {
		t.Errorf("failing --destroy: %v, want its output in the error", err)
	}
}

func TestNDDStopKillsTheDeaf(t *testing.T) {
	f := newFakeHost(t)
	p, cfg := f.start(t, "mode: deaf\n", lab.NDDOptions{})
	if err := p.WaitReady(context.Background(), 5*time.Second, fileReady(cfg+".ready")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := p.Stop(syscall.SIGTERM, 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("stop of a process that ignores SIGTERM: %v, want it killed", err)
	}
	if !p.Exited() || time.Since(start) > 3*time.Second {
		t.Errorf("exited %v after %v", p.Exited(), time.Since(start))
	}
}

func TestNDDWaitReadyLimits(t *testing.T) {
	f := newFakeHost(t)
	p, _ := f.start(t, "mode: serve\n", lab.NDDOptions{})
	never := errors.New("socket not there")
	err := p.WaitReady(context.Background(), 200*time.Millisecond, func() error { return never })
	if !errors.Is(err, never) || !strings.Contains(err.Error(), "within 200ms") {
		t.Errorf("wait past its limit: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.WaitReady(ctx, time.Minute, func() error { return never }); !errors.Is(err, context.Canceled) {
		t.Errorf("wait with its context ended: %v", err)
	}
	p.Kill()
	if !p.Exited() || p.Err() == nil {
		t.Errorf("after Kill: exited %v, status %v", p.Exited(), p.Err())
	}
}

func TestStartNDDFailures(t *testing.T) {
	f := newFakeHost(t)
	if _, err := lab.StartNDD(f.host, lab.NDDOptions{Binary: f.bin, Config: "x", Log: filepath.Join(f.dir, "no", "such", "dir.log")}); err == nil {
		t.Error("started with a log that cannot be created")
	}
}
