// Package connlimit bounds the connections an HTTP listener holds, so
// that idle or slow connections, however many, cannot keep a wanted
// client out nor exhaust the process's file descriptors. It imports
// nothing of nd.
package connlimit

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Limits bound a listener's connections. A connection that waits (for
// its first request, for the next one on a keep-alive connection, or in
// its TLS handshake) holds a slot it can lose: when the listener is full,
// the waiting connection of the source with the most connections that has
// waited longest makes room for the new one. So idle or slow connections,
// however many, cannot keep a wanted request out, and one source cannot
// crowd out the others.
type Limits struct {
	Conns     int // simultaneous connections
	PerSource int // one source address's connections
}

// Default are the limits of a control listener: an agent's, the API's,
// the metrics'. Their clients are a few dispatchers, operators and
// scrapers.
var Default = Limits{Conns: 256, PerSource: 32}

// Listener accepts connections within the limits, evicting waiting ones
// to make room. Its ConnState must be the HTTP server's ConnState hook;
// TLS, if any, wraps the Listener (not the other way round).
type Listener struct {
	net.Listener
	max, perSource int
	accepted       *atomic.Uint64
	evicted        *atomic.Uint64

	mu       sync.Mutex
	conns    map[*limitConn]struct{}
	bySource map[netip.Addr]int
}

// New limits l's connections. accepted and evicted count the connections
// accepted and those closed to keep within the limits (new ones refused
// included); nil for counters of its own (Stats reads them either way).
func New(l net.Listener, lim Limits, accepted, evicted *atomic.Uint64) *Listener {
	if accepted == nil {
		accepted = new(atomic.Uint64)
	}
	if evicted == nil {
		evicted = new(atomic.Uint64)
	}
	return &Listener{
		Listener: l, max: lim.Conns, perSource: lim.PerSource, accepted: accepted, evicted: evicted,
		conns: map[*limitConn]struct{}{}, bySource: map[netip.Addr]int{},
	}
}

// Stats are a Listener's counts.
type Stats struct {
	Accepted uint64 // connections accepted
	Evicted  uint64 // connections closed to keep within the limits
	Open     int    // connections held now
}

// Stats reads the Listener's counts.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	open := len(l.conns)
	l.mu.Unlock()
	return Stats{Accepted: l.accepted.Load(), Evicted: l.evicted.Load(), Open: open}
}

// limitConn is a connection the limiter counts.
type limitConn struct {
	net.Conn
	l       *Listener
	src     netip.Addr
	busy    bool      // in a request; under l.mu
	waiting time.Time // since when it waits; under l.mu
	once    sync.Once
}

// Accept never waits for a slot: it takes one from a waiting connection,
// or, if every connection is in a request, closes the new one.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.accepted.Add(1)
		var src netip.Addr
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			src = ap.Addr().Unmap()
		}
		lc := &limitConn{Conn: c, l: l, src: src, waiting: time.Now()}
		if victim, ok := l.admit(lc); ok {
			if victim != nil {
				l.evicted.Add(1)
				victim.Close()
			}
			return lc, nil
		}
		l.evicted.Add(1)
		c.Close()
	}
}

// admit counts c in, choosing the waiting connection to evict when a
// limit is exceeded; false when there is none to evict.
func (l *Listener) admit(c *limitConn) (*limitConn, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var victim *limitConn
	switch {
	case l.bySource[c.src] >= l.perSource:
		victim = l.oldestWaiting(func(o *limitConn) bool { return o.src == c.src })
	case len(l.conns) >= l.max:
		most := 0
		for _, n := range l.bySource {
			most = max(most, n)
		}
		// The biggest sources first; among them, the longest waiting.
		victim = l.oldestWaiting(func(o *limitConn) bool { return l.bySource[o.src] == most })
		if victim == nil {
			victim = l.oldestWaiting(func(*limitConn) bool { return true })
		}
	default:
		l.addLocked(c)
		return nil, true
	}
	if victim == nil {
		return nil, false
	}
	l.removeLocked(victim)
	l.addLocked(c)
	return victim, true
}

func (l *Listener) oldestWaiting(eligible func(*limitConn) bool) *limitConn {
	var best *limitConn
	for o := range l.conns {
		if o.busy || !eligible(o) {
			continue
		}
		if best == nil || o.waiting.Before(best.waiting) {
			best = o
		}
	}
	return best
}

func (l *Listener) addLocked(c *limitConn) {
	l.conns[c] = struct{}{}
	l.bySource[c.src]++
}

func (l *Listener) removeLocked(c *limitConn) {
	if _, ok := l.conns[c]; !ok {
		return
	}
	delete(l.conns, c)
	if l.bySource[c.src]--; l.bySource[c.src] <= 0 {
		delete(l.bySource, c.src)
	}
}

// ConnState follows the HTTP server's view of each connection: a
// connection in a request cannot be evicted; one that waits can.
func (l *Listener) ConnState(nc net.Conn, st http.ConnState) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, ok := nc.(*limitConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch st {
	case http.StateActive:
		c.busy = true
	case http.StateIdle, http.StateNew:
		c.busy = false
		c.waiting = time.Now()
	case http.StateClosed, http.StateHijacked:
		l.removeLocked(c)
	}
}

// Close closes the connection and gives its slot back.
func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.removeLocked(c)
		c.l.mu.Unlock()
	})
	return err
}

// Release closes the connection of a request that will not be served as
// soon as its answer is written, without reading what is left of its body.
// Call it before writing the answer. Otherwise net/http waits for an
// announced body it will discard, up to the server's read timeout, and the
// connection, in a request all that time, is one the Listener cannot evict:
// a client refused holds no slot.
func Release(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	http.NewResponseController(w).SetReadDeadline(time.Now())
}
