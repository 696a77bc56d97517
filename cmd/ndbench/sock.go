package main

// The load generators' sockets: made by one factory inside the lab
// client's namespace, which refuses to run anywhere else, and used for one
// request exchange each. Both benches' clients (the main bench's steps and
// the feedback bench's open loop) take their sockets and targets here, so
// that the namespace, address and size checks stand in one place.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/lab"
)

// Bounds of the socket factory and of one exchange.
const (
	// spareSockets is how many unconnected sockets wait, made in advance
	// inside the client's namespace.
	spareSockets = 512
	// checkEvery is how often, in sockets made, the socket factory checks
	// again that its sockets belong to the client's namespace.
	checkEvery = 256
	// maxReply is the most of a reply read; the rest is not waited for.
	maxReply = 512
)

// Errors of the load generators.
var (
	errRefused     = errors.New("load generator refused")
	errOverrun     = errors.New("too many requests in flight; request not sent")
	errWrongServer = errors.New("answered by another server than expected")
	errBadReply    = errors.New("unexpected reply")
	errGenerator   = errors.New("load generator failed")
)

// generator is an open-loop load generator: requests start on schedule
// whether or not earlier ones have finished, each on a new TCP connection
// from the lab's client.
//
// Its sockets are made by one goroutine locked on an OS thread inside the
// client's network namespace (a socket belongs for life to the namespace it
// was made in), and are connected, used and closed from ordinary goroutines
// through the runtime's poller. So a request costs no namespace switch and
// no thread of its own. Every socket has SO_LINGER 0: the server closes
// first, and the client's close then resets the connection, so no TIME_WAIT
// state piles up on either side.
type generator struct {
	client *lab.Host
	socks  chan int

	cancel context.CancelFunc
	wg     sync.WaitGroup
	dead   chan struct{} // closed when the factory stops
	err    error         // why it stopped, once dead is closed
}

// startGenerator starts the socket factory in client's namespace. It
// refuses (errRefused) unless it can prove that it is there: the factory's
// thread must be in the namespace named by client.NS, which must not be
// the host's own, and so must the sockets it makes.
func startGenerator(ctx context.Context, client *lab.Host) (*generator, error) {
	if client == nil || client.NS == nil {
		return nil, fmt.Errorf("%w: no lab client", errRefused)
	}
	if !lab.InLabRange(client.Addr4) {
		return nil, fmt.Errorf("%w: client address %s is outside the lab's networks", errRefused, client.Addr4)
	}
	ctx, cancel := context.WithCancel(ctx)
	g := &generator{client: client, socks: make(chan int, spareSockets), cancel: cancel, dead: make(chan struct{})}
	ready := make(chan error, 1)
	g.wg.Go(func() {
		err := client.NS.Do(func() error { return g.makeSockets(ctx, ready) })
		select {
		case ready <- err: // Do failed before the factory started
		default:
		}
		g.err = err
		close(g.dead)
	})
	if err := <-ready; err != nil {
		g.stop()
		return nil, fmt.Errorf("start load generator in %s: %w", client.NS.Name(), err)
	}
	return g, nil
}

// stop ends the factory and closes the spare sockets. It is idempotent.
func (g *generator) stop() {
	g.cancel()
	g.wg.Wait()
	for {
		select {
		case fd := <-g.socks:
			unix.Close(fd)
		default:
			return
		}
	}
}

// makeSockets runs on a thread inside the client's namespace until ctx
// ends, keeping spare sockets ready. ready receives nil once the first
// socket is proven to be in the right namespace, or the reason not.
func (g *generator) makeSockets(ctx context.Context, ready chan<- error) error {
	want, err := statNS(g.client.NS.Path())
	if err != nil {
		ready <- err
		return err
	}
	if err := checkThreadNS(want); err != nil {
		ready <- err
		return err
	}
	for n := 0; ; n++ {
		fd, err := newSocket()
		if err != nil {
			if n == 0 {
				ready <- err
			}
			return err
		}
		if n%checkEvery == 0 {
			if err := checkSocketNS(fd, want); err != nil {
				unix.Close(fd)
				if n == 0 {
					ready <- err
				}
				return err
			}
			if n == 0 {
				ready <- nil
			}
		}
		select {
		case g.socks <- fd:
		case <-ctx.Done():
			unix.Close(fd)
			return nil
		}
	}
}

// nsID identifies a network namespace by its nsfs inode.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, fmt.Errorf("%w: stat %s: %w", errRefused, path, err)
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// startNS is the network namespace the process started in, read while
// package initialisation holds the main goroutine on the main thread,
// before any thread has switched namespaces.
var startNS, startNSErr = statNS("/proc/thread-self/ns/net")

