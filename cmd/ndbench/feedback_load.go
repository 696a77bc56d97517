package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/lab"
)

// Bounds of the feedback bench's load.
const (
	// fbRequestTimeout bounds one request, from connect to the end of
	// the reply, queueing at the server included.
	fbRequestTimeout = 5 * time.Second
	// fbMaxRequests bounds the requests of one variant's run.
	fbMaxRequests = 2_000_000
	// fbMaxInFlight bounds the requests outstanding at once. A request
	// due while this many are out is not sent and counts as an error.
	fbMaxInFlight = 12_000
)

// The workload's two classes of request.
const (
	fastWork = time.Millisecond
	slowWork = 100 * time.Millisecond
	slowProb = 0.1
)

// meanWork is the workload's mean service time: 0.9 ms + 10 ms.
const meanWork = time.Duration((1-slowProb)*float64(fastWork) + slowProb*float64(slowWork))

// drawWork draws a request's service time: fastWork with probability 0.9,
// slowWork with 0.1.
func drawWork(r *rand.Rand) time.Duration {
	if r.Float64() < slowProb {
		return slowWork
	}
	return fastWork
}

// Errors of a request, besides the generator's own.
var errBusy = errors.New("server queue full")

// record is one request of a run.
type record struct {
	At      time.Duration // when it was due, from the start of the run
	Latency time.Duration // connect to the end of the reply
	Work    time.Duration // the service time it asked for
	Server  int           // index of the server that answered; -1 if none
	Err     string        // error kind; "" for success
}

// openLoop sends requests with exponential gaps (Poisson arrivals) at
// rate a second from the lab's client to vip, for d, each on a new
// connection, and returns every request's record, in order of sending. The
// arrivals do not wait for replies. It stops early when ctx ends.
func openLoop(ctx context.Context, g *generator, vip netip.AddrPort, names []string, rate float64, d time.Duration, seed uint64) ([]record, error) {
	if !vip.Addr().Is4() || !lab.InLabRange(vip.Addr()) {
		return nil, fmt.Errorf("%w: target %s is not an IPv4 address in the lab's networks", errRefused, vip)
	}
	if math.IsNaN(rate) || rate <= 0 || d <= 0 {
		return nil, fmt.Errorf("bad load: %v/s for %v", rate, d)
	}
	sa := &unix.SockaddrInet4{Port: int(vip.Port()), Addr: vip.Addr().As4()}
	rnd := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	n := int(min(rate*d.Seconds()*1.5+100, fbMaxRequests))
	recs := make([]record, 0, n)
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	runCtx, cancel := context.WithTimeout(ctx, d+fbRequestTimeout+2*time.Second)
	defer cancel()
	sem := make(chan struct{}, fbMaxInFlight)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	start := time.Now()
	at := time.Duration(0)
	for len(recs) < n {
		at += time.Duration(rnd.ExpFloat64() / rate * float64(time.Second))
		if at >= d {
			break
		}
		if wait := time.Until(start.Add(at)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-runCtx.Done():
			case <-timer.C:
			}
		}
		if runCtx.Err() != nil {
			break
		}
		work := drawWork(rnd)
		mu.Lock()
		i := len(recs)
		recs = append(recs, record{At: at, Work: work, Server: -1})
		mu.Unlock()
		select {
		case sem <- struct{}{}:
			wg.Go(func() {
				defer func() { <-sem }()
				server, lat, err := g.work(runCtx, sa, work, names)
				mu.Lock()
				r := &recs[i]
				r.Server, r.Latency = server, lat
				if err != nil {
					r.Err = fbErrorKind(err)
				}
				mu.Unlock()
			})
		default:
			mu.Lock()
			recs[i].Err = "overrun"
			mu.Unlock()
		}
	}
	wg.Wait()
	return recs, ctx.Err()
}

// fbErrorKind names a request's error; a full queue is "busy".
func fbErrorKind(err error) string {
	if errors.Is(err, errBusy) {
		return "busy"
	}
	return errorKind(err)
}

// work makes one request for service time w on a new connection and
// returns the index of the server that answered (-1 if none could be
// told), the latency and the error.
func (g *generator) work(ctx context.Context, sa *unix.SockaddrInet4, w time.Duration, names []string) (int, time.Duration, error) {
	var fd int
	select {
	case fd = <-g.socks:
	case <-ctx.Done():
		return -1, 0, ctx.Err()
	case <-g.dead:
		return -1, 0, fmt.Errorf("%w: the socket factory stopped: %v", errGenerator, g.err)
	}
	began := time.Now()
	server, err := workExchange(fd, sa, workRequest(w), names, began.Add(fbRequestTimeout))
	return server, time.Since(began), err
}

// workExchange connects fd to sa, sends req, reads the reply to its end
// and closes fd, which resets the connection.
func workExchange(fd int, sa *unix.SockaddrInet4, req string, names []string, deadline time.Time) (int, error) {
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, fmt.Errorf("connect: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ndbench-work")
	defer f.Close()
	if err := f.SetDeadline(deadline); err != nil {
		return -1, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
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
		return -1, fmt.Errorf("connect: %w", werr)
	}
	if cerr != nil {
		return -1, fmt.Errorf("connect: %w", cerr)
	}
	if _, err := io.WriteString(f, req); err != nil {
		return -1, fmt.Errorf("send: %w", err)
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
			return -1, fmt.Errorf("read reply: %w", err)
		}
	}
	return parseWorkReply(buf[:n], names)
}

// parseWorkReply returns the index of the server that sent reply b, and
// errBusy if it turned the request away.
func parseWorkReply(b []byte, names []string) (int, error) {
	var status error
	switch {
	case bytes.HasPrefix(b, []byte(workOK)):
	case bytes.HasPrefix(b, []byte(workBusy)):
		status = errBusy
	default:
		return -1, fmt.Errorf("%w: %q", errBadReply, b[:min(len(b), 40)])
	}
	_, body, ok := bytes.Cut(b, []byte("\r\n\r\n"))
	if !ok {
		return -1, fmt.Errorf("%w: no end of header", errBadReply)
	}
	body = bytes.TrimSpace(body)
	for i, n := range names {
		if string(body) == n {
			return i, status
		}
	}
	return -1, fmt.Errorf("%w: %q, want one of %v", errWrongServer, body, names)
}
