package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
	"golang.org/x/sys/unix"
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
var (
	errBusy        = errors.New("server queue full")
	errServerError = errors.New("server error (HTTP 500)")
)

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
	sa, err := labTarget(vip)
	if err != nil {
		return nil, err
	}
	if math.IsNaN(rate) || rate <= 0 || d <= 0 {
		return nil, fmt.Errorf("bad load: %v/s for %v", rate, d)
	}
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
		if !lab.WaitUntil(runCtx, timer, start.Add(at)) {
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

// fbErrorKind names a request's error; a full queue is "busy", a
// sinkhole's answer "http-500".
func fbErrorKind(err error) string {
	switch {
	case errors.Is(err, errBusy):
		return "busy"
	case errors.Is(err, errServerError):
		return "http-500"
	}
	return errorKind(err)
}

// work makes one request for service time w on a new connection and
// returns the index of the server that answered (-1 if none could be
// told), the latency and the error.
func (g *generator) work(ctx context.Context, sa *unix.SockaddrInet4, w time.Duration, names []string) (int, time.Duration, error) {
	fd, err := g.take(ctx)
	if err != nil {
		return -1, 0, err
	}
	began := time.Now()
	reply, err := exchange(fd, sa, workRequest(w), began.Add(fbRequestTimeout))
	server := -1
	if err == nil {
		server, err = parseWorkReply(reply, names)
	}
	return server, time.Since(began), err
}

// parseWorkReply returns the index of the server that sent reply b, and
// errBusy if it turned the request away.
func parseWorkReply(b []byte, names []string) (int, error) {
	var status error
	switch {
	case bytes.HasPrefix(b, []byte(workOK)):
	case bytes.HasPrefix(b, []byte(workBusy)):
		status = errBusy
	case bytes.HasPrefix(b, []byte(workError)):
		status = errServerError
	default:
		return -1, fmt.Errorf("%w: %q", errBadReply, b[:min(len(b), 40)])
	}
	server, err := replyFrom(b, names)
	if err != nil {
		return -1, err
	}
	return server, status
}
