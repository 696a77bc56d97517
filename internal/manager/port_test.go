package manager

import (
	"net/netip"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/executor"
)

// The commit decision alone: a server leaving or joining the working set
// commits at once whatever the size of the move; a load move commits only
// past the sensitivity threshold, and one below it widens the held step.
func TestDecideStage(t *testing.T) {
	key := executor.ServiceKey{VIP: netip.MustParseAddr("198.51.100.100"), Port: 80, Proto: executor.TCP}
	m, err := New(Settings{Sensitivity: 0.05}, Options{Executor: executor.NewFake(), Commit: func(Commit) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	round := func(cur, next []uint32) *round {
		ps := &portState{spec: Port{Key: key, Bound: 100}, servers: map[netip.Addr]*serverState{}}
		r := &round{ps: ps, names: []string{"active"}, pr: []uint32{100}, loads: [][]float64{make([]float64, len(cur))}, lmi: make([]float64, len(cur)), newW: next}
		for i, w := range cur {
			a := netip.AddrFrom4([4]byte{198, 51, 100, byte(11 + i)})
			ps.servers[a] = &serverState{step: firstStep}
			r.smp = append(r.smp, &sample{addr: a, cur: w, state: StateUp})
		}
		return r
	}
	for _, c := range []struct {
		name      string
		cur, next []uint32
		commit    bool
		reason    string
	}{
		{"out", []uint32{50, 50, 50, 50}, []uint32{50, 50, 50, 0}, true, "up"},
		{"back", []uint32{50, 50, 50, 0}, []uint32{50, 50, 50, 1}, true, "back"},
		{"load past the threshold", []uint32{50, 50, 50, 50}, []uint32{60, 45, 50, 50}, true, "load"},
		{"load below the threshold", []uint32{50, 50, 50, 50}, []uint32{52, 49, 50, 50}, false, "below sensitivity"},
		{"nothing", []uint32{50, 50}, []uint32{50, 50}, false, "no change"},
	} {
		r := round(c.cur, c.next)
		rep := m.decide(r)
		if rep.Committed != c.commit || rep.Reason != c.reason || len(rep.Servers) != len(c.cur) {
			t.Errorf("%s: committed %v, reason %q, %d server lines; want %v, %q", c.name, rep.Committed, rep.Reason, len(rep.Servers), c.commit, c.reason)
		}
		for i, sr := range rep.Servers {
			if want := c.next[i]; c.commit && sr.NewWeight != want {
				t.Errorf("%s: server %d reported new weight %d, want %d", c.name, i, sr.NewWeight, want)
			}
		}
		if !c.commit && c.reason == "below sensitivity" {
			if st := r.ps.servers[r.smp[0].addr]; st.heldDir != 1 {
				t.Errorf("%s: a held rise left heldDir %d", c.name, st.heldDir)
			}
		}
	}
}

// The typical flow time goes to the data plane at once when it has none,
// then only once two interval readings in a row lie beyond the band on the
// same side: a noisy reading, or readings either side, commit nothing.
func TestFlowTimeMoved(t *testing.T) {
	ms := func(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }
	ps := &portState{}
	steps := []struct {
		cur, next time.Duration
		load      bool
		want      bool
	}{
		{0, ms(10), true, true},        // none yet
		{ms(10), ms(12), true, false},  // within the band
		{ms(10), ms(30), true, false},  // beyond, once
		{ms(10), ms(4), true, false},   // beyond on the other side: starts again
		{ms(10), ms(30), true, false},  // above, once
		{ms(10), ms(11), true, false},  // back within: starts again
		{ms(10), ms(30), true, false},  // above, once
		{ms(10), ms(30), false, false}, // a health-only computation reads no load
		{ms(10), ms(40), true, true},   // above, twice in a row
		{ms(40), ms(38), true, false},  // settled
		{ms(40), 0, true, false},       // nothing read
	}
	for i, s := range steps {
		if got := ps.flowTimeMoved(s.cur, s.next, s.load); got != s.want {
			t.Errorf("step %d: %v -> %v: moved %v, want %v", i, s.cur, s.next, got, s.want)
		}
	}
}
