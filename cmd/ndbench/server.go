package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/lab"
)

// Bounds of a server connection.
const (
	serverIdle   = 5 * time.Second // from accept to the end of the reply
	maxRequest   = 512             // bytes of request read at most
	servicePort  = 80
	requestLine  = "GET / HTTP/1.0\r\nHost: nd-bench\r\n\r\n"
	replyStatus  = "HTTP/1.0 200 OK\r\n"
	headerEnding = "\r\n\r\n"
)

// acceptors is the number of listeners, sharing each address through
// SO_REUSEPORT, and so of accept loops, of each server. With one, a single
// server saturated at about half the rate four servers took in the same
// process: direct and trivial measured the accept loop, not the path.
const acceptors = 4

// server is the application of one lab server: on each of its addresses it
// reads one small HTTP request per connection, answers with its name as the
// body and closes. It is deliberately minimal, so that its own cost, which
// every configuration pays alike, weighs little against what is measured.
type server struct {
	name     string
	reply    []byte
	accepted atomic.Int64

	lns   []net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

// startServer listens on every address in host's namespace.
func startServer(host *lab.Host, addrs ...netip.AddrPort) (*server, error) {
	body := host.Name + "\n"
	s := &server{
		name: host.Name,
		reply: []byte(replyStatus + "Content-Type: text/plain\r\nContent-Length: " +
			strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body),
		conns: map[net.Conn]struct{}{},
	}
	for _, a := range addrs {
		if !lab.InLabRange(a.Addr()) {
			s.stop()
			return nil, fmt.Errorf("serve on %s in %s: outside the lab's networks", a, host.Name)
		}
		for range acceptors {
			ln, err := listen(host, a)
			if err != nil {
				s.stop()
				return nil, fmt.Errorf("serve on %s in %s: %w", a, host.Name, err)
			}
			s.lns = append(s.lns, ln)
			s.wg.Go(func() { s.accept(ln) })
		}
	}
	return s, nil
}

// listen opens a listener with SO_REUSEPORT on a in host's namespace.
func listen(host *lab.Host, a netip.AddrPort) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	var ln net.Listener
	err := host.NS.Do(func() (err error) {
		ln, err = lc.Listen(context.Background(), "tcp4", a.String())
		return err
	})
	return ln, err
}

func (s *server) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed by stop
		}
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.accepted.Add(1)
		s.wg.Go(func() {
			s.serve(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		})
	}
}

// serve reads the request up to the end of its header and answers it. The
// server closes first; the client's close then resets the connection, so
// that neither side keeps it in TIME_WAIT.
func (s *server) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(serverIdle))
	var buf [maxRequest]byte
	n := 0
	for !bytes.Contains(buf[:n], []byte(headerEnding)) {
		if n == len(buf) {
			return // not the request this server answers
		}
		m, err := c.Read(buf[n:])
		if err != nil {
			return
		}
		n += m
	}
	c.Write(s.reply)
}

// stop closes the listeners and the open connections and waits for every
// goroutine. It is idempotent.
func (s *server) stop() {
	s.mu.Lock()
	s.done = true
	for _, ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// startServers starts one server per lab server, each on its own address
// and on the VIP, at servicePort.
func startServers(l *lab.Lab) ([]*server, error) {
	var out []*server
	for i := range l.Servers {
		h := &l.Servers[i]
		s, err := startServer(h, netip.AddrPortFrom(h.Addr4, servicePort), netip.AddrPortFrom(l.VIP4, servicePort))
		if err != nil {
			stopServers(out)
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func stopServers(ss []*server) {
	for _, s := range ss {
		s.stop()
	}
}
