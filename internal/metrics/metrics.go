// Package metrics exports nd's counters to Prometheus. A Collector reads the
// daemon's status when it is scraped, so the numbers are those of the data
// plane's per-CPU maps at that moment; nothing is cached or sampled here.
//
// Labels are bounded by the configuration: VIP, port, protocol, server and
// small fixed sets (state, reason, action, result). Client addresses never
// appear.
package metrics

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// Source returns the dispatcher's status; (*daemon.Daemon).Status is the
// real one.
type Source func() (nd.Status, error)

// states are the server states nd_server_state reports, each 0 or 1.
func states() []string {
	return []string{nd.StateUp, nd.StateQuiesced, nd.StateUnresolved, nd.StateLocal}
}

// Collector is a prometheus.Collector over a status source.
type Collector struct {
	source Source

	portPackets, portBytes, portNoServer *prometheus.Desc

	serverPackets, serverBytes, serverNewFlows *prometheus.Desc
	serverActive, serverWeight, serverConfig   *prometheus.Desc
	serverState                                *prometheus.Desc
	serverHalfOpen                             *prometheus.Desc

	vipDropped, vipICMP *prometheus.Desc

	dispatcherPackets, flowsEvicted, flowsUnrecorded, flowEventsLost *prometheus.Desc

	tableEvictions, flowsSkipped, tablePressure, flowsHalfOpen *prometheus.Desc

	scrapeError *prometheus.Desc
}

// New returns a collector that calls source at every scrape.
func New(source func() (nd.Status, error)) *Collector {
	port := []string{"vip", "port", "protocol"}
	server := append(port[:len(port):len(port)], "server")
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &Collector{
		source: source,

		portPackets:  desc("nd_port_packets_total", "Packets dispatched for a VIP:port.", port...),
		portBytes:    desc("nd_port_bytes_total", "Bytes dispatched for a VIP:port.", port...),
		portNoServer: desc("nd_port_no_server_drops_total", "Packets for a VIP:port dropped because no server had a positive weight.", port...),

		serverPackets:  desc("nd_server_packets_total", "Packets sent to a server of a port.", server...),
		serverBytes:    desc("nd_server_bytes_total", "Bytes sent to a server of a port.", server...),
		serverNewFlows: desc("nd_server_new_flows_total", "New flows given to a server of a port.", server...),
		serverActive:   desc("nd_server_active_flows", "Flows of a server of a port estimated open: new minus closed and expired.", server...),
		serverWeight:   desc("nd_server_weight", "Weight of a server of a port in the data plane (0 when quiesced or not installed).", server...),
		serverConfig:   desc("nd_server_config_weight", "Weight of a server of a port in the configuration.", server...),
		serverHalfOpen: desc("nd_flows_halfopen", "Half-open flows (a SYN, no ACK yet) of a server of a port, apart from nd_server_active_flows: a SYN flood shows here only.", server...),
		serverState:    desc("nd_server_state", "1 for the current state of a server of a port (up, quiesced, unresolved, local), 0 for the others.", append(server[:len(server):len(server)], "state")...),

		vipDropped: desc("nd_vip_dropped_total", "Packets to a VIP dropped: reason filtered (port or protocol not served) or fragment.", "vip", "reason"),
		vipICMP:    desc("nd_vip_icmp_total", "ICMP packets to a VIP: action local (handed to the dispatcher's stack) or forwarded (to the server owning the flow).", "vip", "action"),

		dispatcherPackets: desc("nd_dispatcher_packets_total", "Packets nd did not dispatch: result passed (IP, for no VIP), malformed, not_ip, or other_host (for a VIP but another host's MAC: passed).", "result"),
		flowsEvicted:      desc("nd_flows_evicted_total", "Live flows pushed out of a full connection table bucket: the table is too small."),
		flowsUnrecorded:   desc("nd_flows_unrecorded_total", "New flows not recorded because two CPUs raced for the same connection table entry."),
		tableEvictions:    desc("nd_flow_table_evictions_total", "Live flows displaced from the connection table, by state: halfopen (by new flows: a SYN flood, or a small table), established (only by flows learnt from a peer).", "state"),
		flowsSkipped:      desc("nd_flows_skipped_total", "Packets of flows the connection table did not record, forwarded by the pick alone: kind syn (every way of the bucket held an established flow, which no packet displaces) or stray (a packet of an unknown flow, which takes only a free way).", "kind"),
		tablePressure:     desc("nd_flow_table_pressure", "1 while the connection table is under pressure (within the half-open timeout, a new flow displaced a half-open one or found no way to take), else 0."),
		flowEventsLost:    desc("nd_flow_events_lost_total", "Flow open/close reports for high availability dropped because user space did not keep up."),

		scrapeError: desc("nd_scrape_error", "1 when the dispatcher's status could not be read at this scrape, else 0."),
	}
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.portPackets, c.portBytes, c.portNoServer,
		c.serverPackets, c.serverBytes, c.serverNewFlows,
		c.serverActive, c.serverWeight, c.serverConfig, c.serverState, c.serverHalfOpen,
		c.vipDropped, c.vipICMP,
		c.dispatcherPackets, c.flowsEvicted, c.flowsUnrecorded, c.flowEventsLost,
		c.tableEvictions, c.flowsSkipped, c.tablePressure,
		c.scrapeError,
	} {
		ch <- d
	}
}

