package manager

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// Under the delay scheduler the data plane itself sends each new flow
// where it can expect the least delay, (active + 1) x delay factor /
// weight over every server of the port, within a flow's time. The weights
// are then what the operator said of the servers' sizes, and stay there:
// moving them on load, every interval, would only chase what the data
// plane already evens out (the feedback bench saw a manager move weights
// between 25 and 82 on four equal servers). The manager's part is what the
// data plane cannot see:
//
//   - how fast each server is: its LMI, the paper's combination of input
//     metrics (response time by Little's law: active over new flows),
//     forward metrics (advisor latency) and host metrics, each against
//     the median of the port's servers, becomes its delay factor;
//   - who may take new flows at all: servers down, disabled, quiesced, or
//     suspect (their flows end far sooner than their peers': a server that
//     fails every request at once) sit out at weight 0;
//   - how long a typical flow lasts, with which the data plane charges a
//     server by its recent new flows when its own count is far lower (see
//     nd.Service.FlowTime).
//
// The delay factor of a server whose LMI is L is L cubed past a dead band
// (1 within it). The score (active + 1) x factor / weight makes such a
// server worth a flow only once its peers hold about that many times the
// flows it does. A server with several workers makes a new flow wait
// nothing until they are all busy, and then only a fraction of a flow's
// time per flow queued ahead, so a server L times slower is the better
// choice only behind a queue several times its peers' worker count: far
// more than L (plain shortest expected delay, which gave a server four
// times slower 2.5% of new flows, and with them the tail of the long
// requests, in simulation and in the lab) and more than L^2 (1.2% in the
// lab, still the p99.9). Cubed, it takes new flows when its peers are
// overloaded, which is when it helps; a server half as fast (factor 8)
// still carries a few percent.

// Tuning of the delay pipeline.
const (
	// delayBand: an LMI within this factor of the typical server's reads
	// as typical (delay factor 1): the metrics' own noise is about 15%.
	delayBand = 1.5
	// maxDelay bounds a delay factor.
	maxDelay = 1024
	// minDelayFlows is how many new flows a server must take in an
	// interval for its response time to be read.
	minDelayFlows = 20
	// flowTimeBand: the typical flow time is committed again when it
	// moves by more than this factor.
	flowTimeBand = 1.5
	// delayExponent: the delay factor of a server whose LMI is L is L^3.
	delayExponent = 3
	// delayHold: a delay factor above 1 stays where it is while its target
	// is within this factor of it (an LMI within 26%).
	delayHold = 2
	// delayFall: a factor falls toward a target above 1 only when the
	// target is this many times lower (an LMI halved).
	delayFall = 8
	// riseHoldIntervals: after a rise seen between intervals, this many
	// intervals' readings cannot take the factor down (the advisor's floor
	// looks back three rounds).
	riseHoldIntervals = 3
)

// delayTarget is the delay factor an LMI asks for.
func delayTarget(lmi float64) float64 {
	if !(lmi > delayBand) {
		return 1
	}
	return math.Min(math.Pow(lmi, delayExponent), maxDelay)
}

// smoothDelay moves a delay factor toward its target: up at once (a server
// found slower is slower now, and the data plane still uses it when its
// peers are busy enough), down 1/smoothing of the way in log terms (a
// server that looks well again must stay well), and to 1 once below what
// an LMI at the band's edge would ask for: a factor the LMI band would
// read as typical is no factor (64 -> 4 -> 1 at smoothing 1.5).
func smoothDelay(cur, target, smoothing float64) float64 {
	cur = math.Max(cur, 1)
	if target >= cur {
		return target
	}
	next := cur * math.Pow(target/cur, 1/smoothing)
	if next < math.Pow(delayBand, delayExponent) {
		return 1
	}
	return next
}

