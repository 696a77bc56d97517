package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/daemon"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/neighbor"
)

// noNeighbors resolves nothing: the check tests never run the daemon.
type noNeighbors struct{}

func (noNeighbors) Watch([]netip.Addr)                       {}
func (noNeighbors) Lookup(netip.Addr) (neighbor.Entry, bool) { return neighbor.Entry{}, false }
func (noNeighbors) Status() []neighbor.Event                 { return nil }
func (noNeighbors) Events() <-chan neighbor.Event            { return nil }
func (noNeighbors) Run(ctx context.Context) error            { <-ctx.Done(); return nil }
func (noNeighbors) Close() error                             { return nil }

// TestCheckRefusesWhatReloadRefuses: every configuration that a running
// daemon refuses (here for the files it names) is refused by `ndd --check`
// too, and one that the daemon accepts passes both.
func TestCheckRefusesWhatReloadRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	privateKey := write("private.key", "0123456789abcdef-agent-key\n", 0o600)
	sharedKey := write("shared.key", "0123456789abcdef-agent-key\n", 0o644)
	emptyToken := write("empty.token", "  \n", 0o600)
	goodToken := write("good.token", "0123456789abcdef-token\n", 0o600)
	base := "interfaces: [lo]\nmanager: {policy: static}\n"
	cases := []struct {
		name, yaml, want string // want: "" when accepted
	}{
		{"accepted", base + fmt.Sprintf("agents: {key_file: %s}\napi: {listen: \"127.0.0.1:8443\", token_file: %s}\n", privateKey, goodToken), ""},
		{"agent key readable by others", base + fmt.Sprintf("agents: {key_file: %s}\n", sharedKey), "agents.key_file"},
		{"agent key missing", base + fmt.Sprintf("agents: {key_file: %s}\n", filepath.Join(dir, "none")), "agents.key_file"},
		{"api token file empty", base + fmt.Sprintf("api: {listen: \"127.0.0.1:8443\", token_file: %s}\n", emptyToken), "api.token_file"},
		{"api token file missing", base + fmt.Sprintf("api: {listen: \"127.0.0.1:8443\", token_file: %s}\n", filepath.Join(dir, "none")), "api.token_file"},
		{"ha key readable by others", base + "clusters: [{vip: 198.51.100.100, ports: [{port: 80}]}]\n" + fmt.Sprintf("ha: {interface: lo, self: \"198.51.100.3:7101\", peers: [\"198.51.100.4:7101\"], key_file: %s}\n", sharedKey), "ha.key_file"},
		{"api certificate missing", base + fmt.Sprintf("api: {listen: \"127.0.0.1:8443\", token_file: %s, tls_cert: %s, tls_key: %s}\n",
			goodToken, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")), "api.tls_cert"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := write("nd.yaml", c.yaml, 0o600)
			var stdout, stderr bytes.Buffer
			code := run([]string{"--check", path}, &stdout, &stderr)

			// What the daemon says of the same file: New runs the checks
			// a reload runs.
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			_, derr := daemon.New(cfg, daemon.Options{Executor: executor.NewFake(), Neighbors: noNeighbors{}})

			if c.want == "" {
				if code != 0 || derr != nil {
					t.Fatalf("--check exit %d (%s), daemon: %v; want both to accept", code, stderr.String(), derr)
				}
				return
			}
			if derr == nil || !errors.Is(derr, nd.ErrRejected) || !strings.Contains(derr.Error(), c.want) {
				t.Fatalf("daemon: %v, want a rejection naming %s", derr, c.want)
			}
			if code != 1 || !strings.Contains(stderr.String(), c.want) {
				t.Fatalf("--check exit %d, stderr %q; want 1 and a message naming %s", code, stderr.String(), c.want)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	// --version reads no configuration and loads nothing.
	if code := run([]string{"--version", "--config", "/nonexistent"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "ndd ") {
		t.Errorf("ndd --version: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	if code := run([]string{"--bogus"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--version") {
		t.Errorf("ndd --bogus: exit %d, usage %q", code, errb.String())
	}
}