// Collect reads the status and sends every metric. When the source fails,
// only nd_scrape_error is sent, at 1.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.source()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.scrapeError, prometheus.GaugeValue, 1)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.scrapeError, prometheus.GaugeValue, 0)

	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}

	for _, p := range st.Ports {
		pl := []string{p.VIP, strconv.FormatUint(uint64(p.Port), 10), p.Protocol}
		counter(c.portPackets, p.Packets, pl...)
		counter(c.portBytes, p.Bytes, pl...)
		counter(c.portNoServer, p.NoServer, pl...)
		for _, s := range p.Servers {
			sl := append(pl[:len(pl):len(pl)], s.Address)
			counter(c.serverPackets, s.Packets, sl...)
			counter(c.serverBytes, s.Bytes, sl...)
			counter(c.serverNewFlows, s.NewFlows, sl...)
			gauge(c.serverActive, float64(s.ActiveFlows), sl...)
			gauge(c.serverHalfOpen, float64(s.HalfOpenFlows), sl...)
			gauge(c.serverWeight, float64(s.Weight), sl...)
			gauge(c.serverConfig, float64(s.ConfigWeight), sl...)
			for _, state := range states() {
				v := 0.0
				if s.State == state {
					v = 1
				}
				gauge(c.serverState, v, append(sl[:len(sl):len(sl)], state)...)
			}
		}
	}
	for _, v := range st.VIPs {
		counter(c.vipDropped, v.Filtered, v.VIP, "filtered")
		counter(c.vipDropped, v.Fragments, v.VIP, "fragment")
		counter(c.vipICMP, v.ICMPLocal, v.VIP, "local")
		counter(c.vipICMP, v.ICMPForwarded, v.VIP, "forwarded")
	}
	g := st.Global
	counter(c.dispatcherPackets, g.Passed, "passed")
	counter(c.dispatcherPackets, g.Malformed, "malformed")
	counter(c.dispatcherPackets, g.NotIP, "not_ip")
	counter(c.dispatcherPackets, g.OtherHost, "other_host")
	counter(c.flowsEvicted, g.FlowsEvicted)
	counter(c.flowsUnrecorded, g.FlowsUnrecorded)
	counter(c.flowEventsLost, g.FlowEventsLost)
	counter(c.tableEvictions, g.HalfOpenEvicted, "halfopen")
	counter(c.tableEvictions, g.FlowsEvicted, "established")
	counter(c.flowsSkipped, g.OpenersUnrecorded, "syn")
	counter(c.flowsSkipped, g.StraysUnrecorded, "stray")
	pressure := 0.0
	if g.TablePressure {
		pressure = 1
	}
	gauge(c.tablePressure, pressure)
}

// Handler serves the collector's metrics, with the Go runtime's and the
// process's, from a registry of its own.
func Handler(c *Collector, more ...prometheus.Collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		c,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	reg.MustRegister(more...)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
