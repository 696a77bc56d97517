package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/lab"
)

// feedbackOptions are the flags of `ndbench feedback`.
type feedbackOptions struct {
	workers    int
	queue      int
	load       float64
	slowdown   float64
	warmup     time.Duration
	phaseScale float64
	scenarios  []string
	balancers  []balancerSpec
	ndd        string
	out        string
	timeout    time.Duration
	seed       uint64
}

// runOverhead is a run's time besides its load: starting the servers and
// the balancer, letting the queues drain, stopping.
const runOverhead = 4 * time.Second

// estimate is how long the bench should take: every run's phases plus
// its overhead.
func (o feedbackOptions) estimate() time.Duration {
	var d time.Duration
	for _, name := range o.scenarios {
		sc, err := buildScenario(name, o)
		if err != nil {
			continue
		}
		for _, b := range o.balancers {
			if b.appliesTo(sc) {
				d += time.Duration(sc.seconds())*time.Second + runOverhead
			}
		}
	}
	return d
}

func parseFeedbackOptions(args []string, stderr io.Writer) (feedbackOptions, error) {
	var o feedbackOptions
	var scenarios, balancers string
	var quick bool
	fs := newFlagSet("ndbench feedback", stderr,
		"usage: ndbench feedback [flags]\n\n"+
			"Builds a lab and runs the allocation cases of issue 10 (a slow server from the start\n"+
			"or for a spell, a sinkhole with failing or passing health checks, equal servers, a\n"+
			"server added cold, servers of sizes 1:2:4) under open-loop heavy-tailed load, once\n"+
			"per balancer: nd out of the box, nd with p2c, and HAProxy leastconn with and without\n"+
			"health checks. Reports latency, errors, shares, weights and each target as met or\n"+
			"not. Must run as root; removes the lab on exit. See docs/FEEDBACK-BENCH.md.\n\n")
	fs.IntVar(&o.workers, "workers", 8, "requests each server serves at once, C; the rest queue (sizes: C/2, C, 2C)")
	fs.IntVar(&o.queue, "queue", 1000, "requests each server queues at most; more are turned away (an error)")
	fs.Float64Var(&o.load, "load", 0.7, "offered load as a fraction of the scenario's capacity")
	fs.Float64Var(&o.slowdown, "slowdown", 4, "how much slower server1 serves in the slow scenarios")
	fs.DurationVar(&o.warmup, "warmup", 5*time.Second, "first phase of every run, not measured")
	fs.Float64Var(&o.phaseScale, "phase-scale", 1, "multiplies every phase's length but the warm-up (0.1 to 4; each at least 2 s)")
	fs.BoolVar(&quick, "quick", false, "a smoke run: --phase-scale 0.3 --warmup 2s")
	fs.StringVar(&scenarios, "scenarios", strings.Join(scenarioNames, ","), "scenarios to run, comma-separated, in order")
	fs.StringVar(&balancers, "balancers", "nd,nd-p2c,haproxy-checks,haproxy,haproxy-oracle", "balancers to run in each scenario, comma-separated, in order")
	fs.StringVar(&o.ndd, "ndd", "", "the ndd binary (default: build ./cmd/ndd into a temporary directory)")
	fs.StringVar(&o.out, "out", "", "directory to write feedback.json and the feedback-*.svg plots to (default: none)")
	fs.DurationVar(&o.timeout, "timeout", 45*time.Minute, "give up, clean up and report what was measured after this long")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the arrivals and request classes; every balancer gets the same sequence")
	if err := parseFlags(fs, args); err != nil {
		return o, err
	}
	if quick {
		o.phaseScale, o.warmup = 0.3, 2*time.Second
	}
	seen := map[string]bool{}
	for _, n := range strings.Split(scenarios, ",") {
		n = strings.TrimSpace(n)
		if !slices.Contains(scenarioNames, n) || seen[n] {
			return o, fmt.Errorf("%w: --scenarios: unknown or repeated scenario %q (know %s)", errUsage, n, strings.Join(scenarioNames, ", "))
		}
		seen[n] = true
		o.scenarios = append(o.scenarios, n)
	}
	for _, n := range strings.Split(balancers, ",") {
		b, ok := findBalancer(strings.TrimSpace(n))
		if !ok || seen[b.Name] {
			return o, fmt.Errorf("%w: --balancers: unknown or repeated balancer %q", errUsage, n)
		}
		seen[b.Name] = true
		o.balancers = append(o.balancers, b)
	}
	switch {
	case o.workers < 2 || o.workers > 64:
		return o, fmt.Errorf("%w: --workers %d: want 2 to 64", errUsage, o.workers)
	case o.queue < 1 || o.queue > 100_000:
		return o, fmt.Errorf("%w: --queue %d: want 1 to 100000", errUsage, o.queue)
	case !(o.load > 0 && o.load <= 1.5):
		return o, fmt.Errorf("%w: --load %g: want more than 0, at most 1.5", errUsage, o.load)
	case !(o.slowdown >= 1 && o.slowdown <= 100):
		return o, fmt.Errorf("%w: --slowdown %g: want 1 to 100", errUsage, o.slowdown)
	case o.warmup < 0 || o.warmup > 5*time.Minute || o.warmup%time.Second != 0:
		return o, fmt.Errorf("%w: --warmup %v: want whole seconds, 0 to 5m", errUsage, o.warmup)
	case !(o.phaseScale >= 0.1 && o.phaseScale <= 4):
		return o, fmt.Errorf("%w: --phase-scale %g: want 0.1 to 4", errUsage, o.phaseScale)
	case o.timeout <= 0:
		return o, fmt.Errorf("%w: --timeout %v: want more than 0", errUsage, o.timeout)
	}
	for _, n := range o.scenarios {
		sc, err := buildScenario(n, o)
		if err != nil {
			return o, err
		}
		if sc.Rate > 20_000 {
			return o, fmt.Errorf("%w: %s: %.0f requests/s is more than this bench offers (20000)", errUsage, n, sc.Rate)
		}
	}
	return o, nil
}

