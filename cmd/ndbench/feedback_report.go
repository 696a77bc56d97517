package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// fbReport is the result of `ndbench feedback`.
type fbReport struct {
	Workers   int           `json:"workers"`
	Queue     int           `json:"queue"`
	Load      float64       `json:"load"`
	Slowdown  float64       `json:"slowdown"`
	Seed      uint64        `json:"seed"`
	Scenarios []*fbScenario `json:"scenarios"`
}

// fbScenario is one scenario and every balancer's run of it.
type fbScenario struct {
	*scenario
	Servers []string `json:"servers"`
	Runs    []*fbRun `json:"runs"`
}

// fbRun is one balancer's run of a scenario and what was made of it.
type fbRun struct {
	Balancer string `json:"balancer"`
	About    string `json:"about"`
	Skipped  string `json:"skipped,omitempty"`
	Error    string `json:"error,omitempty"`
	CutShort string `json:"cut_short,omitempty"`

	// Per second: each server's new requests (counted at the server),
	// nd's weights (unknown: -1 in JSON) and weight commits, the p99 of
	// the successful requests due in that second in ms (-1: none) and
	// the failed ones.
	Counts      [][]int64   `json:"counts"`
	Weights     [][]float64 `json:"-"`
	WeightsJSON [][]float64 `json:"weights,omitempty"`
	Commits     []int       `json:"commits_per_sec,omitempty"`
	P99ms       []float64   `json:"p99_ms"`
	Errors      []int       `json:"errors_per_sec"`
	// Asked and Held are, per second, the service time the servers were
	// asked for and the time they held slots for it, in ns.
	Asked []int64 `json:"asked_ns"`
	Held  []int64 `json:"held_ns"`
	// Expired counts requests the servers dropped unserved because they
	// had waited longer than a client waits.
	Expired int64     `json:"expired"`
	LoadAvg [2]string `json:"load_avg"`

	Phases   []fbPhaseResult `json:"phase_results"`
	Measures fbMeasures      `json:"measures"`
	Targets  []fbTarget      `json:"targets"`
	// Versus are the comparisons with the HAProxy runs (nd only).
	Versus []fbTarget `json:"versus_haproxy,omitempty"`

	nd      bool
	records []record
}

type fbPhaseResult struct {
	Name string `json:"name"`
	latencyStats
	Shares []float64 `json:"shares"`
	// TimerStretch is the time the servers held their slots over the
	// service time asked for: 1 on an idle machine; 1.2 means the
	// servers' real capacity was a sixth below the nominal.
	TimerStretch float64 `json:"timer_stretch"`
}

func newFBReport(o feedbackOptions) *fbReport {
	return &fbReport{Workers: o.workers, Queue: o.queue, Load: o.load, Slowdown: o.slowdown, Seed: o.seed}
}

func (run *fbRun) measured() bool { return len(run.Counts) > 0 }

func (run *fbRun) phaseResult(name string) fbPhaseResult {
	for _, p := range run.Phases {
		if p.Name == name {
			return p
		}
	}
	return fbPhaseResult{}
}

// analyse derives every figure, target and comparison from the runs' raw
// series and records.
func (r *fbReport) analyse() {
	for _, sc := range r.Scenarios {
		for _, run := range sc.Runs {
			if run.measured() {
				measureRun(sc.scenario, run)
			}
		}
		for _, run := range sc.Runs {
			if run.measured() {
				run.Targets = sc.targets(run)
				run.Versus = sc.versus(run)
			}
		}
	}
}

// mainPhase is the stretch of a scenario that its comparisons are made
// over: the slow phase, the sinkhole phase, the steady phase, or (cold-add)
// everything measured.
func (sc *fbScenario) mainStats(run *fbRun) latencyStats {
	for _, name := range []string{phSlow, phSink, phSteady} {
		if _, ok := sc.phase(name); ok {
			return run.phaseResult(name).latencyStats
		}
	}
	return run.Measures.All
}

