package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/agent"
	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// When this variable is set the test binary is ndagent itself, so that a
// test can run the real main in a network namespace without a build step.
const asMainEnv = "ND_TEST_NDAGENT_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

var key = []byte("ndagent-main-test-key-0123456789")

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	kp := filepath.Join(dir, "agent.key")
	if err := os.WriteFile(kp, key, 0o600); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "agent.yaml")
	body = strings.ReplaceAll(body, "KEYFILE", kp)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheck(t *testing.T) {
	good := writeConfig(t, "listen: 127.0.0.1:7431\nkey_file: KEYFILE\ncommands:\n  - {name: q, argv: [echo, '1']}\n")
	var out, errb bytes.Buffer
	if code := run([]string{"--config", good, "--check"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "ok (1 commands)") {
		t.Errorf("good config: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	bad := writeConfig(t, "key_file: KEYFILE\nshell: true\nlisten: nowhere\n")
	out.Reset()
	errb.Reset()
	if code := run([]string{"--config", bad, "--check"}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), bad+": line 2: unknown field shell") || !strings.Contains(errb.String(), "listen") && !strings.Contains(errb.String(), "line 2") {
		t.Errorf("bad config: exit %d, stderr %q", code, errb.String())
	}
	noKey := writeConfig(t, "key_file: /nonexistent/agent.key\n")
	errb.Reset()
	if code := run([]string{"--config", noKey, "--check"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "key file") {
		t.Errorf("missing key file: exit %d, stderr %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"--bogus"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "usage: ndagent") {
		t.Errorf("bad flag: exit %d, stderr %q", code, errb.String())
	}
	if code := run([]string{"--log-level", "loud", "--config", good}, &out, &errb); code != 2 {
		t.Errorf("bad log level: exit %d", code)
	}
}

// TestServeAndStop runs ndagent in a namespace, polls it, and stops it
// with SIGTERM.
func TestServeAndStop(t *testing.T) {
	testutil.RequirePrivileged(t)
	ns, err := netns.New(netns.OwnedName("ndtam"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	cfg := writeConfig(t, "listen: 127.0.0.1:7431\nhost: main-test\nkey_file: KEYFILE\nsample_interval: 100ms\n")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, os.Args[0], "--config", cfg)
	cmd.Env = append(os.Environ(), asMainEnv+"=1")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	c, err := agent.NewClient(agent.ClientOptions{Key: key, DialContext: ns.DialContext})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := netip.MustParseAddrPort("127.0.0.1:7431")
	var rep agent.Report
	deadline := time.Now().Add(10 * time.Second)
	for {
		rep, err = c.Poll(ctx, addr)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ndagent never answered: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rep.Host != "main-test" {
		t.Errorf("host %q", rep.Host)
	}
	if _, ok := rep.Metrics[agent.MetricProcesses]; !ok {
		t.Errorf("no process count: %+v", rep)
	}

	// nsenter passes the signal on to ndagent, its child.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("ndagent exit: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("ndagent still running 10s after SIGTERM\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "ndagent stopped") {
		t.Errorf("logs: %s", logs.String())
	}
}

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	// --version needs no configuration file.
	if code := run([]string{"--version", "--config", "/nonexistent"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "ndagent ") {
		t.Errorf("ndagent --version: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
}