// runFeedback is `ndbench feedback`.
func runFeedback(args []string, e env) int {
	o, err := parseFeedbackOptions(args, e.stderr)
	return runBench(e, "ndbench feedback", err, "it builds network namespaces and runs ndd and haproxy in them", o.timeout, func(ctx context.Context, logf func(string, ...any)) error {
		return reportFeedback(ctx, o, e, logf)
	})
}

// reportFeedback runs the scenarios and writes the report.
func reportFeedback(ctx context.Context, o feedbackOptions, e env, logf func(string, ...any)) error {
	logf("ndbench feedback: %d scenarios x %d balancers, servers of %d workers, load %.0f%%; about %v",
		len(o.scenarios), len(o.balancers), o.workers, 100*o.load, o.estimate().Round(time.Second))

	rep, runErr := runFeedbackBench(ctx, o, logf)
	rep.analyse()
	rep.writeTable(e.stdout)
	if o.out != "" {
		if err := rep.writeFiles(o.out); err != nil {
			runErr = errors.Join(runErr, err)
		} else {
			logf("wrote %s", filepath.Join(o.out, "feedback.json")+" and the feedback-*.svg plots")
		}
	}
	return runErr
}

// runFeedbackBench builds the lab and the client, runs every balancer in
// every scenario, each run with fresh servers and a fresh balancer, and
// always tears everything down.
func runFeedbackBench(ctx context.Context, o feedbackOptions, logf func(string, ...any)) (_ *fbReport, err error) {
	rep := newFBReport(o)
	l, err := newCheckedLab(ctx, lab.Options{Servers: 4}, logf)
	if err != nil {
		return rep, err
	}
	defer func() { err = errors.Join(err, l.Close()) }()
	if err := (&bench{lab: l}).prepareClient(); err != nil {
		return rep, err
	}
	dir, err := os.MkdirTemp("", l.Prefix+"-feedback-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(dir)
	nddPath := o.ndd
	if nddPath == "" && slices.ContainsFunc(o.balancers, balancerSpec.isND) {
		logf("building ndd")
		if nddPath, err = buildNDD(ctx, dir); err != nil {
			return rep, err
		}
	}
	g, err := startGenerator(ctx, &l.Client)
	if err != nil {
		return rep, err
	}
	defer g.stop()

	for _, name := range o.scenarios {
		sc, err := buildScenario(name, o)
		if err != nil {
			return rep, err
		}
		sr := &fbScenario{scenario: sc}
		for i := range sc.Workers {
			sr.Servers = append(sr.Servers, l.Servers[i].Name)
		}
		rep.Scenarios = append(rep.Scenarios, sr)
		for _, b := range o.balancers {
			run := &fbRun{Balancer: b.Name, About: b.About, nd: b.isND()}
			sr.Runs = append(sr.Runs, run)
			rdir := filepath.Join(dir, sc.Name+"-"+b.Name)
			if err := os.MkdirAll(rdir, 0o700); err != nil {
				return rep, err
			}
			rerr := runOne(ctx, o, sc, b, l, g, nddPath, rdir, run, logf)
			keepLog(o.out, rdir, sc.Name+"-"+b.Name, logf)
			switch {
			case errors.Is(rerr, errNotAvailable), errors.Is(rerr, errNotApplicable):
				run.Skipped = rerr.Error()
				logf("%s / %s: skipped: %v", sc.Name, b.Name, rerr)
			case rerr != nil:
				run.Error = rerr.Error()
				logf("%s / %s: %v", sc.Name, b.Name, rerr)
				if ctx.Err() != nil {
					return rep, rerr
				}
			}
		}
	}
	return rep, nil
}

// keepLog copies ndd's log of a run, if it wrote one, into the output
// directory as ndd-<run>.log: what the manager decided, and why.
func keepLog(out, rdir, name string, logf func(string, ...any)) {
	if out == "" {
		return
	}
	b, err := os.ReadFile(filepath.Join(rdir, "ndd.log"))
	if err != nil {
		return
	}
	if err := os.MkdirAll(out, 0o755); err == nil {
		err = os.WriteFile(filepath.Join(out, "ndd-"+name+".log"), b, 0o644)
	}
	if err != nil {
		logf("keep ndd's log of %s: %v", name, err)
	}
}

// runOne runs balancer b through scenario sc: fresh servers, the
// balancer, the events on schedule, the load, a sample every second; and
// it stops the balancer and the servers on every way out.
func runOne(ctx context.Context, o feedbackOptions, sc *scenario, b balancerSpec, l *lab.Lab,
	g *generator, nddPath, dir string, run *fbRun, logf func(string, ...any)) (err error) {
	if !b.appliesTo(sc) {
		return fmt.Errorf("%w: no server changes in %s: the oracle would be %s", errNotApplicable, sc.Name, balHAProxy)
	}
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	vip := netip.AddrPortFrom(l.VIP4, servicePort)
	var servers []*workServer
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	names := make([]string, len(sc.Workers))
	for i := range sc.Workers {
		h := &l.Servers[i]
		s, err := startWorkServer(sctx, h, sc.Workers[i], o.queue, vip, netip.AddrPortFrom(h.Addr4, servicePort))
		if err != nil {
			return err
		}
		servers = append(servers, s)
		names[i] = h.Name
	}
	apply := func(e fbEvent, bal runningBalancer) error {
		s := servers[e.Server]
		switch e.Kind {
		case evSlow:
			s.setSlowdown(sc.Slowdown)
		case evWell:
			s.setSlowdown(1)
		case evSinkBad:
			s.setSink(sinkFailing)
		case evSinkOK:
			s.setSink(sinkPassing)
		case evAdd:
			if bal != nil {
				return bal.add(e.Server)
			}
		}
		if h, ok := bal.(*haproxyRun); ok && b.oracle {
			return h.tell(e)
		}
		return nil
	}
	// What holds from the start holds before the balancer starts.
	for _, e := range sc.Events {
		if e.At == 0 && e.Kind != evAdd {
			apply(e, nil)
		}
	}
	var bal runningBalancer
	if b.isND() {
		bal, err = startND(ctx, b, sc, l, nddPath, dir)
	} else {
		bal, err = startHAProxy(ctx, b, sc, l, dir)
	}
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, bal.stop()) }()
	logf("%s / %s: ready; %ds of load at %.0f/s", sc.Name, b.Name, sc.seconds(), sc.Rate)

	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	seconds := sc.seconds()
	start := time.Now()
	var wg sync.WaitGroup
	var evErr error
	wg.Go(func() {
		for _, e := range sc.Events {
			if e.At == 0 && e.Kind != evAdd {
				continue
			}
			select {
			case <-rctx.Done():
				return
			case <-time.After(time.Until(start.Add(time.Duration(e.At) * time.Second))):
				if err := apply(e, bal); err != nil {
					evErr = fmt.Errorf("at %ds, %s %s: %w", e.At, names[e.Server], e.Kind, err)
				}
			}
		}
	})
	var cmu sync.Mutex
	run.Commits = make([]int, seconds)
	if b.isND() {
		wg.Go(func() {
			bal.follow(rctx, func(t time.Time) {
				if s := int(t.Sub(start) / time.Second); t.After(start) && s < seconds {
					cmu.Lock()
					run.Commits[s]++
					cmu.Unlock()
				}
			})
		})
	}
	run.Counts = make([][]int64, 0, seconds)
	run.LoadAvg[0] = loadAvg()
	for _, s := range servers {
		run.Expired -= s.expired.Load()
	}
	wg.Go(func() {
		prev := make([]int64, len(servers))
		for i, s := range servers {
			prev[i] = s.requests.Load()
		}
		var prevAsked, prevHeld int64
		for _, s := range servers {
			prevAsked += s.asked.Load()
			prevHeld += s.held.Load()
		}
		for t := 1; t <= seconds; t++ {
			select {
			case <-rctx.Done():
				return
			case <-time.After(time.Until(start.Add(time.Duration(t) * time.Second))):
			}
			counts := make([]int64, len(servers))
			var asked, held int64
			for i, s := range servers {
				n := s.requests.Load()
				counts[i], prev[i] = n-prev[i], n
				asked += s.asked.Load()
				held += s.held.Load()
			}
			run.Asked = append(run.Asked, asked-prevAsked)
			run.Held = append(run.Held, held-prevHeld)
			prevAsked, prevHeld = asked, held
			run.Counts = append(run.Counts, counts)
			if b.isND() {
				ws, ok := bal.weights()
				if !ok {
					ws = make([]float64, len(servers))
					for i := range ws {
						ws[i] = math.NaN()
					}
				}
				run.Weights = append(run.Weights, ws)
			}
		}
	})
	recs, lerr := openLoop(rctx, g, vip, names, sc.Rate, time.Duration(seconds)*time.Second, o.seed)
	rcancel()
	wg.Wait()
	run.LoadAvg[1] = loadAvg()
	for _, s := range servers {
		run.Expired += s.expired.Load()
	}
	run.records = recs
	if err := bal.alive(); err != nil {
		return err
	}
	// Let the servers' queues drain before the next run.
	time.Sleep(2 * time.Second)
	return errors.Join(lerr, evErr)
}

// loadAvg is the machine's one-minute load average, for the record: the
// servers' timers, the client and the dispatcher share the CPUs with
// everything else running.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// writeFiles writes the report as JSON and the plots into dir: for each
// scenario, one chart of every nd balancer's weights, shares and p99 over
// time, and one comparing the balancers.
func (r *fbReport) writeFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "feedback.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	for _, sc := range r.Scenarios {
		for _, run := range sc.Runs {
			if len(run.Counts) == 0 || !run.nd {
				continue
			}
			path := filepath.Join(dir, "feedback-"+sc.Name+"-"+run.Balancer+".svg")
			if err := writeSVGFile(path, func(w io.Writer) error { return sc.runSVG(w, run) }); err != nil {
				return err
			}
		}
		if err := writeSVGFile(filepath.Join(dir, "feedback-"+sc.Name+"-compare.svg"), sc.compareSVG); err != nil {
			return err
		}
	}
	return writeSVGFile(filepath.Join(dir, "feedback-latency.svg"), r.latencySVG)
}

func writeSVGFile(path string, fn func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