// measureRun fills in run's per-second series, phase results and measures.
// A run cut short (a signal, the timeout) is padded to its full length
// with seconds of no requests and unknown weights, and says so.
func measureRun(sc *scenario, run *fbRun) {
	if n := len(run.Counts); n < sc.seconds() {
		run.CutShort = fmt.Sprintf("cut short: %d of %d seconds measured", n, sc.seconds())
		for len(run.Counts) < sc.seconds() {
			run.Counts = append(run.Counts, make([]int64, len(sc.Workers)))
		}
		for run.nd && len(run.Weights) < sc.seconds() {
			ws := make([]float64, len(sc.Workers))
			for i := range ws {
				ws[i] = math.NaN()
			}
			run.Weights = append(run.Weights, ws)
		}
	}
	secs := len(run.Counts)
	run.P99ms = make([]float64, secs)
	run.Errors = make([]int, secs)
	for t := range secs {
		s := summarise(run.records, time.Duration(t)*time.Second, time.Duration(t+1)*time.Second)
		run.P99ms[t] = -1 // JSON has no NaN
		if s.Requests > s.Errors {
			run.P99ms[t] = float64(s.P99) / float64(time.Millisecond)
		}
		run.Errors[t] = s.Errors
	}
	run.Phases = nil
	for _, p := range sc.Phases {
		pr := fbPhaseResult{Name: p.Name, latencyStats: summarise(run.records, sec(p.From), sec(p.To))}
		pr.Shares = shares(run.Counts, p.From, p.To)
		var asked, held int64
		for t := p.From; t < min(p.To, len(run.Asked), len(run.Held)); t++ {
			asked += run.Asked[t]
			held += run.Held[t]
		}
		if asked > 0 {
			pr.TimerStretch = float64(held) / float64(asked)
		}
		run.Phases = append(run.Phases, pr)
	}
	m := fbMeasures{Key: 0, ShareReact: naSec, ShareReturn: naSec, WeightSettle: naSec, WeightReturn: naSec, Detect: naSec}
	if sc.Late >= 0 {
		m.Key = sc.Late
	}
	warm, _ := sc.phase(phWarmup)
	m.All = summarise(run.records, sec(warm.To), sec(sc.seconds()))
	full := sc.weightShare(m.Key)
	raw := shareSeries(run.Counts, m.Key)
	s1 := movingMean(raw, 3)
	ws := weightShares(run.Weights)
	settle := func(from, to int) int {
		if len(ws) == 0 {
			return naSec
		}
		return settleTime(ws, from, to, 0.1, full/10)
	}
	// react is how long after event the key server's share takes to
	// reach the level it holds in the second half of [event, to); -2 if
	// that is where it was before (before: NaN if unknown).
	react := func(event, to int, before float64) int {
		ref := nanMedian(s1[event+(to-event)/2 : min(to, secs)])
		tol := max(0.1*ref, 0.02)
		if !math.IsNaN(before) && math.Abs(ref-before) <= tol {
			return -2
		}
		return reactionTime(s1, event, to, ref, tol, 3)
	}
	last := sc.Phases[len(sc.Phases)-1]
	switch sc.Name {
	case scSlowStart:
		slow, _ := sc.phase(phSlow)
		m.ShareReact = react(0, slow.To, math.NaN())
		m.WeightSettle = settle(0, slow.To)
		m.KeyShare = shares(run.Counts, slow.From, slow.To)[m.Key]
		m.CapShare = (1 / sc.Slowdown) / (3 + 1/sc.Slowdown)
	case scSlowSpell:
		normal, _ := sc.phase(phNormal)
		slow, _ := sc.phase(phSlow)
		after, _ := sc.phase(phAfter)
		m.ShareReact = react(slow.From, slow.To, nanMedian(s1[normal.From:min(normal.To, secs)]))
		m.ShareReturn = reactionTime(s1, after.From, after.To, full, max(0.1*full, 0.02), 3)
		m.WeightSettle = settle(slow.From, slow.To)
		m.WeightReturn = settle(after.From, after.To)
		m.KeyShare = shares(run.Counts, slow.From, slow.To)[m.Key]
		m.CapShare = (1 / sc.Slowdown) / (3 + 1/sc.Slowdown)
	case scSinkholeFailing, scSinkholePassing:
		normal, _ := sc.phase(phNormal)
		sink, _ := sc.phase(phSink)
		m.ShareReact = react(sink.From, sink.To, nanMedian(s1[normal.From:min(normal.To, secs)]))
		m.WeightSettle = settle(sink.From, sink.To)
		m.KeyShare = shares(run.Counts, sink.From, sink.To)[m.Key]
		m.CapShare = 0 // a sinkhole serves nothing
		st := run.phaseResult(phSink)
		m.SinkRequests, m.SinkFailed = st.Requests, st.Errors
		m.Detect = detection(raw, sink.From, sink.To, full/2)
		end := sink.To
		if m.Detect >= 0 {
			// From the second after detection: the bench sees shares a
			// second at a time, and the detection second's failures are
			// those that revealed the sinkhole.
			m.FailedAfterDetect = failedFrom(run.records, sec(sink.From+m.Detect+1), sec(sink.To))
			end = sink.From + max(m.Detect, 1)
		}
		m.SinkMaxShare = maxOf(s1[sink.From:min(end, secs)])
	case scEqual:
		steady, _ := sc.phase(phSteady)
		m.KeyShare = shares(run.Counts, steady.From, steady.To)[m.Key]
		m.CapShare = full
	case scColdAdd:
		joined, _ := sc.phase(phJoined)
		m.ShareReact = reactionTime(s1, joined.From, joined.To, full, max(0.1*full, 0.02), 3)
		m.WeightSettle = settle(joined.From, joined.To)
		m.JoinMaxShare = maxOf(raw[joined.From:min(joined.To, secs)])
		m.KeyShare = shares(run.Counts, joined.From, joined.To)[m.Key]
		m.CapShare = full
	case scSizes:
		steady, _ := sc.phase(phSteady)
		m.RestShares = shares(run.Counts, steady.From+(steady.To-steady.From)/2, steady.To)
		m.RestDev = maxRelDev(m.RestShares, sc.weightShares())
		m.KeyShare = shares(run.Counts, steady.From, steady.To)[m.Key]
		m.CapShare = full
	}
	if math.IsNaN(m.SinkMaxShare) {
		m.SinkMaxShare = 0
	}
	if math.IsNaN(m.JoinMaxShare) {
		m.JoinMaxShare = 0
	}
	rest := last.From + (last.To-last.From)/2
	m.CommitsPerMin = perMinute(run.Commits, rest, last.To)
	for _, w := range ws {
		m.TurnsPerMin = max(m.TurnsPerMin, float64(directionChanges(w[rest:last.To], oscMinMove))*60/float64(last.To-rest))
		m.WeightRange = max(m.WeightRange, span(w[rest:last.To]))
	}
	run.WeightsJSON = nil
	for t, w := range run.Weights {
		row := make([]float64, len(w))
		for i, x := range w {
			row[i] = x
			if math.IsNaN(x) {
				row[i] = -1
			}
			if t > 0 && !math.IsNaN(x) && !math.IsNaN(run.Weights[t-1][i]) && x != run.Weights[t-1][i] {
				m.WeightsMoved = true
			}
		}
		run.WeightsJSON = append(run.WeightsJSON, row)
	}
	run.Measures = m
}

