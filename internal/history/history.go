// Package history keeps the last hour of the manager's computations in
// memory, for the dashboard's plots: per port and server a bounded ring of
// readings (weight, LMI, new flows a second, advisor latency, active flows,
// delay factor), and per port a bounded ring of marks: the manager's
// decisions (servers entering or leaving a state such as cool-down or down,
// read from its reports; commits with their reason and configuration
// changes, as the daemon's events tell them).
//
// It is fed the manager's reports (manager.Manager.Report, as the daemon
// hands them out) and marks; it reads nothing else and changes nothing.
package history

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/manager"
)

// Bounds of a History.
const (
	// DefaultPoints is how many readings a series keeps: an hour at the
	// manager's default interval of one second.
	DefaultPoints = 3600
	// MaxPoints bounds the points of any series, whatever New is asked.
	MaxPoints = 3600
	// MinGap is the least time between two readings of a series: the
	// manager computes every interval (1 s by default) and between
	// intervals on events; a series keeps at most a reading a second, so
	// that its points span an hour or more. Every report is read for
	// marks.
	MinGap = time.Second
	// marksPerPoint: a port keeps at most a mark for every four points
	// (commits of several servers at once count as one).
	marksPerPoint = 4
)

// Point is one server's reading in one computation of the manager.
type Point struct {
	// T is the computation's time, in Unix milliseconds.
	T         int64
	Weight    uint32
	LMI       float64
	NewPerSec float64
	AdvisorMS float64 // -1: no advisor reading
	Active    uint64
	Delay     float64 // delay factor under the delay scheduler, else 0
}

// Mark is one decision of the manager, shown on the plots.
type Mark struct {
	T int64 `json:"t"` // Unix milliseconds
	// Kind is "commit" (weights committed), "config" (a configuration
	// change to the port), "fixed", or the state a server entered
	// ("cool-down", "down", "suspect", "quiesced", "up", ...).
	Kind   string `json:"kind"`
	Server string `json:"server,omitempty"`
	Text   string `json:"text"`
}

// Ring is a fixed-capacity circular buffer: pushing into a full ring
// overwrites the oldest element.
type Ring[T any] struct {
	buf   []T
	start int // index of the oldest element
	n     int
}

// NewRing returns an empty ring of capacity n (at least 1).
func NewRing[T any](n int) *Ring[T] {
	return &Ring[T]{buf: make([]T, max(n, 1))}
}

// Push appends v, dropping the oldest element of a full ring.
func (r *Ring[T]) Push(v T) {
	if r.n < len(r.buf) {
		r.buf[(r.start+r.n)%len(r.buf)] = v
		r.n++
		return
	}
	r.buf[r.start] = v
	r.start = (r.start + 1) % len(r.buf)
}

// Len is the number of elements held.
func (r *Ring[T]) Len() int { return r.n }

// Cap is the ring's capacity.
func (r *Ring[T]) Cap() int { return len(r.buf) }

// At is the i-th element, oldest first.
func (r *Ring[T]) At(i int) T { return r.buf[(r.start+i)%len(r.buf)] }

// Slice copies the elements, oldest first, from the first for which keep
// is true (keep must be false then true along the ring, like a time
// cut-off).
func (r *Ring[T]) Slice(keep func(T) bool) []T {
	first := 0
	if keep != nil {
		lo, hi := 0, r.n
		for lo < hi {
			m := (lo + hi) / 2
			if keep(r.At(m)) {
				hi = m
			} else {
				lo = m + 1
			}
		}
		first = lo
	}
	out := make([]T, 0, r.n-first)
	for i := first; i < r.n; i++ {
		out = append(out, r.At(i))
	}
	return out
}

// Filter copies the elements for which keep is true, oldest first, whatever
// their order.
func (r *Ring[T]) Filter(keep func(T) bool) []T {
	var out []T
	for i := range r.n {
		if v := r.At(i); keep(v) {
			out = append(out, v)
		}
	}
	return out
}

// History is the manager's recent past. Its methods are safe for
// concurrent use.
type History struct {
	points int

	mu    sync.Mutex
	ports map[string]*portHistory
}

type portHistory struct {
	last    time.Time // the last report recorded
	point   time.Time // the last report that gave readings
	servers map[string]*serverHistory
	marks   *Ring[Mark]
}

type serverHistory struct {
	points *Ring[Point]
	state  string // in the last report
	fixed  bool
}

// New returns an empty History keeping points readings per series (at most
// MaxPoints; 0 or less means DefaultPoints).
func New(points int) *History {
	if points <= 0 {
		points = DefaultPoints
	}
	return &History{points: min(points, MaxPoints), ports: map[string]*portHistory{}}
}

// Points is the capacity of every series.
func (h *History) Points() int { return h.points }

