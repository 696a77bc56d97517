package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/lab"
)

// Bounds of the setup.
const (
	buildTimeout = 60 * time.Second // lab.New
	checkTimeout = 30 * time.Second // lab.Check
	// settle is the pause after every step, for the last connections to
	// be torn down before the next step starts.
	settle = 300 * time.Millisecond
	// warmup is the length of the run that opens each configuration of
	// each round; its results are discarded, but it must succeed.
	warmup = 300 * time.Millisecond
	// stepWarmup opens each step of a search, after the configuration is
	// attached; its results are discarded.
	stepWarmup = 100 * time.Millisecond
	// latencySlice is the length of the turns that the configurations
	// take in the latency phase.
	latencySlice = 500 * time.Millisecond
	// maxSearchSteps bounds one search for the highest sustained rate.
	maxSearchSteps = 16
	// searchResolution ends a search once its bracket is this narrow.
	searchResolution = 0.025
)

// The configurations. direct-all, measured only with --direct-all, sends
// the connections straight to every server's own address in turn: the cost
// of spreading them over the servers, without any dispatcher.
const (
	cfgDirect    = "direct"
	cfgTrivial   = "trivial"
	cfgND        = "nd"
	cfgDirectAll = "direct-all"
)

// configs lists the configurations measured. Round r takes them in this
// order rotated by r-1, so that none always follows the same other.
func (o options) configs() []string {
	cs := []string{cfgDirect, cfgTrivial, cfgND}
	if o.directAll {
		cs = append(cs, cfgDirectAll)
	}
	return cs
}

// order returns the configurations in round's order.
func (o options) order(round int) []string {
	cs := o.configs()
	k := (round - 1) % len(cs)
	return append(slices.Clone(cs[k:]), cs[:k]...)
}

// bench owns the lab and everything running in it; close undoes it all.
type bench struct {
	o    options
	logf func(format string, args ...any)

	lab      *lab.Lab
	backends []lab.Backend
	servers  []*server
	x        *executor.BPF
	gen      *generator
	// stats keeps the kernel's BPF run-time statistics on while the bench
	// runs; nil if the kernel refused.
	stats io.Closer
}

// newCheckedLab removes the labs of dead processes, builds a lab with opts
// and checks that it works; a lab that fails the check is removed again.
func newCheckedLab(ctx context.Context, opts lab.Options, logf func(string, ...any)) (*lab.Lab, error) {
	l, err := newLab(ctx, opts, logf)
	if err != nil {
		return nil, err
	}
	cctx, ccancel := context.WithTimeout(ctx, checkTimeout)
	err = l.Check(cctx)
	ccancel()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("the lab does not work, so nothing measured through it would mean anything: %w", err), l.Close())
	}
	return l, nil
}

// newLab removes the labs of dead processes and builds a lab with opts,
// logging to logf.
func newLab(ctx context.Context, opts lab.Options, logf func(string, ...any)) (*lab.Lab, error) {
	if removed, err := lab.SweepStale(logf); err != nil {
		logf("sweep labs of dead processes: %v (removed %v)", err, removed)
	}
	opts.Logf = logf
	bctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	return lab.New(bctx, opts)
}

// newBench builds the lab, checks it, starts the servers, loads the
// executor (not yet attached) and starts the load generator. On error it
// undoes what it did.
func newBench(ctx context.Context, o options, logf func(string, ...any)) (_ *bench, err error) {
	b := &bench{o: o, logf: logf}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.close())
		}
	}()
	// Checked before anything is attached: the check's echoes use a VIP
	// port.
	l, err := newCheckedLab(ctx, lab.Options{Servers: o.servers}, logf)
	if err != nil {
		return nil, err
	}
	b.lab = l
	if err := b.prepareClient(); err != nil {
		return nil, err
	}
	b.backends = l.Backends()
	if b.servers, err = startServers(l); err != nil {
		return nil, err
	}
	if err := b.loadExecutor(); err != nil {
		return nil, err
	}
	// Held by this process only: the statistics stop with it, however it
	// ends. They cost every BPF program on the machine two clock reads a
	// run meanwhile.
	if b.stats, err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
		logf("no XDP run-time statistics: %v", err)
		b.stats, err = nil, nil
	}
	if b.gen, err = startGenerator(ctx, &l.Client); err != nil {
		return nil, err
	}
	return b, ctx.Err()
}

// manyConnSysctls give a namespace that opens many connections the whole
// range of ephemeral ports and the reuse of TIME_WAIT ports.
var manyConnSysctls = [][2]string{
	{"net.ipv4.ip_local_port_range", "1024 65535"},
	{"net.ipv4.tcp_tw_reuse", "1"},
}

