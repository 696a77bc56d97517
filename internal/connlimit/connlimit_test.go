package connlimit

import (
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// addrConn is a connection from a given source; closing it is recorded.
type addrConn struct {
	net.Conn
	remote net.Addr
	closed atomic.Bool
}

func (c *addrConn) RemoteAddr() net.Addr { return c.remote }
func (c *addrConn) Close() error         { c.closed.Store(true); return nil }

// TestConnLimiterFairness: at the limits, the limiter evicts the waiting
// connection that has waited longest, of the new connection's own source
// when that source is at its limit, otherwise of the biggest source; it
// never evicts a connection in a request, and refuses the new one when
// every connection is in a request.
func TestConnLimiterFairness(t *testing.T) {
	var accepted, evicted atomic.Uint64
	l := New(nil, Limits{Conns: 4, PerSource: 3}, &accepted, &evicted)
	tick := time.Now()
	conn := func(ip string) *limitConn {
		c := &addrConn{remote: &net.TCPAddr{IP: net.ParseIP(ip), Port: 1}}
		tick = tick.Add(time.Second)
		return &limitConn{Conn: c, l: l, src: mustAddr(t, ip), waiting: tick}
	}
	admit := func(what string, c *limitConn, want *limitConn) {
		t.Helper()
		victim, ok := l.admit(c)
		switch {
		case want == nil && (!ok || victim != nil):
			t.Fatalf("%s: victim %v ok %v, want admitted without eviction", what, victim, ok)
		case want != nil && victim != want:
			t.Fatalf("%s: evicted %v, want %v", what, victim, want)
		}
	}
	a1, a2, a3 := conn("127.0.0.1"), conn("127.0.0.1"), conn("127.0.0.1")
	admit("a1", a1, nil)
	admit("a2", a2, nil)
	admit("a3", a3, nil)
	// A fourth from the same source: over its own limit, its oldest goes.
	a4 := conn("127.0.0.1")
	admit("a4 (per source)", a4, a1)
	// Another source, while the total is below the limit.
	b1 := conn("127.0.0.2")
	admit("b1", b1, nil)
	// Full (4): a new source takes the slot of the biggest source's
	// longest-waiting connection, not of b1, which waited longer.
	c1 := conn("127.0.0.3")
	admit("c1 (global)", c1, a2)
	// Connections in a request are never evicted: with a3 and a4 busy,
	// the biggest source has nothing to give, and the longest waiting of
	// the others goes.
	l.ConnState(a3, http.StateActive)
	l.ConnState(a4, http.StateActive)
	d1 := conn("127.0.0.4")
	admit("d1 (busy biggest source)", d1, b1)
	// Everything busy: the new connection is refused.
	l.ConnState(c1, http.StateActive)
	l.ConnState(d1, http.StateActive)
	if victim, ok := l.admit(conn("127.0.0.5")); ok || victim != nil {
		t.Fatalf("all busy: victim %v ok %v, want the new connection refused", victim, ok)
	}
	// A closed connection gives its slot back.
	l.ConnState(c1, http.StateClosed)
	admit("after a close", conn("127.0.0.5"), nil)
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
