package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

// unitCapabilities returns the capabilities ndd's systemd unit leaves it
// (CapabilityBoundingSet), as setpriv names them: "bpf", "net_admin"...
func unitCapabilities(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../deploy/systemd/ndd.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapabilityBoundingSet="); ok {
			var caps []string
			for _, c := range strings.Fields(v) {
				caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
			}
			return caps
		}
	}
	t.Fatal("ndd.service sets no CapabilityBoundingSet")
	return nil
}

// TestNDDUnderUnitCapabilities runs ndd with only the capabilities its
// systemd unit grants, and no new privileges, as systemd would: it must
// load and attach a fresh data plane, dispatch, and take a pinned one over
// after a restart with every flow kept.
func TestNDDUnderUnitCapabilities(t *testing.T) {
	testutil.RequirePrivileged(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Fatalf("setpriv (util-linux) is needed: %v", err)
	}
	caps := unitCapabilities(t)
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + c
	}
	wrapper := filepath.Join(t.TempDir(), "ndd-confined")
	script := fmt.Sprintf("#!/bin/sh\nexec %s --inh-caps=-all --ambient-caps=-all --bounding-set=%s --no-new-privs -- %s \"$@\"\n",
		setpriv, bounding, nddBinary(t))
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}

	// The lab starts an unconfined ndd; remove its data plane and start
	// the confined one from nothing.
	n := newNDDLab(t, []int{1, 1}, nil)
	if err := n.proc.Stop(syscall.SIGTERM, nddStopTimeout); err != nil {
		t.Fatal(err)
	}
	if err := n.proc.Destroy(); err != nil {
		t.Fatal(err)
	}
	n.binary = wrapper
	n.start(t)
	t.Logf("ndd runs with capabilities %v only", caps)
	if err := confinedCheck(n.proc.LogTail(200)); err != nil {
		t.Error(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const longCount, newConns = 20, 100
	c := n.lab.Client.NS
	long := openLong(ctx, t, c, n.vip4(), longCount)
	checkExchange(t, long, "under the unit's capabilities", nil)
	per := checkAllComplete(t, runLoad(ctx, c, n.vip4(), newConns, loadWorkers, 256), newConns, "new connection")
	for _, s := range n.servers {
		if per[s.name] == 0 {
			t.Errorf("%s took none of the new connections", s.name)
		}
	}

	// A restart, as systemctl restart does: the confined ndd takes the
	// pinned data plane over and the connections continue.
	if err := n.proc.Stop(syscall.SIGTERM, nddStopTimeout); err != nil {
		t.Fatal(err)
	}
	n.start(t)
	checkExchange(t, long, "after a confined restart", nil)
	checkAllComplete(t, runLoad(ctx, c, n.vip4(), newConns, loadWorkers, 256), newConns, "new connection after the restart")
}

// confinedCheck looks in ndd's log for what a missing capability would
// have turned into a warning rather than a failure.
func confinedCheck(log string) error {
	for _, bad := range []string{"operation not permitted", "permission denied"} {
		if strings.Contains(strings.ToLower(log), bad) {
			return fmt.Errorf("ndd's log under the unit's capabilities says %q:\n%s", bad, log)
		}
	}
	return nil
}
