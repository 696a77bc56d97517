package main

import (
	"fmt"
	"math"
	"time"
)

// The cases of the allocation issue, each a scenario: which servers run,
// how big each is, what happens to them and when, and which phases are
// measured.

// Scenario names.
const (
	scSlowStart       = "slow-start"
	scSlowSpell       = "slow-spell"
	scSinkholeFailing = "sinkhole-failing"
	scSinkholePassing = "sinkhole-passing"
	scEqual           = "equal"
	scColdAdd         = "cold-add"
	scSizes           = "sizes"
)

// scenarioNames are every scenario, in the order they run.
var scenarioNames = []string{scSlowStart, scSlowSpell, scSinkholeFailing, scSinkholePassing, scEqual, scColdAdd, scSizes}

// Phase names.
const (
	phWarmup  = "warmup" // not measured
	phNormal  = "normal" // every server well
	phSlow    = "slow"   // server1 slowed down
	phAfter   = "after"  // server1 well again
	phSink    = "sinkhole"
	phSteady  = "steady"
	phThree   = "three"  // before the fourth server joins
	phJoined  = "joined" // after
	evSlow    = "slow"   // server slows down by the scenario's factor
	evWell    = "well"   // server serves at full speed again
	evSinkBad = "sinkhole, /health failing"
	evSinkOK  = "sinkhole, /health passing"
	evAdd     = "add" // server joins the balancer
)

// fbPhaseSpan is a phase's seconds [From, To) from the start of a run.
type fbPhaseSpan struct {
	Name string `json:"name"`
	From int    `json:"from"`
	To   int    `json:"to"`
}

// fbEvent is something done to one server At seconds into a run.
type fbEvent struct {
	At     int    `json:"at"`
	Server int    `json:"server"`
	Kind   string `json:"kind"`
}

// scenario is one case of the issue.
type scenario struct {
	Name  string `json:"name"`
	About string `json:"about"`
	// Workers is each server's size: the requests it serves at once.
	Workers []int `json:"workers"`
	// Weights are the servers' configured weights, the same for nd and
	// HAProxy; 0 leaves the weight out of nd's configuration (its
	// default, half the bound) and gives HAProxy's default.
	Weights []int `json:"weights"`
	// Late is the server added part-way (an evAdd event), -1 if none.
	Late     int           `json:"late"`
	Slowdown float64       `json:"slowdown"`
	Phases   []fbPhaseSpan `json:"phases"`
	Events   []fbEvent     `json:"events"`
	// Capacity is the capacity the load is set against, in requests a
	// second: that of the servers that serve throughout, a slow server
	// at its reduced speed, a sinkhole as nothing, a server that joins
	// late not at all. Rate is load times Capacity.
	Capacity float64 `json:"capacity_per_sec"`
	Rate     float64 `json:"rate_per_sec"`
}

// seconds is the length of a run.
func (s *scenario) seconds() int {
	if len(s.Phases) == 0 {
		return 0
	}
	return s.Phases[len(s.Phases)-1].To
}

func (s *scenario) phase(name string) (fbPhaseSpan, bool) {
	for _, p := range s.Phases {
		if p.Name == name {
			return p, true
		}
	}
	return fbPhaseSpan{}, false
}

// event is the first event of kind, and whether there is one.
func (s *scenario) event(kind string) (fbEvent, bool) {
	for _, e := range s.Events {
		if e.Kind == kind {
			return e, true
		}
	}
	return fbEvent{}, false
}

// isChange tells the events that change how well a server serves (the
// ones an oracle is told of) from a server joining.
func isChange(kind string) bool { return kind != evAdd }

// badFromStart tells whether server i is slow or a sinkhole from the
// start of the run.
func (s *scenario) badFromStart(i int) bool {
	for _, e := range s.Events {
		if e.At == 0 && e.Server == i && isChange(e.Kind) && e.Kind != evWell {
			return true
		}
	}
	return false
}

// changes tells whether any server changes how well it serves.
func (s *scenario) changes() bool {
	for _, e := range s.Events {
		if isChange(e.Kind) {
			return true
		}
	}
	return false
}

// weightShare is server i's configured share of the total weight, every
// server counted (the late one too, as after it joined).
func (s *scenario) weightShare(i int) float64 {
	var sum float64
	for _, w := range s.Weights {
		sum += float64(effectiveWeight(w))
	}
	return float64(effectiveWeight(s.Weights[i])) / sum
}

