package main

// `ndbench ha` measures failovers of an HA pair of ndd processes, as a
// client holding established connections sees them. See docs/HA-BENCH.md.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"slices"
	"text/tabwriter"
	"time"
)

// haOptions are the flags of `ndbench ha`.
type haOptions struct {
	failovers int
	conns     int
	period    time.Duration
	interval  time.Duration
	deadAfter time.Duration
	servers   int
	window    time.Duration
	idle      time.Duration
	hold      time.Duration
	refresh   time.Duration
	control   bool
	ndd       string
	timeout   time.Duration
	json      bool
}

func parseHAOptions(args []string, stderr io.Writer) (haOptions, error) {
	var o haOptions
	fs := newFlagSet("ndbench ha", stderr,
		"usage: ndbench ha [--failovers N] [--conns N] [--period D] [--interval D] [--dead-after D] [--servers N] [--window D]\n"+
			"                  [--idle-timeout D] [--hold D] [--refresh D] [--control=BOOL] [--ndd PATH] [--timeout D] [--json]\n\n"+
			"Builds a lab with two dispatchers running ndd as an HA pair and measures, over\n"+
			"crash failovers (SIGKILL and link down) and planned ones (takeover through the\n"+
			"API), the client's reply gap and the share of established connections that\n"+
			"survive. The connections run for --hold, longer than the idle timeout, and the\n"+
			"weights move after they open (half the servers to 0). With --control each crash\n"+
			"is repeated with the flow stream to the standby blocked. Must run as root;\n"+
			"removes the lab on exit.\n\n")
	fs.IntVar(&o.failovers, "failovers", 10, "failovers of each kind (crash, planned)")
	fs.IntVar(&o.conns, "conns", 50, "established connections through the VIP during each failover")
	fs.DurationVar(&o.period, "period", 10*time.Millisecond, "each connection sends a request this often")
	fs.DurationVar(&o.interval, "interval", 500*time.Millisecond, "ha.interval of both nodes (heartbeats)")
	fs.DurationVar(&o.deadAfter, "dead-after", 2*time.Second, "ha.dead_after of both nodes")
	fs.IntVar(&o.servers, "servers", 2, "real servers behind the VIP (1 to 8)")
	fs.DurationVar(&o.window, "window", 15*time.Second, "after a failover, how long a connection may take to answer again before it counts as lost")
	fs.DurationVar(&o.idle, "idle-timeout", 10*time.Second, "data_plane.idle_timeout of both nodes")
	fs.DurationVar(&o.hold, "hold", 0, "how long the connections run before the failover (default: the idle timeout plus 1s)")
	fs.DurationVar(&o.refresh, "refresh", 0, "ha.refresh of both nodes (default: ndd's, a quarter of the idle timeout)")
	fs.BoolVar(&o.control, "control", true, "repeat each crash with the flow stream to the standby blocked (kind crash-blocked)")
	fs.StringVar(&o.ndd, "ndd", "", "ndd binary to run (default: go build ./cmd/ndd into a temporary directory)")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Minute, "give up, clean up and report what was measured after this long")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON on stdout (the table goes to stderr)")
	if err := parseFlags(fs, args); err != nil {
		return o, err
	}
	if o.hold == 0 {
		o.hold = o.idle + time.Second
	}
	switch {
	case o.failovers < 1 || o.failovers > 100:
		return o, fmt.Errorf("%w: --failovers %d: want 1 to 100", errUsage, o.failovers)
	case o.conns < 1 || o.conns > 1000:
		return o, fmt.Errorf("%w: --conns %d: want 1 to 1000", errUsage, o.conns)
	case o.period < time.Millisecond || o.period > time.Second:
		return o, fmt.Errorf("%w: --period %v: want 1ms to 1s", errUsage, o.period)
	case o.interval < 10*time.Millisecond || o.interval > 10*time.Second:
		return o, fmt.Errorf("%w: --interval %v: want 10ms to 10s", errUsage, o.interval)
	case o.deadAfter < 2*o.interval || o.deadAfter > time.Minute:
		return o, fmt.Errorf("%w: --dead-after %v: want two intervals (%v) to 1m", errUsage, o.deadAfter, 2*o.interval)
	case o.servers < 1 || o.servers > 8:
		return o, fmt.Errorf("%w: --servers %d: want 1 to 8", errUsage, o.servers)
	case o.window < o.deadAfter+time.Second || o.window > 5*time.Minute:
		return o, fmt.Errorf("%w: --window %v: want dead-after + 1s (%v) to 5m", errUsage, o.window, o.deadAfter+time.Second)
	case o.idle < time.Second || o.idle > time.Hour:
		return o, fmt.Errorf("%w: --idle-timeout %v: want 1s to 1h", errUsage, o.idle)
	case o.hold < time.Second || o.hold > time.Hour:
		return o, fmt.Errorf("%w: --hold %v: want 1s to 1h", errUsage, o.hold)
	case o.refresh != 0 && (o.refresh < 100*time.Millisecond || o.refresh > o.idle/2):
		return o, fmt.Errorf("%w: --refresh %v: want 100ms to half the idle timeout (%v)", errUsage, o.refresh, o.idle/2)
	case o.timeout <= 0:
		return o, fmt.Errorf("%w: --timeout %v: want more than 0", errUsage, o.timeout)
	}
	return o, nil
}

