package e2e

import (
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/sdnotify"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestNDDNotifiesServiceManager plays systemd's part for Type=notify: ndd
// finds $NOTIFY_SOCKET, says READY=1 once it dispatches, RELOADING=1 then
// READY=1 around a SIGHUP reload, and STOPPING=1 on SIGTERM.
func TestNDDNotifiesServiceManager(t *testing.T) {
	testutil.RequirePrivileged(t)
	// A path, not an abstract address: abstract unix sockets belong to a
	// network namespace, and ndd runs in the lab's.
	path := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	t.Setenv(sdnotify.Env, path)

	next := func(what string) []string {
		t.Helper()
		buf := make([]byte, 4096)
		sock.SetReadDeadline(time.Now().Add(nddStartTimeout))
		n, err := sock.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		return strings.Split(strings.TrimSuffix(string(buf[:n]), "\n"), "\n")
	}
	n := newNDDLab(t, []int{1, 1}, nil)
	if got := next("READY=1"); got[0] != sdnotify.Ready || !strings.Contains(strings.Join(got, "\n"), "STATUS=dispatching on "+n.cfg.Interfaces[0]) {
		t.Fatalf("first notification %q, want READY=1 and the interfaces", got)
	}

	if err := n.ndd.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if got := next("RELOADING=1"); len(got) < 2 || got[0] != sdnotify.Reloading || !strings.HasPrefix(got[1], "MONOTONIC_USEC=") {
		t.Fatalf("after SIGHUP: %q, want RELOADING=1 and MONOTONIC_USEC", got)
	}
	if got := next("READY=1 after the reload"); got[0] != sdnotify.Ready || got[1] != "STATUS=reloaded" {
		t.Fatalf("after the reload: %q", got)
	}

	if err := n.ndd.Stop(syscall.SIGTERM, nddStopTimeout); err != nil {
		t.Fatal(err)
	}
	if got := next("STOPPING=1"); got[0] != sdnotify.Stopping {
		t.Fatalf("after SIGTERM: %q, want STOPPING=1", got)
	}
}
