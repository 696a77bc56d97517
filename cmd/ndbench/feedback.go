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
	"strings"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/lab"
)

// feedbackOptions are the flags of `ndbench feedback`.
type feedbackOptions struct {
	servers  int
	workers  int
	queue    int
	load     float64
	slowdown float64
	warmup   time.Duration
	normal   time.Duration
	slow     time.Duration
	recovery time.Duration
	variants []variant
	ndd      string
	out      string
	timeout  time.Duration
	seed     uint64
}

// capacity is the cluster's nominal capacity in requests a second: each
// server completes workers requests per mean service time.
func (o feedbackOptions) capacity() float64 {
	return float64(o.servers*o.workers) / meanWork.Seconds()
}

func (o feedbackOptions) rate() float64 { return o.load * o.capacity() }

func (o feedbackOptions) total() time.Duration { return o.warmup + o.normal + o.slow + o.recovery }

func parseFeedbackOptions(args []string, stderr io.Writer) (feedbackOptions, error) {
	var o feedbackOptions
	var names string
	fs := newFlagSet("ndbench feedback", stderr,
		"usage: ndbench feedback [flags]\n\n"+
			"Builds a lab, runs 4 servers of C workers each under open-loop heavy-tailed load,\n"+
			"slows server1 down and lets it recover, once per variant of nd's feedback loop,\n"+
			"and reports latency, errors, shares, reaction times and weight oscillation.\n"+
			"Must run as root; removes the lab on exit. See docs/FEEDBACK-BENCH.md.\n\n")
	fs.IntVar(&o.servers, "servers", 4, "servers behind the VIP (2 to 8); server1 is the one slowed down")
	fs.IntVar(&o.workers, "workers", 4, "requests each server serves at once, C; the rest queue")
	fs.IntVar(&o.queue, "queue", 1000, "requests each server queues at most; more are turned away (an error)")
	fs.Float64Var(&o.load, "load", 0.7, "offered load as a fraction of the cluster's nominal capacity")
	fs.Float64Var(&o.slowdown, "slowdown", 4, "how much slower server1 serves during the slow phase")
	fs.DurationVar(&o.warmup, "warmup", 20*time.Second, "first phase, not measured")
	fs.DurationVar(&o.normal, "normal", 20*time.Second, "phase with every server at full speed")
	fs.DurationVar(&o.slow, "slow", 40*time.Second, "phase with server1 slowed down")
	fs.DurationVar(&o.recovery, "recovery", 40*time.Second, "phase after server1 recovered")
	fs.StringVar(&names, "variants", "static,manager-default,manager-advisor,p2c-manager", "variants to run, comma-separated, in order")
	fs.StringVar(&o.ndd, "ndd", "", "the ndd binary (default: build ./cmd/ndd into a temporary directory)")
	fs.StringVar(&o.out, "out", "", "directory to write feedback.json and the feedback-*.svg plots to (default: none)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "give up, clean up and report what was measured after this long")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the arrivals and request classes; every variant gets the same sequence")
	if err := parseFlags(fs, args); err != nil {
		return o, err
	}
	for _, n := range strings.Split(names, ",") {
		v, ok := findVariant(strings.TrimSpace(n))
		if !ok {
			return o, fmt.Errorf("%w: --variants: unknown variant %q", errUsage, n)
		}
		o.variants = append(o.variants, v)
	}
	phase := func(d time.Duration) bool { return d >= 2*time.Second && d <= 10*time.Minute && d%time.Second == 0 }
	switch {
	case o.servers < 2 || o.servers > 8:
		return o, fmt.Errorf("%w: --servers %d: want 2 to 8", errUsage, o.servers)
	case o.workers < 1 || o.workers > 64:
		return o, fmt.Errorf("%w: --workers %d: want 1 to 64", errUsage, o.workers)
	case o.queue < 1 || o.queue > 100_000:
		return o, fmt.Errorf("%w: --queue %d: want 1 to 100000", errUsage, o.queue)
	case !(o.load > 0 && o.load <= 2):
		return o, fmt.Errorf("%w: --load %g: want more than 0, at most 2", errUsage, o.load)
	case !(o.slowdown >= 1 && o.slowdown <= 100):
		return o, fmt.Errorf("%w: --slowdown %g: want 1 to 100", errUsage, o.slowdown)
	case o.warmup < 0 || o.warmup > 10*time.Minute || o.warmup%time.Second != 0:
		return o, fmt.Errorf("%w: --warmup %v: want whole seconds, 0 to 10m", errUsage, o.warmup)
	case !phase(o.normal) || !phase(o.slow) || !phase(o.recovery):
		return o, fmt.Errorf("%w: --normal, --slow and --recovery: want whole seconds, 2s to 10m", errUsage)
	case o.rate() > 20_000:
		return o, fmt.Errorf("%w: %.0f requests/s is more than this bench offers (20000)", errUsage, o.rate())
	case o.timeout <= 0:
		return o, fmt.Errorf("%w: --timeout %v: want more than 0", errUsage, o.timeout)
	}
	return o, nil
}

