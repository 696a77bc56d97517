package main

import (
	"math"
	"slices"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
)

// latencyStats summarises a set of requests: the latencies are those of
// the successful ones.
type latencyStats struct {
	Requests   int            `json:"requests"`
	Errors     int            `json:"errors"`
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
	Mean       time.Duration  `json:"mean_ns"`
	P50        time.Duration  `json:"p50_ns"`
	P99        time.Duration  `json:"p99_ns"`
	P999       time.Duration  `json:"p999_ns"`
	Max        time.Duration  `json:"max_ns"`
}

// summarise returns the statistics of the records due in [from, to).
func summarise(recs []record, from, to time.Duration) latencyStats {
	s := latencyStats{ErrorKinds: map[string]int{}}
	var lats []time.Duration
	var sum time.Duration
	for _, r := range recs {
		if r.At < from || r.At >= to {
			continue
		}
		s.Requests++
		if r.Err != "" {
			s.Errors++
			s.ErrorKinds[r.Err]++
			continue
		}
		lats = append(lats, r.Latency)
		sum += r.Latency
	}
	if len(lats) == 0 {
		return s
	}
	slices.Sort(lats)
	s.Mean = sum / time.Duration(len(lats))
	s.P50 = lab.Percentile(lats, 0.50)
	s.P99 = lab.Percentile(lats, 0.99)
	s.P999 = lab.Percentile(lats, 0.999)
	s.Max = lats[len(lats)-1]
	return s
}

// shares returns each server's share of the connections counted in
// seconds [from, to) of per-second counts.
func shares(counts [][]int64, from, to int) []float64 {
	if len(counts) == 0 {
		return nil
	}
	n := len(counts[0])
	tot := make([]float64, n)
	var all float64
	for t := max(from, 0); t < min(to, len(counts)); t++ {
		for i, c := range counts[t] {
			tot[i] += float64(c)
			all += float64(c)
		}
	}
	if all == 0 {
		return tot
	}
	for i := range tot {
		tot[i] /= all
	}
	return tot
}

// shareSeries is server i's share of each second's connections; NaN in a
// second with none.
func shareSeries(counts [][]int64, i int) []float64 {
	out := make([]float64, len(counts))
	for t, cs := range counts {
		var all int64
		for _, c := range cs {
			all += c
		}
		out[t] = math.NaN()
		if all > 0 {
			out[t] = float64(cs[i]) / float64(all)
		}
	}
	return out
}

// movingMean is the mean over a centred window of w points (w odd),
// skipping NaNs; NaN where the window holds none.
func movingMean(xs []float64, w int) []float64 {
	out := make([]float64, len(xs))
	h := w / 2
	for i := range xs {
		var s float64
		n := 0
		for j := max(i-h, 0); j <= min(i+h, len(xs)-1); j++ {
			if !math.IsNaN(xs[j]) {
				s += xs[j]
				n++
			}
		}
		out[i] = math.NaN()
		if n > 0 {
			out[i] = s / float64(n)
		}
	}
	return out
}

// nanMedian is the median of the non-NaN values of xs; NaN if none.
func nanMedian(xs []float64) float64 {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// reactionTime is how many seconds after event the series xs reaches the
// band ref ± tol and stays in it for hold seconds, or the seconds until end
// have been exhausted (-1). Only indices in [event, end) are looked at;
// NaN points count as outside the band.
func reactionTime(xs []float64, event, end int, ref, tol float64, hold int) int {
	end = min(end, len(xs))
	run := 0
	for t := max(event, 0); t < end; t++ {
		if math.Abs(xs[t]-ref) <= tol {
			run++
			if run >= hold {
				return t - hold + 1 - event
			}
		} else {
			run = 0
		}
	}
	return -1
}

// settleTime is how many seconds after event every series stays, until
// end, within tol (relative, at least minTol absolute) of its own final
// value: the median of its last half of [event, end). -1 if some series
// is not in its band for the last 3 points; 0 if all are already settled
// at event.
func settleTime(series [][]float64, event, end int, tol, minTol float64) int {
	worst := 0
	for _, xs := range series {
		e := min(end, len(xs))
		if e <= event {
			return -1
		}
		final := nanMedian(xs[event+(e-event)/2 : e])
		band := max(tol*math.Abs(final), minTol)
		last := -1 // last index outside the band
		for t := event; t < e; t++ {
			if math.IsNaN(xs[t]) || math.Abs(xs[t]-final) > band {
				last = t
			}
		}
		if last >= e-3 {
			return -1 // not in the band for 3 points before the end
		}
		worst = max(worst, last+1-event)
	}
	return worst
}

// directionChanges counts how often xs turns from rising to falling or
// back, ignoring moves no larger than minMove and NaN points.
func directionChanges(xs []float64, minMove float64) int {
	changes, dir := 0, 0
	prev := math.NaN()
	for _, x := range xs {
		if math.IsNaN(x) {
			continue
		}
		if math.IsNaN(prev) {
			prev = x
			continue
		}
		d := x - prev
		if math.Abs(d) <= minMove {
			continue
		}
		nd := 1
		if d < 0 {
			nd = -1
		}
		if dir != 0 && nd != dir {
			changes++
		}
		dir = nd
		prev = x
	}
	return changes
}

// span is max - min of the non-NaN values of xs; 0 if none.
func span(xs []float64) float64 {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, x := range xs {
		if !math.IsNaN(x) {
			lo, hi = min(lo, x), max(hi, x)
		}
	}
	if math.IsInf(lo, 1) {
		return 0
	}
	return hi - lo
}

// maxOf is the largest non-NaN value of xs; NaN if none.
func maxOf(xs []float64) float64 {
	m := math.NaN()
	for _, x := range xs {
		if !math.IsNaN(x) && (math.IsNaN(m) || x > m) {
			m = x
		}
	}
	return m
}

// weightShares turns each second's weights into fractions of their sum;
// NaN where the weights are unknown or all zero.
func weightShares(weights [][]float64) [][]float64 {
	if len(weights) == 0 {
		return nil
	}
	n := len(weights[0])
	out := make([][]float64, n)
	for i := range out {
		out[i] = make([]float64, len(weights))
	}
	for t, ws := range weights {
		var sum float64
		for _, w := range ws {
			sum += w
		}
		for i := range n {
			out[i][t] = math.NaN()
			if sum > 0 && !math.IsNaN(sum) {
				out[i][t] = ws[i] / sum
			}
		}
	}
	return out
}
