package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nd-dispatcher/nd/internal/ha"
)

// HASource returns this node's high-availability status;
// (*daemon.Daemon).HAStatus is the real one. An error (no ha section)
// leaves the HA metrics out of the scrape.
type HASource func() (ha.Status, error)

// haStates are the states nd_ha_state and nd_ha_peers report.
func haStates() []ha.State {
	return []ha.State{ha.StateStandby, ha.StateActive, ha.StateStopping}
}

// HACollector exports this node's state in its HA group and what it knows
// of its peers, read at scrape time.
type HACollector struct {
	src                             HASource
	state, peers, synced, takeovers *prometheus.Desc
}

// NewHA returns a collector over src.
func NewHA(src HASource) *HACollector {
	return &HACollector{
		src:       src,
		state:     prometheus.NewDesc("nd_ha_state", "1 for this node's state in its high-availability group (standby, active, stopping), 0 for the others.", []string{"group", "state"}, nil),
		peers:     prometheus.NewDesc("nd_ha_peers", "Peers of this node heard within the dead interval, by the state they announce.", []string{"group", "state"}, nil),
		synced:    prometheus.NewDesc("nd_ha_peers_synced", "Peers this node streams its new flows to (on the active node: the standbys that would keep the connections on a takeover).", []string{"group"}, nil),
		takeovers: prometheus.NewDesc("nd_ha_takeovers_total", "Times this node became the active one since ndd started.", []string{"group"}, nil),
	}
}

// Describe sends every description.
func (c *HACollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.state
	ch <- c.peers
	ch <- c.synced
	ch <- c.takeovers
}

// Collect sends the metrics, or none without high availability.
func (c *HACollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.src()
	if err != nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	alive := map[ha.State]int{}
	synced := 0
	for _, p := range st.Peers {
		if p.Alive {
			alive[p.State]++
		}
		if p.Synced {
			synced++
		}
	}
	for _, s := range haStates() {
		v := 0.0
		if st.State == s {
			v = 1
		}
		gauge(c.state, v, st.Group, s.String())
		gauge(c.peers, float64(alive[s]), st.Group, s.String())
	}
	gauge(c.synced, float64(synced), st.Group)
	ch <- prometheus.MustNewConstMetric(c.takeovers, prometheus.CounterValue, float64(st.Counters.Takeovers), st.Group)
}
