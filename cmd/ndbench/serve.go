package main

// The lab servers' side shared by the main bench's server and the feedback
// bench's work server: listening sockets opened inside a server's
// namespace, only on the lab's addresses, their accept loops, and the
// bookkeeping that lets stop close every connection still open.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/lab"
)

// listeners are one lab server's listening sockets, their accept loops and
// the connections they accepted.
type listeners struct{ lab.Listeners }

// listen refuses any address outside the lab's networks, then opens loops
// listeners sharing each address through SO_REUSEPORT in host's namespace,
// each with an accept loop that hands every connection to handle on a
// goroutine of its own and closes it when handle returns. On error it
// closes what it opened.
func (l *listeners) listen(host *lab.Host, loops int, handle func(net.Conn), addrs ...netip.AddrPort) error {
	for _, a := range addrs {
		if !lab.InLabRange(a.Addr()) {
			return fmt.Errorf("serve on %s in %s: outside the lab's networks", a, host.Name)
		}
	}
	for _, a := range addrs {
		for range loops {
			ln, err := listenReusePort(host, a)
			if err != nil {
				l.Stop()
				return fmt.Errorf("serve on %s in %s: %w", a, host.Name, err)
			}
			l.Serve(ln, handle)
		}
	}
	return nil
}

// listenReusePort opens a listener with SO_REUSEPORT on a in host's
// namespace.
func listenReusePort(host *lab.Host, a netip.AddrPort) (net.Listener, error) {
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

// readHeader reads c up to the end of a request's header, at most size
// bytes. ok is false when the read failed or the header did not end within
// size bytes: not a request these servers answer.
func readHeader(c net.Conn, size int) (_ []byte, ok bool) {
	buf := make([]byte, size)
	n := 0
	for !bytes.Contains(buf[:n], []byte(headerEnding)) {
		if n == len(buf) {
			return nil, false
		}
		m, err := c.Read(buf[n:])
		if err != nil {
			return nil, false
		}
		n += m
	}
	return buf[:n], true
}
