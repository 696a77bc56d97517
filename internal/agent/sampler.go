package agent

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"
)

// sampler samples the standard metrics every interval and keeps the last
// sample, so a report costs the same however busy the host is and CPU
// utilisation is measured over the agent's own period.
type sampler struct {
	proc Proc

	mu       sync.Mutex
	metrics  map[string]float64
	errs     map[string]string
	prevCPU  CPUTimes
	havePrev bool
}

var errNoSample = errors.New("no sample yet")

func newSampler(p Proc) *sampler {
	s := &sampler{proc: p, metrics: map[string]float64{}, errs: map[string]string{}}
	for _, name := range StandardMetrics {
		s.errs[name] = errNoSample.Error()
	}
	return s
}

// sample reads every standard metric once.
func (s *sampler) sample() {
	metrics := map[string]float64{}
	errs := map[string]string{}
	put := func(name string, v float64, err error) {
		if err != nil {
			errs[name] = clip(err.Error())
			return
		}
		metrics[name] = v
	}
	v, err := s.proc.Load1()
	put(MetricLoad1, v, err)
	v, err = s.proc.Memory()
	put(MetricMemory, v, err)
	v, err = s.proc.TCPEstablished()
	put(MetricTCPEstablished, v, err)
	v, err = s.proc.Processes()
	put(MetricProcesses, v, err)

	cur, cpuErr := s.proc.CPU()

	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case cpuErr != nil:
		errs[MetricCPU] = clip(cpuErr.Error())
		s.havePrev = false
	case !s.havePrev:
		errs[MetricCPU] = "first CPU sample taken, utilisation needs a second"
		s.prevCPU, s.havePrev = cur, true
	default:
		busy, err := CPUBusy(s.prevCPU, cur)
		if err == errNoCPUChange {
			// Keep the earlier sample and the last value: the period
			// was too short for the kernel's tick to move.
			if old, ok := s.metrics[MetricCPU]; ok {
				metrics[MetricCPU] = old
			} else {
				errs[MetricCPU] = err.Error()
			}
			break
		}
		put(MetricCPU, busy, err)
		s.prevCPU = cur
	}
	s.metrics, s.errs = metrics, errs
}

func (s *sampler) fill(metrics map[string]float64, errs map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	maps.Copy(metrics, s.metrics)
	maps.Copy(errs, s.errs)
}

// run samples every interval until ctx ends. The caller takes the first
// sample, before it serves.
func (s *sampler) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.sample()
	}
}
