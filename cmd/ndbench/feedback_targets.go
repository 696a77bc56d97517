package main

import (
	"fmt"
	"math"
	"time"
)

// The targets of issue 10, as pure checks of a run's measures. Each
// returns the targets that apply to the run: those on weights and commits
// only for nd's balancers, which have them.

// Limits of the targets.
const (
	tgSlowMean   = 13 * time.Millisecond
	tgSlowP99    = 110 * time.Millisecond
	tgSlowP999   = 250 * time.Millisecond
	tgSettle     = 3 // seconds after a change or a recovery
	tgSinkFailed = 0.01
	// tgShareNoise is how far above its weight share a server's share (3 s
	// moving mean) may go before it counts as "more than its weight
	// share": counting noise, not allocation.
	tgShareNoise = 0.10
	tgEqualSlack = 0.05 // equal: within 5% of HAProxy's
	tgJoinFlood  = 1.5  // cold-add: never above 1.5x its share
	tgSizesSlack = 0.10 // sizes: shares within 10% of the weights
)

type fbTarget struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Met   bool   `json:"met"`
}

// fbMeasures are what the targets are checked on, derived from a run by
// measureRun. Times are seconds after the event; -1 never; -2 the share
// did not move at all; naSec (-3) does not apply to the scenario or the
// balancer.
type fbMeasures struct {
	// Key is the server the scenario is about: server1, or the late one.
	Key int `json:"key_server"`
	// Errors and the latency over every measured phase.
	All latencyStats `json:"all"`
	// ShareReact: the key server's share (3 s moving mean) reaches its
	// new level after the change (slow-down, sinkhole, join) and stays 3 s.
	ShareReact int `json:"share_react_s"`
	// ShareReturn: back within tolerance of its full share after the
	// recovery (slow-spell).
	ShareReturn int `json:"share_return_s"`
	// WeightSettle and WeightReturn: every weight (share of the total)
	// stays within its band from then on (nd only).
	WeightSettle int  `json:"weights_settle_s"`
	WeightReturn int  `json:"weights_return_s"`
	WeightsMoved bool `json:"weights_moved"`
	// KeyShare is the key server's share over the main phase, and
	// CapShare its share of the capacity there.
	KeyShare float64 `json:"key_share"`
	CapShare float64 `json:"capacity_share"`
	// CommitsPerMin is nd's weight commits a minute in the second half of
	// the last phase ("once settled"); TurnsPerMin the most direction
	// changes a minute of a weight's share of the total there (moves over
	// 2 points), and WeightRange the widest range of one.
	CommitsPerMin float64 `json:"commits_per_min_settled"`
	TurnsPerMin   float64 `json:"weight_turns_per_min_settled"`
	WeightRange   float64 `json:"weight_range_settled"`

	// Sinkhole: the requests due in the sinkhole phase, those that
	// failed, the detection (seconds after the sinkhole began from which
	// its per-second share stays below half its weight share; -1 never),
	// failures due after it, and the sinkhole's largest share (3 s
	// moving mean) in the phase.
	SinkRequests      int     `json:"sink_requests,omitempty"`
	SinkFailed        int     `json:"sink_failed,omitempty"`
	Detect            int     `json:"detect_s,omitempty"`
	FailedAfterDetect int     `json:"failed_after_detect,omitempty"`
	SinkMaxShare      float64 `json:"sink_max_share,omitempty"`

	// Cold-add: the late server's largest per-second share after it
	// joined.
	JoinMaxShare float64 `json:"join_max_share,omitempty"`

	// Sizes: each server's share in the second half of the steady
	// phase, and the largest |share/weight share - 1|.
	RestShares []float64 `json:"rest_shares,omitempty"`
	RestDev    float64   `json:"rest_deviation,omitempty"`
}

// naSec marks a time that does not apply.
const naSec = -3

func within(s, limit int) bool { return s >= 0 && s <= limit }

func secText(s int) string {
	switch s {
	case naSec:
		return "-"
	case -1:
		return "never"
	case -2:
		return "no change"
	}
	return fmt.Sprintf("%ds", s)
}

// slowTargets: 0 errors, mean, p99 and p99.9 in the slow phase, shares and
// (nd) weights settled within 3 s of the slow-down and, with a recovery,
// back within 3 s of it.
func slowTargets(m fbMeasures, slow latencyStats, recovery, nd bool) []fbTarget {
	var ts []fbTarget
	add := func(name, value string, met bool) { ts = append(ts, fbTarget{name, value, met}) }
	add("0 errors", fmt.Sprintf("%d of %d", m.All.Errors, m.All.Requests), m.All.Errors == 0)
	add("slow phase: mean <= 13 ms", ms(slow.Mean), slow.Requests > slow.Errors && slow.Mean <= tgSlowMean)
	add("slow phase: p99 <= 110 ms", ms(slow.P99), slow.Requests > slow.Errors && slow.P99 <= tgSlowP99)
	add("slow phase: p99.9 <= 250 ms", ms(slow.P999), slow.Requests > slow.Errors && slow.P999 <= tgSlowP999)
	add("shares settled within 3 s of the slow-down", secText(m.ShareReact), within(m.ShareReact, tgSettle))
	if nd {
		v := secText(m.WeightSettle)
		if !m.WeightsMoved {
			v += " (weights never moved)"
		}
		add("weights settled within 3 s of the slow-down", v, within(m.WeightSettle, tgSettle))
	}
	if recovery {
		add("shares back within 3 s of the recovery", secText(m.ShareReturn), within(m.ShareReturn, tgSettle))
		if nd {
			add("weights back within 3 s of the recovery", secText(m.WeightReturn), within(m.WeightReturn, tgSettle))
		}
	}
	return ts
}

