package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
)

// The feedback bench's request protocol: one request per connection,
// "GET /<µs> HTTP/1.0" naming the service time the server must spend, and a
// reply whose status says whether the server did the work (200) or turned
// the request away because its queue was full (503), with the server's
// name as the body either way.
const (
	workOK   = "HTTP/1.0 200 OK\r\n"
	workBusy = "HTTP/1.0 503 Busy\r\n"
	// workError is a sinkhole's answer, to work and probes alike.
	workError  = "HTTP/1.0 500 Internal Server Error\r\n"
	maxWorkReq = 256
)

// workRequest is the request for service time d.
func workRequest(d time.Duration) string {
	return "GET /" + strconv.FormatInt(d.Microseconds(), 10) + " HTTP/1.0\r\n\r\n"
}

// parseWorkRequest reads the service time out of a request's first line.
// Any other path, such as an advisor's "GET /health", is a probe: it is served
// like a fast request, through the same queue, so that its response time
// shows the server's queueing, but it is not counted as the workload's.
func parseWorkRequest(b []byte) (d time.Duration, probe bool, err error) {
	line, _, ok := bytes.Cut(b, []byte("\r\n"))
	if !ok {
		return 0, false, errors.New("no request line")
	}
	f := bytes.Fields(line)
	if len(f) != 3 || !bytes.HasPrefix(f[1], []byte("/")) {
		return 0, false, fmt.Errorf("bad request line %q", line)
	}
	us, err := strconv.ParseInt(string(f[1][1:]), 10, 64)
	if err != nil {
		return fastWork, true, nil
	}
	if us < 0 || us > int64(10*time.Second/time.Microsecond) {
		return 0, false, fmt.Errorf("bad service time %q", f[1])
	}
	return time.Duration(us) * time.Microsecond, false, nil
}

// errQueueFull is a request turned away: its server's queue was full.
var errQueueFull = errors.New("queue full")

// workQueue admits at most limit requests at a time; the others wait in
// FIFO order, at most maxWait of them, and any more are turned away. It
// models a server with limit worker threads and a bounded accept backlog.
type workQueue struct {
	limit, maxWait int

	mu      sync.Mutex
	running int
	waiting []chan struct{} // FIFO; a slot is handed over by closing
	peak    int             // most running at once, for tests
}

func newWorkQueue(limit, maxWait int) *workQueue {
	return &workQueue{limit: limit, maxWait: maxWait}
}

// acquire takes a slot, waiting its turn. It returns errQueueFull at once
// if maxWait requests already wait, and ctx's error if ctx ends first.
func (q *workQueue) acquire(ctx context.Context) error {
	q.mu.Lock()
	if q.running < q.limit && len(q.waiting) == 0 {
		q.running++
		q.peak = max(q.peak, q.running)
		q.mu.Unlock()
		return nil
	}
	if len(q.waiting) >= q.maxWait {
		q.mu.Unlock()
		return errQueueFull
	}
	turn := make(chan struct{})
	q.waiting = append(q.waiting, turn)
	q.mu.Unlock()
	select {
	case <-turn:
		return nil
	case <-ctx.Done():
		q.mu.Lock()
		defer q.mu.Unlock()
		for i, w := range q.waiting {
			if w == turn {
				q.waiting = append(q.waiting[:i], q.waiting[i+1:]...)
				return ctx.Err()
			}
		}
		// The slot was handed over while ctx ended: pass it on.
		q.releaseLocked()
		return ctx.Err()
	}
}

// release gives the slot to the longest waiter, or frees it.
func (q *workQueue) release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.releaseLocked()
}

func (q *workQueue) releaseLocked() {
	if len(q.waiting) > 0 {
		close(q.waiting[0])
		q.waiting = q.waiting[1:]
		return
	}
	q.running--
}

// queued is how many requests wait.
func (q *workQueue) queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiting)
}

