package testutil

import (
	"testing"

	"github.com/nd-dispatcher/nd/internal/netns"
)

// NewNS gives a privileged test (it skips, or fails, as RequirePrivileged
// says) a fresh network namespace named with prefix and owned by this
// process; it is closed when the test ends. What dead test processes left
// under prefix is swept first: fuzz workers are killed without running
// their cleanups.
func NewNS(tb testing.TB, prefix string) *netns.NS {
	tb.Helper()
	RequirePrivileged(tb)
	if _, err := netns.SweepStale(prefix, tb.Logf); err != nil {
		tb.Logf("sweep stale namespaces: %v", err)
	}
	ns, err := netns.New(netns.OwnedName(prefix))
	if err != nil {
		tb.Fatalf("netns: %v", err)
	}
	tb.Cleanup(func() { ns.Close() })
	return ns
}
