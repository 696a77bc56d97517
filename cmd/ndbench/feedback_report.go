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
	Servers  []string      `json:"servers"`
	Workers  int           `json:"workers"`
	Queue    int           `json:"queue"`
	Load     float64       `json:"load"`
	Capacity float64       `json:"capacity_per_sec"`
	Rate     float64       `json:"rate_per_sec"`
	Slowdown float64       `json:"slowdown"`
	Phases   []fbPhaseSpan `json:"phases"`
	Variants []*fbVariant  `json:"variants"`
	Best     string        `json:"best,omitempty"`
}

// fbPhaseSpan is a phase's seconds [From, To) from the start of a run.
type fbPhaseSpan struct {
	Name     string `json:"name"`
	From, To int
}

const (
	phWarmup   = "warmup"
	phNormal   = "normal"
	phSlow     = "slow"
	phRecovery = "recovery"
)

// fbVariant is one variant's run and what was made of it.
type fbVariant struct {
	Name     string        `json:"name"`
	About    string        `json:"about"`
	Interval time.Duration `json:"interval_ns"`
	Skipped  string        `json:"skipped,omitempty"`
	Error    string        `json:"error,omitempty"`

	// Per second: each server's new requests, ndd's weights (NaN-free in
	// JSON: unknown weights are -1), p99 latency in ms and errors.
	Counts      [][]int64   `json:"counts"`
	Weights     [][]float64 `json:"-"`
	WeightsJSON [][]float64 `json:"weights"`
	P99ms       []float64   `json:"p99_ms"`
	Errors      []int       `json:"errors_per_sec"`
	// Asked and Held are, per second, the service time the servers were
	// asked for and the time they held slots for it, in ns.
	Asked []int64 `json:"asked_ns"`
	Held  []int64 `json:"held_ns"`
	// Expired counts requests the servers dropped unserved because they
	// had waited longer than a client waits.
	Expired int64 `json:"expired"`
	// LoadAvg is the machine's load average at the start and the end.
	LoadAvg [2]string `json:"load_avg"`

	Phases []fbPhaseResult `json:"phase_results"`
	// Seconds after the event until server1's share (3 s moving mean)
	// is within tolerance of its reference and stays there 3 s: -1
	// never, -2 nothing to react to (the share did not move).
	ReactSlow     int `json:"react_slow_s"`
	ReactRecovery int `json:"react_recovery_s"`
	// Seconds after the event until every weight stays within 10% of
	// its final value: -1 never.
	SettleSlow     int `json:"weights_settle_slow_s"`
	SettleRecovery int `json:"weights_settle_recovery_s"`
	// SettledSlowShare is server1's share from 3 intervals after the
	// slow-down to the end of the slow phase.
	SettledSlowShare float64 `json:"settled_slow_share"`
	// RecoveryMaxShare is server1's largest share in one second of the
	// recovery phase.
	RecoveryMaxShare float64         `json:"recovery_max_share"`
	Oscillation      []fbOscillation `json:"oscillation"`
	WeightsMoved     bool            `json:"weights_moved"`
	Targets          []fbTarget      `json:"targets"`

	records []record
}

type fbPhaseResult struct {
	Name string `json:"name"`
	latencyStats
	Shares []float64 `json:"shares"`
	// SlowShareRatio is server1's share over its share of the capacity
	// in this phase.
	SlowShareRatio float64 `json:"slow_share_ratio"`
	// TimerStretch is the time the servers held their slots over the
	// service time asked for: 1 on an idle machine; 1.2 means the
	// servers' real capacity was a sixth below the nominal.
	TimerStretch float64 `json:"timer_stretch"`
}

// fbOscillation is how the weights moved in the steady second half of a
// phase: the most direction changes of any server's weight share (moves
// over oscMinMove of the total), per minute, and the widest range of a
// server's weight share.
// oscMinMove is the smallest move of a weight's share of the total that
// counts as a move when direction changes are counted: 2 points.
const oscMinMove = 0.02

