package manager

import (
	"cmp"
	"slices"
	"strconv"
	"time"
)

// Taking servers out of a port is bounded, as a production balancer
// bounds its outlier ejection (Envoy's panic threshold and maximum
// ejection percentage): a server taken out sheds its load on the rest,
// and past a point that load is what makes the rest look overloaded or
// fail their probes, and go out in turn. The feedback bench showed that
// cascade: two or three of four servers sitting out at once after a slow
// one recovered.
//
//   - Health (advisor down, agent disabled) that would leave fewer than
//     half of a port's servers in is more likely wrong than half the
//     servers dead: they all stay in (panic). A server cooling down is
//     healthy to the checks.
//   - Cool-downs, together with the servers out for health, never leave
//     fewer than half of a port's servers taking new flows: if they
//     would, the cool-downs nearest their end finish early.
//   - At most a quarter of a port's servers (at least one) cool down at
//     once: each one out raises the rest's load by its share, and a port
//     at three quarters of its capacity is full once a quarter of it is
//     out. A server overloaded past that limit stays in, and the weight
//     function lowers its weight.
//   - At most one new cool-down a computation, the worst server's: the
//     load it sheds changes what its peers read.
//   - None in the interval after the port's working set changed (a server
//     out or back): its readings straddle two splits of the load.

// maxCooling is how many of a port's candidates may cool down at once.
func maxCooling(candidates int) int {
	return max(1, candidates/4)
}

// portCount counts a port's servers by what they may do: candidates are
// those the operator has not quiesced, in those taking new flows.
type portCount struct {
	candidates, in, cooling int
}

func countPort(smp []*sample) portCount {
	var c portCount
	for _, s := range smp {
		switch s.state {
		case StateQuiesced:
			continue
		case StateUp:
			c.in++
		case StateCoolDown:
			c.cooling++
		}
		c.candidates++
	}
	return c
}

// panicHealth keeps every server in when health checks would leave fewer
// than half of the port's candidates in: an overload that makes probes
// time out, or a network problem between the dispatcher and the servers,
// is then likelier than half the servers dead, and taking those out would
// pile their load on the rest and take them out too. A server cooling
// down is healthy to the checks: it counts as healthy here, and
// keepHalfIn decides whether it stays out.
func panicHealth(smp []*sample) {
	candidates, healthy := 0, 0
	for _, s := range smp {
		if s.state == StateQuiesced {
			continue
		}
		candidates++
		if s.state != StateDown && s.state != StateDisabled {
			healthy++
		}
	}
	if candidates < 2 || 2*healthy >= candidates {
		return
	}
	for _, s := range smp {
		if s.state == StateDown || s.state == StateDisabled {
			s.note = "panic (" + s.state + ": " + s.note + "): fewer than half the servers up, all kept in"
			s.state = StateUp
		}
	}
}

// keepHalfIn ends cool-downs early, those nearest their end first, while
// fewer than half of the port's candidates take new flows (servers gone
// down while others cooled down). A server ended early comes back gently,
// as from any cool-down.
func (ps *portState) keepHalfIn(smp []*sample, now time.Time) {
	c := countPort(smp)
	if 2*c.in >= c.candidates || c.cooling == 0 {
		return
	}
	var cooling []*sample
	for _, s := range smp {
		if s.state == StateCoolDown {
			cooling = append(cooling, s)
		}
	}
	slices.SortStableFunc(cooling, func(a, b *sample) int {
		return ps.servers[a.addr].coolUntil.Compare(ps.servers[b.addr].coolUntil)
	})
	for _, s := range cooling {
		if 2*c.in >= c.candidates {
			return
		}
		ps.servers[s.addr].coolUntil = now
		s.state = StateUp
		s.note = "cool-down ended early: fewer than half the servers in"
		c.in++
	}
}

// coolDown takes out the most overloaded of the servers eligible (i), at
// most one, if the port's limits allow; overloaded servers held in get a
// note saying why. over[i] is server i's load against its peers'.
func (ps *portState) coolDown(smp []*sample, eligible []int, over []float64, set Settings, now time.Time) {
	var overloaded []int
	for _, i := range eligible {
		if over[i] > set.Overload {
			overloaded = append(overloaded, i)
		}
	}
	slices.SortStableFunc(overloaded, func(a, b int) int { return cmp.Compare(over[b], over[a]) })
	for k, i := range overloaded {
		s := smp[i]
		load := "load " + trimFloat(over[i]) + "x its peers'"
		c := countPort(smp)
		switch {
		case k > 0:
			s.note = load + ", kept in: one new cool-down a computation"
			continue
		case 2*(c.in-1) < c.candidates:
			s.note = load + ", kept in: fewer than half the servers would be in"
			continue
		case c.cooling >= maxCooling(c.candidates):
			s.note = load + ", kept in: " + strconv.Itoa(c.cooling) + " of " + strconv.Itoa(c.candidates) + " servers cooling down already"
			continue
		}
		st := ps.servers[s.addr]
		back := min(st.cools, 4)
		st.coolUntil = now.Add(set.CoolDown << back)
		st.cools++
		st.healthy = 0
		s.state = StateCoolDown
		s.note = load
	}
}
