package lab

import (
	"net"
	"sync"
	"sync/atomic"
)

// Listeners are a lab server's accept loops: each hands every connection
// to a handler on a goroutine of its own and closes the connection when
// the handler returns. Close and Stop close the listeners and every
// connection still open. The zero value is ready to use.
type Listeners struct {
	accepted atomic.Int64

	wg    sync.WaitGroup
	mu    sync.Mutex
	lns   []net.Listener
	conns map[net.Conn]struct{}
	done  bool
}

// Serve takes ln over: it runs its accept loop until Close or Stop, which
// close it.
func (l *Listeners) Serve(ln net.Listener, handle func(net.Conn)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		l.conns = map[net.Conn]struct{}{}
	}
	l.lns = append(l.lns, ln)
	if l.done {
		ln.Close()
	}
	l.wg.Go(func() { l.accept(ln, handle) })
}

func (l *Listeners) accept(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed by Close
		}
		l.mu.Lock()
		if l.done {
			l.mu.Unlock()
			c.Close()
			return
		}
		l.conns[c] = struct{}{}
		l.mu.Unlock()
		l.accepted.Add(1)
		l.wg.Go(func() {
			defer func() {
				l.mu.Lock()
				delete(l.conns, c)
				l.mu.Unlock()
				c.Close()
			}()
			handle(c)
		})
	}
}

// Accepted is how many connections the listeners have accepted.
func (l *Listeners) Accepted() int64 { return l.accepted.Load() }

// Open is how many accepted connections are still open.
func (l *Listeners) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Go runs f on a goroutine that Stop waits for.
func (l *Listeners) Go(f func()) { l.wg.Go(f) }

// Close closes the listeners and the open connections, without waiting.
func (l *Listeners) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.done = true
	for _, ln := range l.lns {
		ln.Close()
	}
	for c := range l.conns {
		c.Close()
	}
}

// Stop closes the listeners and the open connections and waits for every
// goroutine. It is idempotent.
func (l *Listeners) Stop() {
	l.Close()
	l.wg.Wait()
}
