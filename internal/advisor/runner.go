package advisor

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Options configure a Runner.
type Options struct {
	// Logger receives state changes; nil discards them.
	Logger *slog.Logger
	// ViaVIP returns a dial function whose connections to vip reach server
	// and no other (the executor steers them). Targets of vip-mode
	// advisors are down, with an error saying why, while it is nil or
	// fails: probing the VIP without steering would measure whichever
	// server the dispatcher picked.
	ViaVIP func(server, vip netip.Addr) (DialFunc, error)
	// OnChange, if set, is called when a target's state is first known and
	// each time it goes down or up. It runs on the probing goroutine, so it
	// must return quickly. It may call Snapshot and Set.
	OnChange func(Status)
	// Smoothing is the weight of a new latency in the smoothed latency, an
	// exponentially weighted moving average: in (0, 1], default 0.3. At 1
	// the smoothed latency is the last one.
	Smoothing float64
	// RootCAs verifies https servers' certificates; nil means the host's
	// roots.
	RootCAs *x509.CertPool
}

// DefaultSmoothing is the default Options.Smoothing.
const DefaultSmoothing = 0.3

// Status is what the Runner knows about one advisor's target.
type Status struct {
	Advisor string
	Kind    string
	Mode    string
	Server  netip.Addr
	Port    uint16
	VIP     netip.Addr // zero if the target has none
	// Known is false until the first round has ended; Up is false then.
	Known bool
	// Up is the state after hysteresis (rise and fall).
	Up bool
	// Latency is that of the last successful round; Smoothed is its moving
	// average; Floor is the lowest of the last FloorRounds successful
	// rounds: what the server takes when nothing queues ahead of the
	// probe, its speed rather than its queue. All stay as they were while
	// rounds fail.
	Latency, Smoothed, Floor time.Duration
	// Err is why the last round failed; empty if it succeeded.
	Err string
	// Since is when Up last changed (or first became known).
	Since time.Time
	// Last is when the last round ended.
	Last time.Time
	// Probes counts rounds; Failures the rounds that failed.
	Probes, Failures uint64
}

// Runner schedules advisors' probes and keeps their targets' state. Its
// methods are safe for concurrent use.
type Runner struct {
	o   Options
	log *slog.Logger

	mu       sync.Mutex
	advisors map[string]*advisorRun
	runCtx   context.Context // set by Run; nil before it
	ran      bool
	stopped  bool // Run has returned or is returning
	wg       sync.WaitGroup
}

type advisorRun struct {
	spec    Spec // normalized
	targets map[targetKey]*targetRun
}

// targetRun is one advisor+target pair: its goroutine and its state. All
// fields but cancel are guarded by Runner.mu.
type targetRun struct {
	spec    Spec
	probe   Probe
	target  Target
	cancel  context.CancelFunc // nil while not started
	removed bool
	// rescheduled tells the loop that Set changed the interval: the next
	// round is due an interval (the new one) after the last began.
	rescheduled chan struct{}

	vipDial DialFunc // from Options.ViaVIP, once it succeeded

	known, up         bool
	latency, smoothed time.Duration
	recent            [FloorRounds]time.Duration // last successful rounds, a ring
	nrecent           int
	err               string
	since, last       time.Time
	probes, failures  uint64
	okRun, failRun    int // consecutive successful / failed rounds
}

// New returns a Runner with no advisors. Give it advisors with Set and run
// it with Run.
func New(o Options) *Runner {
	if o.Smoothing <= 0 || o.Smoothing > 1 {
		o.Smoothing = DefaultSmoothing
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runner{o: o, log: log.With("component", "advisor"), advisors: map[string]*advisorRun{}}
}

// Run probes until ctx is done, then stops every probe and returns nil once
// they have ended. Set may be called before and during Run. Run may be
// called once.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.ran {
		r.mu.Unlock()
		return ErrRunTwice
	}
	r.ran = true
	runCtx, cancel := context.WithCancel(ctx)
	r.runCtx = runCtx
	for _, a := range r.advisors {
		for _, tr := range a.targets {
			r.start(tr)
		}
	}
	r.mu.Unlock()

	<-ctx.Done()
	r.mu.Lock()
	r.stopped = true
	cancel()
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}