// Record adds the reports of computations not recorded yet (a report whose
// time is not after the port's last is skipped, so that it may be called
// more often than the manager computes). Ports and servers missing from
// reports are forgotten: the configuration bounds what is kept.
func (h *History) Record(reports []manager.PortReport) {
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := make(map[string]bool, len(reports))
	for _, rep := range reports {
		seen[rep.Port] = true
		ph := h.ports[rep.Port]
		if ph == nil {
			ph = &portHistory{servers: map[string]*serverHistory{}, marks: NewRing[Mark](max(h.points/marksPerPoint, 16))}
			h.ports[rep.Port] = ph
		}
		if rep.At.IsZero() || !rep.At.After(ph.last) {
			continue
		}
		ph.last = rep.At
		ph.record(rep, h.points)
	}
	for name := range h.ports {
		if !seen[name] {
			delete(h.ports, name)
		}
	}
}

func (ph *portHistory) record(rep manager.PortReport, points int) {
	t := rep.At.UnixMilli()
	reading := rep.At.Sub(ph.point) >= MinGap
	if reading {
		ph.point = rep.At
	}
	present := make(map[string]bool, len(rep.Servers))
	for _, s := range rep.Servers {
		name := s.Server.String()
		present[name] = true
		sh := ph.servers[name]
		if sh == nil {
			sh = &serverHistory{points: NewRing[Point](points), state: manager.StateUp}
			ph.servers[name] = sh
		}
		if s.State != sh.state {
			text := fmt.Sprintf("%s: %s -> %s", name, sh.state, s.State)
			if s.Note != "" {
				text += " (" + s.Note + ")"
			}
			ph.marks.Push(Mark{T: t, Kind: s.State, Server: name, Text: text})
			sh.state = s.State
		}
		if s.Fixed != sh.fixed {
			text := name + ": fixed"
			if !s.Fixed {
				text = name + ": no longer fixed"
			}
			ph.marks.Push(Mark{T: t, Kind: "fixed", Server: name, Text: text})
			sh.fixed = s.Fixed
		}
		w := s.Weight
		if rep.Committed {
			w = s.NewWeight
		}
		d := s.Delay
		if rep.Committed && s.NewDelay != 0 {
			d = s.NewDelay
		}
		if !reading {
			continue
		}
		sh.points.Push(Point{T: t, Weight: w, LMI: finite(s.LMI), NewPerSec: finite(s.NewPerSec),
			AdvisorMS: finite(s.AdvisorMS), Active: s.Active, Delay: finite(d)})
	}
	for name := range ph.servers {
		if !present[name] {
			delete(ph.servers, name)
		}
	}
}

// Mark adds m to the marks of port, if the history holds the port (a port
// comes with the manager's first report of it). Marks are kept in the order
// given, which may not be their times' (an event may be told after a later
// report was read): Port filters them one by one.
func (h *History) Mark(port string, m Mark) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ph := h.ports[port]; ph != nil {
		ph.marks.Push(m)
	}
}

// finite keeps a reading JSON can carry: NaN and infinities read 0.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

// Reset forgets everything.
func (h *History) Reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ports = map[string]*portHistory{}
}

// Series is one server's readings, column by column, oldest first: the
// i-th element of each slice is the i-th reading.
type Series struct {
	Server    string    `json:"server"`
	T         []int64   `json:"t"`
	Weight    []uint32  `json:"weight"`
	LMI       []float64 `json:"lmi"`
	NewPerSec []float64 `json:"new_per_sec"`
	AdvisorMS []float64 `json:"advisor_ms"`
	Active    []uint64  `json:"active"`
	Delay     []float64 `json:"delay"`
}

// PortHistory is one port's recent past.
type PortHistory struct {
	Port    string   `json:"port"`
	Servers []Series `json:"servers"`
	Marks   []Mark   `json:"marks"`
}

// Ports names the ports held, sorted.
func (h *History) Ports() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Sorted(maps.Keys(h.ports))
}

// Port returns port's readings and marks later than since (all of them for
// a zero since), and false when the port is not held.
func (h *History) Port(port string, since time.Time) (PortHistory, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ph := h.ports[port]
	if ph == nil {
		return PortHistory{}, false
	}
	after := int64(-1 << 63)
	if !since.IsZero() {
		after = since.UnixMilli()
	}
	out := PortHistory{Port: port, Servers: []Series{}}
	// Marks come from reports and from events, not quite in time order.
	out.Marks = ph.marks.Filter(func(m Mark) bool { return m.T > after })
	if out.Marks == nil {
		out.Marks = []Mark{}
	}
	for name, sh := range ph.servers {
		pts := sh.points.Slice(func(p Point) bool { return p.T > after })
		s := Series{Server: name, T: make([]int64, len(pts)), Weight: make([]uint32, len(pts)),
			LMI: make([]float64, len(pts)), NewPerSec: make([]float64, len(pts)), AdvisorMS: make([]float64, len(pts)),
			Active: make([]uint64, len(pts)), Delay: make([]float64, len(pts))}
		for i, p := range pts {
			s.T[i], s.Weight[i], s.LMI[i], s.NewPerSec[i] = p.T, p.Weight, p.LMI, p.NewPerSec
			s.AdvisorMS[i], s.Active[i], s.Delay[i] = p.AdvisorMS, p.Active, p.Delay
		}
		out.Servers = append(out.Servers, s)
	}
	slices.SortFunc(out.Servers, func(a, b Series) int { return cmp.Compare(a.Server, b.Server) })
	return out, true
}
