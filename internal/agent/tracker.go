package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// TrackerOptions configure a Tracker.
type TrackerOptions struct {
	// Client polls the agents. Required.
	Client *Client
	// Interval between two polls of every agent. Default 5s. It must
	// exceed the client's timeout, so that polls never pile up.
	Interval time.Duration
	// DisableAfter is how long an agent may go without a valid report
	// before it is Disabled. Default 3 * Interval.
	DisableAfter time.Duration
	// Logger gets a line when an agent becomes disabled or recovers;
	// nil discards them.
	Logger *slog.Logger
}

// Status is what the tracker knows about one agent.
type Status struct {
	// Report is the latest valid report (zero before the first).
	Report Report
	// Last is when that report arrived, by the dispatcher's clock (zero
	// before the first).
	Last time.Time
	// Disabled is true when no valid report has arrived for longer than
	// DisableAfter, counted from when the address was added if there was
	// never one. A manager should treat the server's agent metrics as
	// unknown and the server as the paper's "disabled" one.
	Disabled bool
	// Err is the latest poll's error, empty if it succeeded.
	Err string
}

// maxParallelPolls bounds polls in flight at once.
const maxParallelPolls = 32

// Tracker polls a set of agents every interval and keeps each one's latest
// report. Set changes the set at any time; Snapshot reads it.
type Tracker struct {
	client       *Client
	interval     time.Duration
	disableAfter time.Duration
	log          *slog.Logger

	mu     sync.Mutex
	agents map[netip.AddrPort]*tracked
	kick   chan struct{}
}

type tracked struct {
	added    time.Time
	status   Status
	disabled bool // as last logged
}

// NewTracker returns a tracker with no agents; call Set and Run.
func NewTracker(o TrackerOptions) (*Tracker, error) {
	if o.Client == nil {
		return nil, errors.New("agent tracker: no client")
	}
	if o.Interval == 0 {
		o.Interval = 5 * time.Second
	}
	if o.Interval <= o.Client.timeout {
		return nil, fmt.Errorf("agent tracker: interval %v must exceed the client timeout %v", o.Interval, o.Client.timeout)
	}
	if o.DisableAfter == 0 {
		o.DisableAfter = 3 * o.Interval
	}
	if o.DisableAfter < o.Interval {
		return nil, fmt.Errorf("agent tracker: disable-after %v is shorter than the interval %v", o.DisableAfter, o.Interval)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Tracker{
		client: o.Client, interval: o.Interval, disableAfter: o.DisableAfter, log: o.Logger,
		agents: map[netip.AddrPort]*tracked{},
		kick:   make(chan struct{}, 1),
	}, nil
}

// Set replaces the set of agents. Agents already tracked keep their
// state; new ones are polled at once (if Run is running).
func (t *Tracker) Set(addrs []netip.AddrPort) {
	now := time.Now()
	t.mu.Lock()
	next := make(map[netip.AddrPort]*tracked, len(addrs))
	added := false
	for _, a := range addrs {
		if old, ok := t.agents[a]; ok {
			next[a] = old
			continue
		}
		next[a] = &tracked{added: now}
		added = true
	}
	t.agents = next
	t.mu.Unlock()
	if added {
		select {
		case t.kick <- struct{}{}:
		default:
		}
	}
}

// Snapshot returns every tracked agent's status, Disabled computed now.
func (t *Tracker) Snapshot() map[netip.AddrPort]Status {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[netip.AddrPort]Status, len(t.agents))
	for a, tr := range t.agents {
		s := tr.status
		s.Disabled = t.disabledAt(tr, now)
		out[a] = s
	}
	return out
}

func (t *Tracker) disabledAt(tr *tracked, now time.Time) bool {
	since := tr.added
	if tr.status.Last.After(since) {
		since = tr.status.Last
	}
	return now.Sub(since) > t.disableAfter
}

// Run polls every agent now and every interval until ctx ends.
func (t *Tracker) Run(ctx context.Context) error {
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	for {
		t.pollAll(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-t.kick:
		}
	}
}

// pollAll polls every agent in parallel, bounded, and waits for all.
func (t *Tracker) pollAll(ctx context.Context) {
	t.mu.Lock()
	addrs := make([]netip.AddrPort, 0, len(t.agents))
	for a := range t.agents {
		addrs = append(addrs, a)
	}
	t.mu.Unlock()

	sem := make(chan struct{}, maxParallelPolls)
	var wg sync.WaitGroup
	for _, a := range addrs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			rep, err := t.client.Poll(ctx, a)
			if ctx.Err() != nil {
				return
			}
			t.record(a, rep, err)
		})
	}
	wg.Wait()
}

func (t *Tracker) record(a netip.AddrPort, rep Report, err error) {
	now := time.Now()
	t.mu.Lock()
	tr, ok := t.agents[a]
	if !ok { // removed by Set meanwhile
		t.mu.Unlock()
		return
	}
	if err != nil {
		tr.status.Err = err.Error()
	} else {
		tr.status = Status{Report: rep, Last: now}
	}
	dis := t.disabledAt(tr, now)
	changed := dis != tr.disabled
	tr.disabled = dis
	t.mu.Unlock()
	if changed && dis {
		t.log.Warn("agent disabled: no valid report", "agent", a.String(), "for", t.disableAfter, "err", err)
	} else if changed {
		t.log.Info("agent reporting again", "agent", a.String(), "host", rep.Host)
	}
}