// runFeedback is `ndbench feedback`.
func runFeedback(args []string, e env) int {
	o, err := parseFeedbackOptions(args, e.stderr)
	ctx, logf, done, code, ok := begin(e, "ndbench feedback", err, "it builds network namespaces and runs ndd", o.timeout)
	if !ok {
		return code
	}
	defer done()
	logf("ndbench feedback: %d servers x %d workers, capacity %.0f req/s, offered %.0f/s (%.0f%%); %d variants of %v each",
		o.servers, o.workers, o.capacity(), o.rate(), 100*o.load, len(o.variants), o.total())

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
	if runErr != nil {
		fmt.Fprintf(e.stderr, "ndbench feedback: %v\n", runErr)
		return 1
	}
	return 0
}

// runFeedbackBench builds the lab, the servers and the client, runs every
// variant in turn and always tears everything down.
func runFeedbackBench(ctx context.Context, o feedbackOptions, logf func(string, ...any)) (_ *fbReport, err error) {
	rep := newFBReport(o)
	l, err := newCheckedLab(ctx, lab.Options{Servers: o.servers}, logf)
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
	if nddPath == "" {
		logf("building ndd")
		if nddPath, err = buildNDD(ctx, dir); err != nil {
			return rep, err
		}
	}

	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	var servers []*workServer
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	vip := netip.AddrPortFrom(l.VIP4, servicePort)
	for i := range l.Servers {
		h := &l.Servers[i]
		s, err := startWorkServer(sctx, h, o.workers, o.queue, vip, netip.AddrPortFrom(h.Addr4, servicePort))
		if err != nil {
			return rep, err
		}
		servers = append(servers, s)
		rep.Servers = append(rep.Servers, h.Name)
	}
	g, err := startGenerator(ctx, &l.Client)
	if err != nil {
		return rep, err
	}
	defer g.stop()

	for _, v := range o.variants {
		vr := &fbVariant{Name: v.name, About: v.about, Interval: v.interval}
		rep.Variants = append(rep.Variants, vr)
		verr := runVariant(ctx, o, v, l, servers, g, nddPath, dir, vr, logf)
		switch {
		case errors.Is(verr, errNotAvailable):
			vr.Skipped = verr.Error()
			logf("%s: skipped: %v", v.name, verr)
		case verr != nil:
			vr.Error = verr.Error()
			logf("%s: %v", v.name, verr)
			if ctx.Err() != nil {
				return rep, verr
			}
		}
	}
	return rep, nil
}

