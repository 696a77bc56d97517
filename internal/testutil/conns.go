package testutil

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// ServeConns accepts connections on l until it is closed and runs handle on
// each in a goroutine of its own, closing the connection when handle
// returns.
func ServeConns(l net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

// WantAnsweredAndClosed reads every connection to its end within the
// given time (all together) and fails unless each got an answer that
// begins with prefix and was then closed by its server.
func WantAnsweredAndClosed(tb testing.TB, conns []net.Conn, prefix string, within time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for i, c := range conns {
		c.SetReadDeadline(deadline)
		b, err := io.ReadAll(c)
		if err != nil || !bytes.HasPrefix(b, []byte(prefix)) {
			line, _, _ := bytes.Cut(b, []byte("\r\n"))
			tb.Fatalf("connection %d: read %q, %v; want an answer beginning %q, then the end", i, line, err, prefix)
		}
	}
}