type fbOscillation struct {
	Phase            string  `json:"phase"`
	ChangesPerMinute float64 `json:"changes_per_minute"`
	Range            float64 `json:"range"`
}

type fbTarget struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Met   bool   `json:"met"`
}

func newFBReport(o feedbackOptions) *fbReport {
	r := &fbReport{Workers: o.workers, Queue: o.queue, Load: o.load, Capacity: o.capacity(), Rate: o.rate(), Slowdown: o.slowdown}
	at := 0
	for _, p := range []struct {
		name string
		d    time.Duration
	}{{phWarmup, o.warmup}, {phNormal, o.normal}, {phSlow, o.slow}, {phRecovery, o.recovery}} {
		n := int(p.d / time.Second)
		r.Phases = append(r.Phases, fbPhaseSpan{Name: p.name, From: at, To: at + n})
		at += n
	}
	return r
}

func (r *fbReport) phase(name string) fbPhaseSpan {
	for _, p := range r.Phases {
		if p.Name == name {
			return p
		}
	}
	return fbPhaseSpan{}
}

// capShare is server1's share of the cluster's capacity in a phase.
func (r *fbReport) capShare(phase string) float64 {
	n := float64(len(r.Servers))
	if n == 0 {
		return math.NaN()
	}
	if phase == phSlow {
		return (1 / r.Slowdown) / (n - 1 + 1/r.Slowdown)
	}
	return 1 / n
}

// analyse derives every figure from the variants' raw series and records.
func (r *fbReport) analyse() {
	for _, v := range r.Variants {
		if len(v.Counts) > 0 {
			r.analyseVariant(v)
		}
	}
	var static *fbVariant
	for _, v := range r.Variants {
		if v.Name == "static" && len(v.Counts) > 0 {
			static = v
		}
	}
	best, bestMet := "", -1
	var bestP999 time.Duration
	for _, v := range r.Variants {
		if len(v.Counts) == 0 {
			continue
		}
		v.Targets = r.targets(v, static)
		if v.Name == "static" {
			continue
		}
		met := 0
		for _, t := range v.Targets {
			if t.Met {
				met++
			}
		}
		p := v.phaseResult(phSlow).P999
		if met > bestMet || (met == bestMet && p < bestP999) {
			best, bestMet, bestP999 = v.Name, met, p
		}
	}
	r.Best = best
}

func (v *fbVariant) phaseResult(name string) fbPhaseResult {
	for _, p := range v.Phases {
		if p.Name == name {
			return p
		}
	}
	return fbPhaseResult{}
}

