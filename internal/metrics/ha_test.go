package metrics

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/nd"
)

func TestHA(t *testing.T) {
	peer := func(a string, alive bool, s ha.State, synced bool) ha.PeerStatus {
		return ha.PeerStatus{Addr: netip.MustParseAddrPort(a), Alive: alive, State: s, Synced: synced}
	}
	c := NewHA(func() (ha.Status, error) {
		return ha.Status{Group: "edge", State: ha.StateActive, Counters: ha.Counters{Takeovers: 2}, Peers: []ha.PeerStatus{
			peer("203.0.113.2:7432", true, ha.StateStandby, true),
			peer("203.0.113.3:7432", false, ha.StateStandby, false), // silent: not counted
			peer("203.0.113.4:7432", true, ha.StateStopping, false),
		}}, nil
	})
	want := `
# HELP nd_ha_peers Peers of this node heard within the dead interval, by the state they announce.
# TYPE nd_ha_peers gauge
nd_ha_peers{group="edge",state="active"} 0
nd_ha_peers{group="edge",state="standby"} 1
nd_ha_peers{group="edge",state="stopping"} 1
# HELP nd_ha_peers_synced Peers this node streams its new flows to (on the active node: the standbys that would keep the connections on a takeover).
# TYPE nd_ha_peers_synced gauge
nd_ha_peers_synced{group="edge"} 1
# HELP nd_ha_state 1 for this node's state in its high-availability group (standby, active, stopping), 0 for the others.
# TYPE nd_ha_state gauge
nd_ha_state{group="edge",state="active"} 1
nd_ha_state{group="edge",state="standby"} 0
nd_ha_state{group="edge",state="stopping"} 0
# HELP nd_ha_takeovers_total Times this node became the active one since ndd started.
# TYPE nd_ha_takeovers_total counter
nd_ha_takeovers_total{group="edge"} 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	// Without an ha section: nothing.
	none := NewHA(func() (ha.Status, error) { return ha.Status{}, nd.ErrNoHA })
	if n := testutil.CollectAndCount(none); n != 0 {
		t.Errorf("%d HA metrics without HA", n)
	}
}
