package bgp

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/bgp/bgptest"
	"github.com/nd-dispatcher/nd/internal/testutil"
	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// table is the router's routes: prefix -> MED and communities.
func table(t *testing.T, r *server.BgpServer) map[netip.Prefix]Route {
	out := map[netip.Prefix]Route{}
	err := r.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: bgp.RF_IPv4_UC},
		func(n bgp.NLRI, paths []*apiutil.Path) {
			pfx, _ := netip.ParsePrefix(n.String())
			rt := Route{Prefix: pfx}
			for _, a := range paths[0].Attrs {
				switch a := a.(type) {
				case *bgp.PathAttributeMultiExitDisc:
					rt.MED = a.Value
				case *bgp.PathAttributeCommunities:
					rt.Communities = a.Value
				case *bgp.PathAttributeNextHop:
					rt.NextHop = a.Value
				}
			}
			out[pfx] = rt
		})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, what, cond)
}

func TestSpeakerAnnouncesAndWithdraws(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, port := bgptest.Router(t)

	states := make(chan PeerStatus, 16)
	s, err := New(ctx, Global{ASN: 64513, RouterID: netip.MustParseAddr("198.51.100.3")},
		Options{OnPeerState: func(p PeerStatus) { states <- p }, Poll: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	vip := netip.MustParsePrefix("198.51.100.100/32")
	if err := s.Announce([]Route{{Prefix: vip, MED: 7, Communities: []uint32{64513<<16 | 100}}}); err != nil {
		t.Fatal(err)
	}
	peer := Peer{Address: netip.MustParseAddr("127.0.0.1"), ASN: 64512, Port: port, HoldTime: 9 * time.Second}
	if err := s.Configure(ctx, Global{ASN: 64513, RouterID: netip.MustParseAddr("198.51.100.3")}, []Peer{peer}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the route at the router", func() bool { _, ok := table(t, r)[vip]; return ok })
	got := table(t, r)[vip]
	if got.MED != 7 || !slices.Equal(got.Communities, []uint32{64513<<16 | 100}) || got.NextHop != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("route at the router %+v", got)
	}
	for p := range states {
		if p.State == StateEstablished {
			break
		}
	}
	ps, err := s.Peers(ctx)
	if err != nil || len(ps) != 1 || ps[0].State != StateEstablished || ps[0].Advertised != 1 || ps[0].Since.IsZero() || ps[0].HoldTime != 9*time.Second {
		t.Errorf("peers %+v, %v", ps, err)
	}

	// A changed attribute replaces the route.
	if err := s.Announce([]Route{{Prefix: vip, MED: 8}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new MED", func() bool { rt := table(t, r)[vip]; return rt.MED == 8 && len(rt.Communities) == 0 })

	// Withdrawn: gone from the router, and WaitWithdrawn sees it sent.
	start := time.Now()
	if err := s.Announce(nil); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if err := s.WaitWithdrawn(wctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the withdrawal", func() bool { _, ok := table(t, r)[vip]; return !ok })
	t.Logf("withdrawn at the router within %v", time.Since(start))

	// Removing the peer closes its session.
	if err := s.Configure(ctx, Global{ASN: 64513, RouterID: netip.MustParseAddr("198.51.100.3")}, nil); err != nil {
		t.Fatal(err)
	}
	if ps, _ := s.Peers(ctx); len(ps) != 0 {
		t.Errorf("peers after removal: %+v", ps)
	}
}

func TestSilentPeerDoesNotBlock(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(ctx, Global{ASN: 64513, RouterID: netip.MustParseAddr("198.51.100.3")}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	// A peer that never answers: a loopback listener that accepts no
	// connection (the kernel completes the handshake; no OPEN comes back).
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silentPort := uint16(silent.Addr().(*net.TCPAddr).Port)
	start := time.Now()
	err = s.Configure(ctx, Global{ASN: 64513, RouterID: netip.MustParseAddr("198.51.100.3")},
		[]Peer{{Address: netip.MustParseAddr("127.0.0.1"), ASN: 64512, Port: silentPort, HoldTime: 90 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Announce([]Route{{Prefix: netip.MustParsePrefix("198.51.100.100/32")}}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("configuring a silent peer took %v", d)
	}
	ps, err := s.Peers(ctx)
	if err != nil || len(ps) != 1 || ps[0].State == StateEstablished {
		t.Errorf("peers %+v, %v", ps, err)
	}
}
