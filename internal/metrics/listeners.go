package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nd-dispatcher/nd/internal/connlimit"
)

// ListenerSource returns the TCP control listeners' connection counts by
// listener; (*api.Server).ConnStats is the real one.
type ListenerSource func() map[string]connlimit.Stats

// ListenerCollector exports the connections of ndd's TCP listeners
// (api.listen, metrics.listen), so that an operator sees a flood of idle
// or slow connections being shed. Labels are bounded: two listeners.
type ListenerCollector struct {
	src                     ListenerSource
	accepted, evicted, open *prometheus.Desc
}

// NewListeners returns a collector over src.
func NewListeners(src ListenerSource) *ListenerCollector {
	l := []string{"listener"}
	return &ListenerCollector{
		src:      src,
		accepted: prometheus.NewDesc("nd_api_connections_total", "TCP connections the listener accepted.", l, nil),
		evicted:  prometheus.NewDesc("nd_api_connections_evicted_total", "TCP connections closed to keep within the listener's limits (waiting ones evicted, new ones refused when every slot was in a request).", l, nil),
		open:     prometheus.NewDesc("nd_api_connections_open", "TCP connections the listener holds now.", l, nil),
	}
}

// Describe sends every description.
func (c *ListenerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.accepted
	ch <- c.evicted
	ch <- c.open
}

// Collect sends the counts of every listener.
func (c *ListenerCollector) Collect(ch chan<- prometheus.Metric) {
	for name, st := range c.src() {
		ch <- prometheus.MustNewConstMetric(c.accepted, prometheus.CounterValue, float64(st.Accepted), name)
		ch <- prometheus.MustNewConstMetric(c.evicted, prometheus.CounterValue, float64(st.Evicted), name)
		ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(st.Open), name)
	}
}
