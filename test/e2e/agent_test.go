package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestNDDAgents runs the real ndagent on three of four servers and polls
// them from ndd: the server without an agent, and one whose agent holds
// another key, have their host metrics disabled and get weight 0; the
// others keep theirs. When the missing agent starts, its server comes back.
func TestNDDAgents(t *testing.T) {
	testutil.RequirePrivileged(t)
	agentBin := goBinary(t, "ndagent")
	dir := t.TempDir()
	key := filepath.Join(dir, "agent.key")
	wrongKey := filepath.Join(dir, "wrong.key")
	if err := os.WriteFile(key, []byte("0123456789abcdef-shared-key\n"), 0o600); err != nil {
		t.Fatal(err)
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
	startAgent(0, key)
	startAgent(1, key)
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

	startAgent(3, key)
	waitFor(t, 10*time.Second, "server4 back once its agent reports", func() bool { return weights()["server4"] == 10 })
	if w := weights(); w["server3"] != 0 {
		t.Errorf("server3, whose agent has another key, came back: %v", w)
	}
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