func (r *fbReport) analyseVariant(v *fbVariant) {
	secs := len(v.Counts)
	v.P99ms = make([]float64, secs)
	v.Errors = make([]int, secs)
	for t := range secs {
		s := summarise(v.records, time.Duration(t)*time.Second, time.Duration(t+1)*time.Second)
		v.P99ms[t] = math.NaN()
		if s.Requests > s.Errors {
			v.P99ms[t] = float64(s.P99) / float64(time.Millisecond)
		}
		v.Errors[t] = s.Errors
	}
	v.Phases = nil
	for _, p := range r.Phases {
		pr := fbPhaseResult{Name: p.Name, latencyStats: summarise(v.records, time.Duration(p.From)*time.Second, time.Duration(p.To)*time.Second)}
		pr.Shares = shares(v.Counts, p.From, p.To)
		if len(pr.Shares) > 0 {
			pr.SlowShareRatio = pr.Shares[0] / r.capShare(p.Name)
		}
		var asked, held int64
		for t := p.From; t < min(p.To, len(v.Asked), len(v.Held)); t++ {
			asked += v.Asked[t]
			held += v.Held[t]
		}
		if asked > 0 {
			pr.TimerStretch = float64(held) / float64(asked)
		}
		v.Phases = append(v.Phases, pr)
	}
	interval := int(math.Ceil(v.Interval.Seconds()))
	normal, slow, rec := r.phase(phNormal), r.phase(phSlow), r.phase(phRecovery)
	s1 := movingMean(shareSeries(v.Counts, 0), 3)
	before := nanMedian(s1[normal.From:min(normal.To, secs)])
	ref := nanMedian(s1[slow.From+(slow.To-slow.From)/2 : min(slow.To, secs)])
	tol := max(0.1*ref, 0.02)
	v.ReactSlow = -2
	if math.Abs(ref-before) > tol {
		v.ReactSlow = reactionTime(s1, slow.From, slow.To, ref, tol, 3)
	}
	full := 1 / float64(len(r.Servers))
	v.ReactRecovery = reactionTime(s1, rec.From, rec.To, full, max(0.1*full, 0.02), 3)
	v.SettledSlowShare = shares(v.Counts, slow.From+3*interval, slow.To)[0]
	v.RecoveryMaxShare = maxOf(shareSeries(v.Counts, 0)[rec.From:min(rec.To, secs)])

	ws := weightShares(v.Weights)
	// A weight is settled within 10% of its final share of the total,
	// or within a tenth of an equal share, whichever is wider.
	v.SettleSlow = settleTime(ws, slow.From, slow.To, 0.1, full/10)
	v.SettleRecovery = settleTime(ws, rec.From, rec.To, 0.1, full/10)
	v.Oscillation = nil
	for _, p := range []fbPhaseSpan{normal, slow, rec} {
		from, to := p.From+(p.To-p.From)/2, min(p.To, secs)
		o := fbOscillation{Phase: p.Name}
		for _, w := range ws {
			o.ChangesPerMinute = max(o.ChangesPerMinute, float64(directionChanges(w[from:to], oscMinMove))*60/float64(to-from))
			o.Range = max(o.Range, span(w[from:to]))
		}
		v.Oscillation = append(v.Oscillation, o)
	}
	v.WeightsMoved = false
	v.WeightsJSON = make([][]float64, len(v.Weights))
	for t, w := range v.Weights {
		v.WeightsJSON[t] = make([]float64, len(w))
		for i, x := range w {
			v.WeightsJSON[t][i] = x
			if math.IsNaN(x) {
				v.WeightsJSON[t][i] = -1
			}
			if t > 0 && !math.IsNaN(x) && !math.IsNaN(v.Weights[t-1][i]) && x != v.Weights[t-1][i] {
				v.WeightsMoved = true
			}
		}
	}
	for i := range v.P99ms {
		if math.IsNaN(v.P99ms[i]) {
			v.P99ms[i] = -1 // JSON has no NaN
		}
	}
}

// targets checks the targets on variant v; static is the
// baseline for the p99.9 target (nil if it was not measured).
func (r *fbReport) targets(v, static *fbVariant) []fbTarget {
	interval := int(math.Ceil(v.Interval.Seconds()))
	slow := v.phaseResult(phSlow)
	var ts []fbTarget
	add := func(name, value string, met bool) { ts = append(ts, fbTarget{name, value, met}) }
	add("slow phase: no errors", fmt.Sprintf("%d of %d", slow.Errors, slow.Requests), slow.Errors == 0)
	ratio := v.SettledSlowShare / r.capShare(phSlow)
	add("slow phase: server1 share <= 1.3x its capacity share", fmt.Sprintf("%.1f%% = %.2fx", 100*v.SettledSlowShare, ratio), ratio <= 1.3)
	if static != nil && v != static {
		sp := static.phaseResult(phSlow).P999
		add("slow phase: p99.9 <= half of static's", fmt.Sprintf("%v vs %v", ms(slow.P999), ms(sp)), slow.P999 > 0 && slow.P999*2 <= sp)
	}
	osc := 0.0
	for _, o := range v.Oscillation {
		if o.Phase == phSlow {
			osc = o.ChangesPerMinute
		}
	}
	if !v.WeightsMoved {
		// Nothing settled: the loop never acted.
		add("weights settle within 3 intervals of the slow-down", "weights never moved", false)
	} else {
		add("weights settle within 3 intervals of the slow-down", settleText(v.SettleSlow, interval), v.SettleSlow >= 0 && v.SettleSlow <= 3*interval)
	}
	add("weights do not oscillate (slow phase, <= 2 turns a minute)", fmt.Sprintf("%.1f turns/min", osc), osc <= 2)
	add("after recovery: full share within 3 intervals", reactText(v.ReactRecovery, interval), v.ReactRecovery >= 0 && v.ReactRecovery <= 3*interval)
	limit := 1.5 * r.capShare(phRecovery)
	add("after recovery: server1 never above 1.5x its share", fmt.Sprintf("max %.1f%% (limit %.1f%%)", 100*v.RecoveryMaxShare, 100*limit), v.RecoveryMaxShare <= limit)
	return ts
}