// failover is what one failover measured.
type failover struct {
	Kind string `json:"kind"` // crash, crash-blocked (the control) or planned
	From string `json:"from"` // the active before
	To   string `json:"to"`
	// Control is how long the node taking over took to say it is active:
	// from the kill, or the takeover call's duration.
	Control time.Duration `json:"control_ns"`
	// Gap is the client's takeover time: the longest time in which no
	// established connection got a reply, from the last reply before the
	// failover to the first after it.
	Gap time.Duration `json:"gap_ns"`
	// PathGap is the longest silence of a datagram flow (one UDP socket
	// sending every period through the VIP): when the path itself was
	// broken, without TCP's retransmission back-off.
	PathGap time.Duration `json:"path_gap_ns"`
	// Stall is the median, over the surviving connections, of each one's
	// longest wait for a reply: what one connection's user notices, TCP
	// retransmission back-off included.
	Stall time.Duration `json:"stall_median_ns"`
	// Conns and Survived: connections established before the failover,
	// and how many answered again within the window.
	Conns    int `json:"conns"`
	Survived int `json:"survived"`
	// Over the hold, on the active: records of refresh rounds it sent,
	// rounds, and bytes on its synchronisation stream (all frames).
	Refreshed   uint64        `json:"refreshed"`
	Rounds      uint64        `json:"refresh_rounds"`
	StreamBytes uint64        `json:"stream_bytes"`
	Hold        time.Duration `json:"hold_ns"`
}

// syncRate is the stream's bytes per connection per minute over the hold.
func (f failover) syncRate() float64 {
	if f.Conns == 0 || f.Hold <= 0 {
		return 0
	}
	return float64(f.StreamBytes) / float64(f.Conns) / f.Hold.Minutes()
}

func (f failover) survival() float64 { return float64(f.Survived) / float64(max(f.Conns, 1)) }

// haReport is the bench's output.
type haReport struct {
	Failovers []failover `json:"failovers"`
	Interval  string     `json:"interval"`
	DeadAfter string     `json:"dead_after"`
	Period    string     `json:"period"`
	Idle      string     `json:"idle_timeout"`
	Hold      string     `json:"hold"`
	Refresh   string     `json:"refresh"`
	CPUs      int        `json:"cpus"`
	Kernel    string     `json:"kernel,omitempty"`
	Error     string     `json:"error,omitempty"`
}

func runHA(args []string, e env) int {
	o, err := parseHAOptions(args, e.stderr)
	return runBench(e, "ndbench ha", err, "it builds network namespaces and runs ndd", o.timeout, func(ctx context.Context, logf func(string, ...any)) error {
		return reportHA(ctx, o, e, logf)
	})
}

