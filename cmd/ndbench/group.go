package main

// `ndbench group` measures an active-active group of 1, 2 and 3 ndd
// dispatchers behind a router (BIRD, ECMP): how the router's spreading
// shares the packets, new connections through the VIP, connections kept
// when a dispatcher is killed, added back and drained, and what the
// group's synchronisation stream costs. See docs/SCALEOUT.md, Benchmark.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// groupOptions are the flags of `ndbench group`.
type groupOptions struct {
	dispatchers []int
	duration    time.Duration
	conns       int
	rate        float64
	out         string
	ndd         string
	timeout     time.Duration
}

const groupUsage = "usage: ndbench group [--dispatchers LIST] [--duration D] [--conns N] [--rate R] [--out FILE] [--ndd PATH] [--timeout D]\n\n" +
	"For each count of dispatchers, builds a lab with a router running BIRD (ECMP\n" +
	"over the L4 hash) in front of that many ndd in one active-active HA group, each\n" +
	"announcing the VIP over BGP, and measures: the share of the packets each\n" +
	"dispatcher saw, new connections per second and their latency through the VIP,\n" +
	"the sync stream's bytes and ndd's CPU per 1,000 new flows; and with two or more,\n" +
	"the long-lived connections kept when one dispatcher is killed (SIGKILL, link\n" +
	"down), added back (restarted empty) and drained, with the time from the event\n" +
	"to the router's last route change. On a small machine it measures correctness\n" +
	"of spreading and keeping flows more than speed. Must run as root; removes the\n" +
	"lab on exit.\n\n"

func parseGroupOptions(args []string, stderr io.Writer) (groupOptions, error) {
	var o groupOptions
	fs := newFlagSet("ndbench group", stderr, groupUsage)
	list := fs.String("dispatchers", "1,2,3", "counts of dispatchers to measure, comma-separated, each 1 to 3")
	fs.DurationVar(&o.duration, "duration", 6*time.Second, "length of every phase (steady, kill, add, drain); an event happens in its middle")
	fs.IntVar(&o.conns, "conns", 100, "long-lived connections held through each phase")
	fs.Float64Var(&o.rate, "rate", 100, "new connections per second opened through each phase")
	fs.StringVar(&o.out, "out", "", "also write the report as JSON to this file")
	fs.StringVar(&o.ndd, "ndd", "", "ndd binary to run (default: go build ./cmd/ndd into a temporary directory)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Minute, "give up, clean up and report what was measured after this long")
	if err := parseFlags(fs, args); err != nil {
		return o, err
	}
	ds, err := parseDispatchers(*list)
	if err != nil {
		return o, err
	}
	o.dispatchers = ds
	switch {
	case o.duration < 2*time.Second || o.duration > 2*time.Minute:
		return o, fmt.Errorf("%w: --duration %v: want 2s to 2m", errUsage, o.duration)
	case o.conns < 1 || o.conns > 1000:
		return o, fmt.Errorf("%w: --conns %d: want 1 to 1000", errUsage, o.conns)
	case !(o.rate >= 1 && o.rate <= 2000):
		return o, fmt.Errorf("%w: --rate %g: want 1 to 2000", errUsage, o.rate)
	case o.timeout <= 0:
		return o, fmt.Errorf("%w: --timeout %v: want more than 0", errUsage, o.timeout)
	}
	return o, nil
}

// parseDispatchers parses a list such as "1,2,3": counts of 1 to 3 (the
// lab's dispatchers), no repeats.
func parseDispatchers(s string) ([]int, error) {
	var out []int
	seen := map[int]bool{}
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 3 || seen[n] {
			return nil, fmt.Errorf("%w: --dispatchers %q: want distinct counts of 1 to 3, comma-separated", errUsage, s)
		}
		seen[n] = true
		out = append(out, n)
	}
	return out, nil
}

// groupPhase is what one phase measured.
type groupPhase struct {
	// Name is steady, kill, add or drain.
	Name string `json:"name"`
	// Event names the dispatcher the event hit; "" in steady.
	Event string `json:"event,omitempty"`
	// RouteChange is the time from the event to the last change of the
	// router's route to the VIP (when its next hops became the expected
	// ones).
	RouteChange time.Duration `json:"route_change_ns,omitempty"`
	// Conns long-lived connections open at the start; Kept of them
	// answered throughout and after.
	Conns int `json:"conns"`
	Kept  int `json:"kept"`
	// New connections: offered, succeeded, failed; per second achieved;
	// p50 and p99 of connect + one request + reply.
	NewOffered int           `json:"new_offered"`
	NewOK      int           `json:"new_ok"`
	NewFailed  int           `json:"new_failed"`
	ConnRate   float64       `json:"conns_per_sec"`
	P50        time.Duration `json:"p50_ns"`
	P99        time.Duration `json:"p99_ns"`
	Seconds    float64       `json:"seconds"`
}