// effectiveWeight is a configured weight, 0 being nd's default.
func effectiveWeight(w int) int {
	if w == 0 {
		return defaultWeight
	}
	return w
}

// defaultWeight is nd's default weight, half its default bound of 100.
const defaultWeight = 50

// buildScenario lays out scenario name for the options: the phases'
// lengths (base lengths times o.phaseScale, whole seconds, at least 2),
// the servers, the events and the rate.
func buildScenario(name string, o feedbackOptions) (*scenario, error) {
	sec := func(base float64) int { return max(2, int(math.Round(base*o.phaseScale))) }
	warm := int(o.warmup / time.Second)
	s := &scenario{Name: name, Late: -1, Slowdown: o.slowdown}
	equal := func(n int) {
		s.Workers, s.Weights = make([]int, n), make([]int, n)
		for i := range s.Workers {
			s.Workers[i] = o.workers
		}
	}
	lay := func(names []string, lengths []int) {
		at := 0
		s.Phases = append(s.Phases, fbPhaseSpan{Name: phWarmup, From: 0, To: warm})
		at = warm
		for i, n := range names {
			s.Phases = append(s.Phases, fbPhaseSpan{Name: n, From: at, To: at + lengths[i]})
			at += lengths[i]
		}
	}
	perWorker := 1 / meanWork.Seconds()
	workers := func(n float64) float64 { return n * float64(o.workers) * perWorker }
	switch name {
	case scSlowStart:
		s.About = fmt.Sprintf("server1 %gx slower for the whole run", o.slowdown)
		equal(4)
		lay([]string{phSlow}, []int{sec(30)})
		s.Events = []fbEvent{{At: 0, Server: 0, Kind: evSlow}}
		s.Capacity = workers(3 + 1/o.slowdown)
	case scSlowSpell:
		equal(4)
		lay([]string{phNormal, phSlow, phAfter}, []int{sec(5), sec(15), sec(15)})
		slow, _ := s.phase(phSlow)
		s.About = fmt.Sprintf("server1 %gx slower for %d s, then well again", o.slowdown, slow.To-slow.From)
		s.Events = []fbEvent{{At: slow.From, Server: 0, Kind: evSlow}, {At: slow.To, Server: 0, Kind: evWell}}
		s.Capacity = workers(3 + 1/o.slowdown)
	case scSinkholeFailing, scSinkholePassing:
		equal(4)
		lay([]string{phNormal, phSink}, []int{sec(5), sec(30)})
		sink, _ := s.phase(phSink)
		kind := evSinkBad
		s.About = "server1 answers every request at once with HTTP 500; its /health fails too"
		if name == scSinkholePassing {
			kind = evSinkOK
			s.About = "server1 answers every request at once with HTTP 500; its /health still answers 200"
		}
		s.Events = []fbEvent{{At: sink.From, Server: 0, Kind: kind}}
		s.Capacity = workers(3)
	case scEqual:
		s.About = "four equal servers"
		equal(4)
		lay([]string{phSteady}, []int{sec(25)})
		s.Capacity = workers(4)
	case scColdAdd:
		s.About = "three equal servers, then server4 added live"
		equal(4)
		s.Late = 3
		lay([]string{phThree, phJoined}, []int{sec(10), sec(20)})
		joined, _ := s.phase(phJoined)
		s.Events = []fbEvent{{At: joined.From, Server: 3, Kind: evAdd}}
		s.Capacity = workers(3)
	case scSizes:
		if o.workers%2 != 0 {
			return nil, fmt.Errorf("%w: scenario %s needs an even --workers (sizes W/2, W, 2W)", errUsage, name)
		}
		s.Workers = []int{o.workers / 2, o.workers, 2 * o.workers}
		s.Weights = []int{25, 50, 100}
		s.About = fmt.Sprintf("three servers of %d, %d and %d workers (1:2:4), weights 25, 50, 100", s.Workers[0], s.Workers[1], s.Workers[2])
		lay([]string{phSteady}, []int{sec(30)})
		s.Capacity = workers(3.5)
	default:
		return nil, fmt.Errorf("%w: unknown scenario %q", errUsage, name)
	}
	s.Rate = o.load * s.Capacity
	return s, nil
}
