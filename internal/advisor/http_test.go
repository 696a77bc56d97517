package advisor

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestProbeErrorIsBounded: a server that answers an HTTP probe with a
// 60 KiB status line of binary bytes is down, and the probe's error (which
// becomes an event, a log line and the API's advisor status) is short.
func TestProbeErrorIsBounded(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	testutil.ServeConns(l, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil || line == "\r\n" {
				break
			}
		}
		c.Write([]byte(strings.Repeat("\x01\xff", 30<<10) + "\r\n\r\n"))
	})
	ap := netip.MustParseAddrPort(l.Addr().String())
	h := &HTTP{Spec: HTTPSpec{Method: "GET", Path: "/"}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res := h.Probe(ctx, Target{Server: ap.Addr(), Port: ap.Port(), Addr: ap})
	if !res.Down {
		t.Fatalf("a garbled answer is not down: %+v", res)
	}
	if len(res.Err) > maxErr+3 || !strings.HasPrefix(res.Err, "GET ") {
		t.Errorf("probe error of %d bytes: %.80q", len(res.Err), res.Err)
	}
}