// runVariant starts ndd with the variant's configuration, runs the phases
// under load, sampling every second, and stops ndd.
func runVariant(ctx context.Context, o feedbackOptions, v variant, l *lab.Lab, servers []*workServer,
	g *generator, nddPath, dir string, vr *fbVariant, logf func(string, ...any)) (err error) {
	vdir := filepath.Join(dir, v.name)
	if err := os.MkdirAll(vdir, 0o700); err != nil {
		return err
	}
	cfgPath := filepath.Join(vdir, "nd.yaml")
	if err := os.WriteFile(cfgPath, []byte(nddConfig(v, l, vdir)), 0o600); err != nil {
		return err
	}
	if err := checkConfig(ctx, nddPath, cfgPath); err != nil {
		return err
	}
	for _, s := range servers {
		s.setSlowdown(1)
	}
	p, err := startNDD(l, nddPath, cfgPath, filepath.Join(vdir, "ndd.log"))
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stopNDD(p, 5*time.Second)) }()
	c, err := api.NewClient(filepath.Join(vdir, "ndd.sock"), "", api.WithTimeout(800*time.Millisecond))
	if err != nil {
		return err
	}
	defer c.Close()
	if err := waitReady(ctx, c, p, 20*time.Second); err != nil {
		return err
	}
	logf("%s: ndd ready; %v of load at %.0f/s, server1 x%g from %v to %v",
		v.name, o.total(), o.rate(), o.slowdown, o.warmup+o.normal, o.warmup+o.normal+o.slow)

	names := make([]string, len(l.Servers))
	addrs := map[string]int{}
	for i, s := range l.Servers {
		names[i] = s.Name
		addrs[s.Addr4.String()] = i
	}
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	start := time.Now()
	var wg sync.WaitGroup
	// The phase switch: server1 slows down, then recovers.
	wg.Go(func() {
		for _, step := range []struct {
			at time.Duration
			f  float64
		}{{o.warmup + o.normal, o.slowdown}, {o.warmup + o.normal + o.slow, 1}} {
			select {
			case <-rctx.Done():
				return
			case <-time.After(time.Until(start.Add(step.at))):
				servers[0].setSlowdown(step.f)
			}
		}
	})
	// The sampler: every second, each server's new requests and ndd's
	// weights.
	seconds := int(o.total() / time.Second)
	vr.Counts = make([][]int64, 0, seconds)
	vr.Weights = make([][]float64, 0, seconds)
	vr.LoadAvg[0] = loadAvg()
	for _, s := range servers {
		vr.Expired -= s.expired.Load()
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
			vr.Asked = append(vr.Asked, asked-prevAsked)
			vr.Held = append(vr.Held, held-prevHeld)
			prevAsked, prevHeld = asked, held
			ws := make([]float64, len(servers))
			for i := range ws {
				ws[i] = math.NaN()
			}
			if st, err := c.Status(); err == nil {
				for _, port := range st.Ports {
					for _, s := range port.Servers {
						if i, ok := addrs[s.Address]; ok {
							ws[i] = float64(s.Weight)
						}
					}
				}
			}
			vr.Counts = append(vr.Counts, counts)
			vr.Weights = append(vr.Weights, ws)
		}
	})
	recs, lerr := openLoop(rctx, g, netip.AddrPortFrom(l.VIP4, servicePort), names, o.rate(), o.total(), o.seed)
	rcancel()
	wg.Wait()
	servers[0].setSlowdown(1)
	vr.LoadAvg[1] = loadAvg()
	for _, s := range servers {
		vr.Expired += s.expired.Load()
	}
	vr.records = recs
	if p.Exited() {
		return fmt.Errorf("ndd exited during the run: %v: %s", p.Err(), p.LogTail(nddLogLines))
	}
	// Let the servers' queues drain before the next variant.
	time.Sleep(2 * time.Second)
	return lerr
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

// writeFiles writes the report as JSON and the plots into dir.
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
	for _, v := range r.Variants {
		if len(v.Counts) == 0 {
			continue
		}
		if err := writeSVGFile(filepath.Join(dir, "feedback-"+v.Name+".svg"), func(w io.Writer) error { return r.variantSVG(w, v) }); err != nil {
			return err
		}
	}
	return writeSVGFile(filepath.Join(dir, "feedback-compare.svg"), r.compareSVG)
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