// prepareClient widens the client's ephemeral ports and lets it reuse
// TIME_WAIT ports, in the client's namespace only, and pins its neighbour
// entry for the VIP to the dispatcher's MAC: with the trivial forwarder on
// the dispatcher, ARP for the VIP would be forwarded to a server, which
// does not answer it.
func (b *bench) prepareClient() error {
	c := &b.lab.Client
	if err := lab.SetSysctls(c.NS, manyConnSysctls...); err != nil {
		return err
	}
	h, err := c.NS.Netlink()
	if err != nil {
		return err
	}
	n := &netlink.Neigh{
		LinkIndex:    c.Ifindex,
		Family:       netlink.FAMILY_V4,
		State:        netlink.NUD_PERMANENT,
		IP:           b.lab.VIP4.AsSlice(),
		HardwareAddr: b.lab.Dispatcher.MAC,
	}
	if err := h.NeighSet(n); err != nil {
		return fmt.Errorf("pin the client's neighbour entry for %s: %w", b.lab.VIP4, err)
	}
	return nil
}

// loadExecutor loads nd's data plane, with its default sizes, in the
// dispatcher's namespace and installs VIP:80/tcp with every server at
// weight 1. It is attached only while nd is measured.
func (b *bench) loadExecutor() error {
	log := slog.New(slog.NewTextHandler(b.o.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	svc := executor.Service{Key: executor.ServiceKey{VIP: b.lab.VIP4, Port: servicePort, Proto: executor.TCP}}
	for _, be := range b.backends {
		svc.Servers = append(svc.Servers, executor.Server{Addr: be.Addr4, MAC: be.DstMAC, Ifindex: be.Ifindex, Weight: 1})
	}
	return b.lab.Dispatcher.NS.Do(func() error {
		x, err := executor.New(executor.Config{Logger: log})
		if err != nil {
			return fmt.Errorf("load executor: %w", err)
		}
		b.x = x
		if err := x.UpsertService(svc); err != nil {
			return fmt.Errorf("install %v: %w", svc.Key, err)
		}
		return nil
	})
}

// close stops everything and removes the lab. It is idempotent.
func (b *bench) close() error {
	var errs []error
	if b.gen != nil {
		b.gen.stop()
		b.gen = nil
	}
	stopServers(b.servers)
	b.servers = nil
	if b.stats != nil {
		b.stats.Close()
		b.stats = nil
	}
	if b.x != nil {
		if err := b.x.Destroy(); err != nil {
			errs = append(errs, fmt.Errorf("destroy executor: %w", err))
		}
		b.x = nil
	}
	if b.lab != nil {
		if err := b.lab.Close(); err != nil {
			errs = append(errs, fmt.Errorf("remove lab: %w", err))
		}
	}
	return errors.Join(errs...)
}

// target is where the client sends its requests in a configuration.
func (b *bench) target(cfg string) target {
	vip := netip.AddrPortFrom(b.lab.VIP4, servicePort)
	s1 := b.lab.Servers[0]
	switch cfg {
	case cfgDirect:
		return target{addrs: []netip.AddrPort{netip.AddrPortFrom(s1.Addr4, servicePort)}, names: []string{s1.Name}}
	case cfgTrivial:
		return target{addrs: []netip.AddrPort{vip}, names: []string{s1.Name}}
	}
	var t target
	for _, s := range b.lab.Servers {
		t.names = append(t.names, s.Name)
		if cfg == cfgDirectAll {
			t.addrs = append(t.addrs, netip.AddrPortFrom(s.Addr4, servicePort))
		}
	}
	if cfg == cfgND {
		t.addrs = []netip.AddrPort{vip}
	}
	return t
}

// attach puts the configuration's program on the dispatcher's interface
// and returns what takes it off again.
func (b *bench) attach(cfg string) (detach func() error, err error) {
	d := &b.lab.Dispatcher
	switch cfg {
	case cfgDirect, cfgDirectAll:
		return func() error { return nil }, nil
	case cfgTrivial:
		be := b.backends[0]
		var c io.Closer
		err := d.NS.Do(func() (err error) {
			c, err = executor.AttachTrivialForwarder(d.Ifindex, be.DstMAC, be.SrcMAC)
			return err
		})
		if err != nil {
			return nil, err
		}
		return c.Close, nil
	}
	if err := d.NS.Do(func() error { return b.x.Attach(d.Ifindex) }); err != nil {
		return nil, err
	}
	return func() error { return d.NS.Do(func() error { return b.x.Detach(d.Ifindex) }) }, nil
}

// xdpAttachment describes the XDP program on the dispatcher's interface:
// nil when there is none, or when the interface cannot be read.
func (b *bench) xdpAttachment() *netlink.LinkXdp {
	_, l, err := b.lab.Dispatcher.Eth0()
	if err != nil || l.Attrs().Xdp == nil || !l.Attrs().Xdp.Attached {
		return nil
	}
	return l.Attrs().Xdp
}

// xdpMode reports how a program is attached to the dispatcher's interface.
func (b *bench) xdpMode() string {
	x := b.xdpAttachment()
	if x == nil {
		return "none"
	}
	switch x.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return "native"
	case nl.XDP_ATTACHED_SKB:
		return "generic"
	case nl.XDP_ATTACHED_HW:
		return "offload"
	}
	return fmt.Sprintf("mode %d", x.AttachMode)
}

// xdpProgram returns the ID of the XDP program on the dispatcher's
// interface, or 0 if there is none.
func (b *bench) xdpProgram() ebpf.ProgramID {
	if x := b.xdpAttachment(); x != nil {
		return ebpf.ProgramID(x.ProgId)
	}
	return 0
}

// xdpCost is how long the dispatcher's XDP program ran, by the kernel's own
// statistics, while the client made Requests requests: the forwarder's
// work alone, without the path around it.
type xdpCost struct {
	Runs     uint64        `json:"runs"`
	Runtime  time.Duration `json:"runtime_ns"`
	Requests int           `json:"requests"`
}

// xdpCounters reads a program's run count and total run time; ok is false
// when they cannot be read (no program, no statistics).
func xdpCounters(id ebpf.ProgramID) (runs uint64, runtime time.Duration, ok bool) {
	if id == 0 {
		return 0, 0, false
	}
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return 0, 0, false
	}
	defer p.Close()
	st, err := p.Stats()
	if err != nil {
		return 0, 0, false
	}
	return st.RunCount, st.Runtime, true
}

