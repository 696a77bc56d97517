// Package bgptest runs a GoBGP server on loopback standing in for a router,
// for the tests of the BGP speaker and of the daemon that drives it.
package bgptest

import (
	"context"
	"net"
	"testing"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Router starts a GoBGP server (AS 64512, router ID 198.51.100.1) on a free
// port of 127.0.0.1 that waits for the speaker (from 127.0.0.1, AS 64513)
// and accepts it again soon after it closed its session. Its table shows
// what the speaker announced. It stops when the test ends.
func Router(tb testing.TB) (*server.BgpServer, uint16) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r := server.NewBgpServer()
	go r.Serve()
	tb.Cleanup(r.Stop)
	ctx := context.Background()
	if err := r.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: 64512, RouterId: "198.51.100.1", ListenPort: int32(port), ListenAddresses: []string{"127.0.0.1"},
	}}); err != nil {
		tb.Fatal(err)
	}
	if err := r.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: "127.0.0.1", PeerAsn: 64513},
		Transport: &api.Transport{PassiveMode: true},
		Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: 1, IdleHoldTimeAfterReset: 1}},
	}}); err != nil {
		tb.Fatal(err)
	}
	return r, uint16(port)
}
