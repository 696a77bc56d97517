package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// summary is one configuration over every round: medians of the rounds'
// figures, and the latency phases' errors summed.
type summary struct {
	Config   string  `json:"config"`
	XDPMode  string  `json:"xdp_mode"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
	Errors   int     `json:"errors"`
	Requests int     `json:"requests"`
	MaxRate  float64 `json:"max_rate"`
	// The dispatcher's XDP program's run time in the latency phase, by the
	// kernel's statistics, per frame and per request: medians over rounds,
	// 0 when not measured.
	XDPNsPerPacket  float64       `json:"xdp_ns_per_packet"`
	XDPNsPerRequest float64       `json:"xdp_ns_per_request"`
	Rounds          []roundResult `json:"rounds"`
}

// ratio compares two configurations: the ratio of their medians, and the
// median of the ratios within each round, where both met the same
// conditions.
type ratio struct {
	Name           string    `json:"name"`
	Value          float64   `json:"value"`
	PerRound       []float64 `json:"per_round"`
	MedianOfRounds float64   `json:"median_of_rounds"`
	Target         string    `json:"target,omitempty"`
	Met            *bool     `json:"met,omitempty"`
}

// report is the whole result, as printed and as JSON.
type report struct {
	Servers        int       `json:"servers"`
	Rounds         int       `json:"rounds"`
	RoundsDone     int       `json:"rounds_done"`
	Rate           float64   `json:"latency_rate"`
	LatencyOnly    bool      `json:"latency_only,omitempty"`
	StepDuration   string    `json:"step_duration"`
	RequestTimeout string    `json:"request_timeout"`
	CPUs           int       `json:"cpus"`
	Kernel         string    `json:"kernel"`
	Configs        []summary `json:"configs"`
	Ratios         []ratio   `json:"ratios"`
	Error          string    `json:"error,omitempty"`
}

func newReport(o options, results map[string][]roundResult) *report {
	r := &report{
		Servers:        o.servers,
		Rounds:         o.rounds,
		Rate:           o.rate,
		LatencyOnly:    o.latencyOnly,
		StepDuration:   o.duration.String(),
		RequestTimeout: requestTimeout.String(),
	}
	byName := map[string]summary{}
	r.RoundsDone = o.rounds
	for _, cfg := range o.configs() {
		rs := results[cfg]
		r.RoundsDone = min(r.RoundsDone, len(rs))
		s := summary{Config: cfg, Rounds: rs, XDPMode: "none"}
		var p50, p99, maxRate, perPacket, perRequest []float64
		for _, rr := range rs {
			if rr.XDP.Runs > 0 {
				perPacket = append(perPacket, float64(rr.XDP.PerPacket()))
				perRequest = append(perRequest, float64(rr.XDP.PerRequest()))
			}
			p50 = append(p50, micros(rr.Latency.P50))
			p99 = append(p99, micros(rr.Latency.P99))
			maxRate = append(maxRate, rr.MaxRate)
			s.Errors += rr.Latency.Errors + rr.Latency.Planned - rr.Latency.Sent
			s.Requests += rr.Latency.Planned
			s.XDPMode = rr.XDPMode
		}
		s.P50us, s.P99us, s.MaxRate = median(p50), median(p99), median(maxRate)
		s.XDPNsPerPacket, s.XDPNsPerRequest = median(perPacket), median(perRequest)
		byName[cfg] = s
		r.Configs = append(r.Configs, s)
	}

	p50 := func(rr roundResult) float64 { return micros(rr.Latency.P50) }
	maxRate := func(rr roundResult) float64 { return rr.MaxRate }
	add := func(name, num, den string, value func(roundResult) float64, target string, met func(float64) bool) {
		n, d := byName[num], byName[den]
		rt := ratio{Name: name, Target: target}
		var nv, dv []float64
		for i := range min(len(n.Rounds), len(d.Rounds)) {
			a, b := value(n.Rounds[i]), value(d.Rounds[i])
			nv, dv = append(nv, a), append(dv, b)
			rt.PerRound = append(rt.PerRound, div(a, b))
		}
		rt.Value = div(median(nv), median(dv))
		rt.MedianOfRounds = median(rt.PerRound)
		if met != nil && rt.Value > 0 {
			ok := met(rt.Value)
			rt.Met = &ok
		}
		r.Ratios = append(r.Ratios, rt)
	}
	add("nd p50 / direct p50", cfgND, cfgDirect, p50, "<= 1.10", func(v float64) bool { return v <= 1.10 })
	add("nd max rate / trivial max rate", cfgND, cfgTrivial, maxRate, ">= 0.95", func(v float64) bool { return v >= 0.95 })
	add("trivial p50 / direct p50 (the hop alone)", cfgTrivial, cfgDirect, p50, "", nil)
	add("nd p50 / trivial p50 (nd's own work)", cfgND, cfgTrivial, p50, "", nil)
	add("trivial max rate / direct max rate", cfgTrivial, cfgDirect, maxRate, "", nil)
	if o.directAll {
		add("nd p50 / direct-all p50", cfgND, cfgDirectAll, p50, "", nil)
		add("nd max rate / direct-all max rate", cfgND, cfgDirectAll, maxRate, "", nil)
		add("direct-all p50 / direct p50 (spreading)", cfgDirectAll, cfgDirect, p50, "", nil)
	}
	return r
}

// writeTable prints the report for people.
func (r *report) writeTable(w io.Writer) {
	fmt.Fprintf(w, "ndbench: %d servers, %d of %d rounds, %d CPUs, kernel %s\n", r.Servers, r.RoundsDone, r.Rounds, r.CPUs, r.Kernel)
	if r.LatencyOnly {
		fmt.Fprintf(w, "latency at %g new connections/s for %s (no rate search); medians over rounds\n\n", r.Rate, r.StepDuration)
	} else {
		fmt.Fprintf(w, "latency at %g new connections/s for %s; highest rate with under 1%% errors, steps of %s; medians over rounds\n\n",
			r.Rate, r.StepDuration, r.StepDuration)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "config\tXDP\tp50\tp99\terrors\tmax rate/s\trounds: p50 | max rate\t\n")
	for _, s := range r.Configs {
		var p50s, rates []string
		for _, rr := range s.Rounds {
			p50s = append(p50s, fmt.Sprintf("%.0f", micros(rr.Latency.P50)))
			rates = append(rates, fmt.Sprintf("%.0f", rr.MaxRate))
		}
		maxRate, perRound := "-", strings.Join(p50s, " ")
		if s.MaxRate > 0 {
			maxRate, perRound = fmt.Sprintf("%.0f", s.MaxRate), perRound+" | "+strings.Join(rates, " ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1fµs\t%.1fµs\t%d/%d\t%s\t%s\t\n", s.Config, s.XDPMode,
			s.P50us, s.P99us, s.Errors, s.Requests, maxRate, perRound)
	}
	tw.Flush()
	fmt.Fprintln(w)
	r.writeXDPCost(w)
	for _, rt := range r.Ratios {
		if rt.Value == 0 {
			fmt.Fprintf(w, "%-42s not measured\n", rt.Name)
			continue
		}
		verdict := ""
		if rt.Met != nil {
			verdict = fmt.Sprintf("  target %s: ", rt.Target)
			if *rt.Met {
				verdict += "met"
			} else {
				verdict += "MISSED"
			}
		}
		var per []string
		for _, v := range rt.PerRound {
			per = append(per, fmt.Sprintf("%.3f", v))
		}
		fmt.Fprintf(w, "%-42s %.3f%s\n%-42s per round %s, median %.3f\n", rt.Name, rt.Value, verdict, "", strings.Join(per, " "), rt.MedianOfRounds)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "\nincomplete: %s\n", r.Error)
	}
}

// writeXDPCost prints how long the forwarders' programs ran, which tells
// the forwarder's own work from the path around it far more precisely than
// a difference of latencies can.
func (r *report) writeXDPCost(w io.Writer) {
	byName := map[string]summary{}
	for _, s := range r.Configs {
		byName[s.Config] = s
	}
	nd, trivial, direct := byName[cfgND], byName[cfgTrivial], byName[cfgDirect]
	if nd.XDPNsPerPacket == 0 || trivial.XDPNsPerPacket == 0 {
		fmt.Fprintf(w, "XDP program run time: not measured (no kernel statistics)\n\n")
		return
	}
	fmt.Fprintf(w, "XDP program run time in the latency phase (kernel statistics), medians over rounds:\n")
	for _, s := range []summary{trivial, nd} {
		fmt.Fprintf(w, "  %-8s %6.0f ns a frame, %5.2f µs a request\n", s.Config, s.XDPNsPerPacket, s.XDPNsPerRequest/1000)
	}
	if direct.P50us > 0 {
		extra := (nd.XDPNsPerRequest - trivial.XDPNsPerRequest) / 1000
		fmt.Fprintf(w, "  nd's program beyond the trivial one: %.2f µs a request, %.1f%% of direct's p50 if every frame were on the request's path\n",
			extra, 100*extra/direct.P50us)
	}
	fmt.Fprintln(w)
}

// writeJSON prints the report for programs.
func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// median of the values; 0 for none.
func median[T float64 | time.Duration](v []T) T {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// div is a/b, or 0 (not measured) when b is 0.
func div(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