// groupRun is one count of dispatchers.
type groupRun struct {
	Dispatchers int          `json:"dispatchers"`
	Phases      []groupPhase `json:"phases"`
	// Share is each dispatcher's share of the packets it forwarded in the
	// steady phase (ndd's port counters), in the dispatchers' order.
	Share []float64 `json:"share"`
	// Over the steady phase: the sync streams' bytes (sent, all nodes) and
	// the ndd processes' CPU (seconds, all nodes) per 1,000 new flows, and
	// that CPU as a fraction of one core.
	SyncBytesPer1k float64 `json:"sync_bytes_per_1k_flows"`
	// SyncRecordsPer1k: flow records sent on the streams (all nodes,
	// refreshes included) per 1,000 new flows.
	SyncRecordsPer1k float64 `json:"sync_records_per_1k_flows"`
	CPUSecPer1k      float64 `json:"cpu_sec_per_1k_flows"`
	CPUFraction      float64 `json:"cpu_fraction"`
	Error            string  `json:"error,omitempty"`
}

// groupReport is the bench's output.
type groupReport struct {
	Runs     []groupRun `json:"runs"`
	Duration string     `json:"duration"`
	Conns    int        `json:"conns"`
	Rate     float64    `json:"rate"`
	CPUs     int        `json:"cpus"`
	Kernel   string     `json:"kernel,omitempty"`
	Error    string     `json:"error,omitempty"`
}

func runGroup(args []string, e env) int {
	o, err := parseGroupOptions(args, e.stderr)
	return runBench(e, "ndbench group", err, "it builds network namespaces and runs ndd and BIRD", o.timeout, func(ctx context.Context, logf func(string, ...any)) error {
		return reportGroup(ctx, o, e, logf)
	})
}

// reportGroup measures each group size and prints the report; a size
// that failed is reported as it ends.
func reportGroup(ctx context.Context, o groupOptions, e env, logf func(string, ...any)) error {
	r := groupReport{Duration: o.duration.String(), Conns: o.conns, Rate: o.rate, CPUs: runtime.NumCPU(), Kernel: kernelRelease()}
	failed := false
	for _, n := range o.dispatchers {
		if ctx.Err() != nil {
			r.Error = ctx.Err().Error()
			failed = true
			break
		}
		logf("group of %d dispatcher(s)", n)
		gr, err := measureGroup(ctx, o, n, logf)
		if err != nil {
			gr.Error = err.Error()
			failed = true
			fmt.Fprintf(e.stderr, "ndbench group: %d dispatchers: %v\n", n, err)
		}
		r.Runs = append(r.Runs, gr)
	}
	r.writeTable(e.stdout)
	if o.out != "" {
		b, err := json.MarshalIndent(r, "", "  ")
		if err == nil {
			err = os.WriteFile(o.out, append(b, '\n'), 0o644)
		}
		if err != nil {
			return err
		}
	}
	if failed {
		return errReported
	}
	return nil
}

// writeTable prints one table of the phases and one of the steady
// phases' spreading and costs.
func (r groupReport) writeTable(w io.Writer) {
	fmt.Fprintf(w, "ndbench group: phases of %s, %d long-lived connections, %g new connections/s offered; %d CPUs, kernel %s\n",
		r.Duration, r.Conns, r.Rate, r.CPUs, r.Kernel)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "dispatchers\tphase\tevent\tto route change\tkept\tnew ok/offered\tconn/s\tp50\tp99\t")
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
	for _, run := range r.Runs {
		for _, p := range run.Phases {
			rc := "-"
			if p.Event != "" {
				rc = ms(p.RouteChange)
			}
			ev := p.Event
			if ev == "" {
				ev = "-"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d/%d\t%d/%d\t%.1f\t%s\t%s\t\n", run.Dispatchers, p.Name, ev, rc,
				p.Kept, p.Conns, p.NewOK, p.NewOffered, p.ConnRate, ms(p.P50), ms(p.P99))
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "dispatchers\tpacket share (steady)\tsync B/1k flows\tsync records/1k flows\tndd CPU s/1k flows\tndd CPU (cores)\t")
	for _, run := range r.Runs {
		var sh []string
		for _, s := range run.Share {
			sh = append(sh, fmt.Sprintf("%.1f%%", 100*s))
		}
		sync, recs := "-", "-" // one dispatcher: no group, no stream
		if run.Dispatchers > 1 {
			sync, recs = fmt.Sprintf("%.0f", run.SyncBytesPer1k), fmt.Sprintf("%.0f", run.SyncRecordsPer1k)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.3f\t%.3f\t\n", run.Dispatchers, strings.Join(sh, " "), sync, recs, run.CPUSecPer1k, run.CPUFraction)
	}
	tw.Flush()
	for _, run := range r.Runs {
		if run.Error != "" {
			fmt.Fprintf(w, "%d dispatchers stopped early: %s\n", run.Dispatchers, run.Error)
		}
	}
	if r.Error != "" {
		fmt.Fprintf(w, "stopped early: %s\n", r.Error)
	}
}