// PerPacket is the program's mean time a run (a frame); 0 if unmeasured.
func (c xdpCost) PerPacket() time.Duration {
	if c.Runs == 0 {
		return 0
	}
	return c.Runtime / time.Duration(c.Runs)
}

// PerRequest is the program's time a request (every frame of one
// connection from the client); 0 if unmeasured.
func (c xdpCost) PerRequest() time.Duration {
	if c.Requests == 0 || c.Runs == 0 {
		return 0
	}
	return c.Runtime / time.Duration(c.Requests)
}

// roundResult is one configuration's measurements in one round.
type roundResult struct {
	Round   int        `json:"round"`
	XDPMode string     `json:"xdp_mode"`
	Latency stepResult `json:"latency"`
	// XDP is the dispatcher's program's run time over the latency phase;
	// zero without a program or statistics.
	XDP     xdpCost      `json:"xdp_cost"`
	MaxRate float64      `json:"max_rate"`
	Steps   []stepResult `json:"steps"`
}

// step runs one step and then lets the lab settle.
func (b *bench) step(ctx context.Context, t target, rate float64, d time.Duration) (stepResult, error) {
	r, err := b.gen.run(ctx, t, rate, d)
	if err != nil {
		return r, err
	}
	select {
	case <-ctx.Done():
		return r, ctx.Err()
	case <-time.After(settle):
	}
	return r, nil
}

// with attaches the configuration, runs fn and detaches it again.
func (b *bench) with(cfg string, fn func(t target) error) (err error) {
	detach, err := b.attach(cfg)
	if err != nil {
		return fmt.Errorf("%s: attach: %w", cfg, err)
	}
	defer func() {
		if derr := detach(); derr != nil {
			err = errors.Join(err, fmt.Errorf("%s: detach: %w", cfg, derr))
		}
	}()
	return fn(b.target(cfg))
}

