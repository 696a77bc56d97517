// Command ndbench measures what nd costs a TCP service, end to end, in a lab
// of network namespaces that it builds for itself and removes on every way
// out, Ctrl-C included.
//
// In the same run, with the same client and servers, it measures three
// configurations:
//
//	direct   the client connects to one server's own address
//	trivial  the client connects to the VIP; an XDP program on the
//	         dispatcher that only rewrites MACs sends every frame to that
//	         one server: the cost of the extra hop alone
//	nd       the client connects to the VIP; nd's executor spreads the
//	         connections over every server, at equal weights
//
// For each it measures the latency of new connections (connect, a small
// HTTP GET, the reply, close) at a fixed rate, and the highest rate
// sustained with under 1% errors. The configurations take turns in rounds,
// and the figures are medians over the rounds. See docs/BENCH.md.
//
// It must run as root: `go run ./cmd/ndbench`. `ndbench feedback` runs
// the allocation bench instead (nd against HAProxy's least-connections in
// the cases of issue 10); see docs/FEEDBACK-BENCH.md. `ndbench ha` measures
// an HA pair's failovers (docs/HA-BENCH.md) and `ndbench group` an
// active-active group behind a BGP router (docs/SCALEOUT.md, Benchmark).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/lab"
)

func main() {
	os.Exit(run(os.Args[1:], env{stdout: os.Stdout, stderr: os.Stderr, euid: os.Geteuid}))
}

// env is what the command uses of its surroundings.
type env struct {
	stdout, stderr io.Writer
	euid           func() int
}

// options are the command's flags.
type options struct {
	servers   int
	duration  time.Duration
	rate      float64
	rounds    int
	maxRate   float64
	timeout   time.Duration
	json      bool
	directAll bool
	// latencyOnly skips the rate search: more rounds of the latency phase
	// in the same time.
	latencyOnly bool
	stderr      io.Writer
}

// Bounds of the flags.
const (
	maxRounds    = 20
	maxRateLimit = 200_000
	minDuration  = 200 * time.Millisecond
	maxDuration  = time.Minute
)

var errUsage = errors.New("usage")

// newFlagSet is the flag set of an ndbench command: errors and help go to
// stderr, and help is usage followed by the flags' defaults.
func newFlagSet(name string, stderr io.Writer, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		io.WriteString(stderr, usage)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and refuses any that are not flags.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	return nil
}

// kernelRelease is the running kernel's release, for the reports; "" if
// it cannot be read.
func kernelRelease() string {
	var uts unix.Utsname
	if unix.Uname(&uts) != nil {
		return ""
	}
	return unix.ByteSliceToString(uts.Release[:])
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	o := options{stderr: stderr}
	fs := newFlagSet("ndbench", stderr,
		"usage: ndbench [--servers N] [--duration D] [--rate R] [--rounds N] [--max-rate R] [--timeout D] [--direct-all] [--latency-only] [--json]\n\n"+
			"Builds a lab of network namespaces and measures new-connection latency and the\n"+
			"highest sustained rate directly to a server, through a trivial XDP forwarder, and\n"+
			"through nd. Must run as root; removes the lab on exit.\n"+
			"`ndbench feedback --help` describes the feedback-loop bench; `ndbench ha --help`\n"+
			"the HA pair bench; `ndbench group --help` the active-active group bench.\n\n")
	fs.IntVar(&o.servers, "servers", lab.DefaultServers, "real servers behind the VIP in the nd configuration (1 to 88)")
	fs.DurationVar(&o.duration, "duration", 2*time.Second, "length of every step: the latency phase and each step of the rate search")
	fs.Float64Var(&o.rate, "rate", 1000, "new connections per second in the latency phase")
	fs.IntVar(&o.rounds, "rounds", 5, "rounds; each measures direct, trivial and nd in turn")
	fs.Float64Var(&o.maxRate, "max-rate", 64_000, "highest rate the search offers, in new connections per second")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "give up, clean up and report what was measured after this long")
	fs.BoolVar(&o.directAll, "direct-all", false, "also measure direct-all: straight to every server's own address in turn, the cost of spreading connections without a dispatcher")
	fs.BoolVar(&o.latencyOnly, "latency-only", false, "measure only the latency phase, no search for the highest rate (more rounds in the same time)")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON on stdout (the table goes to stderr)")
	if err := parseFlags(fs, args); err != nil {
		return o, err
	}
	switch {
	case o.servers < 1 || o.servers > lab.MaxServers:
		return o, fmt.Errorf("%w: --servers %d: want 1 to %d", errUsage, o.servers, lab.MaxServers)
	case o.duration < minDuration || o.duration > maxDuration:
		return o, fmt.Errorf("%w: --duration %v: want %v to %v", errUsage, o.duration, minDuration, maxDuration)
	case o.maxRate < 1 || o.maxRate > maxRateLimit:
		return o, fmt.Errorf("%w: --max-rate %g: want 1 to %d", errUsage, o.maxRate, maxRateLimit)
	case !(o.rate >= 1 && o.rate <= o.maxRate):
		return o, fmt.Errorf("%w: --rate %g: want 1 to --max-rate (%g)", errUsage, o.rate, o.maxRate)
	case o.rounds < 1 || o.rounds > maxRounds:
		return o, fmt.Errorf("%w: --rounds %d: want 1 to %d", errUsage, o.rounds, maxRounds)
	case o.timeout <= 0:
		return o, fmt.Errorf("%w: --timeout %v: want more than 0", errUsage, o.timeout)
	}
	return o, nil
}

