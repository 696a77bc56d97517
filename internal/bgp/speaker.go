// Package bgp is nd's BGP speaker: a thin owner of an embedded GoBGP server
// (github.com/osrg/gobgp/v4) that keeps sessions with the configured peers
// and announces exactly the routes it is told to. It decides nothing: the
// daemon works out which VIPs can be served and hands the speaker their
// routes (config -> daemon -> speaker). A peer that never answers holds up
// nothing: sessions are GoBGP's, set up in the background.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// Global is the speaker's own identity.
type Global struct {
	ASN      uint32
	RouterID netip.Addr
}

// Peer is one neighbour.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	Port    uint16
	// HoldTime proposed; 0 means no keepalives.
	HoldTime time.Duration
	// Password is the TCP MD5 key; "" for none.
	Password string
	// Multihop is the TTL for a peer not directly connected; 0 for one
	// that is.
	Multihop uint32
	// LocalAddress to connect from; invalid for the kernel's choice.
	LocalAddress netip.Addr
	// GracefulRestart is the restart time offered (RFC 4724): the peer
	// keeps this speaker's routes that long when the session drops
	// without a withdrawal. 0: no graceful restart.
	GracefulRestart time.Duration
}

// Route is one host route to announce.
type Route struct {
	Prefix      netip.Prefix
	Communities []uint32
	MED         uint32
	// NextHop announced; invalid for the session's own address.
	NextHop netip.Addr
}

// Equal reports whether two routes announce the same thing.
func (r Route) Equal(o Route) bool {
	return r.Prefix == o.Prefix && r.MED == o.MED && r.NextHop == o.NextHop && slices.Equal(r.Communities, o.Communities)
}

// PeerStatus is one session as `ndctl bgp status` shows it.
type PeerStatus = nd.BGPPeer

// StateEstablished is the state of a session that exchanges routes.
const StateEstablished = nd.BGPEstablished

// Options configure New.
type Options struct {
	Logger *slog.Logger
	// OnPeerState, if set, is called (from the speaker's goroutine) when a
	// session changes state.
	OnPeerState func(p PeerStatus)
	// Poll is how often sessions are read for state changes. Default 500ms.
	Poll time.Duration
	// Restarting says that the forwarding state outlived a previous
	// speaker (ndd restarted over its pinned data plane): the first
	// session with each graceful-restart peer carries the restart flag,
	// and the peer keeps the routes it holds until this speaker has sent
	// its own.
	Restarting bool
}

// ErrStopped is returned by calls on a speaker that has stopped.
var ErrStopped = errors.New("bgp speaker stopped")

// Speaker owns one GoBGP server.
type Speaker struct {
	log   *slog.Logger
	opts  Options
	mu    sync.Mutex // serialises changes; guards the fields below
	srv   *server.BgpServer
	glob  Global
	peers map[netip.Addr]Peer
	// routes are the paths announced, by prefix.
	routes  map[netip.Prefix]Route
	stopped bool
	// keep: leave the sessions to close with the process, no NOTIFICATION
	// sent, so that graceful-restart peers keep the routes.
	keep bool
	// opened: peers added once already (the restart flag is for the first).
	opened map[netip.Addr]bool
	// states remembers each peer's last state, for OnPeerState.
	states map[string]string
}

// New starts a speaker as g, with no peers and no routes. It listens on no
// port: ndd connects to its peers (routers accept incoming sessions).
func New(ctx context.Context, g Global, o Options) (*Speaker, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Poll <= 0 {
		o.Poll = 500 * time.Millisecond
	}
	s := &Speaker{log: o.Logger, opts: o, peers: map[netip.Addr]Peer{}, routes: map[netip.Prefix]Route{}, states: map[string]string{}, opened: map[netip.Addr]bool{}}
	if err := s.start(ctx, g); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Speaker) start(ctx context.Context, g Global) error {
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelInfo) // peers up and down, notifications
	srv := server.NewBgpServer(server.LoggerOption(s.log.With("component", "gobgp"), lvl))
	go srv.Serve()
	err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:        g.ASN,
		RouterId:   g.RouterID.String(),
		ListenPort: -1,
	}})
	if err != nil {
		srv.Stop()
		return fmt.Errorf("start bgp as %d: %w", g.ASN, err)
	}
	s.srv, s.glob = srv, g
	return nil
}

// Run reads the sessions' states until ctx ends, reporting changes; then
// it stops the speaker (closing every session).
func (s *Speaker) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			keep := s.keep
			s.mu.Unlock()
			if !keep {
				s.Stop()
			}
			return
		case <-t.C:
			s.pollStates(ctx)
		}
	}
}

