package testutil

import (
	"testing"

	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/vishvananda/netlink"
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

// Link finds the link named name in ns and returns it with ns's netlink
// handle (which ns owns: the caller does not close it).
func Link(tb testing.TB, ns *netns.NS, name string) (*netlink.Handle, netlink.Link) {
	tb.Helper()
	h, err := ns.Netlink()
	if err != nil {
		tb.Fatal(err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		tb.Fatal(err)
	}
	return h, l
}
