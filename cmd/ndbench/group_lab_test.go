package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestGroupInLab runs the group of two with short phases and few
// connections: every phase runs, each event moves the router's route,
// the flows are kept, both dispatchers see packets, the sync stream is
// measured, and close leaves no pinned data plane. It asserts no speed.
func TestGroupInLab(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.RequireCommands(t, "apt-get install bird2", "bird", "birdc")
	r := runInLab(t, parseGroupOptions, []string{"--dispatchers", "2", "--duration", "2s", "--conns", "10", "--rate", "20"},
		func(ctx context.Context, o groupOptions, logf func(string, ...any)) (groupRun, error) {
			return measureGroup(ctx, o, 2, logf)
		})
	var names []string
	for _, p := range r.Phases {
		names = append(names, p.Name)
		if p.Kept != p.Conns || p.NewOK == 0 {
			t.Errorf("phase %+v: want every long-lived connection kept and new ones through", p)
		}
		if p.Event != "" && p.RouteChange <= 0 {
			t.Errorf("phase %s: no time to the route change", p.Name)
		}
	}
	if fmt.Sprint(names) != "[steady kill add drain]" {
		t.Errorf("phases %v", names)
	}
	if len(r.Share) != 2 || r.Share[0] == 0 || r.Share[1] == 0 {
		t.Errorf("shares %v: both dispatchers should see packets", r.Share)
	}
	if r.SyncBytesPer1k == 0 || r.SyncRecordsPer1k == 0 {
		t.Errorf("no sync stream measured: %+v", r)
	}
	left, _ := filepath.Glob(fmt.Sprintf("/sys/fs/bpf/ndbench-group-%d-*", os.Getpid()))
	if len(left) > 0 {
		t.Errorf("pinned data planes left behind: %v", left)
	}
}