// latency runs the round's latency phase. It is cut in slices of about
// latencySlice in which the configurations take turns, direct, trivial,
// nd, each sent --rate new connections a second; each configuration's
// slices are pooled. The first slice of each opens with a warm-up that
// must succeed: the path works, and the right servers answer.
func (b *bench) latency(ctx context.Context, round int, rrs map[string]*roundResult) error {
	n := max(1, int(math.Round(float64(b.o.duration)/float64(latencySlice))))
	slice := b.o.duration / time.Duration(n)
	for i := range n {
		for _, cfg := range b.o.order(round) {
			rr := rrs[cfg]
			err := b.with(cfg, func(t target) error {
				if i > 0 {
					_, err := b.gen.run(ctx, t, b.o.rate, stepWarmup)
					return errors.Join(err, b.latencySlice(ctx, t, rr, slice))
				}
				rr.XDPMode = b.xdpMode()
				w, err := b.step(ctx, t, b.o.rate, warmup)
				if err != nil {
					return err
				}
				if !w.Sustained || w.ErrorKinds["wrong-server"] > 0 || w.ErrorKinds["bad-reply"] > 0 {
					return fmt.Errorf("%s: the path to %s does not work: %d of %d requests failed (%v), first: %s",
						cfg, t.addrs, w.Errors, w.Planned, w.ErrorKinds, w.FirstError)
				}
				return b.latencySlice(ctx, t, rr, slice)
			})
			if err != nil {
				return fmt.Errorf("%s: %w", cfg, err)
			}
		}
	}
	for _, cfg := range b.o.configs() {
		l := rrs[cfg].Latency
		b.logf("round %d %-10s latency at %g/s: p50 %v p99 %v errors %d/%d",
			round, cfg, b.o.rate, us(l.P50), us(l.P99), l.Errors+l.Planned-l.Sent, l.Planned)
	}
	return nil
}

func (b *bench) latencySlice(ctx context.Context, t target, rr *roundResult, d time.Duration) error {
	id := b.xdpProgram()
	runs0, rt0, ok0 := xdpCounters(id)
	r, err := b.step(ctx, t, b.o.rate, d)
	rr.Latency.add(r)
	if runs1, rt1, ok1 := xdpCounters(id); ok0 && ok1 {
		rr.XDP.Runs += runs1 - runs0
		rr.XDP.Runtime += rt1 - rt0
		rr.XDP.Requests += r.Sent
	}
	return err
}

// searchStep runs one step of a configuration's search for its highest
// sustained rate, after a short warm-up whose results are discarded.
func (b *bench) searchStep(ctx context.Context, cfg string, round int, rate float64) (stepResult, error) {
	var r stepResult
	err := b.with(cfg, func(t target) error {
		if _, err := b.gen.run(ctx, t, b.o.rate, stepWarmup); err != nil {
			return err
		}
		var err error
		r, err = b.step(ctx, t, rate, b.o.duration)
		return err
	})
	if err != nil {
		return r, err
	}
	mark := "no"
	if r.Sustained {
		mark = "ok"
	}
	b.logf("round %d %-10s step %6.0f/s: %s (achieved %.0f/s, errors %d %v, p50 %v p99 %v)",
		round, cfg, rate, mark, r.Achieved, r.Errors, r.ErrorKinds, us(r.P50), us(r.P99))
	return r, nil
}

// run measures every configuration in every round. Within a round the
// configurations take turns (see order), first slice by slice
// through the latency phase, then step by step through their searches for
// the highest sustained rate, so that drift in the machine's state affects
// them alike.
// A search starts from the configuration's result in the round before.
func (b *bench) run(ctx context.Context) (map[string][]roundResult, error) {
	results := map[string][]roundResult{}
	for round := 1; round <= b.o.rounds; round++ {
		rrs := map[string]*roundResult{}
		searches := map[string]*search{}
		for _, cfg := range b.o.configs() {
			rrs[cfg] = &roundResult{Round: round}
		}
		if err := b.latency(ctx, round, rrs); err != nil {
			return results, fmt.Errorf("round %d: %w", round, err)
		}
		if b.o.latencyOnly {
			for _, cfg := range b.o.configs() {
				results[cfg] = append(results[cfg], *rrs[cfg])
			}
			continue
		}
		for _, cfg := range b.o.configs() {
			lo, hi := b.o.rate, 2*b.o.rate
			if prev := results[cfg]; len(prev) > 0 && prev[len(prev)-1].MaxRate > 0 {
				last := prev[len(prev)-1].MaxRate
				lo, hi = 0.85*last, 1.15*last
			}
			searches[cfg] = newSearch(lo, hi, b.o.maxRate, searchResolution, maxSearchSteps)
		}
		for range maxSearchSteps {
			for _, cfg := range b.o.order(round) {
				s := searches[cfg]
				rate, ok := s.next()
				if !ok {
					continue
				}
				r, err := b.searchStep(ctx, cfg, round, rate)
				s.record(rate, r)
				if err != nil {
					return results, fmt.Errorf("round %d: %w", round, err)
				}
			}
		}
		for _, cfg := range b.o.configs() {
			rr, s := rrs[cfg], searches[cfg]
			rr.MaxRate, rr.Steps = s.best, s.steps
			b.logf("round %d %-10s highest sustained rate %.0f/s", round, cfg, rr.MaxRate)
			results[cfg] = append(results[cfg], *rr)
		}
	}
	return results, nil
}

// us rounds a duration to the microsecond, for messages.
func us(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