// delayLoads normalises a metric over the servers with a reading against
// their median: 1 is a typical server, whatever the unit. The median, not
// the mean, so that one server far off (the slow one, the failing one)
// does not move what typical means for the rest.
func delayLoads(v []float64, ok []bool) []float64 {
	var have []float64
	for i := range v {
		if ok[i] {
			have = append(have, math.Max(v[i], 0))
		}
	}
	out := make([]float64, len(v))
	typ := median(have)
	for i := range v {
		switch {
		case !ok[i]:
		case typ > 0:
			out[i] = math.Max(v[i], 0) / typ
		default:
			out[i] = 1
		}
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// delayMetrics is the normalisation stage: each metric of each server in
// the working set against the port's median, and whether it has a reading.
// Under the delay scheduler both input proportions read the response time
// (active over new flows, Little's law): active flows per unit of weight is
// what the scheduler evens out, and new flows are its own choice. It also
// returns the typical response time, a typical flow's length.
func delayMetrics(smp []*sample, props Proportions) (names []string, pr []uint32, loads [][]float64, ok [][]bool, flowTime time.Duration) {
	n := len(smp)
	metric := func(get func(*sample) (float64, bool)) ([]float64, []bool) {
		v, have := make([]float64, n), make([]bool, n)
		for i, s := range smp {
			v[i], have[i] = get(s)
			have[i] = have[i] && s.state == StateUp
		}
		return delayLoads(v, have), have
	}
	var rts []float64
	rt, rtOK := metric(func(s *sample) (float64, bool) {
		if !s.newOK || s.newN < minDelayFlows || s.newRate <= 0 {
			return 0, false
		}
		t := s.active / s.newRate
		if s.state == StateUp {
			rts = append(rts, t)
		}
		return t, true
	})
	flowTime = time.Duration(median(rts) * float64(time.Second))
	// The advisor's floor, not its average: on a busy server a probe often
	// waits behind the requests in progress, and that says how busy the
	// server is, which the data plane sees better, not how fast it is.
	adv, advOK := metric(func(s *sample) (float64, bool) { return s.advFloorMS, s.advOK })
	host, hostOK := metric(func(s *sample) (float64, bool) { return s.host, s.hostOK })
	names = []string{"active", "new", "advisor", "host"}
	pr = []uint32{props.Active + props.New, 0, props.Advisor, props.Host}
	loads = [][]float64{rt, make([]float64, n), adv, host}
	ok = [][]bool{rtOK, make([]bool, n), advOK, hostOK}
	for j, cm := range props.Custom {
		v, have := metric(func(s *sample) (float64, bool) { return s.custom[j], s.custOK[j] })
		names = append(names, cm.Name)
		pr = append(pr, cm.Proportion)
		loads = append(loads, v)
		ok = append(ok, have)
	}
	return names, pr, loads, ok, flowTime
}

// delayLMI is the Load Metric Index over the metrics a server has a
// reading of: sum R(i) l(i) / sum R(i). A metric the port lacks (no
// advisor, no agent) or a server lacks this interval (too few flows to time)
// neither pulls the index toward typical nor counts. false when the server
// has no reading at all.
func delayLMI(i int, pr []uint32, loads [][]float64, ok [][]bool) (float64, bool) {
	var sum, weight float64
	for k, p := range pr {
		if p > 0 && ok[k][i] {
			sum += float64(p) * loads[k][i]
			weight += float64(p)
		}
	}
	if weight == 0 {
		return 0, false
	}
	return clampLMI(sum / weight), true
}

// advisorDelay is the delay factor the advisor's floor latency alone asks
// for (the metric at index advisorMetric of delayMetrics), 1 without one.
func advisorDelay(i int, pr []uint32, loads [][]float64, ok [][]bool) float64 {
	if len(pr) <= advisorMetric || pr[advisorMetric] == 0 || !ok[advisorMetric][i] {
		return 1
	}
	return delayTarget(clampLMI(loads[advisorMetric][i]))
}

// advisorMetric is the advisor's index among delayMetrics' metrics.
const advisorMetric = 2

// delayPort computes one port under the delay scheduler: sample ->
// health -> normalise -> LMI -> delay factor -> smoothing -> sensitivity
// -> commit. Called with m.mu held.
func (m *Manager) delayPort(ps *portState, inst nd.Service, ss nd.ServiceStats, now time.Time, elapsed time.Duration, load bool) (Commit, bool) {
	spec, set := ps.spec, m.settings
	smp, absent, _ := m.sampleServers(ps, inst, ss, now, elapsed, load)
	panicHealth(smp)
	names, pr, loads, ok, flowTime := delayMetrics(smp, spec.Proportions)
	_, static := m.wcf.(Static)

	n := len(smp)
	lmi := make([]float64, n)
	newW := make([]uint32, n)
	newD := make([]float64, n)
	for i, s := range smp {
		st := ps.servers[s.addr]
		st.state = s.state
		newD[i] = s.delay
		if s.state != StateUp {
			// Out: it comes back as a typical server, and its readings
			// from before say nothing of it then.
			newD[i] = 1
			continue
		}
		newW[i] = min(s.spec.Weight, spec.Bound)
		st.healthy++
		if st.healthy > healthyToForgive {
			st.cools, st.suspects = 0, 0
		}
		l, have := delayLMI(i, pr, loads, ok)
		lmi[i] = l
		rise := st.rise
		st.rise = 0
		if static || s.spec.Fixed {
			continue
		}
		if rise > newD[i] {
			// Seen between intervals (checkSamples): up at once. The
			// readings of the next intervals straddle the change (the
			// advisor's floor looks back FloorRounds rounds): they
			// must not take the factor down again.
			newD[i], st.delay = rise, rise
			st.noFallUntil = now.Add(riseHoldIntervals * set.Interval)
		}
		if !load {
			continue
		}
		target := 1.0
		if have {
			target = delayTarget(l)
		}
		// A fall goes no lower than the advisor's floor says. A server
		// the factor keeps out takes few flows, mostly in bursts when
		// its peers are busy, and an interval of a burst reads its
		// response time low (the flows just begun have not yet filled
		// its active count): read as typical, it would be let back in,
		// take a quarter of the flows at four times the time, and go
		// out again. The floor latency of its probes is its speed
		// whatever it is given, and falls as soon as the server is well.
		if floor := advisorDelay(i, pr, loads, ok); target < newD[i] && floor > target {
			target = math.Min(floor, newD[i])
		}
		newD[i] = st.nextDelay(newD[i], target, set.Smoothing, now)
		st.delay = newD[i]
	}
	if !load || flowTime == 0 {
		flowTime = inst.FlowTime
	}
	// The checks between intervals read the latest figure; the data plane
	// gets a new one only once it holds (flowTimeMoved).
	ps.flowTime = flowTime
	ftMoved := ps.flowTimeMoved(inst.FlowTime, flowTime, load)
	if !ftMoved {
		flowTime = inst.FlowTime
	}

	rep, commit := delayDecision(smp, newW, newD, ftMoved, set.Sensitivity)
	rep.Port, rep.Policy, rep.At = spec.Key.String(), m.wcf.Name(), now
	rep.Scheduler, rep.FlowTime = inst.Scheduler.String(), flowTime
	rep.Proportions = map[string]int{}
	for k, name := range names {
		rep.Proportions[name] = int(pr[k])
	}
	rep.Commits = ps.commits
	for i, s := range smp {
		sr := s.report(spec.Proportions.Custom, lmi[i])
		sr.Delay, sr.NewDelay = s.delay, s.delay
		if commit {
			sr.NewWeight, sr.NewDelay = newW[i], newD[i]
		}
		for k, name := range names {
			if pr[k] > 0 && ok[k][i] {
				sr.Loads[name] = loads[k][i]
			}
		}
		rep.Servers = append(rep.Servers, sr)
	}
	ps.setReport(rep, absent)
	if !commit {
		return Commit{}, false
	}
	c := Commit{Port: spec.Key, Weights: map[netip.Addr]uint32{}, Delays: map[netip.Addr]float64{},
		FlowTime: flowTime, Reason: rep.Reason, Change: rep.Change, LMIs: map[netip.Addr]float64{}}
	for i, s := range smp {
		c.Weights[s.addr], c.Delays[s.addr], c.LMIs[s.addr] = newW[i], newD[i], lmi[i]
	}
	c.applied = func() {
		ps.commits++
		ps.report.Commits = ps.commits
	}
	return c, true
}

// nextDelay is the smoothing stage for one server's delay factor, given
// the target its interval's LMI asks for:
//
//   - a target within delayHold of the factor leaves it: the readings of a
//     server the scheduler keeps aside are few and noisy, and every move is
//     a commit;
//   - a rise or a fall must be read twice in a row: one interval's reading
//     of a few hundred flows crosses the band now and then on equal
//     servers, and a server kept aside, read on its advisor's floor while
//     its busier peers' probes queue, now and then reads typical; two in a
//     row do not (a rise seen between intervals is taken at once by
//     checkSamples instead);
//   - a fall waits until the server reads as typical (target 1) or far
//     less slow (a target delayFall times lower): a server still slower
//     than its peers keeps the factor it was given, where
//     following each reading down lets it back in for the next long
//     requests (a server the scheduler keeps aside is read on its
//     advisor's probes and a few flows, and a probe's fixed costs make a
//     server four times slower read about 2.5 times); then it is smoothed,
//     but not within riseHoldIntervals of a rise seen between intervals,
//     whose readings are partly from before it (the bench saw a factor of
//     52 fall to 3.7 a second after a slow-down, on an advisor floor that
//     still held a round from before).
func (st *serverState) nextDelay(cur, target, smoothing float64, now time.Time) float64 {
	rose := now.Before(st.noFallUntil)
	st.above, st.below = 0, 0
	switch {
	case target > cur:
		st.above = st.aboveRun + 1
	case target < cur:
		st.below = st.belowRun + 1
	}
	st.aboveRun, st.belowRun = st.above, st.below
	switch {
	case target == cur || (target > 1 && cur > 1 && within(target, cur, delayHold)):
		return cur
	case target > cur && st.above < 2, target < cur && st.below < 2:
		return cur
	case target < cur && (rose || (target > 1 && target*delayFall > cur)):
		return cur
	}
	return smoothDelay(cur, target, smoothing)
}

// flowTimeMoved tells whether the typical flow time read this interval is
// to be committed: at once when none is, otherwise once two interval
// readings in a row lie beyond flowTimeBand of the committed figure on the
// same side. One interval's median of a few servers' response times is
// noisy at low rates, and a commit rewrites the port's data plane and goes
// to every standby.
func (ps *portState) flowTimeMoved(cur, next time.Duration, load bool) bool {
	switch {
	case next <= 0:
		return false
	case cur <= 0:
		return true
	case !load:
		return false
	}
	side := 0
	if !within(float64(next), float64(cur), flowTimeBand) {
		side = 1
		if next < cur {
			side = -1
		}
	}
	if side == 0 || side != ps.ftSide {
		ps.ftSide, ps.ftRun = side, 0
	}
	if side == 0 {
		return false
	}
	ps.ftRun++
	if ps.ftRun < 2 {
		return false
	}
	ps.ftSide, ps.ftRun = 0, 0
	return true
}

// delayDecision is the commit stage: at once when a server enters or
// leaves the working set; when the delay factors moved by more than the
// sensitivity threshold in all (sum |new - current| / sum current); when
// the typical flow time moved (flowTimeMoved).
func delayDecision(smp []*sample, newW []uint32, newD []float64, ftMoved bool, sensitivity float64) (PortReport, bool) {
	var reasons []string
	var total, moved float64
	for i, s := range smp {
		if s.cur != newW[i] {
			r := s.state
			switch {
			case newW[i] > 0 && s.cur == 0:
				r = "back"
			case newW[i] > 0:
				r = "configured"
			}
			if !slices.Contains(reasons, r) {
				reasons = append(reasons, r)
			}
		}
		if newW[i] > 0 {
			total += s.delay
			moved += math.Abs(newD[i] - s.delay)
		}
	}
	var rep PortReport
	if total > 0 {
		rep.Change = moved / total
	}
	switch {
	case len(reasons) > 0:
		rep.Reason = strings.Join(reasons, ", ")
	case moved > 0 && rep.Change > sensitivity:
		rep.Reason = "load"
	case ftMoved:
		rep.Reason = "flow time"
	case moved > 0:
		rep.Reason = "below sensitivity"
	default:
		rep.Reason = "no change"
	}
	rep.Committed = len(reasons) > 0 || (moved > 0 && rep.Change > sensitivity) || ftMoved
	return rep, rep.Committed
}

// Between intervals, on every sample of the counters (16 an interval), the
// manager looks at what a layer-4 dispatcher sees of each server over its
// last few samples: the flows it held on average and the new flows it took,
// hence its response time (Little's law), against its peers' in the same
// samples. Against its peers, not against a figure from the last interval:
// when one server slows down the others take its flows, and their own
// response times grow with their queues; judged against an older typical
// time they would look slow, or their newcomers look like sinkholes, one
// after another. Two things cannot wait for the interval:
//
//   - a suspect: a server failing every request at once is fed new flows at
//     the data plane's pace, and every interval of waiting is a fraction of
//     all requests failed. It holds almost nothing: out at once.
//   - a slow-down: a server turning four times slower takes its share of
//     long requests at four times their length until its factor rises, and
//     those are the tail. Its flows last several times its peers': its
//     factor rises at once (falls wait for the interval and its smoothing).
const (
	// suspectSamples is the suspect check's window, in samples.
	suspectSamples = 4
	// riseSamples is the slow-down check's window, in samples: longer, as
	// a rise on noise costs a server its share.
	riseSamples = 8
	// suspectExpected is how many flows a server must be expected to hold
	// over the window (its new flows at its peers' response time) before
	// it is judged: fewer, and a count of 0 at every sample is likely
	// enough by chance.
	suspectExpected = 3
	// suspectRatio: a server holding this many times fewer flows than
	// expected, and at most suspectHeld on average, is suspect: a server
	// failing every request at once holds next to nothing, while one the
	// scheduler starves still holds its long flows.
	suspectRatio = 8
	suspectHeld  = 0.5
	// riseRatio: a server whose flows last this many times its peers'
	// has its delay factor raised at once, to the ratio cubed, at most
	// riseMax.
	riseRatio = 3.5
	riseMax   = 64
	// riseMinFlows is how many new flows a server must have taken in the
	// window for its response time there to be read.
	riseMinFlows = 10
	// suspectCoolDowns: a suspect sits out this many cool-downs (30 s at
	// the defaults, as Envoy ejects an outlier; doubled on each repeat):
	// with its health check passing, only traffic can show it well again,
	// and each try costs the requests it fails.
	suspectCoolDowns = 10
	// probationIntervals: for this many computations after it comes back,
	// a former suspect is judged on a shorter window.
	probationIntervals = 2
)

// windowSample is one sample of a server's counters.
type windowSample struct {
	at       time.Time
	newFlows uint64
	active   float64
}

// windowFlows is what a server held over its last n samples, on average,
// and how many new flows it took a second in them; ok false without n+1
// samples.
func (st *serverState) windowFlows(n int) (held, rate float64, newN uint64, ok bool) {
	w := st.window
	if len(w) < n+1 {
		return 0, 0, 0, false
	}
	w = w[len(w)-n-1:]
	first, last := w[0], w[len(w)-1]
	if last.newFlows < first.newFlows || !last.at.After(first.at) {
		return 0, 0, 0, false
	}
	for _, s := range w[1:] {
		held += s.active
	}
	held /= float64(len(w) - 1)
	newN = last.newFlows - first.newFlows
	return held, float64(newN) / last.at.Sub(first.at).Seconds(), newN, true
}

// peerTime is the median response time over the last n samples of the
// port's servers in the working set other than self that took at least
// riseMinFlows new flows in them; fallback when none did.
func peerTime(ps *portState, self netip.Addr, n int, fallback time.Duration) time.Duration {
	var ts []float64
	for _, sv := range ps.spec.Servers {
		st := ps.servers[sv.Addr]
		if sv.Addr == self || st == nil || st.state != StateUp {
			continue
		}
		if held, rate, newN, ok := st.windowFlows(n); ok && newN >= riseMinFlows && rate > 0 {
			ts = append(ts, held/rate)
		}
	}
	if len(ts) == 0 {
		return fallback
	}
	return time.Duration(median(ts) * float64(time.Second))
}

// suspectsAllowed says whether one more server of the port may go out as
// a suspect: at most a quarter of the port's servers not quiesced (at
// least one) out as suspects at once, and never fewer than half of them
// left taking new flows, as cool-downs are bounded (cooldown.go): a rule
// that took every server out on a misreading would be worse than any
// sinkhole.
func suspectsAllowed(ps *portState) bool {
	candidates, in, suspects := 0, 0, 0
	for _, sv := range ps.spec.Servers {
		st := ps.servers[sv.Addr]
		if sv.Quiesced || st == nil {
			continue
		}
		candidates++
		switch st.state {
		case StateUp:
			in++
		case StateSuspect:
			suspects++
		}
	}
	return suspects < maxCooling(candidates) && 2*(in-1) >= candidates
}

// checkSamples adds a sample of a delay port's counters to each server's
// window, takes out at once a server in the working set that held
// suspectRatio times fewer flows than its new flows would have held at its
// peers' response time (for a cool-down that doubles with each repeat), and
// asks at once for a higher delay factor for one whose flows lasted
// riseRatio times its peers'. It reports whether either happened: the
// caller triggers a computation that reads health, not load. Called with
// m.mu held.
func (m *Manager) checkSamples(ps *portState, ss nd.ServiceStats, now time.Time, flowTime time.Duration) bool {
	for _, sv := range ps.spec.Servers {
		st := ps.servers[sv.Addr]
		c, ok := ss.Servers[sv.Addr]
		if st == nil || !ok {
			continue
		}
		st.window = append(st.window, windowSample{at: now, newFlows: c.NewFlows, active: float64(c.Active())})
		if len(st.window) > riseSamples+1 {
			st.window = st.window[len(st.window)-riseSamples-1:]
		}
	}
	_, static := m.wcf.(Static)
	act := false
	for _, sv := range ps.spec.Servers {
		st := ps.servers[sv.Addr]
		if st == nil || sv.Fixed || sv.Quiesced || st.state != StateUp || now.Before(st.suspectUntil) {
			continue
		}
		// A server just back from being suspect is on probation: judged
		// on half the window and less evidence, every flow it fails being
		// a request lost.
		n, minExp := suspectSamples, float64(suspectExpected)
		if st.suspects > 0 && st.healthy <= probationIntervals {
			n, minExp = suspectSamples/2, suspectExpected/2
		}
		// Judged only against peers that took enough new flows in the
		// same samples: a figure from elsewhere (the last interval's,
		// long-lived flows' on a node that just took over) compares
		// flows of another kind. And never past the port's limit on
		// servers out.
		seen := false
		if held, rate, newN, ok := st.windowFlows(n); ok && newN >= riseMinFlows && suspectsAllowed(ps) {
			ref := peerTime(ps, sv.Addr, n, 0)
			expected := rate * ref.Seconds()
			seen = ref > 0 && expected >= minExp && held*suspectRatio < expected && held <= suspectHeld
			// Seen over two windows that do not overlap, not one: a
			// quarter of a second of odd readings (a start, a burst of
			// resets) is not a server failing everything.
			if seen && st.suspectSince.IsZero() {
				st.suspectSince = now
			}
			if seen && now.Sub(st.suspectSince) >= time.Duration(n)*m.settings.Interval/activeSamples {
				st.suspectSince = time.Time{}
				st.suspects++
				d := suspectCoolDowns * m.settings.CoolDown << min(st.suspects-1, 4)
				st.suspectUntil, st.state = now.Add(d), StateSuspect
				st.suspectNote = fmt.Sprintf("held %.2f flows where its new flows at its peers' %s each would hold %.1f: out for %s", held, roundDur(ref), expected, d)
				st.healthy = 0
				st.window = nil
				m.log.Warn("manager: suspect server out", "port", ps.spec.Key.String(), "server", sv.Addr.String(), "note", st.suspectNote)
				act = true
				continue
			}
		}
		if !seen {
			st.suspectSince = time.Time{}
		}
		if static {
			continue
		}
		held, rate, newN, ok := st.windowFlows(riseSamples)
		if !ok || newN < riseMinFlows || held < suspectExpected || rate <= 0 {
			continue
		}
		ref := peerTime(ps, sv.Addr, riseSamples, 0)
		if ref <= 0 {
			continue
		}
		ratio := held / rate / ref.Seconds()
		if ratio < riseRatio {
			continue
		}
		if t := min(delayTarget(ratio), riseMax); t > 1.5*max(st.rise, st.delay, 1) {
			st.rise = t
			act = true
		}
	}
	return act
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
