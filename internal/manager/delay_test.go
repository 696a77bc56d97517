package manager

import (
	"math"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/executor"
)

// delayRig drives a manager over a Fake delay service: each interval, every
// server takes new flows at its rate and holds rate x its response time
// (Little's law), read by the manager's samples as the kernel's counters.
type delayRig struct {
	t       *testing.T
	x       *executor.Fake
	m       *Manager
	now     time.Time
	n       int
	commits []Commit
	adv     map[netip.Addr]AdvisorReading
	opened  []uint64 // new flows given to each server so far
}

func newDelayRig(t *testing.T, n int, s Settings, props Proportions, advisor string) *delayRig {
	t.Helper()
	if s.Sensitivity == 0 {
		s.Sensitivity = DefaultSensitivity
	}
	r := &delayRig{t: t, x: executor.NewFake(), n: n, now: time.Unix(1000, 0), adv: map[netip.Addr]AdvisorReading{}, opened: make([]uint64, n)}
	svc := executor.Service{Key: key, Scheduler: executor.SchedulerDelay}
	port := Port{Key: key, Bound: 100, Proportions: props, Advisor: advisor}
	for i := range n {
		svc.Servers = append(svc.Servers, executor.Server{Addr: addr(i), MAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(i + 1)}, Ifindex: 1, Weight: 50})
		port.Servers = append(port.Servers, Server{Addr: addr(i), Weight: 50})
	}
	if err := r.x.UpsertService(svc); err != nil {
		t.Fatal(err)
	}
	m, err := New(s, Options{
		Executor: r.x,
		Commit:   r.apply,
		Advisor: func(_ string, _ executor.ServiceKey, a netip.Addr) (AdvisorReading, bool) {
			v, ok := r.adv[a]
			return v, ok
		},
		Now: func() time.Time { return r.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	r.m = m
	if err := m.SetPorts([]Port{port}); err != nil {
		t.Fatal(err)
	}
	m.Step()
	return r
}

// apply is the daemon's part: weights, delay factors and flow time into
// the data plane in one update.
func (r *delayRig) apply(c Commit) error {
	r.commits = append(r.commits, c)
	svc := r.x.Services()[0]
	for i, s := range svc.Servers {
		if w, ok := c.Weights[s.Addr]; ok {
			svc.Servers[i].Weight = w
		}
		if d, ok := c.Delays[s.Addr]; ok {
			svc.Servers[i].Delay = d
		}
	}
	if c.Delays != nil {
		svc.FlowTime = c.FlowTime
	}
	return r.x.UpsertService(svc)
}

// sample moves the clock by dt and sets each server's counters: rate[i]
// new flows a second, holding held[i] flows; the manager samples them.
func (r *delayRig) sample(dt time.Duration, rate, held []float64) {
	r.t.Helper()
	r.now = r.now.Add(dt)
	st, err := r.x.Stats()
	if err != nil {
		r.t.Fatal(err)
	}
	for i := range r.n {
		add := uint64(math.Round(rate[i] * dt.Seconds()))
		r.opened[i] += add
		cur := st.Services[key].Servers[addr(i)]
		closed := r.opened[i] - uint64(math.Round(held[i]))
		d := executor.ServerStats{NewFlows: add}
		if closed > cur.Closed {
			d.Closed = closed - cur.Closed
		}
		if err := r.x.AddCounters(key, addr(i), d); err != nil {
			r.t.Fatal(err)
		}
	}
	r.m.sampleActive()
}

// sampleAndAct takes one sample, a sixteenth of an interval, and runs the
// health-only computation the checks between intervals ask for, as Run
// does.
func (r *delayRig) sampleAndAct(rate, held []float64) {
	r.t.Helper()
	r.sample(r.m.Settings().Interval/activeSamples, rate, held)
	select {
	case <-r.m.sampled:
		r.m.step(false)
	default:
	}
}

// interval runs one manager interval: 16 samples, then the computation.
// Each server takes rate[i] new flows a second lasting rt[i] seconds.
func (r *delayRig) interval(rate, rt []float64) {
	r.t.Helper()
	held := make([]float64, r.n)
	for i := range held {
		held[i] = rate[i] * rt[i]
	}
	iv := r.m.Settings().Interval
	for range activeSamples {
		r.sample(iv/activeSamples, rate, held)
	}
	r.m.Step()
}

func (r *delayRig) delays() []float64 {
	out := make([]float64, r.n)
	for _, s := range r.x.Services()[0].Servers {
		for i := range r.n {
			if s.Addr == addr(i) {
				out[i] = max(s.Delay, 1)
			}
		}
	}
	return out
}

func (r *delayRig) weights() []uint32 { return weightsOf(r.x, r.n) }

// wantAllUp fails the test for each server of the port that is not up.
func (r *delayRig) wantAllUp() {
	r.t.Helper()
	for _, s := range r.m.Report()[0].Servers {
		if s.State != StateUp {
			r.t.Errorf("%v is %s: %s", s.Server, s.State, s.Note)
		}
	}
}

func repeat(v float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

var delayProps = Proportions{Active: 30, New: 30, Advisor: 40}

// TestDelayEqualServersRest: servers as fast as one another, with the
// metrics' own noise, get no commit at all: weights stay configured and
// delay factors at 1.
func TestDelayEqualServersRest(t *testing.T) {
	r := newDelayRig(t, 4, Settings{}, delayProps, "")
	noise := []float64{1, 1.2, 0.85, 1.1}
	// The first interval reads the port's typical flow time, a commit of
	// its own; from then on the port is at rest.
	r.interval(repeat(400, 4), repeat(0.0109, 4))
	if len(r.commits) != 1 || r.commits[0].Reason != "flow time" {
		t.Fatalf("first interval's commits %+v, want the flow time", r.commits)
	}
	r.commits = nil
	for k := range 30 {
		rt := make([]float64, 4)
		for i := range rt {
			rt[i] = 0.0109 * noise[(i+k)%4]
		}
		r.interval(repeat(400, 4), rt)
	}
	if len(r.commits) != 0 {
		t.Errorf("%d commits on equal servers, want 0: first %+v", len(r.commits), r.commits[0])
	}
	for i, w := range r.weights() {
		if w != 50 {
			t.Errorf("server %d weight %d, want its configured 50", i, w)
		}
	}
}

// TestDelaySlowServer: a server four times slower than its peers gets a
// delay factor of 16 at the next interval; its weight stays; when it is
// well again its factor comes back to 1 within a few intervals.
func TestDelaySlowServer(t *testing.T) {
	r := newDelayRig(t, 4, Settings{}, delayProps, "")
	r.interval(repeat(400, 4), repeat(0.0109, 4))
	// The slow-down is seen between intervals: up at once, not two
	// intervals later.
	rates := []float64{200, 450, 450, 450}
	r.interval(rates, []float64{4 * 0.0109, 0.0109, 0.0109, 0.0109})
	d := r.delays()
	t.Logf("slow: delays %v, weights %v", d, r.weights())
	if d[0] < 48 || d[0] > 100 {
		t.Errorf("slow server's delay factor %.2f, want about 64", d[0])
	}
	for i := 1; i < 4; i++ {
		if d[i] != 1 {
			t.Errorf("server %d delay factor %.2f, want 1", i, d[i])
		}
	}
	if w := r.weights(); w[0] != 50 {
		t.Errorf("slow server's weight %d, want its configured 50", w[0])
	}
	if ft := r.x.Services()[0].FlowTime; ft < 10*time.Millisecond || ft > 12*time.Millisecond {
		t.Errorf("flow time %v, want the peers' 10.9ms", ft)
	}
	// Right after a rise, a reading that still looks typical (an advisor
	// floor from before the slow-down) does not take it down.
	r.interval([]float64{100, 450, 450, 450}, repeat(0.0109, 4))
	if d := r.delays(); d[0] < 48 {
		t.Errorf("the interval after the rise took the factor down to %.2f", d[0])
	}
	// Slow for a while, then well again: back to 1 within three intervals
	// (a fall is read twice, then 64 -> 4 -> 1).
	for range 4 {
		r.interval([]float64{60, 450, 450, 450}, []float64{4 * 0.0109, 0.0109, 0.0109, 0.0109})
	}
	steps := 0
	for r.delays()[0] > 1 && steps < 10 {
		r.interval([]float64{100, 450, 450, 450}, repeat(0.0109, 4))
		steps++
		t.Logf("well again, interval %d: delays %v", steps, r.delays())
	}
	if steps > 3 {
		t.Errorf("back to factor 1 after %d intervals, want at most 3", steps)
	}
}

// TestDelayAdvisorFloor: a server that takes too few new flows to time is
// read by its advisor's floor latency; the smoothed latency, which a probe
// queueing on a busy server inflates, is not what counts. Read over whole
// intervals, a rise needs two readings in a row.
func TestDelayAdvisorFloor(t *testing.T) {
	r := newDelayRig(t, 4, Settings{}, delayProps, "web")
	for i := range 4 {
		r.adv[addr(i)] = AdvisorReading{Latency: 30 * time.Millisecond, Floor: time.Millisecond}
	}
	r.adv[addr(0)] = AdvisorReading{Latency: 4 * time.Millisecond, Floor: 4 * time.Millisecond}
	r.interval([]float64{2, 500, 500, 500}, []float64{0.044, 0.0109, 0.0109, 0.0109})
	if d := r.delays(); d[0] != 1 {
		t.Errorf("one interval's reading raised the factor to %.2f: a rise needs two", d[0])
	}
	r.interval([]float64{2, 500, 500, 500}, []float64{0.044, 0.0109, 0.0109, 0.0109})
	d := r.delays()
	t.Logf("delays %v", d)
	if d[0] < 48 {
		t.Errorf("server with 4x its peers' floor latency and too few flows to time: delay factor %.2f, want about 64", d[0])
	}
	for i := 1; i < 4; i++ {
		if d[i] != 1 {
			t.Errorf("server %d (floor as typical, smoothed high) delay factor %.2f, want 1", i, d[i])
		}
	}
}

// TestDelayFloorHoldsOut: a slow server kept out by its factor takes its
// few flows in bursts, and intervals of a burst read its response time
// typical or lower (its flows have not filled its active count yet). While
// its probes' floor latency still says 4x, that must not let it back in;
// once the floor is typical again, the factor falls.
func TestDelayFloorHoldsOut(t *testing.T) {
	r := newDelayRig(t, 4, Settings{}, delayProps, "web")
	for i := range 4 {
		r.adv[addr(i)] = AdvisorReading{Latency: 30 * time.Millisecond, Floor: time.Millisecond}
	}
	r.adv[addr(0)] = AdvisorReading{Latency: 4 * time.Millisecond, Floor: 4 * time.Millisecond}
	slow := []float64{0.044, 0.0109, 0.0109, 0.0109}
	for range 2 {
		r.interval([]float64{2, 500, 500, 500}, slow)
	}
	if d := r.delays(); d[0] < 48 {
		t.Fatalf("the slow server's factor is %.2f, want about 64", d[0])
	}
	burst := []float64{0.004, 0.0109, 0.0109, 0.0109}
	for k := range 4 {
		r.interval([]float64{60, 500, 500, 500}, burst)
		if d := r.delays(); d[0] < 32 {
			t.Fatalf("burst interval %d: a server whose floor latency is 4x its peers' fell to factor %.2f", k, d[0])
		}
	}
	r.adv[addr(0)] = AdvisorReading{Latency: time.Millisecond, Floor: time.Millisecond}
	for range 4 {
		r.interval([]float64{500, 500, 500, 500}, repeat(0.0109, 4))
	}
	if d := r.delays(); d[0] != 1 {
		t.Errorf("well again (floor and flows typical): factor %.2f, want 1", d[0])
	}
}

// TestDelaySuspect: a server whose flows end at once while it takes new
// ones at its peers' pace is out within half an interval (read so in two windows), as an
// event within half an interval (seen in two windows), not at the next
// interval; it is tried again after its time out.
func TestDelaySuspect(t *testing.T) {
	r := newDelayRig(t, 4, Settings{}, delayProps, "")
	r.interval(repeat(400, 4), repeat(0.0109, 4))
	rates := []float64{800, 400, 400, 400}
	held := []float64{0, 400 * 0.0109, 400 * 0.0109, 400 * 0.0109}
	out := -1
	for k := range activeSamples {
		r.sampleAndAct(rates, held)
		if r.weights()[0] == 0 {
			out = k + 1
			break
		}
	}
	if out < 0 {
		t.Fatalf("suspect not taken out within an interval: weights %v, report %+v", r.weights(), r.m.Report()[0].Servers[0])
	}
	t.Logf("out after %d samples: %s", out, r.m.Report()[0].Servers[0].Note)
	if out > activeSamples/2 {
		t.Errorf("out after %d samples, want within half an interval", out)
	}
	if st := r.m.Report()[0].Servers[0].State; st != StateSuspect {
		t.Errorf("state %q, want %q", st, StateSuspect)
	}
	// It sits out ten cool-downs (30 intervals): still out after 28, back
	// after 31, at its weight.
	for k := range 31 {
		r.interval([]float64{0, 500, 500, 500}, repeat(0.0109, 4))
		if w := r.weights()[0]; k == 27 && w != 0 {
			t.Errorf("the suspect is back at %d after 28 intervals, want it out for 30", w)
		}
	}
	if w := r.weights()[0]; w != 50 {
		t.Errorf("after its time out the server's weight is %d, want 50", w)
	}
}

// TestDelayNoSuspectAtLowLoad: servers holding a flow or two at a time,
// with the counts' noise, are never taken for suspects.
func TestDelayNoSuspectAtLowLoad(t *testing.T) {
	r := newDelayRig(t, 4, Settings{}, delayProps, "")
	iv := r.m.Settings().Interval
	for k := range 40 {
		for j := range activeSamples {
			held := make([]float64, 4)
			for i := range held {
				// Snapshots of about one flow in flight: often none.
				held[i] = float64((k + j + i) % 3)
			}
			r.sample(iv/activeSamples, repeat(100, 4), held)
		}
		r.m.Step()
	}
	r.wantAllUp()
}

// TestDelayRiseBetweenIntervals: a server turning four times slower has its
// delay factor raised within half an interval of samples, as an event.
func TestDelayRiseBetweenIntervals(t *testing.T) {
	r := newDelayRig(t, 4, Settings{}, delayProps, "")
	r.interval(repeat(400, 4), repeat(0.0109, 4))
	r.interval(repeat(400, 4), repeat(0.0109, 4))
	rates := []float64{250, 450, 450, 450}
	held := []float64{250 * 4 * 0.0109, 450 * 0.0109, 450 * 0.0109, 450 * 0.0109}
	risen := -1
	for k := range activeSamples {
		r.sampleAndAct(rates, held)
		if r.delays()[0] > 8 {
			risen = k + 1
			break
		}
	}
	t.Logf("risen after %d samples: delays %v", risen, r.delays())
	if risen < 0 || risen > activeSamples/2 {
		t.Errorf("slow server's factor rose after %d samples, want within half an interval (%d)", risen, activeSamples/2)
	}
}

// TestDelayNoRiseOnNoise: equal servers whose held flows swing by half from
// one sample to the next see no rise and no commit once at rest.
func TestDelayNoRiseOnNoise(t *testing.T) {
	r := newDelayRig(t, 4, Settings{}, delayProps, "")
	r.interval(repeat(400, 4), repeat(0.0109, 4))
	r.commits = nil
	swing := []float64{1, 1.5, 0.5, 1.2, 0.8, 1.4, 0.6}
	for k := range 30 {
		for j := range activeSamples {
			held := make([]float64, 4)
			for i := range held {
				held[i] = 400 * 0.0109 * swing[(k+j+2*i)%len(swing)]
			}
			r.sampleAndAct(repeat(400, 4), held)
		}
		r.m.Step()
	}
	if len(r.commits) != 0 {
		t.Errorf("%d commits on equal servers' noise, first %+v", len(r.commits), r.commits[0])
	}
}

// TestDelayLoadShiftNoCascade: when one server slows down and its peers
// take its flows, their own response times grow by half with their queues;
// judged against each other, not against the typical time of the interval
// before, none of them rises or is taken for a suspect.
func TestDelayLoadShiftNoCascade(t *testing.T) {
	r := newDelayRig(t, 4, Settings{}, delayProps, "")
	r.interval(repeat(400, 4), repeat(0.0109, 4))
	r.interval(repeat(400, 4), repeat(0.0109, 4))
	rates := []float64{60, 520, 520, 520}
	held := []float64{60 * 4 * 0.0109, 520 * 1.5 * 0.0109, 520 * 1.5 * 0.0109, 520 * 1.5 * 0.0109}
	for k := range 3 * activeSamples {
		r.sampleAndAct(rates, held)
		if k%activeSamples == activeSamples-1 {
			r.m.Step()
		}
	}
	d := r.delays()
	t.Logf("delays %v, weights %v", d, r.weights())
	if d[0] < 8 {
		t.Errorf("slow server's factor %.2f, want it raised", d[0])
	}
	for i := 1; i < 4; i++ {
		if d[i] != 1 {
			t.Errorf("server %d, busier with the slow one's flows, has factor %.2f, want 1", i, d[i])
		}
	}
	r.wantAllUp()
}

// TestDelaySuspectsBounded: however the readings look (here two servers of
// four hold nothing while taking new flows), at most a quarter of the port
// goes out as suspects, and the port never drops below half; and a server
// whose peers took too few new flows to compare with is not judged.
func TestDelaySuspectsBounded(t *testing.T) {
	r := newDelayRig(t, 4, Settings{}, delayProps, "")
	r.interval(repeat(400, 4), repeat(0.0109, 4))
	rates := []float64{800, 800, 800, 800}
	for range 3 * activeSamples {
		// Two servers hold nothing, two their flows: both empty ones
		// read as suspects, one at most may go.
		r.sampleAndAct(rates, []float64{0, 0, 10, 10})
	}
	out := 0
	for _, w := range r.weights() {
		if w == 0 {
			out++
		}
	}
	if out > 1 {
		t.Errorf("%d of 4 servers out as suspects, want at most 1: weights %v", out, r.weights())
	}

	// Too few new flows to compare with: nobody is judged.
	q := newDelayRig(t, 4, Settings{}, delayProps, "")
	q.interval(repeat(400, 4), repeat(0.0109, 4))
	for range 2 * activeSamples {
		q.sampleAndAct([]float64{40, 4, 4, 4}, []float64{0, 3, 3, 3})
	}
	if w := q.weights(); w[0] == 0 {
		t.Errorf("a server judged against peers with a few new flows between them: weights %v", w)
	}
}