// sinkTargets: at most 1% of the sinkhole phase's requests failed, none
// once the sinkhole was detected, and its share never above its weight
// share.
func sinkTargets(m fbMeasures, weightShare float64) []fbTarget {
	var ts []fbTarget
	add := func(name, value string, met bool) { ts = append(ts, fbTarget{name, value, met}) }
	frac := 0.0
	if m.SinkRequests > 0 {
		frac = float64(m.SinkFailed) / float64(m.SinkRequests)
	}
	add("<= 1% of requests failed over the sinkhole phase", fmt.Sprintf("%.2f%% (%d of %d)", 100*frac, m.SinkFailed, m.SinkRequests),
		m.SinkRequests > 0 && frac <= tgSinkFailed)
	v := fmt.Sprintf("%d after detection at %s", m.FailedAfterDetect, secText(m.Detect))
	add("no failures once detected", v, m.Detect >= 0 && m.FailedAfterDetect == 0)
	add("sinkhole never above its weight share", fmt.Sprintf("max %.1f%% (weight share %.1f%%)", 100*m.SinkMaxShare, 100*weightShare),
		m.SinkMaxShare <= weightShare*(1+tgShareNoise))
	return ts
}

// equalTargets: mean and p99.9 within 5% of the best HAProxy
// least-connections run's (ok false: none measured).
func equalTargets(steady, haproxy latencyStats, ok bool) []fbTarget {
	if !ok {
		return []fbTarget{{"mean and p99.9 within 5% of HAProxy leastconn", "no HAProxy run to compare with", false}}
	}
	return []fbTarget{
		{"mean within 5% of HAProxy leastconn's", fmt.Sprintf("%s vs %s", ms(steady.Mean), ms(haproxy.Mean)),
			steady.Requests > steady.Errors && float64(steady.Mean) <= (1+tgEqualSlack)*float64(haproxy.Mean)},
		{"p99.9 within 5% of HAProxy leastconn's", fmt.Sprintf("%s vs %s", ms(steady.P999), ms(haproxy.P999)),
			steady.Requests > steady.Errors && float64(steady.P999) <= (1+tgEqualSlack)*float64(haproxy.P999)},
	}
}

// coldAddTargets: the late server at its share within 3 s of joining,
// never above 1.5x it, and no errors.
func coldAddTargets(m fbMeasures, share float64) []fbTarget {
	return []fbTarget{
		{"joined server at its share within 3 s", secText(m.ShareReact), within(m.ShareReact, tgSettle)},
		{"joined server never above 1.5x its share", fmt.Sprintf("max %.1f%% (limit %.1f%%)", 100*m.JoinMaxShare, 100*tgJoinFlood*share),
			m.JoinMaxShare <= tgJoinFlood*share},
		{"0 errors", fmt.Sprintf("%d of %d", m.All.Errors, m.All.Requests), m.All.Errors == 0},
	}
}

// sizesTargets: shares within 10% of the weights' at rest, and (nd) no
// commits once settled.
func sizesTargets(m fbMeasures, weightShares []float64, nd bool) []fbTarget {
	ts := []fbTarget{{"shares within 10% of the weights at rest", fmt.Sprintf("%s vs %s (off by %.0f%%)", pct(m.RestShares), pct(weightShares), 100*m.RestDev),
		len(m.RestShares) > 0 && m.RestDev <= tgSizesSlack}}
	if nd {
		ts = append(ts, fbTarget{"0 commits a minute once settled", fmt.Sprintf("%.1f a minute", m.CommitsPerMin), m.CommitsPerMin == 0})
	}
	return ts
}

// beats compares a run's latency with an HAProxy run's over the same
// phase: lower mean and lower p99.9, and no more errors.
func beats(run, haproxy latencyStats, haName string) []fbTarget {
	ok := run.Requests > run.Errors && haproxy.Requests > haproxy.Errors
	return []fbTarget{
		{"beats " + haName + ": mean", fmt.Sprintf("%s vs %s", ms(run.Mean), ms(haproxy.Mean)), ok && run.Mean < haproxy.Mean},
		{"beats " + haName + ": p99.9", fmt.Sprintf("%s vs %s", ms(run.P999), ms(haproxy.P999)), ok && run.P999 < haproxy.P999},
		{"beats " + haName + ": errors", fmt.Sprintf("%d vs %d", run.Errors, haproxy.Errors), ok && run.Errors <= haproxy.Errors},
	}
}

// detection is the first second t in [from, to) from which the per-second
// share xs stays below limit to the end of [from, to), as seconds after
// from; -1 if the share is not below limit in the phase's last second.
// NaN seconds (no requests at all) count as below.
func detection(xs []float64, from, to int, limit float64) int {
	to = min(to, len(xs))
	at := -1
	for t := to - 1; t >= from; t-- {
		if !math.IsNaN(xs[t]) && xs[t] >= limit {
			break
		}
		at = t
	}
	if at < 0 {
		return -1
	}
	return at - from
}

// failedFrom counts the failed requests due in [from, to).
func failedFrom(recs []record, from, to time.Duration) int {
	n := 0
	for _, r := range recs {
		if r.At >= from && r.At < to && r.Err != "" {
			n++
		}
	}
	return n
}

// perMinute is the events of seconds [from, to) of xs, a minute.
func perMinute(xs []int, from, to int) float64 {
	to = min(to, len(xs))
	if to <= from {
		return 0
	}
	n := 0
	for _, x := range xs[from:to] {
		n += x
	}
	return float64(n) * 60 / float64(to-from)
}

// maxRelDev is the largest |got[i]/want[i] - 1|.
func maxRelDev(got, want []float64) float64 {
	d := 0.0
	for i := range min(len(got), len(want)) {
		if want[i] > 0 {
			d = max(d, math.Abs(got[i]/want[i]-1))
		}
	}
	return d
}