// worstCase bounds how long the measurements can take.
func (o options) worstCase() time.Duration {
	step := o.duration + requestTimeout + time.Second + settle
	search := stepWarmup + requestTimeout + time.Second + step
	slices := int64(o.duration/latencySlice) + 1
	perConfig := warmup + time.Duration(slices)*search
	if !o.latencyOnly {
		perConfig += maxSearchSteps * search
	}
	return time.Duration(o.rounds*len(o.configs())) * perConfig
}

// errReported is a failure that the command has reported already: it
// exits with code 1 and nothing more is said.
var errReported = errors.New("failed")

// runBench is the frame of every ndbench command: it reports a flag error
// (code 2, or 0 for -h), refuses to run without root (code 1), and runs
// body with a context ended by the timeout or a signal and a log of
// timestamped lines. An error from body is reported as "name: error",
// with code 1.
func runBench(e env, name string, parseErr error, why string, timeout time.Duration, body func(ctx context.Context, logf func(string, ...any)) error) int {
	if errors.Is(parseErr, flag.ErrHelp) {
		return 0
	}
	if parseErr != nil {
		if errors.Is(parseErr, errUsage) {
			fmt.Fprintf(e.stderr, "%s: %v\n", name, parseErr)
		}
		return 2
	}
	if e.euid() != 0 {
		fmt.Fprintf(e.stderr, "%s: must run as root: %s\n", name, why)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	logf := func(format string, args ...any) {
		fmt.Fprintf(e.stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	if err := body(ctx, logf); err != nil {
		if !errors.Is(err, errReported) {
			fmt.Fprintf(e.stderr, "%s: %v\n", name, err)
		}
		return 1
	}
	return 0
}

func run(args []string, e env) int {
	if len(args) > 0 && args[0] == "ha" {
		return runHA(args[1:], e)
	}
	if len(args) > 0 && args[0] == "group" {
		return runGroup(args[1:], e)
	}
	if len(args) > 0 && args[0] == "feedback" {
		return runFeedback(args[1:], e)
	}
	o, err := parseOptions(args, e.stderr)
	return runBench(e, "ndbench", err, "it builds network namespaces and loads XDP programs", o.timeout, func(ctx context.Context, logf func(string, ...any)) error {
		return runLoad(ctx, o, e, logf)
	})
}

// runLoad is `ndbench` itself: the load measurements and their report.
func runLoad(ctx context.Context, o options, e env, logf func(string, ...any)) error {
	logf("ndbench: %d servers, %d rounds, steps of %v; at most %v (--timeout %v)",
		o.servers, o.rounds, o.duration, o.worstCase().Round(time.Second), o.timeout)

	results, runErr := measure(ctx, o, logf)
	r := newReport(o, results)
	r.CPUs = runtime.NumCPU()
	r.Kernel = kernelRelease()
	if runErr != nil {
		r.Error = runErr.Error()
		if ctx.Err() != nil && context.Cause(ctx) != nil {
			logf("stopped: %v", context.Cause(ctx))
		}
	}
	if o.json {
		r.writeTable(e.stderr)
		if err := r.writeJSON(e.stdout); err != nil {
			return err
		}
	} else {
		r.writeTable(e.stdout)
	}
	return runErr
}

// closeInto closes c and joins its error to *err: deferred, it tears down
// what a measurement built, whatever the measurement returned.
func closeInto(err *error, c interface{ close() error }) {
	if cerr := c.close(); cerr != nil {
		*err = errors.Join(*err, cerr)
	}
}

// measure builds the bench, runs it and always tears it down.
func measure(ctx context.Context, o options, logf func(string, ...any)) (_ map[string][]roundResult, err error) {
	b, err := newBench(ctx, o, logf)
	if err != nil {
		return nil, err
	}
	defer closeInto(&err, b)
	return b.run(ctx)
}
