package metrics

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/agent"
	"github.com/nd-dispatcher/nd/internal/manager"
)

// Decisions are the sources of the feedback loop's metrics; the daemon's
// ManagerReport, AdvisorStatus and AgentStatus are the real ones.
type Decisions struct {
	Manager  func() []manager.PortReport
	Advisors func() []advisor.Status
	Agents   func() map[netip.AddrPort]agent.Status
}

// managerStates are the states nd_manager_server_state reports.
func managerStates() []string {
	return []string{manager.StateUp, manager.StateQuiesced, manager.StateDown, manager.StateDisabled, manager.StateCoolDown, manager.StateSuspect, manager.StateAbsent}
}

// DecisionCollector exports the manager's last computation (LMI, loads,
// weights, states, commits), the advisors' results and the agents' reports,
// read at scrape time.
type DecisionCollector struct {
	src Decisions

	lmi, load, target, state, commits *prometheus.Desc
	delay, flowTime                   *prometheus.Desc
	advUp, advLatency, advProbes      *prometheus.Desc
	agentDisabled, agentMetric        *prometheus.Desc
}

// NewDecisions returns a collector over src; nil functions are skipped.
func NewDecisions(src Decisions) *DecisionCollector {
	port := []string{"vip", "port", "protocol"}
	server := append(port[:len(port):len(port)], "server")
	return &DecisionCollector{
		src:      src,
		lmi:      prometheus.NewDesc("nd_manager_lmi", "Load Metric Index of a server of a port at the manager's last computation: 1 is as loaded as its peers.", server, nil),
		load:     prometheus.NewDesc("nd_manager_load", "One normalised input of the LMI (metric active, new, advisor, host or a custom one) of a server of a port.", append(server[:len(server):len(server)], "metric"), nil),
		target:   prometheus.NewDesc("nd_manager_weight", "Weight the manager chose for a server of a port at its last computation.", server, nil),
		state:    prometheus.NewDesc("nd_manager_server_state", "1 for the manager's current state of a server of a port (up, quiesced, down, disabled, cool-down, absent), 0 for the others.", append(server[:len(server):len(server)], "state"), nil),
		commits:  prometheus.NewDesc("nd_manager_commits_total", "Weight commits of a port since ndd started.", port, nil),
		delay:    prometheus.NewDesc("nd_manager_delay_factor", "Delay factor the manager chose for a server of a port under the delay scheduler: the expected delay of one more flow there against a typical server's (1: typical).", server, nil),
		flowTime: prometheus.NewDesc("nd_manager_flow_time_seconds", "A typical flow's time on a port under the delay scheduler (the median of its servers' response times).", port, nil),

		advUp:      prometheus.NewDesc("nd_advisor_up", "1 when an advisor finds its target up (after rise/fall), 0 when down; absent until known.", []string{"advisor", "server", "port", "vip"}, nil),
		advLatency: prometheus.NewDesc("nd_advisor_latency_seconds", "Smoothed latency an advisor measured to its target.", []string{"advisor", "server", "port", "vip"}, nil),
		advProbes:  prometheus.NewDesc("nd_advisor_probes_total", "Probe rounds of an advisor's target, by result.", []string{"advisor", "server", "port", "vip", "result"}, nil),

		agentDisabled: prometheus.NewDesc("nd_agent_disabled", "1 when a server's agent sent no valid report for longer than its threshold.", []string{"server"}, nil),
		agentMetric:   prometheus.NewDesc("nd_agent_metric", "A host metric a server's agent reported (standard or operator-defined).", []string{"server", "metric"}, nil),
	}
}

// Describe sends every description.
func (c *DecisionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.lmi, c.load, c.target, c.state, c.commits, c.delay, c.flowTime, c.advUp, c.advLatency, c.advProbes, c.agentDisabled, c.agentMetric} {
		ch <- d
	}
}

// Collect reads the sources and sends every metric.
func (c *DecisionCollector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if c.src.Manager != nil {
		for _, p := range c.src.Manager() {
			pl, ok := portLabels(p.Port)
			if !ok {
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.commits, prometheus.CounterValue, float64(p.Commits), pl...)
			delay := p.Scheduler == "delay"
			if delay {
				gauge(c.flowTime, p.FlowTime.Seconds(), pl...)
			}
			for _, s := range p.Servers {
				sl := append(pl[:len(pl):len(pl)], s.Server.String())
				gauge(c.lmi, s.LMI, sl...)
				gauge(c.target, float64(s.NewWeight), sl...)
				if delay {
					gauge(c.delay, max(s.NewDelay, 1), sl...)
				}
				for m, v := range s.Loads {
					gauge(c.load, v, append(sl[:len(sl):len(sl)], m)...)
				}
				for _, st := range managerStates() {
					v := 0.0
					if s.State == st {
						v = 1
					}
					gauge(c.state, v, append(sl[:len(sl):len(sl)], st)...)
				}
			}
		}
	}
	if c.src.Advisors != nil {
		for _, a := range c.src.Advisors() {
			vip := ""
			if a.VIP.IsValid() {
				vip = a.VIP.String()
			}
			l := []string{a.Advisor, a.Server.String(), strconv.Itoa(int(a.Port)), vip}
			ch <- prometheus.MustNewConstMetric(c.advProbes, prometheus.CounterValue, float64(a.Probes-a.Failures), append(l[:4:4], "ok")...)
			ch <- prometheus.MustNewConstMetric(c.advProbes, prometheus.CounterValue, float64(a.Failures), append(l[:4:4], "failed")...)
			if !a.Known {
				continue
			}
			up := 0.0
			if a.Up {
				up = 1
			}
			gauge(c.advUp, up, l...)
			gauge(c.advLatency, a.Smoothed.Seconds(), l...)
		}
	}
	if c.src.Agents != nil {
		for addr, st := range c.src.Agents() {
			v := 0.0
			if st.Disabled {
				v = 1
			}
			gauge(c.agentDisabled, v, addr.Addr().String())
			for m, x := range st.Report.Metrics {
				gauge(c.agentMetric, x, addr.Addr().String(), m)
			}
		}
	}
}

// portLabels splits "198.51.100.100:80/tcp" (or "[2001:db8::100]:80/tcp")
// into vip, port and protocol.
func portLabels(s string) ([]string, bool) {
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return nil, false
	}
	ap, err := netip.ParseAddrPort(s[:i])
	if err != nil {
		return nil, false
	}
	return []string{ap.Addr().String(), strconv.Itoa(int(ap.Port())), s[i+1:]}, true
}