func sec(n int) time.Duration { return time.Duration(n) * time.Second }

// oscMinMove is the smallest move of a weight's share of the total that
// counts when direction changes are counted: 2 points.
const oscMinMove = 0.02

// weightShares are the servers' configured weight shares.
func (s *scenario) weightShares() []float64 {
	out := make([]float64, len(s.Weights))
	for i := range out {
		out[i] = s.weightShare(i)
	}
	return out
}

// targets checks the targets on a run of the scenario.
func (sc *fbScenario) targets(run *fbRun) []fbTarget {
	m := run.Measures
	switch sc.Name {
	case scSlowStart:
		return slowTargets(m, run.phaseResult(phSlow).latencyStats, false, run.nd)
	case scSlowSpell:
		return slowTargets(m, run.phaseResult(phSlow).latencyStats, true, run.nd)
	case scSinkholeFailing, scSinkholePassing:
		return sinkTargets(m, sc.weightShare(m.Key))
	case scEqual:
		if !run.nd {
			return nil // HAProxy is the reference
		}
		best, ok := sc.bestHAProxy()
		return equalTargets(run.phaseResult(phSteady).latencyStats, best, ok)
	case scColdAdd:
		return coldAddTargets(m, sc.weightShare(m.Key))
	case scSizes:
		return sizesTargets(m, sc.weightShares(), run.nd)
	}
	return nil
}