func (s *Speaker) pollStates(ctx context.Context) {
	ps, err := s.Peers(ctx)
	if err != nil {
		return
	}
	var changed []PeerStatus
	s.mu.Lock()
	for _, p := range ps {
		if s.states[p.Address] != p.State {
			s.states[p.Address] = p.State
			changed = append(changed, p)
		}
	}
	s.mu.Unlock()
	if s.opts.OnPeerState != nil {
		for _, p := range changed {
			s.opts.OnPeerState(p)
		}
	}
}

// Stop closes every session (a NOTIFICATION cease) and the server. It is
// idempotent.
func (s *Speaker) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	s.srv.Stop() // StopBgp, logged by GoBGP if it fails
}

// KeepRoutes makes Run leave the sessions open when it ends, to close with
// the process: no NOTIFICATION goes out, so that peers that offered
// graceful restart keep this speaker's routes for the restart time.
func (s *Speaker) KeepRoutes() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keep = true
}

// Configure makes the speaker g with exactly peers: peers added, removed
// or changed (a changed one is re-created, its session restarted). A new
// identity restarts the whole speaker, its routes announced again. It never
// waits for a peer to answer.
func (s *Speaker) Configure(ctx context.Context, g Global, peers []Peer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	if g != s.glob {
		s.srv.Stop()
		if err := s.start(ctx, g); err != nil {
			return err
		}
		s.peers = map[netip.Addr]Peer{}
		s.states = map[string]string{}
		routes := s.routes
		s.routes = map[netip.Prefix]Route{}
		for _, r := range routes {
			if err := s.add(r); err != nil {
				return err
			}
		}
	}
	want := map[netip.Addr]Peer{}
	for _, p := range peers {
		want[p.Address] = p
	}
	var errs []error
	for a, p := range s.peers {
		if w, ok := want[a]; !ok || w != p {
			if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: a.String()}); err != nil {
				errs = append(errs, fmt.Errorf("remove peer %s: %w", a, err))
			}
			delete(s.peers, a)
			delete(s.states, a.String())
		}
	}
	for _, p := range peers {
		if _, ok := s.peers[p.Address]; ok {
			continue
		}
		restarting := s.opts.Restarting && !s.opened[p.Address]
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: apiPeer(p, restarting)}); err != nil {
			errs = append(errs, fmt.Errorf("add peer %s: %w", p.Address, err))
			continue
		}
		s.peers[p.Address] = p
		s.opened[p.Address] = true
	}
	return errors.Join(errs...)
}

func family(a netip.Addr) *api.Family {
	if a.Is4() {
		return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	}
	return &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
}

// connectRetry is how soon a failed connection is tried again: a router
// that comes back is peered with within seconds.
const connectRetry = 5

func apiPeer(p Peer, restarting bool) *api.Peer {
	hold := uint64(p.HoldTime / time.Second)
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			AuthPassword:    p.Password,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry:      connectRetry,
			HoldTime:          hold,
			KeepaliveInterval: hold / 3,
			// Announce and withdraw at once: a VIP that cannot be
			// served must leave the routers' tables now.
			MinimumAdvertisementInterval: 0,
		}},
		Transport: &api.Transport{RemotePort: uint32(p.Port)},
		AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{
			Family:  family(p.Address),
			Enabled: true,
		}}},
	}
	if p.LocalAddress.IsValid() {
		ap.Transport.LocalAddress = p.LocalAddress.String()
	}
	if p.Multihop > 0 {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: p.Multihop}
	}
	if p.GracefulRestart > 0 {
		ap.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(p.GracefulRestart / time.Second), LocalRestarting: restarting}
		ap.AfiSafis[0].MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	return ap
}

// Announce makes routes the speaker's announcements: new and changed ones
// are announced (a changed one replaces the old), the others withdrawn.
func (s *Speaker) Announce(routes []Route) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	want := map[netip.Prefix]Route{}
	for _, r := range routes {
		want[r.Prefix] = r
	}
	var errs []error
	for p, r := range s.routes {
		if _, ok := want[p]; !ok {
			if err := s.withdraw(r); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, r := range routes {
		if have, ok := s.routes[r.Prefix]; ok && have.Equal(r) {
			continue
		}
		if err := s.add(r); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Announced returns the routes announced, sorted by prefix.
func (s *Speaker) Announced() []Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Route, 0, len(s.routes))
	for _, r := range s.routes {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Route) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	return out
}

func (s *Speaker) add(r Route) error {
	p, err := path(r)
	if err != nil {
		return err
	}
	if _, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{p}}); err != nil {
		return fmt.Errorf("announce %s: %w", r.Prefix, err)
	}
	s.routes[r.Prefix] = r
	return nil
}