// checkThreadNS refuses unless the calling thread is in the namespace want,
// and that namespace is neither the one the process started in nor, where
// it can be read, the one of the init process.
func checkThreadNS(want nsID) error {
	self, err := statNS("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	if self != want {
		return fmt.Errorf("%w: the socket factory is not in the lab client's network namespace", errRefused)
	}
	if startNSErr != nil {
		return fmt.Errorf("%w: cannot tell the lab client's namespace from the host's: %w", errRefused, startNSErr)
	}
	if self == startNS {
		return fmt.Errorf("%w: the lab client's namespace is the one ndbench started in", errRefused)
	}
	if initNS, err := statNS("/proc/1/ns/net"); err == nil && initNS == self {
		return fmt.Errorf("%w: the lab client's namespace is the host's own", errRefused)
	}
	return nil
}

// checkSocketNS refuses unless the socket fd belongs to the namespace want.
func checkSocketNS(fd int, want nsID) error {
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return fmt.Errorf("%w: which namespace holds the socket: %w", errRefused, err)
	}
	defer unix.Close(nsfd)
	var st unix.Stat_t
	if err := unix.Fstat(nsfd, &st); err != nil {
		return fmt.Errorf("%w: stat socket namespace: %w", errRefused, err)
	}
	if (nsID{uint64(st.Dev), st.Ino}) != want {
		return fmt.Errorf("%w: a socket was made outside the lab client's namespace", errRefused)
	}
	return nil
}

// newSocket makes a non-blocking TCP socket that resets on close.
func newSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set SO_LINGER: %w", err)
	}
	return fd, nil
}

// take waits for a spare socket of the factory.
func (g *generator) take(ctx context.Context) (int, error) {
	select {
	case fd := <-g.socks:
		return fd, nil
	case <-ctx.Done():
		return -1, ctx.Err()
	case <-g.dead:
		return -1, fmt.Errorf("%w: the socket factory stopped: %v", errGenerator, g.err)
	}
}

// labTarget is the socket address of a, refused unless a is an IPv4
// address in the lab's networks.
func labTarget(a netip.AddrPort) (*unix.SockaddrInet4, error) {
	if !a.IsValid() || !a.Addr().Is4() || !lab.InLabRange(a.Addr()) {
		return nil, fmt.Errorf("%w: target %s is not an IPv4 address in the lab's networks", errRefused, a)
	}
	return &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()}, nil
}

// exchange connects fd to sa, sends req and reads the reply to its end (at
// most maxReply bytes), then closes fd, which resets the connection.
func exchange(fd int, sa *unix.SockaddrInet4, req string, deadline time.Time) ([]byte, error) {
	// Connect encodes the address into the value it is given: concurrent
	// exchanges with one target each need their own.
	sa = &unix.SockaddrInet4{Port: sa.Port, Addr: sa.Addr}
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, fmt.Errorf("connect: %w", err)
	}
	// The file owns fd from here; it registers it with the poller.
	f := os.NewFile(uintptr(fd), "ndbench-conn")
	defer f.Close()
	if err := f.SetDeadline(deadline); err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	// Connecting again reports progress: EALREADY while the handshake is
	// under way, success once it is done, the error if it failed.
	var cerr error
	werr := rc.Write(func(fd uintptr) bool {
		switch err := unix.Connect(int(fd), sa); err {
		case nil, unix.EISCONN:
			return true
		case unix.EALREADY, unix.EINPROGRESS, unix.EINTR:
			return false
		default:
			cerr = err
			return true
		}
	})
	if werr != nil {
		return nil, fmt.Errorf("connect: %w", werr)
	}
	if cerr != nil {
		return nil, fmt.Errorf("connect: %w", cerr)
	}
	if _, err := io.WriteString(f, req); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	buf := make([]byte, maxReply)
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read reply: %w", err)
		}
	}
	return buf[:n], nil
}

// replyFrom returns the index in names of the server that sent reply b:
// its body is the server's name.
func replyFrom(b []byte, names []string) (int, error) {
	_, body, ok := bytes.Cut(b, []byte(headerEnding))
	if !ok {
		return -1, fmt.Errorf("%w: %d bytes without the end of a header", errBadReply, len(b))
	}
	body = bytes.TrimSpace(body)
	for i, n := range names {
		if string(body) == n {
			return i, nil
		}
	}
	return -1, fmt.Errorf("%w: %q, want one of %v", errWrongServer, body, names)
}