func settleText(s, interval int) string {
	if s < 0 {
		return "never"
	}
	return fmt.Sprintf("%ds (%.1f intervals)", s, float64(s)/float64(interval))
}

func reactText(s, interval int) string {
	switch s {
	case -1:
		return "never"
	case -2:
		return "no change"
	}
	return fmt.Sprintf("%ds (%.1f intervals)", s, float64(s)/float64(interval))
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

// writeTable prints the report.
func (r *fbReport) writeTable(w io.Writer) {
	fmt.Fprintf(w, "feedback bench: %d servers x %d workers, capacity %.0f req/s, offered %.0f/s (%.0f%%), server1 x%g in the slow phase\n",
		len(r.Servers), r.Workers, r.Capacity, r.Rate, 100*r.Load, r.Slowdown)
	for _, p := range r.Phases {
		fmt.Fprintf(w, "  %s %ds-%ds", p.Name, p.From, p.To)
	}
	fmt.Fprintln(w)
	for _, v := range r.Variants {
		fmt.Fprintf(w, "\n== %s: %s\n", v.Name, v.About)
		if v.Skipped != "" {
			fmt.Fprintf(w, "   skipped: %s\n", v.Skipped)
			continue
		}
		if v.Error != "" {
			fmt.Fprintf(w, "   error: %s\n", v.Error)
		}
		if len(v.Counts) == 0 {
			continue
		}
		interval := int(math.Ceil(v.Interval.Seconds()))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(w, "   load average %s at the start, %s at the end; %d requests dropped unserved after waiting %v\n", v.LoadAvg[0], v.LoadAvg[1], v.Expired, fbRequestTimeout)
		fmt.Fprintf(tw, "phase\trequests\terrors\tmean\tp50\tp99\tp99.9\tshares %%\tserver1/capacity share\ttimer stretch\t\n")
		for _, p := range v.Phases[1:] {
			errs := fmt.Sprint(p.Errors)
			if p.Errors > 0 {
				errs += " " + formatKinds(p.ErrorKinds)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t\n", p.Name, p.Requests, errs, ms(p.Mean), ms(p.P50), ms(p.P99), ms(p.P999), pct(p.Shares), p.SlowShareRatio, p.TimerStretch)
		}
		tw.Flush()
		if v.Name != "static" && !v.WeightsMoved {
			fmt.Fprintf(w, "   note: ndd accepted the configuration but never changed a weight: its manager did not act in this run\n")
		}
		fmt.Fprintf(w, "   server1 share reacts to the slow-down in %s, to the recovery in %s; weights settle in %s and %s; weights moved: %v\n",
			reactText(v.ReactSlow, interval), reactText(v.ReactRecovery, interval), settleText(v.SettleSlow, interval), settleText(v.SettleRecovery, interval), v.WeightsMoved)
		for _, o := range v.Oscillation {
			fmt.Fprintf(w, "   weights in the second half of %s: %.1f direction changes a minute, range %.1f%% of the total\n", o.Phase, o.ChangesPerMinute, 100*o.Range)
		}
		for _, t := range v.Targets {
			mark := "MISSED"
			if t.Met {
				mark = "met"
			}
			fmt.Fprintf(w, "   target %-58s %-28s %s\n", t.Name, t.Value, mark)
		}
	}
	if r.Best != "" {
		fmt.Fprintf(w, "\nbest nd variant (most targets met, then lowest slow-phase p99.9): %s\n", r.Best)
	}
}

// bands shades the phases.
func (r *fbReport) bands() []svgBand {
	fills := map[string]string{phWarmup: "#f2f2f2", phNormal: "#ffffff", phSlow: "#fde0dd", phRecovery: "#e5f5e0"}
	var bs []svgBand
	for _, p := range r.Phases {
		label := p.Name
		if p.Name == phSlow {
			label = fmt.Sprintf("slow: server1 x%g", r.Slowdown)
		}
		bs = append(bs, svgBand{From: float64(p.From), To: float64(p.To), Label: label, Fill: fills[p.Name]})
	}
	return bs
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

func scale(xs []float64, f float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = x * f
	}
	return out
}

// variantSVG draws one variant: weights as shares of the total, the
// servers' shares of new requests, and p99 latency, over time.
func (r *fbReport) variantSVG(w io.Writer, v *fbVariant) error {
	ws := weightShares(v.Weights)
	var wp, sp svgPanel
	wp = svgPanel{Title: "nd's weights, % of the total", Unit: "%", YMax: 100}
	sp = svgPanel{Title: "share of new requests (3 s moving mean), %", Unit: "%", YMax: 100}
	for i, name := range r.Servers {
		c := svgPalette[i%len(svgPalette)]
		wp.Series = append(wp.Series, svgSeries{Name: name, Color: c, Points: scale(ws[i], 100)})
		sp.Series = append(sp.Series, svgSeries{Name: name, Color: c, Points: scale(movingMean(shareSeries(v.Counts, i), 3), 100)})
	}
	lp := svgPanel{Title: "p99 latency of the requests sent in each second (successful ones), ms, log scale", YMax: 10000, LogMin: 1, Series: []svgSeries{
		{Name: "p99", Color: "#333", Points: nanNeg(v.P99ms)},
	}}
	return writeSVG(w, fmt.Sprintf("%s: %s", v.Name, v.About), len(v.Counts), r.bands(), []svgPanel{wp, sp, lp})
}

// compareSVG draws every variant's server1 share and p99 on shared axes.
func (r *fbReport) compareSVG(w io.Writer) error {
	sp := svgPanel{Title: "server1's share of new requests (3 s moving mean), %", Unit: "%", YMax: 50}
	lp := svgPanel{Title: "p99 latency of the requests sent in each second (successful ones), ms, log scale", YMax: 10000, LogMin: 1}
	seconds := 0
	for i, v := range r.Variants {
		if len(v.Counts) == 0 {
			continue
		}
		seconds = max(seconds, len(v.Counts))
		c := svgPalette[(i+1)%len(svgPalette)]
		if v.Name == "static" {
			c = "#000000"
		}
		sp.Series = append(sp.Series, svgSeries{Name: v.Name, Color: c, Points: scale(movingMean(shareSeries(v.Counts, 0), 3), 100)})
		lp.Series = append(lp.Series, svgSeries{Name: v.Name, Color: c, Points: nanNeg(v.P99ms)})
	}
	if seconds > 0 {
		full := make([]float64, seconds)
		slow := r.phase(phSlow)
		for t := range full {
			full[t] = 100 * r.capShare(phNormal)
			if t >= slow.From && t < slow.To {
				full[t] = 100 * r.capShare(phSlow)
			}
		}
		sp.Series = append(sp.Series, svgSeries{Name: "capacity share", Color: "#888", Dashed: true, Points: full})
	}
	return writeSVG(w, "server1 slowed down and recovered: every variant", seconds, r.bands(), []svgPanel{sp, lp})
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
