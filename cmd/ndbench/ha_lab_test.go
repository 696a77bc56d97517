package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestHAPairInLab runs one failover of each kind with few connections and
// fast timers: the pair starts, a crash kills one ndd and starts it again,
// the control crash (flow stream blocked) kills the other, a takeover moves
// the VIP back, the active's sync stream is measured, and close leaves no
// pinned data plane.
func TestHAPairInLab(t *testing.T) {
	testutil.RequirePrivileged(t)
	fs := runInLab(t, parseHAOptions, []string{"--failovers", "1", "--conns", "4", "--period", "50ms",
		"--interval", "100ms", "--dead-after", "500ms", "--window", "3s", "--idle-timeout", "4s", "--hold", "2s"}, measureHA)
	if len(fs) != 3 || fs[0].Kind != "crash" || fs[1].Kind != "crash-blocked" || fs[2].Kind != "planned" ||
		fs[0].From != fs[1].To || fs[1].From != fs[2].To {
		t.Fatalf("failovers %+v, want a crash, a control crash back and a planned one", fs)
	}
	for _, f := range fs {
		if f.Conns != 4 || f.Control <= 0 || f.Hold < 2*time.Second {
			t.Errorf("%s failover: %+v", f.Kind, f)
		}
	}
	if f := fs[0]; f.Refreshed == 0 || f.Rounds == 0 || f.StreamBytes == 0 {
		t.Errorf("the crash's active sent no refresh: %+v", f)
	}
	left, _ := filepath.Glob(fmt.Sprintf("/sys/fs/bpf/ndbench-ha-%d-*", os.Getpid()))
	if len(left) > 0 {
		t.Errorf("pinned data planes left behind: %v", left)
	}
}