// Set replaces the advisors. It validates every spec first and changes
// nothing if one is invalid; the error wraps ErrInvalidSpec and names each
// problem. A target kept by an advisor of the same name that measures the
// same way (kind, mode, request, command) keeps its state and schedule
// and takes the new timeout, retries, rise and fall from its next round,
// and a new interval at once: its next round is due an interval (the new
// one) after its last began. Other targets start afresh; removed ones stop.
func (r *Runner) Set(specs []Spec) error {
	norm := make([]Spec, 0, len(specs))
	names := map[string]bool{}
	var errs []error
	for _, s := range specs {
		n, err := s.normalize()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if names[n.Name] {
			errs = append(errs, fmt.Errorf("%w: advisor %s is defined twice", ErrInvalidSpec, n.Name))
			continue
		}
		names[n.Name] = true
		norm = append(norm, n)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	next := make(map[string]*advisorRun, len(norm))
	for _, s := range norm {
		old := r.advisors[s.Name]
		keep := old != nil && sameProbe(old.spec, s)
		a := &advisorRun{spec: s, targets: make(map[targetKey]*targetRun, len(s.Targets))}
		probe := newProbe(s, &r.o)
		for _, t := range s.Targets {
			if keep {
				if tr := old.targets[t.key()]; tr != nil {
					if tr.spec.Interval != s.Interval {
						select {
						case tr.rescheduled <- struct{}{}:
						default:
						}
					}
					tr.spec, tr.probe, tr.target = s, probe, t
					a.targets[t.key()] = tr
					delete(old.targets, t.key())
					continue
				}
			}
			tr := &targetRun{spec: s, probe: probe, target: t, rescheduled: make(chan struct{}, 1)}
			a.targets[t.key()] = tr
			r.start(tr)
		}
		next[s.Name] = a
	}
	for name, a := range r.advisors {
		for _, tr := range a.targets {
			if next[name] == nil || next[name].targets[tr.target.key()] != tr {
				tr.removed = true
				if tr.cancel != nil {
					tr.cancel()
				}
			}
		}
	}
	r.advisors = next
	return nil
}

// start starts tr's goroutine if Run is running. r.mu must be held.
func (r *Runner) start(tr *targetRun) {
	if r.runCtx == nil || r.stopped {
		return
	}
	ctx, cancel := context.WithCancel(r.runCtx)
	tr.cancel = cancel
	r.wg.Go(func() {
		defer cancel()
		r.loop(ctx, tr)
	})
}

// loop runs tr's rounds, one per interval, until ctx is done.
func (r *Runner) loop(ctx context.Context, tr *targetRun) {
	r.mu.Lock()
	interval := tr.spec.Interval
	r.mu.Unlock()
	// Spread the first rounds so that many targets are not probed at the
	// same instant.
	timer := time.NewTimer(rand.N(interval/10 + 1))
	defer timer.Stop()
	var start time.Time // of the last round
	for {
		select {
		case <-ctx.Done():
			return
		case <-tr.rescheduled:
			if !start.IsZero() {
				r.mu.Lock()
				interval := tr.spec.Interval
				r.mu.Unlock()
				timer.Reset(max(0, interval-time.Since(start)))
			}
			continue
		case <-timer.C:
		}
		r.mu.Lock()
		spec, probe, target := tr.spec, tr.probe, tr.target
		r.mu.Unlock()

		start = time.Now()
		res := r.round(ctx, tr, spec, probe, target)
		if ctx.Err() != nil {
			return // stopped mid-round: the result says nothing of the server
		}
		r.record(tr, res)
		timer.Reset(max(0, spec.Interval-time.Since(start)))
	}
}

// round makes up to 1+Retries attempts and returns the first success or
// the last failure.
func (r *Runner) round(ctx context.Context, tr *targetRun, spec Spec, probe Probe, t Target) Result {
	if spec.Mode == ModeVIP {
		dial, res := r.vipDialer(tr, t)
		if dial == nil {
			return res
		}
		t.Dial = dial
	}
	var res Result
	for attempt := 0; attempt <= spec.Retries; attempt++ {
		actx, cancel := context.WithTimeout(ctx, spec.Timeout)
		res = probe.Probe(actx, t)
		if res.Down && errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
			res.Err += fmt.Sprintf(" (timeout %v)", spec.Timeout)
		}
		cancel()
		if !res.Down || ctx.Err() != nil {
			break
		}
	}
	if res.At.IsZero() {
		res.At = time.Now()
	}
	if res.Down && res.Err == "" {
		res.Err = probe.Name() + " probe failed"
	}
	return res
}

