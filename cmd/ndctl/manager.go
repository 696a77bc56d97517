package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/manager"
)

// writeManagerReport prints, per port, each server's metrics raw and
// normalised, its Load Metric Index and its weight before and after the
// manager's last computation: the IBM manager report.
func writeManagerReport(w io.Writer, r api.ManagerResponse) error {
	p := r.Proportions
	fmt.Fprintf(w, "manager: policy %s, interval %s, sensitivity %s%%, smoothing %s, overload %s, proportions active %d new %d advisor %d host %d\n",
		r.Policy, r.Interval, trim(100*r.Sensitivity), trim(r.Smoothing), trim(r.Overload), p.Active, p.New, p.Advisor, p.Host)
	if len(r.Ports) == 0 {
		fmt.Fprintln(w, "no ports computed yet")
	}
	for _, pr := range r.Ports {
		writePortReport(w, pr)
	}
	return nil
}

func writePortReport(w io.Writer, pr manager.PortReport) {
	verdict := "kept"
	if pr.Committed {
		verdict = "committed"
	}
	at := ""
	if !pr.At.IsZero() {
		at = ", " + pr.At.Format(time.TimeOnly)
	}
	sched := ""
	switch pr.Scheduler {
	case "p2c":
		sched = ", p2c: active read as response time"
	case "delay":
		sched = ", delay: active read as response time, typical flow " + pr.FlowTime.String()
	}
	fmt.Fprintf(w, "\n%s  (%s: %s, change %s%%%s%s)\n", pr.Port, verdict, pr.Reason, trim(100*pr.Change), at, sched)
	if pr.Err != "" {
		fmt.Fprintf(w, "  commit failed: %s\n", pr.Err)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	delay := pr.Scheduler == "delay"
	if delay {
		fmt.Fprintln(tw, "  SERVER\tSTATE\tACTIVE\tNEW/S\tADVISOR\tHOST\tLOADS\tLMI\tWEIGHT\tNEW\tDELAY\tNEW\tNOTE")
	} else {
		fmt.Fprintln(tw, "  SERVER\tSTATE\tACTIVE\tNEW/S\tADVISOR\tHOST\tLOADS\tLMI\tWEIGHT\tNEW\tNOTE")
	}
	for _, s := range pr.Servers {
		adv, host := "-", "-"
		if s.AdvisorMS >= 0 {
			adv = trim(s.AdvisorMS) + "ms"
		}
		if s.Host >= 0 {
			host = trim(s.Host)
		}
		var loads []string
		for _, k := range []string{"active", "new", "advisor", "host"} {
			if v, ok := s.Loads[k]; ok {
				loads = append(loads, k+"="+trim(v))
			}
		}
		for k, v := range s.Custom {
			loads = append(loads, k+"="+trim(v))
		}
		state := s.State
		if s.Fixed {
			state += " (fixed)"
		}
		if delay {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", s.Server, state, s.Active, trim(s.NewPerSec),
				adv, host, strings.Join(loads, " "), trim(s.LMI), s.Weight, s.NewWeight, trim(max(s.Delay, 1)), trim(max(s.NewDelay, 1)), s.Note)
			continue
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", s.Server, state, s.Active, trim(s.NewPerSec),
			adv, host, strings.Join(loads, " "), trim(s.LMI), s.Weight, s.NewWeight, s.Note)
	}
	tw.Flush()
}

func trim(v float64) string {
	s := strconv.FormatFloat(v, 'f', 2, 64)
	s = strings.TrimRight(s, "0")
	return strings.TrimSuffix(s, ".")
}

