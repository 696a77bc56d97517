package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nd-dispatcher/nd/internal/nd"
)

func TestBGPMetrics(t *testing.T) {
	st := nd.BGPStatus{Drained: true,
		Peers: []nd.BGPPeer{{Address: "198.51.100.1", State: "established", Since: time.Now().Add(-time.Minute), Advertised: 2, Flaps: 1}},
		VIPs:  []nd.BGPVIP{{VIP: "198.51.100.100", Announced: true}, {VIP: "198.51.100.101"}}}
	c := NewBGP(func(context.Context) (nd.BGPStatus, error) { return st, nil })
	want := `
# HELP nd_bgp_peer_up 1 while the BGP session with the peer is established.
# TYPE nd_bgp_peer_up gauge
nd_bgp_peer_up{peer="198.51.100.1"} 1
# HELP nd_bgp_peer_advertised_prefixes Prefixes announced to the peer.
# TYPE nd_bgp_peer_advertised_prefixes gauge
nd_bgp_peer_advertised_prefixes{peer="198.51.100.1"} 2
# HELP nd_bgp_vip_announced 1 while the VIP's route is announced, 0 while it is withdrawn (no usable server, drained, stopping).
# TYPE nd_bgp_vip_announced gauge
nd_bgp_vip_announced{vip="198.51.100.100"} 1
nd_bgp_vip_announced{vip="198.51.100.101"} 0
# HELP nd_bgp_drained 1 while the operator has drained this dispatcher (ndctl bgp drain).
# TYPE nd_bgp_drained gauge
nd_bgp_drained 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "nd_bgp_peer_up", "nd_bgp_peer_advertised_prefixes", "nd_bgp_vip_announced", "nd_bgp_drained"); err != nil {
		t.Error(err)
	}
	none := NewBGP(func(context.Context) (nd.BGPStatus, error) { return nd.BGPStatus{}, nd.ErrNoBGP })
	if n := testutil.CollectAndCount(none); n != 0 {
		t.Errorf("%d metrics without bgp", n)
	}
}
