package manager

import (
	"cmp"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// Server states in reports.
const (
	StateUp       = "up"
	StateQuiesced = "quiesced"
	StateDown     = "down"     // its advisor reports it down
	StateDisabled = "disabled" // its agent's reports stopped
	StateCoolDown = "cool-down"
	StateAbsent   = "absent" // configured but not in the data plane, or held there (unresolved)
	// StateSuspect: its flows end far sooner than its peers' (a server
	// failing every request at once looks idle to least connections).
	StateSuspect = "suspect"
)

// returnIntervals is how many intervals a server that came back grows
// gently.
const returnIntervals = 4

// healthyToForgive is how many intervals a server must stay in after a
// cool-down before its next cool-down starts short again.
const healthyToForgive = 10

type portState struct {
	spec    Port
	servers map[netip.Addr]*serverState
	report  PortReport
	commits uint64
	// loadSet is the working set (servers with a weight) at the last
	// load reading, nil before the first.
	loadSet map[netip.Addr]bool
	// sched is the port's scheduler at the last computation, and flowTime
	// its typical flow time then (delay scheduler).
	sched    nd.Scheduler
	flowTime time.Duration
	// ftSide is the side (+1 above, -1 below) of the committed flow time
	// on which the last readings fell beyond the band, ftRun how many in
	// a row (flowTimeMoved).
	ftSide, ftRun int
}

type serverState struct {
	prevNew  uint64
	havePrev bool
	// loadWeight is the weight at the last load reading.
	loadWeight uint32
	haveWeight bool
	state      string
	// coolUntil ends the current cool-down; cools counts cool-downs in a
	// row, for the back-off.
	coolUntil time.Time
	cools     int
	// returning counts down the intervals of a gentle return; healthy
	// counts intervals in the working set.
	returning int
	healthy   int
	// dir is the direction of the last committed move (+1, -1, 0) and
	// step the largest ratio of the next one: it narrows each time the
	// weight turns back and widens again while it keeps its course.
	dir  int
	step float64
	// heldDir is the direction of the last move asked for but not
	// committed (below the sensitivity threshold), 0 after a commit.
	heldDir int
	// active accumulates the interval's samples of active flows.
	active activeSum
	// prevLMI is the LMI of the last full interval in the working set,
	// 0 if none.
	prevLMI float64
	// suspectUntil ends the time out of a server whose flows ended far
	// sooner than its peers'; suspects counts them in a row, for the
	// back-off, and suspectNote says what was seen.
	suspectUntil time.Time
	suspects     int
	suspectNote  string
	// suspectSince is when the suspect check first read it so, in the
	// readings since; zero when the last reading did not.
	suspectSince time.Time
	// window holds the last samples of its counters, for the checks
	// between intervals (checkSamples); rise is the delay factor they
	// asked for, 0 if none, and delay the factor last computed. above
	// counts intervals in a row whose LMI asked for a higher factor.
	window []windowSample
	rise   float64
	delay  float64
	above  int
	// noFallUntil: a rise seen between intervals (checkSamples) holds
	// the factor up until then. aboveRun and belowRun count intervals in
	// a row whose reading asked for a higher, or a lower, factor.
	noFallUntil        time.Time
	below              int
	aboveRun, belowRun int
}

// Step bounds: a weight's first moves may double or halve it; each turn
// back narrows the bound by its square root, down to minStep.
const (
	firstStep = 2.0
	minStep   = 1.05
)

// PortReport is the manager's account of one port's last computation.
type PortReport struct {
	Port   string    `json:"port"`
	Policy string    `json:"policy"`
	At     time.Time `json:"at"`
	// Scheduler is the port's data-plane scheduler; Proportions are the
	// ones in effect: under p2c the new-flow proportion is read as
	// response time, with the active one (see lmi.go).
	Scheduler   string         `json:"scheduler"`
	Proportions map[string]int `json:"proportions"`
	// Committed says whether this computation changed the data plane, and
	// Reason why (or why not).
	Committed bool    `json:"committed"`
	Reason    string  `json:"reason"`
	Change    float64 `json:"change"`
	Err       string  `json:"error,omitempty"`
	// FlowTime is a typical flow's time on the port (the median of its
	// servers' response times), under the delay scheduler.
	FlowTime time.Duration `json:"flow_time,omitempty"`
	// Commits counts this port's commits since the manager started.
	Commits uint64         `json:"commits"`
	Servers []ServerReport `json:"servers"`
}

// ServerReport is one server's line in a PortReport: each metric raw and
// normalised, the LMI, the weight before and after.
type ServerReport struct {
	Server netip.Addr `json:"server"`
	State  string     `json:"state"`
	Fixed  bool       `json:"fixed,omitempty"`
	// Raw metrics: active flows, new flows per second, advisor latency in
	// ms (-1: none), host metric (-1: none), custom metrics.
	Active    uint64             `json:"active"`
	NewPerSec float64            `json:"new_per_sec"`
	AdvisorMS float64            `json:"advisor_ms"`
	Host      float64            `json:"host"`
	Custom    map[string]float64 `json:"custom,omitempty"`
	// Loads are the normalised metrics, 1 meaning as loaded as the peers.
	Loads     map[string]float64 `json:"loads"`
	LMI       float64            `json:"lmi"`
	Weight    uint32             `json:"weight"`
	NewWeight uint32             `json:"new_weight"`
	// Delay and NewDelay are its delay factor before and after, under the
	// delay scheduler (0 under others).
	Delay    float64 `json:"delay,omitempty"`
	NewDelay float64 `json:"new_delay,omitempty"`
	Note     string  `json:"note,omitempty"`
}

// sample is what one server's metrics read this interval.
type sample struct {
	addr    netip.Addr
	spec    Server
	cur     uint32
	delay   float64 // its delay factor in the data plane, at least 1
	state   string
	note    string
	newRate float64
	newN    float64 // new flows over the interval
	newOK   bool
	steady  bool // its weight did not change over the interval
	active  float64
	advMS   float64
	advOK   bool
	// advFloorMS is the advisor's floor latency (its speed, not its
	// queue), what the delay scheduler's manager reads.
	advFloorMS float64
	host       float64
	hostOK     bool
	custom     []float64
	custOK     []bool
}

// sampleServers is the first stage of a computation: each server's
// metrics this interval (new flows, the interval's average of active flows,
// its advisor's and its agent's readings, custom metrics) and its state
// (quiesced, down, disabled, cooling down, up). It also returns the
// servers configured but not in the data plane, for the report, and
// whether the port's working set was the same at the last load reading.
func (m *Manager) sampleServers(ps *portState, inst nd.Service, ss nd.ServiceStats, now time.Time, elapsed time.Duration, load bool) (smp []*sample, absent []ServerReport, setSteady bool) {
	spec := ps.spec
	set := m.settings
	installed := map[netip.Addr]uint32{}
	delays := map[netip.Addr]float64{}
	for _, s := range inst.Servers {
		if s.Held {
			continue // kept only for its flows: absent to the manager
		}
		installed[s.Addr] = s.Weight
		delays[s.Addr] = max(s.Delay, 1)
	}
	props := spec.Proportions

	// The working set (servers with a weight) at this reading and the
	// last: one that changed between them leaves readings that straddle
	// two splits of the load, no ground for a cool-down.
	if load {
		inSet := map[netip.Addr]bool{}
		for _, sv := range spec.Servers {
			if installed[sv.Addr] > 0 {
				inSet[sv.Addr] = true
			}
		}
		setSteady = ps.loadSet != nil && maps.Equal(ps.loadSet, inSet)
		ps.loadSet = inSet
	}

	for _, sv := range spec.Servers {
		st := ps.servers[sv.Addr]
		cur, ok := installed[sv.Addr]
		if !ok {
			st.havePrev = false
			st.state = StateAbsent
			absent = append(absent, ServerReport{Server: sv.Addr, State: StateAbsent, AdvisorMS: -1, Host: -1, Note: "not in the data plane (unresolved?)"})
			continue
		}
		s := &sample{addr: sv.Addr, spec: sv, cur: cur, delay: delays[sv.Addr], advMS: -1, host: -1}
		c := ss.Servers[sv.Addr]
		if load {
			// A weight changed during the interval (by the operator or a
			// commit) leaves flow counts that belong to the old one: no
			// load judgement on them.
			steady := st.haveWeight && st.loadWeight == cur
			if st.havePrev && c.NewFlows >= st.prevNew && elapsed > 0 {
				s.newN = float64(c.NewFlows - st.prevNew)
				s.newRate = s.newN / elapsed.Seconds()
				s.newOK = true
				s.steady = steady
			}
			st.prevNew, st.havePrev = c.NewFlows, true
			st.loadWeight, st.haveWeight = cur, true
		}
		s.active = float64(c.Active())
		if st.active.n > 0 {
			// The interval's average, the reading of now included.
			s.active = (st.active.sum + s.active) / float64(st.active.n+1)
		}
		if load {
			st.active = activeSum{}
		}

		var adv AdvisorReading
		if spec.Advisor != "" {
			if r, ok := m.adv(spec.Advisor, spec.Key, sv.Addr); ok {
				adv = r
				if !r.Down {
					s.advMS, s.advOK = float64(r.Latency)/float64(time.Millisecond), true
					s.advFloorMS = s.advMS
					if r.Floor > 0 {
						s.advFloorMS = float64(r.Floor) / float64(time.Millisecond)
					}
				}
			}
		}
		hr, hasAgent := m.host(sv.Addr)
		if hasAgent && !hr.Disabled {
			if v, ok := hr.Metrics[set.HostMetric]; ok && finite(v) {
				s.host, s.hostOK = v, true
			}
		}
		for _, cm := range props.Custom {
			v, ok := 0.0, false
			switch {
			case cm.Agent != "" && hasAgent && !hr.Disabled:
				v, ok = hr.Metrics[cm.Agent]
				ok = ok && finite(v)
			case cm.Advisor != "":
				if r, found := m.adv(cm.Advisor, spec.Key, sv.Addr); found && !r.Down {
					v, ok = float64(r.Latency)/float64(time.Millisecond), true
				}
			}
			s.custom = append(s.custom, v)
			s.custOK = append(s.custOK, ok)
		}

		// Who may take new flows: the operator's quiesce first, then
		// health, then the cool-down.
		switch {
		case sv.Quiesced:
			s.state = StateQuiesced
		case adv.Down:
			s.state, s.note = StateDown, adv.Err
		case hasAgent && hr.Disabled:
			s.state, s.note = StateDisabled, hr.Err
		case now.Before(st.suspectUntil):
			s.state, s.note = StateSuspect, st.suspectNote
		case now.Before(st.coolUntil):
			s.state = StateCoolDown
		default:
			s.state = StateUp
		}
		smp = append(smp, s)
	}
	return smp, absent, setSteady
}

// round is one computation of one port: what each stage reads and leaves
// for the next.
type round struct {
	ps   *portState
	inst nd.Service
	now  time.Time
	// load: the computation reads an interval's load (not only health).
	load bool
	// From sampleServers.
	smp       []*sample
	absent    []ServerReport
	setSteady bool
	// From loadIndex: each metric's name, its proportion in effect and
	// its normalised loads per server; the LMI; what the cool-down
	// judges; whether the data plane picks by p2c.
	names []string
	pr    []uint32
	loads [][]float64
	lmi   []float64
	over  []float64
	p2c   bool
	// From newWeights.
	newW []uint32
}

func (r *round) up(i int) bool { return r.smp[i].state == StateUp }

// port computes one port as the paper's Manager does: metrics, the Load
// Metric Index, servers out for health or to cool down, the weight
// function, then a commit past the sensitivity threshold. Called with
// m.mu held.
func (m *Manager) port(ps *portState, inst nd.Service, ss nd.ServiceStats, now time.Time, elapsed time.Duration, load bool) (Commit, bool) {
	r := &round{ps: ps, inst: inst, now: now, load: load}
	r.smp, r.absent, r.setSteady = m.sampleServers(ps, inst, ss, now, elapsed, load)
	// Out for health, then cool-downs, within the port's limits (see
	// cooldown.go).
	panicHealth(r.smp)
	ps.keepHalfIn(r.smp, now)
	m.loadIndex(r)
	m.coolDownOverloaded(r)
	m.newWeights(r)
	rep := m.decide(r)
	ps.setReport(rep, r.absent)
	if !rep.Committed {
		return Commit{}, false
	}
	return r.commit(rep), true
}

// loadIndex normalises each metric over the servers in the working set
// and combines them, by the proportions, into each server's LMI.
func (m *Manager) loadIndex(r *round) {
	spec, smp := r.ps.spec, r.smp
	props := spec.Proportions
	n := len(smp)
	absolute := m.wcf.Absolute()
	w := make([]float64, n)
	for i, s := range smp {
		if r.up(i) {
			w[i] = float64(s.cur)
		}
	}
	metric := func(get func(*sample) (float64, bool), extensive bool) []float64 {
		v := make([]float64, n)
		ok := make([]bool, n)
		for i, s := range smp {
			v[i], ok[i] = get(s)
			ok[i] = ok[i] && r.up(i)
		}
		if extensive && !absolute {
			return extensiveLoads(v, ok, w)
		}
		return intensiveLoads(v, ok)
	}
	r.names = []string{"active", "new", "advisor", "host"}
	r.pr = []uint32{props.Active, props.New, props.Advisor, props.Host}
	if spec.Advisor == "" {
		// A port with no advisor has no advisor metric: its proportion
		// does not pull every server's LMI toward 1.
		r.pr[2] = 0
	}
	activeLoads := metric(func(s *sample) (float64, bool) { return s.active, s.newOK }, true)
	newLoads := metric(func(s *sample) (float64, bool) { return s.newRate, s.newOK }, true)
	// overload is what the cool-down judges: the LMI, except under p2c,
	// where a server's response time stands above its peers' by design
	// of its speed (p2c already sends it less), and what shows a server
	// the data plane cannot protect is active flows per unit of weight,
	// the very figure p2c evens out.
	var overload []float64
	r.p2c = r.inst.Scheduler == nd.SchedulerP2C && !absolute
	if r.p2c {
		overload = activeLoads
		// The data plane evens out active flows per unit of weight and
		// chooses the new flows itself: response times are what is left
		// to read, for both input proportions (see lmi.go).
		v, nf := make([]float64, n), make([]float64, n)
		ok := make([]bool, n)
		for i, s := range smp {
			v[i], nf[i], ok[i] = s.active, s.newN, s.newOK && r.up(i) && w[i] > 0
		}
		if rt, enough := responseLoads(v, nf, ok); enough {
			activeLoads = rt
		}
		newLoads = ones(n)
		r.pr[0], r.pr[1] = r.pr[0]+r.pr[1], 0
	}
	r.loads = [][]float64{
		activeLoads,
		newLoads,
		metric(func(s *sample) (float64, bool) { return s.advMS, s.advOK }, false),
		metric(func(s *sample) (float64, bool) { return s.host, s.hostOK }, false),
	}
	for j, cm := range props.Custom {
		r.names = append(r.names, cm.Name)
		r.pr = append(r.pr, cm.Proportion)
		r.loads = append(r.loads, metric(func(s *sample) (float64, bool) { return s.custom[j], s.custOK[j] }, false))
	}
	r.lmi = combine(r.pr, r.loads, n)
	if overload == nil {
		overload = r.lmi
	}
	r.over = make([]float64, n)
	for i := range smp {
		r.lmi[i] = clampLMI(r.lmi[i])
		r.over[i] = clampLMI(overload[i])
	}
}

// coolDownOverloaded sends a server far above its peers out to cool
// down. Not under the static policy, whose weights follow no load; not on
// readings taken across a change of the port's working set or of the
// server's own weight; not while a server climbs back.
func (m *Manager) coolDownOverloaded(r *round) {
	set := m.settings
	_, static := m.wcf.(Static)
	var eligible []int
	for i, s := range r.smp {
		st := r.ps.servers[s.addr]
		if r.up(i) && !s.spec.Fixed && !static && set.Overload > 0 && st.returning == 0 && s.newOK && s.steady && r.setSteady {
			eligible = append(eligible, i)
		}
	}
	r.ps.coolDown(r.smp, eligible, r.over, set, r.now)
}

// newWeights runs the weight function over the managed servers in the
// working set; fixed servers keep theirs, a server back from weight 0
// starts low, and the rest sit at 0.
func (m *Manager) newWeights(r *round) {
	spec, smp := r.ps.spec, r.smp
	_, static := m.wcf.(Static)
	r.newW = make([]uint32, len(smp))
	// Policies that do not follow load per unit of weight set a returning
	// server's weight themselves.
	ramp := !static && !m.wcf.Absolute()
	var in Input
	var idx []int
	for i, s := range smp {
		st := r.ps.servers[s.addr]
		was := st.state
		st.state = s.state
		if !r.up(i) {
			st.returning, st.prevLMI = 0, 0
			continue
		}
		if s.spec.Fixed {
			r.newW[i] = min(s.spec.Weight, spec.Bound)
			continue
		}
		if was != "" && was != StateUp && was != StateAbsent {
			// Back from weight 0: a quarter of its configured weight to
			// start, then a gentle climb.
			st.returning = returnIntervals
		}
		st.healthy++
		if st.healthy > healthyToForgive {
			st.cools = 0
		}
		cur := s.cur
		if st.returning == returnIntervals && ramp {
			// The typical server sits on its configured weight (see
			// anchoredTargets): a quarter of it is a quarter of what the
			// server would carry as a typical one, a figure that, unlike
			// its peers' weights of the moment, cannot shrink with each
			// round of cool-downs.
			r.newW[i] = clampWeight(float64(max(s.spec.Weight, 1))/4, spec.Bound)
			st.returning--
			continue
		}
		if !r.load && ramp && cur > 0 {
			// A computation an event brought reads health, not load: the
			// loads it would see are not an interval's.
			r.newW[i] = cur
			continue
		}
		if st.step == 0 {
			st.step = firstStep
		}
		in.Servers = append(in.Servers, ServerInput{Addr: s.addr, Weight: cur, Configured: s.spec.Weight, LMI: r.lmi[i], PrevLMI: st.prevLMI, Returning: st.returning > 0, MaxStep: st.step})
		if r.load && s.newOK {
			st.prevLMI = r.lmi[i]
		}
		idx = append(idx, i)
		if st.returning > 0 {
			st.returning--
		}
	}
	if len(in.Servers) == 0 {
		return
	}
	in.Port, in.Bound, in.Smoothing = spec.Key, spec.Bound, m.settings.Smoothing
	if r.p2c {
		// The data plane absorbs what the weights get wrong within a
		// flow's time; the weights need only follow what it cannot,
		// and the response times read under p2c are noisy.
		in.DeadBand, in.Confirm = DeadBandP2C, true
	}
	out := m.wcf.Weights(in)
	for j, i := range idx {
		if j < len(out) {
			r.newW[i] = min(out[j], spec.Bound)
		}
	}
}

// decide is the commit decision and the port's report: at once when a
// server enters or leaves the working set, otherwise only past the
// sensitivity threshold.
func (m *Manager) decide(r *round) PortReport {
	var total, moved float64
	var reasons []string
	returning := false
	for i, s := range r.smp {
		if st := r.ps.servers[s.addr]; st.returning > 0 && r.newW[i] != s.cur {
			returning = true
		}
		total += float64(s.cur)
		moved += math.Abs(float64(r.newW[i]) - float64(s.cur))
		if (s.cur == 0) != (r.newW[i] == 0) {
			why := s.state
			if r.newW[i] > 0 {
				why = "back"
			}
			if !slices.Contains(reasons, why) {
				reasons = append(reasons, why)
			}
		}
	}
	change := 0.0
	if total > 0 {
		change = moved / total
	} else if moved > 0 {
		change = 1
	}
	rep := PortReport{
		Port:        r.ps.spec.Key.String(),
		Policy:      m.wcf.Name(),
		At:          r.now,
		Scheduler:   r.inst.Scheduler.String(),
		Proportions: map[string]int{},
		Change:      change,
	}
	for k, name := range r.names {
		rep.Proportions[name] = int(r.pr[k])
	}
	commit := len(reasons) > 0
	switch {
	case commit:
		rep.Reason = strings.Join(reasons, ", ")
	case moved > 0 && change > m.settings.Sensitivity:
		commit = true
		rep.Reason = "load"
	case returning:
		// A server coming back climbs in steps too small for the
		// threshold; held to it, it would stay low for good.
		commit = true
		rep.Reason = "return"
	case moved > 0:
		rep.Reason = "below sensitivity"
	default:
		rep.Reason = "no change"
	}
	rep.Committed = commit
	if !commit {
		// A weight kept below the threshold while it keeps asking the same
		// way widens its step, so that a narrowed step cannot hold it short
		// of its target for good.
		for i, s := range r.smp {
			r.ps.servers[s.addr].held(s.cur, r.newW[i])
		}
	}
	rep.Commits = r.ps.commits
	props := r.ps.spec.Proportions
	for i, s := range r.smp {
		sr := s.report(props.Custom, r.lmi[i])
		if commit {
			sr.NewWeight = r.newW[i]
		}
		for k, name := range r.names {
			if r.pr[k] > 0 {
				sr.Loads[name] = r.loads[k][i]
			}
		}
		rep.Servers = append(rep.Servers, sr)
	}
	return rep
}

// commit is the decision for the daemon: the new weights, and the step
// bookkeeping to keep once they are applied. The bookkeeping follows the
// data plane, not the decision: the owner of the data plane drops a
// decision computed under an older configuration, and a standby's.
func (r *round) commit(rep PortReport) Commit {
	ps, smp, newW := r.ps, r.smp, r.newW
	c := Commit{Port: ps.spec.Key, Weights: map[netip.Addr]uint32{}, Reason: rep.Reason, Change: rep.Change}
	for i, s := range smp {
		c.Weights[s.addr] = newW[i]
	}
	c.applied = func() {
		ps.commits++
		for i, s := range smp {
			st := ps.servers[s.addr]
			st.moved(s.cur, newW[i], s.spec.Weight)
			if newW[i] != s.cur {
				// Its last reading was taken at the old weight: what
				// confirms the next move must be read at the new one.
				st.prevLMI = 0
			}
		}
		ps.report.Commits = ps.commits
	}
	return c
}

// report is the server's line in its port's report, before the loads and
// the decision's figures.
func (s *sample) report(custom []CustomMetric, lmi float64) ServerReport {
	sr := ServerReport{
		Server: s.addr, State: s.state, Fixed: s.spec.Fixed,
		Active: uint64(s.active), NewPerSec: s.newRate, AdvisorMS: s.advMS, Host: s.host,
		Loads: map[string]float64{}, LMI: lmi, Weight: s.cur, NewWeight: s.cur, Note: s.note,
	}
	if len(custom) > 0 {
		sr.Custom = map[string]float64{}
		for j, cm := range custom {
			sr.Custom[cm.Name] = s.custom[j]
		}
	}
	return sr
}

// setReport keeps rep, with the servers absent from the data plane, as
// the port's last report, its servers in address order.
func (ps *portState) setReport(rep PortReport, absent []ServerReport) {
	rep.Servers = append(rep.Servers, absent...)
	slices.SortFunc(rep.Servers, func(a, b ServerReport) int { return a.Server.Compare(b.Server) })
	ps.report = rep
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func trimFloat(v float64) string {
	return strings.TrimRight(strings.TrimRight(strconv.FormatFloat(v, 'f', 2, 64), "0"), ".")
}

// moved records a committed move of the weight from cur to next, for the
// step bound: a turn back narrows it, keeping course widens it again.
func (st *serverState) moved(cur, next, configured uint32) {
	st.heldDir = 0
	if next == configured {
		// Back on its configured weight, where it rests: what it swung
		// through before says nothing about its next move.
		st.dir, st.step = 0, firstStep
		return
	}
	dir := cmp.Compare(next, cur)
	if dir == 0 || cur == 0 || next == 0 {
		return
	}
	if st.step == 0 {
		st.step = firstStep
	}
	if st.dir != 0 && dir != st.dir {
		st.step = math.Max(math.Sqrt(st.step), minStep)
	} else if st.dir == dir {
		st.step = math.Min(st.step*st.step, firstStep)
	}
	st.dir = dir
}

// held records a move the weight function asked for but that was not
// committed: asked the same way twice in a row, it widens the step,
// whichever way the weight last went (a narrowed step must not hold a
// weight short of its target for good, above or below it).
func (st *serverState) held(cur, next uint32) {
	dir := cmp.Compare(next, cur)
	if dir != 0 && dir == st.heldDir && st.step > 0 {
		st.step = math.Min(st.step*st.step, firstStep)
	}
	st.heldDir = dir
}