// reportHA measures the failovers and prints the report.
func reportHA(ctx context.Context, o haOptions, e env, logf func(string, ...any)) error {
	refresh := "default"
	if o.refresh > 0 {
		refresh = o.refresh.String()
	}
	r := haReport{Interval: o.interval.String(), DeadAfter: o.deadAfter.String(), Period: o.period.String(),
		Idle: o.idle.String(), Hold: o.hold.String(), Refresh: refresh, CPUs: runtime.NumCPU(), Kernel: kernelRelease()}
	fs, runErr := measureHA(ctx, o, logf)
	r.Failovers = fs
	if runErr != nil {
		r.Error = runErr.Error()
	}
	out := e.stdout
	if o.json {
		out = e.stderr
	}
	r.writeTable(out)
	if o.json {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return runErr
}

// measureHA builds the pair, runs the failovers and always tears it down.
func measureHA(ctx context.Context, o haOptions, logf func(string, ...any)) (_ []failover, err error) {
	p, err := newHAPair(ctx, o, logf)
	if err != nil {
		return nil, err
	}
	defer closeInto(&err, p)
	var out []failover
	// Crashes and planned takeovers alternate, so that both see the same
	// conditions over the run.
	kinds := []string{"crash", "planned"}
	if o.control {
		kinds = []string{"crash", "crash-blocked", "planned"}
	}
	for i := range o.failovers {
		for _, kind := range kinds {
			if err := ctx.Err(); err != nil {
				return out, err
			}
			f, err := p.failover(ctx, kind)
			if err != nil {
				return out, fmt.Errorf("%s failover %d: %w", kind, i+1, err)
			}
			logf("%s %d: %s -> %s: control %v, path gap %v, client gap %v, median stall %v, %d of %d connections survived; sync stream %d bytes, %d records refreshed in %d rounds over %v",
				kind, i+1, f.From, f.To, f.Control.Round(time.Millisecond), f.PathGap.Round(time.Millisecond),
				f.Gap.Round(time.Millisecond), f.Stall.Round(time.Millisecond), f.Survived, f.Conns,
				f.StreamBytes, f.Refreshed, f.Rounds, f.Hold.Round(time.Millisecond))
			out = append(out, f)
		}
	}
	return out, nil
}

// writeTable prints min / median / max per kind.
func (r haReport) writeTable(w io.Writer) {
	fmt.Fprintf(w, "ndbench ha: heartbeats every %s, dead after %s; a request every %s on each connection, held %s (idle timeout %s, refresh %s), weights moved after they opened; %d CPUs, kernel %s\n",
		r.Interval, r.DeadAfter, r.Period, r.Hold, r.Idle, r.Refresh, r.CPUs, r.Kernel)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kind\tn\tgap min\tgap median\tgap max\tpath gap min\tmedian\tmax\tstall median\tcontrol median\tsurvived\tsurvival min\tsync B/conn/min\t")
	for _, kind := range []string{"crash", "crash-blocked", "planned"} {
		var gaps, paths, stalls, controls []time.Duration
		var rates []float64
		conns, survived, minSurv := 0, 0, 1.0
		for _, f := range r.Failovers {
			if f.Kind != kind {
				continue
			}
			gaps, stalls, controls = append(gaps, f.Gap), append(stalls, f.Stall), append(controls, f.Control)
			paths = append(paths, f.PathGap)
			rates = append(rates, f.syncRate())
			conns += f.Conns
			survived += f.Survived
			minSurv = min(minSurv, f.survival())
		}
		if len(gaps) == 0 {
			continue
		}
		slices.Sort(gaps)
		slices.Sort(paths)
		ms := func(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }
		slices.Sort(rates)
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d (%.2f%%)\t%.2f%%\t%.0f\t\n", kind, len(gaps),
			ms(gaps[0]), ms(median(gaps)), ms(gaps[len(gaps)-1]),
			ms(paths[0]), ms(median(paths)), ms(paths[len(paths)-1]), ms(median(stalls)), ms(median(controls)),
			survived, conns, 100*float64(survived)/float64(max(conns, 1)), 100*minSurv, rates[len(rates)/2])
	}
	tw.Flush()
	if r.Error != "" {
		fmt.Fprintf(w, "stopped early: %s\n", r.Error)
	}
}