// bestHAProxy is the lowest mean and the lowest p99.9 of the measured
// HAProxy runs of the steady phase, each from whichever run had it.
func (sc *fbScenario) bestHAProxy() (latencyStats, bool) {
	var best latencyStats
	ok := false
	for _, run := range sc.Runs {
		if run.nd || !run.measured() {
			continue
		}
		s := sc.mainStats(run)
		if s.Requests <= s.Errors {
			continue
		}
		if !ok {
			best, ok = s, true
			continue
		}
		best.Mean, best.P999 = min(best.Mean, s.Mean), min(best.P999, s.P999)
	}
	return best, ok
}

// versus compares an nd run with every measured HAProxy run.
func (sc *fbScenario) versus(run *fbRun) []fbTarget {
	if !run.nd {
		return nil
	}
	var ts []fbTarget
	for _, ha := range sc.Runs {
		if ha.nd || !ha.measured() {
			continue
		}
		ts = append(ts, beats(sc.mainStats(run), sc.mainStats(ha), ha.Balancer)...)
	}
	return ts
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func pct(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%4.1f", 100*x))
	}
	return strings.Join(parts, " ")
}

// formatKinds lists error counts by kind, sorted: "(3 busy, 1 timeout)".
func formatKinds(kinds map[string]int) string {
	var parts []string
	for k, n := range kinds {
		parts = append(parts, fmt.Sprintf("%d %s", n, k))
	}
	slices.Sort(parts)
	return "(" + strings.Join(parts, ", ") + ")"
}

func metText(met bool) string {
	if met {
		return "met"
	}
	return "MISSED"
}

