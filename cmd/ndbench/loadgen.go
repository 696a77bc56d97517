package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
	"golang.org/x/sys/unix"
)

// Bounds of the main bench's load generator.
const (
	// requestTimeout bounds one request from connect to the end of the
	// reply. A SYN that is dropped is retransmitted after 1 s, so a
	// dropped connection attempt counts as an error.
	requestTimeout = time.Second
	// maxStepRequests bounds the requests of one step, whatever its rate
	// and duration.
	maxStepRequests = 2_000_000
	// minInFlight and maxInFlight bound the requests outstanding at once;
	// between them the bound is a quarter second's worth at the offered
	// rate. A request due while the bound is reached is not sent and
	// counts as an error (overrun).
	minInFlight = 64
	maxInFlight = 8192
)

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
	r.P50, r.P99 = lab.Percentile(r.latencies, 0.50), lab.Percentile(r.latencies, 0.99)
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
		sa, err := labTarget(a)
		if err != nil {
			return stepResult{}, err
		}
		sas = append(sas, sa)
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
		if !lab.WaitUntil(stepCtx, timer, due) {
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
// request makes one connection, one exchange on it, and closes it.
func (g *generator) request(ctx context.Context, sa *unix.SockaddrInet4, names []string) outcome {
	fd, err := g.take(ctx)
	if err != nil {
		return outcome{err: err}
	}
	began := time.Now()
	reply, err := exchange(fd, sa, requestLine, began.Add(requestTimeout))
	server := 0
	if err == nil {
		server, err = parseReply(reply, names)
	}
	return outcome{server: server, latency: time.Since(began), err: err}
}

// parseReply checks a reply and returns the index of the server that sent
// it.
func parseReply(b []byte, names []string) (int, error) {
	if !bytes.HasPrefix(b, []byte(replyStatus)) {
		return 0, fmt.Errorf("%w: %q", errBadReply, b[:min(len(b), 40)])
	}
	return replyFrom(b, names)
}

// errorKind names the kind of a request's error for the counts: the load
// generator's own errors, then the lab's kinds (timeout, refused, reset,
// unreachable, eof, other).
func errorKind(err error) string {
	switch {
	case errors.Is(err, errOverrun):
		return "overrun"
	case errors.Is(err, errWrongServer):
		return "wrong-server"
	case errors.Is(err, errBadReply):
		return "bad-reply"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.ETIMEDOUT):
		return "unreachable" // no answer to the SYN: the path is broken
	}
	return lab.ErrorKind(err)
}