// managerSet changes manager settings live; with --port, one port's
// proportions.
func managerSet(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	interval := fs.String("interval", "", "time between computations, `DURATION` such as 2s")
	sensitivity := fs.Float64("sensitivity", 0, "smallest aggregate change committed, a `FRACTION` (0.05 is 5%)")
	smoothing := fs.Float64("smoothing", 0, "smoothing index, `N` from 1 (follow at once) to 10")
	policy := fs.String("policy", "", "weight function: `default|best|static`")
	proportions := fs.String("proportions", "", "`ACTIVE,NEW,ADVISOR,HOST` in percent, summing to 100")
	overload := fs.Float64("overload", 0, "LMI past which a server cools down, `N` above 1 (0: never)")
	coolDown := fs.String("cool-down", "", "how long an overloaded server sits out, `DURATION` (0s: three intervals)")
	hostMetric := fs.String("host-metric", "", "the agent `METRIC` the host proportion weighs")
	port := fs.String("port", "", "with --proportions: set this port's own, `VIP/PORT[/PROTO]`")
	reset := fs.Bool("reset-port", false, "with --port: the port follows the manager's proportions again")
	if _, err := s.parse(fs, args, 0, 0); err != nil {
		return err
	}
	p := api.ManagerPatch{
		Interval:    ifSet(fs, "interval", interval),
		Sensitivity: ifSet(fs, "sensitivity", sensitivity),
		Smoothing:   ifSet(fs, "smoothing", smoothing),
		Policy:      ifSet(fs, "policy", policy),
		Overload:    ifSet(fs, "overload", overload),
		CoolDown:    ifSet(fs, "cool-down", coolDown),
		HostMetric:  ifSet(fs, "host-metric", hostMetric),
	}
	if isSet(fs, "proportions") {
		pr, err := parseProportions(*proportions)
		if err != nil {
			return err
		}
		p.Proportions = &pr
	}
	p.Port, p.ResetPort = *port, *reset
	if p == (api.ManagerPatch{}) {
		return usagef("nothing to change: give at least one setting")
	}
	return s.change(func(c Client) (string, error) { return c.SetManager(p) })
}

func parseProportions(s string) (api.ProportionsRequest, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 4 {
		return api.ProportionsRequest{}, usagef("--proportions %q: want four numbers ACTIVE,NEW,ADVISOR,HOST", s)
	}
	var v [4]uint32
	for i, part := range parts {
		n, err := strconv.ParseUint(strings.TrimSpace(part), 10, 32)
		if err != nil || n > 100 {
			return api.ProportionsRequest{}, usagef("--proportions %q: %q is not a percentage 0..100", s, part)
		}
		v[i] = uint32(n)
	}
	return api.ProportionsRequest{Active: v[0], New: v[1], Advisor: v[2], Host: v[3]}, nil
}

// writeAdvisors prints every advisor target: up or down, latency, error.
func writeAdvisors(w io.Writer, st []advisor.Status) error {
	const header = "ADVISOR\tKIND\tTARGET\tSERVER\tSTATE\tLATENCY\tSMOOTHED\tPROBES\tFAILED\tERROR"
	return writeTable(w, "no advisors probe any server", header, st, func(tw io.Writer, a advisor.Status) {
		state := "unknown"
		if a.Known {
			state = "down"
			if a.Up {
				state = "up"
			}
		}
		target := fmt.Sprintf("%s:%d", a.Server, a.Port)
		if a.VIP.IsValid() {
			target = fmt.Sprintf("vip %s:%d", a.VIP, a.Port)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", a.Advisor, a.Kind, target, a.Server, state,
			a.Latency.Round(10*time.Microsecond), a.Smoothed.Round(10*time.Microsecond), a.Probes, a.Failures, a.Err)
	})
}

// writeAgents prints every polled agent: its metrics, or why they are
// disabled.
func writeAgents(w io.Writer, st []api.AgentStatus) error {
	const header = "AGENT\tHOST\tSTATE\tLAST REPORT\tMETRICS\tERROR"
	return writeTable(w, "no agents polled (no agents section in the configuration)", header, st, func(tw io.Writer, a api.AgentStatus) {
		state := "ok"
		if a.Disabled {
			state = "disabled"
		}
		last := "never"
		if !a.Last.IsZero() {
			last = a.Last.Format(time.TimeOnly)
		}
		keys := make([]string, 0, len(a.Metrics))
		for k := range a.Metrics {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var m []string
		for _, k := range keys {
			m = append(m, k+"="+trim(a.Metrics[k]))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Address, a.Host, state, last, strings.Join(m, " "), a.Error)
	})
}
