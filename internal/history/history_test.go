package history

import (
	"encoding/json"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/manager"
)

func TestRingKeepsTheLastN(t *testing.T) {
	r := NewRing[int](3)
	if got := r.Slice(nil); len(got) != 0 {
		t.Fatalf("empty ring: %v", got)
	}
	for i := 1; i <= 7; i++ {
		r.Push(i)
	}
	if r.Len() != 3 || r.Cap() != 3 {
		t.Fatalf("len %d cap %d, want 3 3", r.Len(), r.Cap())
	}
	got := r.Slice(nil)
	want := []int{5, 6, 7}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("slice %v, want %v", got, want)
	}
	if got := r.Slice(func(v int) bool { return v > 5 }); len(got) != 2 || got[0] != 6 {
		t.Fatalf("after 5: %v, want [6 7]", got)
	}
	if got := r.Filter(func(v int) bool { return v%2 == 1 }); len(got) != 2 || got[0] != 5 || got[1] != 7 {
		t.Fatalf("odd: %v, want [5 7]", got)
	}
	if got := r.Slice(func(v int) bool { return v > 9 }); len(got) != 0 {
		t.Fatalf("after 9: %v, want none", got)
	}
	if NewRing[int](0).Cap() != 1 {
		t.Fatal("a ring of capacity 0 should hold one element")
	}
}

var (
	srvA = netip.MustParseAddr("198.51.100.11")
	srvB = netip.MustParseAddr("198.51.100.12")
)

const port = "198.51.100.100:80/tcp"

func report(at time.Time, committed bool, states ...string) manager.PortReport {
	r := manager.PortReport{Port: port, At: at, Committed: committed, Reason: "change 12% above sensitivity"}
	for i, a := range []netip.Addr{srvA, srvB} {
		st := manager.StateUp
		if i < len(states) {
			st = states[i]
		}
		r.Servers = append(r.Servers, manager.ServerReport{Server: a, State: st, LMI: 0.5 + float64(i),
			Weight: 10, NewWeight: 12, NewPerSec: 3, AdvisorMS: 2.5, Active: 7})
	}
	return r
}

func TestRecordBoundsSkipsAndMarks(t *testing.T) {
	h := New(5)
	t0 := time.Unix(1_000_000, 0)
	for i := range 12 {
		rep := report(t0.Add(time.Duration(i)*time.Second), false)
		h.Record([]manager.PortReport{rep})
		h.Record([]manager.PortReport{rep}) // the same computation again: skipped
	}
	ph, ok := h.Port(port, time.Time{})
	if !ok {
		t.Fatal("port not held")
	}
	if len(ph.Servers) != 2 {
		t.Fatalf("%d servers, want 2", len(ph.Servers))
	}
	s := ph.Servers[0]
	if s.Server != srvA.String() || len(s.T) != 5 || len(s.Weight) != 5 || len(s.LMI) != 5 {
		t.Fatalf("series %+v: want %s with 5 points", s, srvA)
	}
	if s.T[0] != t0.Add(7*time.Second).UnixMilli() || s.T[4] != t0.Add(11*time.Second).UnixMilli() {
		t.Errorf("times %v: want the last five seconds", s.T)
	}
	if len(ph.Marks) != 0 {
		t.Errorf("marks %v without a decision", ph.Marks)
	}

	// A commit, a cool-down, a fixed server.
	at := t0.Add(20 * time.Second)
	rep := report(at, true, manager.StateCoolDown)
	rep.Servers[1].Fixed = true
	rep.Servers[1].AdvisorMS = math.NaN()
	h.Record([]manager.PortReport{rep})
	h.Mark(port, Mark{T: at.UnixMilli(), Kind: "commit", Text: "flow time"})
	h.Mark("198.51.100.100:443/tcp", Mark{T: at.UnixMilli(), Kind: "commit"}) // not held: dropped
	ph, _ = h.Port(port, t0.Add(15*time.Second))
	if len(ph.Servers[0].T) != 1 || ph.Servers[0].Weight[0] != 12 {
		t.Errorf("since: %+v, want the one committed point, weight 12", ph.Servers[0])
	}
	kinds := map[string]bool{}
	for _, m := range ph.Marks {
		kinds[m.Kind] = true
		if m.T != at.UnixMilli() {
			t.Errorf("mark %+v at the wrong time", m)
		}
	}
	for _, k := range []string{"commit", manager.StateCoolDown, "fixed"} {
		if !kinds[k] {
			t.Errorf("no %s mark in %+v", k, ph.Marks)
		}
	}
	if len(ph.Marks) != 3 {
		t.Errorf("marks %+v, want 3", ph.Marks)
	}
	if len(h.Ports()) != 1 {
		t.Errorf("ports %v: a mark for a port not held added it", h.Ports())
	}
	if _, err := json.Marshal(ph); err != nil {
		t.Errorf("a NaN reading must not break JSON: %v", err)
	}

	// A server that leaves the report is forgotten; so is a port.
	rep = report(at.Add(time.Second), false)
	rep.Servers = rep.Servers[:1]
	h.Record([]manager.PortReport{rep})
	if ph, _ = h.Port(port, time.Time{}); len(ph.Servers) != 1 {
		t.Errorf("servers %d after one left, want 1", len(ph.Servers))
	}
	h.Record(nil)
	if _, ok := h.Port(port, time.Time{}); ok || len(h.Ports()) != 0 {
		t.Error("a port gone from the reports is still held")
	}
}