// vipDialer returns the steering dial function for a vip-mode target, or
// nil and the down result that explains why there is none.
func (r *Runner) vipDialer(tr *targetRun, t Target) (DialFunc, Result) {
	r.mu.Lock()
	dial := tr.vipDial
	r.mu.Unlock()
	if dial != nil {
		return dial, Result{}
	}
	if r.o.ViaVIP == nil {
		return nil, down("mode vip: no way to steer a connection to %s through %s (no ViaVIP dialer configured); not probing, as it could reach another server",
			t.Server, t.Addr)
	}
	dial, err := r.o.ViaVIP(t.Server, t.VIP)
	if err == nil && dial == nil {
		err = errors.New("ViaVIP returned no dial function")
	}
	if err != nil {
		return nil, down("mode vip: steer to %s through %s: %v", t.Server, t.Addr, err)
	}
	r.mu.Lock()
	tr.vipDial = dial
	r.mu.Unlock()
	return dial, Result{}
}

// record applies a round's result to tr's state, with hysteresis, and
// reports a change of state.
func (r *Runner) record(tr *targetRun, res Result) {
	r.mu.Lock()
	if tr.removed {
		r.mu.Unlock()
		return
	}
	tr.probes++
	tr.last = res.At
	if res.Down {
		tr.failures++
		tr.failRun++
		tr.okRun = 0
		tr.err = res.Err
	} else {
		tr.okRun++
		tr.failRun = 0
		tr.err = ""
		tr.latency = res.Latency
		// A target coming back starts its average afresh: what it measured
		// before going down says little about it now.
		if !tr.up && tr.okRun == 1 || tr.smoothed == 0 {
			tr.smoothed = res.Latency
			tr.nrecent = 0
		} else {
			tr.smoothed += time.Duration(r.o.Smoothing * float64(res.Latency-tr.smoothed))
		}
		tr.recent[tr.nrecent%FloorRounds] = res.Latency
		tr.nrecent++
	}
	changed := false
	switch {
	case !tr.known:
		// The first round decides at once: waiting Rise rounds before a new
		// server may take traffic would only delay it.
		tr.known, tr.up, changed = true, !res.Down, true
	case tr.up && tr.failRun >= tr.spec.Fall:
		tr.up, changed = false, true
	case !tr.up && tr.okRun >= tr.spec.Rise:
		tr.up, changed = true, true
	}
	if changed {
		tr.since = res.At
	}
	st := tr.status()
	r.mu.Unlock()

	if !changed {
		return
	}
	if st.Up {
		r.log.Info("advisor target up", "advisor", st.Advisor, "target", tr.target.key().String(), "latency", st.Latency)
	} else {
		r.log.Warn("advisor target down", "advisor", st.Advisor, "target", tr.target.key().String(), "err", st.Err)
	}
	if r.o.OnChange != nil {
		r.o.OnChange(st)
	}
}

// FloorRounds is how many successful rounds Status.Floor looks back on: a
// probe behind a queue is common on a busy server, three in a row are not,
// and a server that became faster shows it in its first fast round.
const FloorRounds = 3

// floor is the lowest latency of the last FloorRounds successful rounds.
func (tr *targetRun) floor() time.Duration {
	var low time.Duration
	for i := range min(tr.nrecent, FloorRounds) {
		if l := tr.recent[i]; i == 0 || l < low {
			low = l
		}
	}
	return low
}

// status returns tr's Status. r.mu must be held.
func (tr *targetRun) status() Status {
	return Status{
		Advisor:  tr.spec.Name,
		Kind:     tr.spec.Kind,
		Mode:     tr.spec.Mode,
		Server:   tr.target.Server,
		Port:     tr.target.Port,
		VIP:      tr.target.VIP,
		Known:    tr.known,
		Up:       tr.up,
		Latency:  tr.latency,
		Smoothed: tr.smoothed,
		Floor:    tr.floor(),
		Err:      tr.err,
		Since:    tr.since,
		Last:     tr.last,
		Probes:   tr.probes,
		Failures: tr.failures,
	}
}

// Snapshot returns every target's status, ordered by advisor, server, port
// and VIP.
func (r *Runner) Snapshot() []Status {
	r.mu.Lock()
	out := make([]Status, 0, 16)
	for _, a := range r.advisors {
		for _, tr := range a.targets {
			out = append(out, tr.status())
		}
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Status) int {
		return cmp.Or(cmp.Compare(a.Advisor, b.Advisor), a.Server.Compare(b.Server),
			cmp.Compare(a.Port, b.Port), a.VIP.Compare(b.VIP))
	})
	return out
}
