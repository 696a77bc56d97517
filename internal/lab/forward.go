package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/netns"
)

// forwardDialTimeout bounds reaching the target of a forwarded connection.
const forwardDialTimeout = 5 * time.Second

// Forwarder relays TCP connections accepted on a loopback address of the
// caller's namespace to an address inside a lab host's namespace, so that a
// browser on the machine reaches, say, ndd's API listener on the
// dispatcher's loopback without any address or route added outside the
// lab. Close stops it and every connection it relays.
type Forwarder struct {
	l      net.Listener
	ns     *netns.NS
	target string
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Forward listens on listen (a loopback "addr:port" of the calling
// namespace; port 0 picks one) and relays each connection to target
// ("addr:port") dialled inside ns.
func Forward(listen string, ns *netns.NS, target string) (*Forwarder, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("forward: %s is not a loopback address: the lab adds nothing outside its namespaces", listen)
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	f := &Forwarder{l: l, ns: ns, target: target, conns: map[net.Conn]struct{}{}}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.wg.Add(1)
	go f.accept()
	return f, nil
}

// Addr is the address the Forwarder listens on.
func (f *Forwarder) Addr() net.Addr { return f.l.Addr() }

// Close stops listening, closes every relayed connection and waits for
// the relays to end.
func (f *Forwarder) Close() error {
	f.cancel()
	err := f.l.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (f *Forwarder) accept() {
	defer f.wg.Done()
	for {
		c, err := f.l.Accept()
		if err != nil {
			return // closed
		}
		f.wg.Add(1)
		go f.relay(c)
	}
}

// track remembers c for Close, or closes it at once when closing.
func (f *Forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx.Err() != nil {
		c.Close()
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

func (f *Forwarder) relay(c net.Conn) {
	defer f.wg.Done()
	if !f.track(c) {
		return
	}
	defer f.untrack(c)
	ctx, cancel := context.WithTimeout(f.ctx, forwardDialTimeout)
	up, err := f.ns.DialContext(ctx, "tcp", f.target)
	cancel()
	if err != nil {
		return
	}
	if !f.track(up) {
		return
	}
	defer f.untrack(up)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done
	<-done
}