func TestMarksAndPointsBounded(t *testing.T) {
	h := New(MaxPoints * 10)
	if h.Points() != MaxPoints {
		t.Fatalf("points %d, want the cap %d", h.Points(), MaxPoints)
	}
	t0 := time.Unix(2_000_000, 0)
	states := []string{manager.StateUp, manager.StateDown}
	for i := range MaxPoints + 500 {
		at := t0.Add(time.Duration(i) * time.Second)
		h.Record([]manager.PortReport{report(at, true, states[i%2])})
		h.Mark(port, Mark{T: at.UnixMilli(), Kind: "commit"})
	}
	ph, _ := h.Port(port, time.Time{})
	if n := len(ph.Servers[0].T); n != MaxPoints {
		t.Errorf("%d points, want %d", n, MaxPoints)
	}
	if n := len(ph.Marks); n > MaxPoints/marksPerPoint {
		t.Errorf("%d marks, want at most %d", n, MaxPoints/marksPerPoint)
	}
	h.Reset()
	if len(h.Ports()) != 0 {
		t.Error("Reset kept ports")
	}
}

// TestMinGap: reports closer than MinGap give no reading, but their state
// changes are marked.
func TestMinGap(t *testing.T) {
	h := New(0)
	t0 := time.Unix(3_000_000, 0)
	for i := range 10 { // 2 s of reports 200 ms apart
		st := manager.StateUp
		if i == 3 {
			st = manager.StateSuspect
		}
		h.Record([]manager.PortReport{report(t0.Add(time.Duration(i)*200*time.Millisecond), false, st)})
	}
	ph, _ := h.Port(port, time.Time{})
	if n := len(ph.Servers[0].T); n != 2 {
		t.Errorf("%d readings over 2 s of reports, want 2 (one a second): %v", n, ph.Servers[0].T)
	}
	kinds := []string{}
	for _, m := range ph.Marks {
		kinds = append(kinds, m.Kind)
	}
	if len(kinds) != 2 || kinds[0] != manager.StateSuspect || kinds[1] != manager.StateUp {
		t.Errorf("marks %v, want suspect then up from reports that gave no reading", kinds)
	}
}

// TestMarksOutOfOrder: an event's mark told after a later report was read
// is still returned to a client that asks since before it.
func TestMarksOutOfOrder(t *testing.T) {
	h := New(0)
	t0 := time.Unix(4_000_000, 0)
	h.Record([]manager.PortReport{report(t0.Add(10*time.Second), false, manager.StateCoolDown)})
	h.Mark(port, Mark{T: t0.Add(5 * time.Second).UnixMilli(), Kind: "commit", Text: "late"})
	h.Record([]manager.PortReport{report(t0.Add(11*time.Second), false, manager.StateUp)})
	ph, _ := h.Port(port, t0.Add(4*time.Second))
	if len(ph.Marks) != 3 || ph.Marks[1].Text != "late" {
		t.Errorf("marks %+v, want the cool-down, the late commit and the return", ph.Marks)
	}
	ph, _ = h.Port(port, t0.Add(6*time.Second))
	if len(ph.Marks) != 2 {
		t.Errorf("marks since 6 s: %+v, want 2", ph.Marks)
	}
}
