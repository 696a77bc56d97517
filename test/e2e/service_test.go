package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/sdnotify"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestNDDAsService runs ndd as its systemd unit does. It plays systemd's
// part for Type=notify: ndd finds $NOTIFY_SOCKET, says READY=1 once it
// dispatches, RELOADING=1 then READY=1 around a SIGHUP reload, and
// STOPPING=1 on SIGTERM. And it plays Prometheus's: metrics.listen serves
// /metrics without a token.
func TestNDDAsService(t *testing.T) {
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
	var metricsAddr string
	n := newNDDLab(t, []int{1, 1}, func(c *nddConfig) {
		metricsAddr = "198.51.100.3:9180" // the dispatcher's address
		c.Metrics = metricsAddr
	})
	if got := next("READY=1"); got[0] != sdnotify.Ready || !strings.Contains(strings.Join(got, "\n"), "STATUS=dispatching on "+n.cfg.Interfaces[0]) {
		t.Fatalf("first notification %q, want READY=1 and the interfaces", got)
	}

	client := &http.Client{Timeout: apiTimeout, Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return n.lab.Client.NS.DialContext(ctx, network, addr)
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape metrics.listen: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := fmt.Sprintf(`nd_server_weight{port="%d",protocol="tcp",server="%s",vip="%s"} 1`, servicePort, n.cfg.Ports[0].Servers[0].Addr, n.lab.VIP4)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		t.Errorf("GET /metrics on %s: %d, want 200 with %s:\n%s", metricsAddr, resp.StatusCode, want, firstBytes(string(body), 2000))
	}
	// The listeners count their connections (this scrape's included).
	if !strings.Contains(string(body), `nd_api_connections_open{listener="metrics"} 1`) {
		t.Errorf("GET /metrics on %s: no count of its own connection:\n%s", metricsAddr, grepLines(string(body), "nd_api_connections"))
	}

	if err := n.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if got := next("RELOADING=1"); len(got) < 2 || got[0] != sdnotify.Reloading || !strings.HasPrefix(got[1], "MONOTONIC_USEC=") {
		t.Fatalf("after SIGHUP: %q, want RELOADING=1 and MONOTONIC_USEC", got)
	}
	if got := next("READY=1 after the reload"); got[0] != sdnotify.Ready || got[1] != "STATUS=reloaded" {
		t.Fatalf("after the reload: %q", got)
	}

	if err := n.proc.Stop(syscall.SIGTERM, nddStopTimeout); err != nil {
		t.Fatal(err)
	}
	if got := next("STOPPING=1"); got[0] != sdnotify.Stopping {
		t.Fatalf("after SIGTERM: %q, want STOPPING=1", got)
	}
}
