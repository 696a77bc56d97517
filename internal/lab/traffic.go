package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/netns"
)

// Bounds of a traffic run.
const (
	// MaxTrafficRequests is the most requests one run makes, whatever its
	// rate and duration.
	MaxTrafficRequests = 1_000_000
	// MaxTrafficRate is the highest rate accepted, in new connections per
	// second.
	MaxTrafficRate = 100_000
	// DefaultRequestTimeout bounds one request, from dial to the end of
	// the reply, when Traffic.Timeout is 0.
	DefaultRequestTimeout = 2 * time.Second
	// maxInFlight bounds the requests outstanding at once: each dial holds
	// an OS thread switched into the client's namespace until it connects.
	maxInFlight = 2048
	// maxBody is the most of a reply body that is read.
	maxBody = 512
)

// Errors of traffic runs.
var (
	// ErrRefused wraps every reason a traffic run refuses to start: a
	// target or source outside the lab's ranges, or a dialer that would
	// not run inside the lab client's namespace.
	ErrRefused = errors.New("traffic refused")
	// ErrOverrun is the error of a request that was due while too many
	// were still outstanding: it was not sent.
	ErrOverrun = errors.New("too many requests in flight; request not sent")
)

// LabRanges are the only networks a lab uses, and the only ones a traffic
// run may send to or from: the documentation ranges 198.51.100.0/24
// (TEST-NET-2), 203.0.113.0/24 (TEST-NET-3) and 2001:db8::/32.
var LabRanges = []netip.Prefix{
	ExtNet4,
	IntNet4,
	netip.MustParsePrefix("2001:db8::/32"),
}