// writeTable prints the report: per scenario, a row per balancer and
// measured phase, the measures, the targets and the comparisons; then a
// summary of nd's targets.
func (r *fbReport) writeTable(w io.Writer) {
	fmt.Fprintf(w, "feedback bench: servers of %d workers (queue %d), load %.0f%% of each scenario's capacity, slow-down x%g, seed %d\n",
		r.Workers, r.Queue, 100*r.Load, r.Slowdown, r.Seed)
	for _, sc := range r.Scenarios {
		fmt.Fprintf(w, "\n== %s: %s\n", sc.Name, sc.About)
		fmt.Fprintf(w, "   servers %s, workers %v, capacity %.0f/s, offered %.0f/s; phases", strings.Join(sc.Servers, " "), sc.Workers, sc.Capacity, sc.Rate)
		for _, p := range sc.Phases {
			fmt.Fprintf(w, " %s %d-%ds", p.Name, p.From, p.To)
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "balancer\tphase\trequests\terrors\tmean\tp50\tp99\tp99.9\tshares %%\ttimer stretch\t\n")
		for _, run := range sc.Runs {
			switch {
			case run.Skipped != "":
				fmt.Fprintf(tw, "%s\tskipped\t\t\t\t\t\t\t\t\t\n", run.Balancer)
				continue
			case !run.measured():
				fmt.Fprintf(tw, "%s\terror\t\t\t\t\t\t\t\t\t\n", run.Balancer)
				continue
			}
			for _, p := range run.Phases {
				if p.Name == phWarmup {
					continue
				}
				errs := fmt.Sprint(p.Errors)
				if p.Errors > 0 {
					errs += " " + formatKinds(p.ErrorKinds)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t\n", run.Balancer, p.Name, p.Requests, errs, ms(p.Mean), ms(p.P50), ms(p.P99), ms(p.P999), pct(p.Shares), p.TimerStretch)
			}
		}
		tw.Flush()
		for _, run := range sc.Runs {
			if run.Skipped != "" {
				fmt.Fprintf(w, "   %s: skipped: %s\n", run.Balancer, run.Skipped)
				continue
			}
			if run.Error != "" {
				fmt.Fprintf(w, "   %s: error: %s\n", run.Balancer, run.Error)
			}
			if run.CutShort != "" {
				fmt.Fprintf(w, "   %s: %s\n", run.Balancer, run.CutShort)
			}
			if !run.measured() {
				continue
			}
			m := run.Measures
			fmt.Fprintf(w, "   %s: %s's share %.1f%% (capacity share %.1f%%, weight share %.1f%%); share reacts in %s, returns in %s",
				run.Balancer, sc.Servers[m.Key], 100*m.KeyShare, 100*m.CapShare, 100*sc.weightShare(m.Key), secText(m.ShareReact), secText(m.ShareReturn))
			if run.nd {
				fmt.Fprintf(w, "; weights settle in %s, return in %s, moved %v; settled: %.1f commits/min, %.1f turns/min, range %.1f%% of the total",
					secText(m.WeightSettle), secText(m.WeightReturn), m.WeightsMoved, m.CommitsPerMin, m.TurnsPerMin, 100*m.WeightRange)
			}
			fmt.Fprintf(w, "; load average %s -> %s, %d expired\n", run.LoadAvg[0], run.LoadAvg[1], run.Expired)
			for _, t := range run.Targets {
				fmt.Fprintf(w, "     %-6s %-52s %s\n", metText(t.Met), t.Name, t.Value)
			}
			for _, t := range run.Versus {
				fmt.Fprintf(w, "     %-6s %-52s %s\n", metText(t.Met), t.Name, t.Value)
			}
		}
	}
	fmt.Fprintf(w, "\nsummary: targets met per scenario (issue 10), and wins over HAProxy leastconn\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "scenario\tbalancer\ttargets met\tbeats HAProxy\t\n")
	for _, sc := range r.Scenarios {
		for _, run := range sc.Runs {
			if !run.measured() {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", sc.Name, run.Balancer, countMet(run.Targets), countMet(run.Versus))
		}
	}
	tw.Flush()
}

func countMet(ts []fbTarget) string {
	if len(ts) == 0 {
		return "-"
	}
	n := 0
	for _, t := range ts {
		if t.Met {
			n++
		}
	}
	return fmt.Sprintf("%d/%d", n, len(ts))
}

// bands shades a scenario's phases.
func (sc *fbScenario) bands() []svgBand {
	fills := map[string]string{phWarmup: "#f2f2f2", phNormal: "#ffffff", phSlow: "#fde0dd", phAfter: "#e5f5e0",
		phSink: "#fde0dd", phSteady: "#ffffff", phThree: "#ffffff", phJoined: "#e5f5e0"}
	var bs []svgBand
	for _, p := range sc.Phases {
		bs = append(bs, svgBand{From: float64(p.From), To: float64(p.To), Label: p.Name, Fill: fills[p.Name]})
	}
	return bs
}

func scale(xs []float64, f float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = x * f
	}
	return out
}

func nanNeg(xs []float64) []float64 {
	out := slices.Clone(xs)
	for i, x := range out {
		if x < 0 {
			out[i] = math.NaN()
		}
	}
	return out
}

// runSVG draws one run: nd's weights as shares of the total, the servers'
// shares of new requests, and p99 latency, over time.
func (sc *fbScenario) runSVG(w io.Writer, run *fbRun) error {
	ws := weightShares(run.Weights)
	wp := svgPanel{Title: "nd's weights, % of the total", Unit: "%", YMax: 100}
	sp := svgPanel{Title: "share of new requests (3 s moving mean), %", Unit: "%", YMax: 100}
	for i, name := range sc.Servers {
		c := svgPalette[i%len(svgPalette)]
		if i < len(ws) {
			wp.Series = append(wp.Series, svgSeries{Name: name, Color: c, Points: scale(ws[i], 100)})
		}
		sp.Series = append(sp.Series, svgSeries{Name: name, Color: c, Points: scale(movingMean(shareSeries(run.Counts, i), 3), 100)})
	}
	lp := svgPanel{Title: "p99 latency of the requests due in each second (successful ones), ms, log scale", YMax: 10000, LogMin: 1, Series: []svgSeries{
		{Name: "p99", Color: "#333", Points: nanNeg(run.P99ms)},
	}}
	return writeSVG(w, fmt.Sprintf("%s, %s", sc.Name, run.Balancer), len(run.Counts), sc.bands(), []svgPanel{wp, sp, lp})
}

// compareSVG draws every balancer's share for the scenario's key server
// and its p99 on shared axes.
func (sc *fbScenario) compareSVG(w io.Writer) error {
	key := max(sc.Late, 0)
	sp := svgPanel{Title: fmt.Sprintf("%s's share of new requests (3 s moving mean), %%", sc.Servers[key]), Unit: "%", YMax: 100}
	lp := svgPanel{Title: "p99 latency of the requests due in each second (successful ones), ms, log scale", YMax: 10000, LogMin: 1}
	seconds := 0
	for i, run := range sc.Runs {
		if !run.measured() {
			continue
		}
		seconds = max(seconds, len(run.Counts))
		c := svgPalette[(i+1)%len(svgPalette)]
		sp.Series = append(sp.Series, svgSeries{Name: run.Balancer, Color: c, Points: scale(movingMean(shareSeries(run.Counts, key), 3), 100)})
		lp.Series = append(lp.Series, svgSeries{Name: run.Balancer, Color: c, Points: nanNeg(run.P99ms)})
	}
	if seconds > 0 {
		ws := make([]float64, seconds)
		for t := range ws {
			ws[t] = 100 * sc.weightShare(key)
		}
		sp.Series = append(sp.Series, svgSeries{Name: "weight share", Color: "#888", Dashed: true, Points: ws})
	}
	return writeSVG(w, fmt.Sprintf("%s: every balancer", sc.Name), seconds, sc.bands(), []svgPanel{sp, lp})
}

// latencySVG compares the balancers' mean and p99.9 over each scenario's
// main phase, as bars on log scales.
func (r *fbReport) latencySVG(w io.Writer) error {
	var groups []svgGroup
	for _, sc := range r.Scenarios {
		g := svgGroup{Name: sc.Name}
		for _, run := range sc.Runs {
			v := [2]float64{math.NaN(), math.NaN()}
			if run.measured() {
				s := sc.mainStats(run)
				if s.Requests > s.Errors {
					v = [2]float64{float64(s.Mean) / 1e6, float64(s.P999) / 1e6}
				}
			}
			g.Bars = append(g.Bars, svgBar{Name: run.Balancer, Values: v})
		}
		groups = append(groups, g)
	}
	return writeBars(w, "latency by scenario and balancer (main phase)", []string{"mean, ms", "p99.9, ms"}, groups)
}
