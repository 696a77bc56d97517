package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestNDDAgents runs the real ndagent on three of four servers and polls
// them from ndd: the server without an agent, and one whose agent holds
// another key, have their host metrics disabled and get weight 0; the
// others keep theirs. When the missing agent starts, its server comes back.
// A key file rewritten in place is in force after a reload.
func TestNDDAgents(t *testing.T) {
	testutil.RequirePrivileged(t)
	agentBin := goBinary(t, "ndagent")
	dir := t.TempDir()
	// The dispatcher's key file and the agents' are two files of the same
	// content, so that the dispatcher's can be rotated alone.
	key := filepath.Join(dir, "dispatcher.key")
	agentKey := filepath.Join(dir, "agent.key")
	wrongKey := filepath.Join(dir, "wrong.key")
	for _, f := range []string{key, agentKey} {
		if err := os.WriteFile(f, []byte("0123456789abcdef-shared-key\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(wrongKey, []byte("not-the-dispatchers-key-at-all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := newNDDLab(t, []int{10, 10, 10, 10}, func(c *nddConfig) {
		c.Agents = fmt.Sprintf("agents: {port: 7431, key_file: %s, interval: 300ms, timeout: 200ms, disabled_after: 1500ms}\n", key)
	})

	startAgent := func(i int, keyFile string) {
		t.Helper()
		s := n.servers[i]
		cfg := filepath.Join(dir, s.name+".yaml")
		yaml := fmt.Sprintf("listen: %s\nhost: %s\nkey_file: %s\nsample_interval: 500ms\n",
			fmt.Sprintf("%s:7431", n.addrOf[s.name]), s.name, keyFile)
		if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(agentBin, "--config", cfg)
		cmd.Stderr = testWriter{t, s.name + " ndagent: "}
		if err := startInNS(n.lab.Servers[i].NS, cmd); err != nil {
			t.Fatalf("start ndagent on %s: %v", s.name, err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		})
	}
	startAgent(0, agentKey)
	startAgent(1, agentKey)
	startAgent(2, wrongKey)

	weights := func() map[string]uint32 {
		out := map[string]uint32{}
		for _, s := range n.portStatus(t, servicePort).Servers {
			out[n.nameOf[mustAddr(t, s.Address)]] = s.Weight
		}
		return out
	}
	waitFor(t, 10*time.Second, "servers without a valid agent taken out", func() bool {
		w := weights()
		return w["server1"] == 10 && w["server2"] == 10 && w["server3"] == 0 && w["server4"] == 0
	})
	ag, err := n.api.Agents()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range ag {
		t.Logf("agent %s: disabled %v, host %q, %d metrics, error %q", a.Address, a.Disabled, a.Host, len(a.Metrics), a.Error)
		if a.Address == n.addrOf["server1"].String()+":7431" {
			if a.Disabled || a.Host != "server1" || a.Metrics["processes"] <= 0 {
				t.Errorf("server1's agent: %+v", a)
			}
		}
	}

	startAgent(3, agentKey)
	waitFor(t, 10*time.Second, "server4 back once its agent reports", func() bool { return weights()["server4"] == 10 })
	if w := weights(); w["server3"] != 0 {
		t.Errorf("server3, whose agent has another key, came back: %v", w)
	}

	// The key file rewritten in place (the path unchanged) and a reload:
	// the dispatcher polls with the new key, which only server3's agent
	// holds.
	rotated, err := os.ReadFile(wrongKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, rotated, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := n.api.Reload(); err != nil {
		t.Fatal(err)
	}
	// (With three of four servers' agents refusing, the manager's panic
	// rule keeps their weights: the agents' status says who holds the key.)
	agentOf := func(name string) api.AgentStatus {
		ag, err := n.api.Agents()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range ag {
			if a.Address == n.addrOf[name].String()+":7431" {
				return a
			}
		}
		t.Fatalf("no agent of %s in %+v", name, ag)
		return api.AgentStatus{}
	}
	waitFor(t, 10*time.Second, "the rotated key in force: server3's agent answers, server1's refuses", func() bool {
		s1, s3 := agentOf("server1"), agentOf("server3")
		return s3.Host == "server3" && !s3.Disabled && strings.Contains(s1.Error, "401")
	})
	waitFor(t, 10*time.Second, "server3 back", func() bool { return weights()["server3"] == 10 })
}

// testWriter sends a process's output to the test log, line by line.
type testWriter struct {
	t      *testing.T
	prefix string
}

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("%s%s", w.prefix, b)
	return len(b), nil
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatalf("status names server %q: %v", s, err)
	}
	return a
}