// InLabRange reports whether a is inside LabRanges.
func InLabRange(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range LabRanges {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Traffic is an open-loop load generator run from a lab's client: at Rate
// requests a second, each on a new TCP connection, it sends an HTTP GET / to
// Target and reads the reply, whose body names the server that answered (see
// ServeHTTP). Requests are started on schedule whether or not earlier ones
// have finished, so a slow or dropping dispatcher shows as latency and
// errors rather than as a lower rate.
//
// A run is bounded: in count (Rate × Duration, at most MaxTrafficRequests),
// in time (Duration, plus Timeout for the last requests), and in requests
// outstanding at once. It refuses to run (ErrRefused) unless Target and the
// client's source address are inside LabRanges and its connections are made
// inside the client's named network namespace, never the host's.
type Traffic struct {
	// Client is the host the connections come from: the lab's client.
	Client *Host
	// Target is where they go, typically a VIP on port 80.
	Target netip.AddrPort
	// Rate is the number of new connections a second, up to
	// MaxTrafficRate.
	Rate float64
	// Duration is how long requests are started for; 0 means until ctx
	// ends (and at most MaxTrafficRequests).
	Duration time.Duration
	// Timeout bounds each request; 0 means DefaultRequestTimeout.
	Timeout time.Duration
	// MaxRequests, if positive, lowers the bound on the number of
	// requests below Rate × Duration and MaxTrafficRequests.
	MaxRequests int
	// OnResult, if set, is called with each request's result, from one
	// goroutine at a time, in the order requests finish. It should return
	// quickly: requests wait for it.
	OnResult func(Result)
}

// Result is the outcome of one request.
type Result struct {
	Seq     int       // the request's number in the run, from 0
	Start   time.Time // when it was due to start
	Latency time.Duration
	// Server is the name in the reply's body: which server answered.
	Server string
	// Err is why the request failed; nil if it succeeded.
	Err error
	// Canceled marks a request cut short because the run's context
	// ended: neither a success nor an error.
	Canceled bool
}

// Summary is what a run did.
type Summary struct {
	Target   netip.AddrPort
	Rate     float64
	Planned  int // requests the run would make if not interrupted
	Requests int // requests made, or found overrun
	OK       int
	Errors   int
	Canceled int // cut short by the end of the context
	// Interrupted is set when the context ended before every planned
	// request was made.
	Interrupted bool
	// PerServer counts successful requests by the server that answered.
	PerServer map[string]int
	// ErrorKinds counts errors by kind: timeout, refused, reset,
	// unreachable, eof, http, overrun, other.
	ErrorKinds map[string]int
	// FirstError is the first error seen, for a clue.
	FirstError string
	// Latency percentiles of the successful requests, from dial to the
	// end of the reply.
	P50, P99, Max time.Duration
	Elapsed       time.Duration
}

// Servers returns the names in PerServer, sorted.
func (s Summary) Servers() []string {
	names := make([]string, 0, len(s.PerServer))
	for n := range s.PerServer {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// RunTraffic runs Traffic{Client: client, Target: target, Rate: rate,
// Duration: duration, OnResult: onResult}.
func RunTraffic(ctx context.Context, client *Host, target netip.AddrPort, rate float64, duration time.Duration, onResult func(Result)) (Summary, error) {
	t := &Traffic{Client: client, Target: target, Rate: rate, Duration: duration, OnResult: onResult}
	return t.Run(ctx)
}

// Run checks the run's settings and where it would run, then sends the
// requests. Request failures are counted in the Summary, not returned; the
// error reports a run that refused to start.
func (t *Traffic) Run(ctx context.Context) (Summary, error) {
	src, err := t.validate()
	if err != nil {
		return Summary{}, err
	}
	var id nsID
	err = t.Client.NS.Do(func() (err error) {
		id, err = checkClientNS(t.Client.NS.Name())
		return err
	})
	if err != nil {
		if !errors.Is(err, ErrRefused) {
			err = fmt.Errorf("%w: %w", ErrRefused, err)
		}
		return Summary{}, fmt.Errorf("traffic to %s from %s: %w", t.Target, t.Client.Name, err)
	}
	r := &run{Traffic: t, src: src, ns: id, timeout: t.Timeout}
	if r.timeout <= 0 {
		r.timeout = DefaultRequestTimeout
	}
	return r.run(ctx), nil
}

// validate checks everything that can be checked without entering the
// client's namespace, and returns the source address to dial from.
func (t *Traffic) validate() (netip.Addr, error) {
	refuse := func(format string, args ...any) (netip.Addr, error) {
		return netip.Addr{}, fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
	}
	if t.Client == nil || t.Client.NS == nil {
		return refuse("no lab client to run from")
	}
	dst := t.Target.Addr().Unmap()
	if !t.Target.IsValid() || t.Target.Port() == 0 {
		return refuse("target %s is not an address and port", t.Target)
	}
	if !InLabRange(dst) {
		return refuse("target %s is outside the lab's networks %v", t.Target, LabRanges)
	}
	src := t.Client.Addr4
	if dst.Is6() {
		src = t.Client.Addr6
	}
	if !src.IsValid() || !InLabRange(src) {
		return refuse("client %s has no address in the lab's networks for %s", t.Client.Name, dst)
	}
	if math.IsNaN(t.Rate) || t.Rate <= 0 || t.Rate > MaxTrafficRate {
		return netip.Addr{}, fmt.Errorf("%w: rate %v, want more than 0 and at most %d a second", ErrBadOptions, t.Rate, MaxTrafficRate)
	}
	if t.Duration < 0 || t.Timeout < 0 {
		return netip.Addr{}, fmt.Errorf("%w: negative duration or timeout", ErrBadOptions)
	}
	return src, nil
}

// nsID identifies a network namespace by its nsfs inode.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// checkClientNS runs on the thread that will dial. It refuses unless that
// thread is in the named namespace want, and that namespace is not the one
// of the init process (the host's, when run on a host). It returns the
// namespace's identity, which every dial checks again.
func checkClientNS(want string) (nsID, error) {
	cur, err := netns.Current()
	if err != nil {
		return nsID{}, fmt.Errorf("%w: cannot tell which network namespace the dialer is in: %w", ErrRefused, err)
	}
	if want == "" || cur != want {
		return nsID{}, fmt.Errorf("%w: the dialer is in network namespace %q, not the lab client's %q", ErrRefused, cur, want)
	}
	self, err := statNS("/proc/thread-self/ns/net")
	if err != nil {
		return nsID{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if initNS, err := statNS("/proc/1/ns/net"); err == nil && initNS == self {
		return nsID{}, fmt.Errorf("%w: network namespace %q is the host's own", ErrRefused, cur)
	}
	return self, nil
}

// run is one Run in progress.
type run struct {
	*Traffic
	src     netip.Addr
	ns      nsID
	timeout time.Duration
}

func (r *run) planned() int {
	n := MaxTrafficRequests
	if r.MaxRequests > 0 && r.MaxRequests < n {
		n = r.MaxRequests
	}
	if r.Duration > 0 {
		want := math.Ceil(r.Rate * r.Duration.Seconds())
		if want < float64(n) {
			n = max(1, int(want))
		}
	}
	return n
}

func (r *run) run(ctx context.Context) Summary {
	sum := Summary{
		Target:     r.Target,
		Rate:       r.Rate,
		Planned:    r.planned(),
		PerServer:  map[string]int{},
		ErrorKinds: map[string]int{},
	}
	start := time.Now()
	if r.Duration > 0 {
		// A hard stop, in case anything below forgets its own bound.
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(r.Duration+r.timeout+time.Second))
		defer cancel()
	}
	inFlight := min(maxInFlight, max(64, int(r.Rate*r.timeout.Seconds()*2)))
	results := make(chan Result, inFlight)
	var latencies []time.Duration

	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for res := range results {
			sum.Requests++
			switch {
			case res.Canceled:
				sum.Canceled++
			case res.Err != nil:
				sum.Errors++
				sum.ErrorKinds[ErrorKind(res.Err)]++
				if sum.FirstError == "" {
					sum.FirstError = res.Err.Error()
				}
			default:
				sum.OK++
				sum.PerServer[res.Server]++
				latencies = append(latencies, res.Latency)
			}
			if r.OnResult != nil {
				r.OnResult(res)
			}
		}
	}()

	sem := make(chan struct{}, inFlight)
	var wg sync.WaitGroup
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	end := start.Add(r.Duration)
	for seq := range sum.Planned {
		due := start.Add(time.Duration(float64(seq) / r.Rate * float64(time.Second)))
		if r.Duration > 0 && !due.Before(end) {
			break
		}
		if !WaitUntil(ctx, timer, due) {
			sum.Interrupted = true
			break
		}
		select {
		case sem <- struct{}{}:
			wg.Go(func() {
				defer func() { <-sem }()
				results <- r.request(ctx, seq, due)
			})
		default:
			results <- Result{Seq: seq, Start: due, Err: fmt.Errorf("request %d: %w", seq, ErrOverrun)}
		}
	}
	wg.Wait()
	close(results)
	<-collected
	sum.Elapsed = time.Since(start)
	slices.Sort(latencies)
	sum.P50, sum.P99 = Percentile(latencies, 0.50), Percentile(latencies, 0.99)
	if len(latencies) > 0 {
		sum.Max = latencies[len(latencies)-1]
	}
	return sum
}

// WaitUntil waits on timer, which it resets, until t or until ctx ends,
// and reports whether ctx is still live: the pacing of an open-loop load
// generator, one timer for all its requests.
func WaitUntil(ctx context.Context, timer *time.Timer, t time.Time) bool {
	if wait := time.Until(t); wait > 0 {
		timer.Reset(wait)
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
	}
	return ctx.Err() == nil
}

// Percentile returns the nearest-rank p-quantile of sorted.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// request makes one connection and one HTTP exchange on it.
func (r *run) request(ctx context.Context, seq int, due time.Time) Result {
	res := Result{Seq: seq, Start: due}
	began := time.Now()
	rctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	server, err := r.exchange(rctx)
	res.Latency = time.Since(began)
	switch {
	case err == nil:
		res.Server = server
	case done(ctx) != nil:
		res.Canceled = true
	default:
		res.Err = fmt.Errorf("request %d: %w", seq, err)
	}
	return res
}

func (r *run) exchange(ctx context.Context) (string, error) {
	conn, err := r.dial(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	req := "GET / HTTP/1.1\r\nHost: " + r.Target.String() + "\r\nUser-Agent: nd-lab\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		return "", fmt.Errorf("send: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", fmt.Errorf("read reply: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return "", fmt.Errorf("read reply body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", &statusError{resp.Status}
	}
	name := strings.TrimSpace(string(body))
	if name == "" {
		return "", &statusError{"200 with an empty body"}
	}
	return name, nil
}

// dial connects from the client's namespace, from its own address. The
// socket is made on a thread inside the namespace and keeps it for life.
func (r *run) dial(ctx context.Context) (net.Conn, error) {
	var c net.Conn
	err := r.Client.NS.Do(func() error {
		self, err := statNS("/proc/thread-self/ns/net")
		if err != nil {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		if self != r.ns {
			return fmt.Errorf("%w: the dialer left the lab client's namespace", ErrRefused)
		}
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(r.src, 0))}
		c, err = d.DialContext(ctx, "tcp", r.Target.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", r.Target, err)
	}
	return c, nil
}

type statusError struct{ status string }

func (e *statusError) Error() string { return "http reply " + e.status }

// ErrorKind names the kind of a request's error, as Summary.ErrorKinds
// counts them: timeout, refused, reset, unreachable, eof, http, overrun,
// refused-to-run or other.
func ErrorKind(err error) string {
	var se *statusError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrOverrun):
		return "overrun"
	case errors.Is(err, ErrRefused):
		return "refused-to-run"
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EADDRNOTAVAIL):
		return "unreachable"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.As(err, &se):
		return "http"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}
