package metrics

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nd-dispatcher/nd/internal/connlimit"
)

func TestListenerMetrics(t *testing.T) {
	c := NewListeners(func() map[string]connlimit.Stats {
		return map[string]connlimit.Stats{
			"api":     {Accepted: 2001, Evicted: 1745, Open: 256},
			"metrics": {Accepted: 3},
		}
	})
	want := `
# HELP nd_api_connections_evicted_total TCP connections closed to keep within the listener's limits (waiting ones evicted, new ones refused when every slot was in a request).
# TYPE nd_api_connections_evicted_total counter
nd_api_connections_evicted_total{listener="api"} 1745
nd_api_connections_evicted_total{listener="metrics"} 0
# HELP nd_api_connections_open TCP connections the listener holds now.
# TYPE nd_api_connections_open gauge
nd_api_connections_open{listener="api"} 256
nd_api_connections_open{listener="metrics"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "nd_api_connections_evicted_total", "nd_api_connections_open"); err != nil {
		t.Error(err)
	}
}
