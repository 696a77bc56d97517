package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// BGPSource returns the BGP speaker's state; (*daemon.Daemon).BGPStatus is
// the real one. An error (no bgp section) leaves the BGP metrics out.
type BGPSource func(ctx context.Context) (nd.BGPStatus, error)

// BGPCollector exports the BGP sessions and the VIPs' routes, read at
// scrape time. Labels are bounded: peers and VIPs are configured.
type BGPCollector struct {
	src                                      BGPSource
	up, uptime, sent, received, flaps, route *prometheus.Desc
	drained                                  *prometheus.Desc
}

// NewBGP returns a collector over src.
func NewBGP(src BGPSource) *BGPCollector {
	return &BGPCollector{
		src:      src,
		up:       prometheus.NewDesc("nd_bgp_peer_up", "1 while the BGP session with the peer is established.", []string{"peer"}, nil),
		uptime:   prometheus.NewDesc("nd_bgp_peer_uptime_seconds", "How long the BGP session with the peer has been established; 0 when it is not.", []string{"peer"}, nil),
		sent:     prometheus.NewDesc("nd_bgp_peer_advertised_prefixes", "Prefixes announced to the peer.", []string{"peer"}, nil),
		received: prometheus.NewDesc("nd_bgp_peer_received_prefixes", "Prefixes accepted from the peer.", []string{"peer"}, nil),
		flaps:    prometheus.NewDesc("nd_bgp_peer_flaps_total", "Times the BGP session with the peer went down.", []string{"peer"}, nil),
		route:    prometheus.NewDesc("nd_bgp_vip_announced", "1 while the VIP's route is announced, 0 while it is withdrawn (no usable server, drained, stopping).", []string{"vip"}, nil),
		drained:  prometheus.NewDesc("nd_bgp_drained", "1 while the operator has drained this dispatcher (ndctl bgp drain).", nil, nil),
	}
}

// Describe sends every description.
func (c *BGPCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.uptime, c.sent, c.received, c.flaps, c.route, c.drained} {
		ch <- d
	}
}

// Collect sends the metrics, or none without bgp.
func (c *BGPCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := c.src(ctx)
	if err != nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, p := range st.Peers {
		up := 0.0
		if !p.Since.IsZero() {
			up = time.Since(p.Since).Seconds()
		}
		gauge(c.up, b(!p.Since.IsZero()), p.Address)
		gauge(c.uptime, up, p.Address)
		gauge(c.sent, float64(p.Advertised), p.Address)
		gauge(c.received, float64(p.Received), p.Address)
		ch <- prometheus.MustNewConstMetric(c.flaps, prometheus.CounterValue, float64(p.Flaps), p.Address)
	}
	for _, v := range st.VIPs {
		gauge(c.route, b(v.Announced), v.VIP)
	}
	gauge(c.drained, b(st.Drained))
}
