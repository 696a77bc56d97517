package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/lab"
)

// Bounds of the load generator.
const (
	// requestTimeout bounds one request from connect to the end of the
	// reply. A SYN that is dropped is retransmitted after 1 s, so a
	// dropped connection attempt counts as an error.
	requestTimeout = time.Second
	// maxStepRequests bounds the requests of one step, whatever its rate
	// and duration.
	maxStepRequests = 2_000_000
	// spareSockets is how many unconnected sockets wait, made in advance
	// inside the client's namespace.
	spareSockets = 512
	// minInFlight and maxInFlight bound the requests outstanding at once;
	// between them the bound is a quarter second's worth at the offered
	// rate. A request due while the bound is reached is not sent and
	// counts as an error (overrun).
	minInFlight = 64
	maxInFlight = 8192
	// checkEvery is how often, in sockets made, the socket factory checks
	// again that its sockets belong to the client's namespace.
	checkEvery = 256
	maxReply   = 512
)

// Errors of the load generator.
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

// target is where a step sends its requests and what it expects back.
type target struct {
	// addrs are taken in turn, one per request.
	addrs []netip.AddrPort
	// names are the servers that may answer; the index of the one that
	// did is counted.
	names []string
}

// stepResult is what one step at a fixed offered rate saw.
type stepResult struct {
	Rate       float64        `json:"rate"`
	Planned    int            `json:"planned"`
	Sent       int            `json:"sent"`
	OK         int            `json:"ok"`
	Errors     int            `json:"errors"`
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
	FirstError string         `json:"first_error,omitempty"`
	P50        time.Duration  `json:"p50_ns"`
	P99        time.Duration  `json:"p99_ns"`
	Max        time.Duration  `json:"max_ns"`
	// Achieved is the rate of successful requests over the step's window:
	// from its start to the last reply, and at least its duration.
	Achieved float64 `json:"achieved"`
	// MaxLate is how far behind schedule the latest request started.
	MaxLate   time.Duration  `json:"max_late_ns"`
	PerServer map[string]int `json:"per_server,omitempty"`
	// Sustained: under 1% errors and at least 95% of the offered rate
	// achieved.
	Sustained bool `json:"sustained"`

	latencies []time.Duration // of the successful requests, sorted
}

// percentiles sorts the latencies and sets P50, P99 and Max from them.
func (r *stepResult) percentiles() {
	slices.Sort(r.latencies)
	r.P50, r.P99 = percentile(r.latencies, 0.50), percentile(r.latencies, 0.99)
	if n := len(r.latencies); n > 0 {
		r.Max = r.latencies[n-1]
	}
}

// add merges the results of another step at the same rate into r, as if
// the two were one step as long as both.
func (r *stepResult) add(o stepResult) {
	first := r.Planned == 0
	r.Rate = o.Rate
	r.Planned += o.Planned
	r.Sent += o.Sent
	r.OK += o.OK
	r.Errors += o.Errors
	if r.ErrorKinds == nil {
		r.ErrorKinds = map[string]int{}
	}
	for k, n := range o.ErrorKinds {
		r.ErrorKinds[k] += n
	}
	if r.FirstError == "" {
		r.FirstError = o.FirstError
	}
	if r.PerServer == nil {
		r.PerServer = map[string]int{}
	}
	for k, n := range o.PerServer {
		r.PerServer[k] += n
	}
	r.MaxLate = max(r.MaxLate, o.MaxLate)
	r.Achieved = o.Achieved
	r.Sustained = o.Sustained
	if !first {
		r.Achieved = min(r.Achieved, o.Achieved)
		r.Sustained = r.ErrorRate() < maxErrorRate && r.Sustained && o.Sustained
	}
	r.latencies = append(r.latencies, o.latencies...)
	r.percentiles()
}

// ErrorRate is the share of planned requests that failed or were not sent.
func (r stepResult) ErrorRate() float64 {
	if r.Planned == 0 {
		return 0
	}
	return float64(r.Errors+r.Planned-r.Sent) / float64(r.Planned)
}

// Thresholds of a sustained step.
const (
	maxErrorRate = 0.01
	minAchieved  = 0.95
)

// outcome is one request's result.
type outcome struct {
	server  int // index in target.names
	latency time.Duration
	err     error
}