// workServer is one lab server's application in the feedback bench: C
// workers behind a FIFO queue. A worker "serves" a request by sleeping its
// service time times the server's slowdown while it holds its slot. Sleeping
// costs no CPU, so four such servers, the client and the dispatcher fit on
// a small machine, and the server's capacity is set by C and the service
// times alone, as for a server whose work is waiting on a disk or a
// database: C requests in service at once, the rest queued.
type workServer struct {
	name     string
	q        *workQueue
	slowdown atomic.Uint64 // math.Float64bits of the factor
	sink     atomic.Int32  // sinkNone, sinkFailing or sinkPassing
	requests atomic.Int64  // work requests received (probes not counted)
	rejected atomic.Int64  // turned away, queue full
	expired  atomic.Int64  // dropped after waiting longer than a client waits
	// asked and held sum the service times requested (times the
	// slowdown) and the time slots were actually held, in ns: on a
	// loaded machine timers fire late, and held/asked shows by how much
	// the servers' real capacity fell short of the nominal.
	asked, held atomic.Int64

	ctx    context.Context
	cancel context.CancelFunc
	listeners
}

// startWorkServer serves on addrs in host's namespace with limit workers
// and at most maxWait requests queued.
func startWorkServer(ctx context.Context, host *lab.Host, limit, maxWait int, addrs ...netip.AddrPort) (*workServer, error) {
	ctx, cancel := context.WithCancel(ctx)
	s := &workServer{name: host.Name, q: newWorkQueue(limit, maxWait), ctx: ctx, cancel: cancel}
	s.setSlowdown(1)
	// Two accept loops: one could lag behind the connection rate of a
	// busy machine and queue connections outside the server's own queue.
	if err := s.listen(host, 2, s.serve, addrs...); err != nil {
		cancel()
		return nil, err
	}
	s.Go(func() {
		<-ctx.Done()
		s.Close()
	})
	return s, nil
}

// A sinkhole answers every workload request at once with an error
// (workError), without queueing; its probes fail the same way
// (sinkFailing) or are served as usual (sinkPassing).
const (
	sinkNone int32 = iota
	sinkFailing
	sinkPassing
)

func (s *workServer) setSink(mode int32)    { s.sink.Store(mode) }
func (s *workServer) setSlowdown(f float64) { s.slowdown.Store(math.Float64bits(f)) }
func (s *workServer) slowdownFactor() float64 {
	return math.Float64frombits(s.slowdown.Load())
}

// serve reads the request, waits for a worker, works and answers.
func (s *workServer) serve(c net.Conn) {
	c.SetDeadline(time.Now().Add(fbRequestTimeout + time.Second))
	req, ok := readHeader(c, maxWorkReq)
	if !ok {
		return
	}
	d, probe, err := parseWorkRequest(req)
	if err != nil {
		return
	}
	if !probe {
		s.requests.Add(1)
	}
	if sink := s.sink.Load(); sink != sinkNone && (!probe || sink == sinkFailing) {
		c.Write([]byte(workError + "\r\n" + s.name + "\n"))
		return
	}
	arrived := time.Now()
	if err := s.q.acquire(s.ctx); err != nil {
		if errors.Is(err, errQueueFull) {
			s.rejected.Add(1)
			c.Write([]byte(workBusy + "\r\n" + s.name + "\n"))
		}
		return
	}
	// A request that waited longer than its client waits is dropped
	// unserved: its client is gone, and serving it would only delay the
	// live ones behind it, so that a server that fell behind could never
	// catch up again.
	if time.Since(arrived) >= fbRequestTimeout {
		s.q.release()
		s.expired.Add(1)
		return
	}
	want := time.Duration(float64(d) * s.slowdownFactor())
	began := time.Now()
	t := time.NewTimer(want)
	select {
	case <-t.C:
	case <-s.ctx.Done():
		t.Stop()
	}
	s.q.release()
	s.asked.Add(int64(want))
	s.held.Add(int64(time.Since(began)))
	c.Write([]byte(workOK + "\r\n" + s.name + "\n"))
}

// stop closes the listeners, ends the work in progress and waits.
func (s *workServer) stop() {
	s.cancel()
	s.Stop()
}
