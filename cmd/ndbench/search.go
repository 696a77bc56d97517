package main

import (
	"context"
	"math"
)

// search finds the highest offered rate that a configuration sustains, one
// step at a time, so that the searches of several configurations can take
// turns: next says which rate to try, record takes the step's result.
//
// The bracket [lo, hi] first grows (lo halves while it fails, hi doubles
// while it passes, up to limit), then is bisected until (hi-lo)/hi is
// below resolution. A rate fails only if it fails twice: on a machine
// shared with other work, a burst of that work can sink one step, and a
// single failure would otherwise cap the rest of the search. maxSteps
// bounds the steps whatever happens.
type search struct {
	limit      float64
	resolution float64
	maxSteps   int

	phase    searchPhase
	lo, hi   float64
	best     float64 // the highest rate that passed
	hiFailed bool    // hi is known to fail
	retry    float64 // a rate that failed once, to try again
	steps    []stepResult
}

type searchPhase int

const (
	findPass searchPhase = iota // trying lo until one passes
	findFail                    // trying hi until one fails
	bisect
	searchDone
)

// newSearch starts a search that tries lo first, then hi.
func newSearch(lo, hi, limit, resolution float64, maxSteps int) *search {
	lo = math.Min(math.Round(lo), limit)
	hi = math.Min(math.Round(hi), limit)
	if hi <= lo {
		hi = math.Min(2*lo, limit)
	}
	return &search{lo: lo, hi: hi, limit: limit, resolution: resolution, maxSteps: maxSteps}
}

// next returns the rate to try next, or false once the search is over.
func (s *search) next() (float64, bool) {
	if len(s.steps) >= s.maxSteps {
		s.phase = searchDone
	}
	if s.retry > 0 && s.phase != searchDone {
		return s.retry, true
	}
	switch s.phase {
	case findPass:
		if s.lo >= 1 {
			return s.lo, true
		}
	case findFail:
		if s.hi > s.lo {
			return s.hi, true
		}
	case bisect:
		mid := math.Round((s.lo + s.hi) / 2)
		if (s.hi-s.lo)/s.hi > s.resolution && mid > s.lo && mid < s.hi {
			return mid, true
		}
	}
	s.phase = searchDone
	return 0, false
}

// record takes the result of the step at the rate next returned.
func (s *search) record(rate float64, r stepResult) {
	s.steps = append(s.steps, r)
	pass := r.Sustained
	if !pass && s.retry != rate {
		s.retry = rate // once more before it counts
		return
	}
	s.retry = 0
	switch s.phase {
	case findPass:
		if pass {
			s.best = rate
			s.phase = findFail
			if s.hiFailed {
				s.phase = bisect
			}
			return
		}
		s.hi, s.hiFailed = rate, true
		s.lo = math.Floor(rate / 2)
	case findFail:
		if !pass {
			s.phase = bisect
			return
		}
		s.best, s.lo = rate, rate
		s.hi = math.Min(2*rate, s.limit)
	case bisect:
		if pass {
			s.best, s.lo = rate, rate
		} else {
			s.hi = rate
		}
	}
}

// done reports whether the search is over.
func (s *search) done() bool {
	_, more := s.next()
	return !more
}

// run drives the search alone, measuring each step with measure, and
// returns the highest sustained rate (0 if none was) and every step. A
// measure error ends it with that error.
func (s *search) run(ctx context.Context, measure func(ctx context.Context, rate float64) (stepResult, error)) (float64, []stepResult, error) {
	for {
		rate, ok := s.next()
		if !ok {
			return s.best, s.steps, nil
		}
		r, err := measure(ctx, rate)
		s.record(rate, r)
		if err != nil {
			return s.best, s.steps, err
		}
	}
}