func (s *Speaker) withdraw(r Route) error {
	p, err := path(r)
	if err != nil {
		return err
	}
	if err := s.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{p}}); err != nil {
		return fmt.Errorf("withdraw %s: %w", r.Prefix, err)
	}
	delete(s.routes, r.Prefix)
	return nil
}

// path is the GoBGP path of r: origin IGP, its next hop (unspecified means
// the session's own address, which GoBGP fills in), MED and communities.
func path(r Route) (*apiutil.Path, error) {
	nlri, err := bgp.NewIPAddrPrefix(r.Prefix)
	if err != nil {
		return nil, fmt.Errorf("route %s: %w", r.Prefix, err)
	}
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	fam := bgp.RF_IPv4_UC
	if r.Prefix.Addr().Is4() {
		nh := netip.IPv4Unspecified()
		if r.NextHop.IsValid() {
			nh = r.NextHop
		}
		a, err := bgp.NewPathAttributeNextHop(nh)
		if err != nil {
			return nil, fmt.Errorf("route %s: next hop: %w", r.Prefix, err)
		}
		attrs = append(attrs, a)
	} else {
		fam = bgp.RF_IPv6_UC
		nh := netip.IPv6Unspecified()
		if r.NextHop.IsValid() {
			nh = r.NextHop
		}
		a, err := bgp.NewPathAttributeMpReachNLRI(fam, []bgp.PathNLRI{{NLRI: nlri}}, nh)
		if err != nil {
			return nil, fmt.Errorf("route %s: %w", r.Prefix, err)
		}
		attrs = append(attrs, a)
	}
	attrs = append(attrs, bgp.NewPathAttributeMultiExitDisc(r.MED))
	if len(r.Communities) > 0 {
		attrs = append(attrs, bgp.NewPathAttributeCommunities(r.Communities))
	}
	return &apiutil.Path{Family: fam, Nlri: nlri, Attrs: attrs}, nil
}

// Peers describes every session.
func (s *Speaker) Peers(ctx context.Context) ([]PeerStatus, error) {
	s.mu.Lock()
	srv, stopped := s.srv, s.stopped
	s.mu.Unlock()
	if stopped {
		return nil, ErrStopped
	}
	var out []PeerStatus
	err := srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		out = append(out, peerStatus(p))
	})
	slices.SortFunc(out, func(a, b PeerStatus) int {
		x, _ := netip.ParseAddr(a.Address)
		y, _ := netip.ParseAddr(b.Address)
		return x.Compare(y)
	})
	return out, err
}

func peerStatus(p *api.Peer) PeerStatus {
	ps := PeerStatus{Address: p.GetConf().GetNeighborAddress(), ASN: p.GetConf().GetPeerAsn()}
	st := p.GetState()
	ps.State = stateName(st.GetSessionState())
	ps.Flaps = st.GetFlops()
	if ps.State == StateEstablished {
		if up := p.GetTimers().GetState().GetUptime(); up != nil {
			ps.Since = up.AsTime()
		}
		ps.HoldTime = time.Duration(p.GetTimers().GetState().GetNegotiatedHoldTime()) * time.Second
	}
	for _, af := range p.GetAfiSafis() {
		ps.Advertised += af.GetState().GetAdvertised()
		ps.Received += af.GetState().GetAccepted()
	}
	return ps
}

func stateName(s api.PeerState_SessionState) string {
	switch s {
	case api.PeerState_SESSION_STATE_IDLE:
		return "idle"
	case api.PeerState_SESSION_STATE_CONNECT:
		return "connect"
	case api.PeerState_SESSION_STATE_ACTIVE:
		return "active"
	case api.PeerState_SESSION_STATE_OPENSENT:
		return "opensent"
	case api.PeerState_SESSION_STATE_OPENCONFIRM:
		return "openconfirm"
	case api.PeerState_SESSION_STATE_ESTABLISHED:
		return StateEstablished
	}
	return "unknown"
}

// WaitWithdrawn waits until no established session has a prefix advertised
// (the withdrawals have been sent), or ctx ends.
func (s *Speaker) WaitWithdrawn(ctx context.Context) error {
	for {
		ps, err := s.Peers(ctx)
		if err != nil {
			return err
		}
		pending := false
		for _, p := range ps {
			if p.State == StateEstablished && p.Advertised > 0 {
				pending = true
			}
		}
		if !pending {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