// run offers rate requests a second to t for d, and waits for the last
// reply. It is bounded in count (rate × d, at most maxStepRequests), in
// time (d, plus requestTimeout for the last requests) and in requests
// outstanding. An ended ctx stops it early; the result then says so through
// Sent < Planned.
func (g *generator) run(ctx context.Context, t target, rate float64, d time.Duration) (stepResult, error) {
	select {
	case <-g.dead:
		return stepResult{}, fmt.Errorf("%w: the socket factory stopped: %v", errGenerator, g.err)
	default:
	}
	if len(t.addrs) == 0 {
		return stepResult{}, fmt.Errorf("%w: no target", errRefused)
	}
	var sas []*unix.SockaddrInet4
	for _, a := range t.addrs {
		if !a.IsValid() || !lab.InLabRange(a.Addr()) || !a.Addr().Is4() {
			return stepResult{}, fmt.Errorf("%w: target %s is not an IPv4 address in the lab's networks", errRefused, a)
		}
		sas = append(sas, &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().As4()})
	}
	if math.IsNaN(rate) || rate <= 0 || d <= 0 {
		return stepResult{}, fmt.Errorf("bad step: rate %v for %v", rate, d)
	}
	res := stepResult{
		Rate:       rate,
		Planned:    int(min(math.Round(rate*d.Seconds()), maxStepRequests)),
		ErrorKinds: map[string]int{},
		PerServer:  map[string]int{},
	}
	res.Planned = max(res.Planned, 1)
	inFlight := int(min(max(rate/4, minInFlight), maxInFlight))

	var (
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, res.Planned)
		perServer = make([]int, len(t.names))
		lastDone  time.Time
		wg        sync.WaitGroup
	)
	record := func(o outcome) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		lastDone = now
		if o.err != nil {
			res.Errors++
			res.ErrorKinds[errorKind(o.err)]++
			if res.FirstError == "" {
				res.FirstError = o.err.Error()
			}
			return
		}
		res.OK++
		perServer[o.server]++
		latencies = append(latencies, o.latency)
	}

	stepCtx, cancel := context.WithTimeout(ctx, d+requestTimeout+time.Second)
	defer cancel()
	sem := make(chan struct{}, inFlight)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	start := time.Now()
	for seq := range res.Planned {
		due := start.Add(time.Duration(float64(seq) / rate * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-stepCtx.Done():
			case <-timer.C:
			}
		}
		if stepCtx.Err() != nil {
			break
		}
		res.MaxLate = max(res.MaxLate, time.Since(due))
		res.Sent++
		select {
		case sem <- struct{}{}:
			wg.Go(func() {
				defer func() { <-sem }()
				record(g.request(stepCtx, sas[seq%len(sas)], t.names))
			})
		default:
			record(outcome{err: errOverrun})
		}
	}
	wg.Wait()

	window := max(lastDone.Sub(start), d)
	res.Achieved = float64(res.OK) / window.Seconds()
	res.latencies = latencies
	res.percentiles()
	for i, n := range perServer {
		if n > 0 {
			res.PerServer[t.names[i]] = n
		}
	}
	res.Sustained = res.ErrorRate() < maxErrorRate && res.Achieved >= minAchieved*rate
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}

// request makes one connection, one exchange on it, and closes it.
func (g *generator) request(ctx context.Context, sa *unix.SockaddrInet4, names []string) outcome {
	var fd int
	select {
	case fd = <-g.socks:
	case <-ctx.Done():
		return outcome{err: ctx.Err()}
	case <-g.dead:
		return outcome{err: fmt.Errorf("%w: the socket factory stopped: %v", errGenerator, g.err)}
	}
	began := time.Now()
	server, err := exchange(fd, sa, names, began.Add(requestTimeout))
	return outcome{server: server, latency: time.Since(began), err: err}
}

// exchange connects fd to sa, sends the request and reads the reply to its
// end, then closes fd, which resets the connection.
func exchange(fd int, sa *unix.SockaddrInet4, names []string, deadline time.Time) (int, error) {
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return 0, fmt.Errorf("connect: %w", err)
	}
	// The file owns fd from here; it registers it with the poller.
	f := os.NewFile(uintptr(fd), "ndbench-conn")
	defer f.Close()
	if err := f.SetDeadline(deadline); err != nil {
		return 0, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
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
		return 0, fmt.Errorf("connect: %w", werr)
	}
	if cerr != nil {
		return 0, fmt.Errorf("connect: %w", cerr)
	}
	if _, err := io.WriteString(f, requestLine); err != nil {
		return 0, fmt.Errorf("send: %w", err)
	}
	var buf [maxReply]byte
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read reply: %w", err)
		}
	}
	return parseReply(buf[:n], names)
}

// parseReply checks a reply and returns the index of the server that sent
// it.
func parseReply(b []byte, names []string) (int, error) {
	if !bytes.HasPrefix(b, []byte(replyStatus)) {
		return 0, fmt.Errorf("%w: %q", errBadReply, b[:min(len(b), 40)])
	}
	_, body, ok := bytes.Cut(b, []byte(headerEnding))
	if !ok {
		return 0, fmt.Errorf("%w: %d bytes without the end of a header", errBadReply, len(b))
	}
	body = bytes.TrimSpace(body)
	for i, n := range names {
		if string(body) == n {
			return i, nil
		}
	}
	return 0, fmt.Errorf("%w: %q, want one of %v", errWrongServer, body, names)
}

// percentile returns the nearest-rank p-quantile of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// errorKind names the kind of a request's error for the counts.
func errorKind(err error) string {
	switch {
	case errors.Is(err, errOverrun):
		return "overrun"
	case errors.Is(err, errWrongServer):
		return "wrong-server"
	case errors.Is(err, errBadReply):
		return "bad-reply"
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.ETIMEDOUT):
		return "unreachable"
	}
	return "other"
}
