package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/bgp"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// bgpLink is the daemon's side of its BGP speaker: the daemon decides which
// VIPs can be served and hands the speaker their routes. Its fields are
// guarded by the daemon's mu.
type bgpLink struct {
	sp     *bgp.Speaker
	cancel context.CancelFunc // stops the speaker's goroutine
	done   chan struct{}      // closed when it has stopped
	// drained is the operator's `ndctl bgp drain`: every route withdrawn,
	// the data plane serving on. It outlives reloads, and restarts too:
	// the data plane keeps the mark with its pinned tables.
	drained bool
	// stopping: ndd is shutting down, every route withdrawn for good.
	stopping bool
	// why is each VIP's last state: "" announced, else why withdrawn.
	why map[netip.Addr]string
}

// speakerConfig is what the speaker is told of cfg.
func speakerConfig(b *config.BGP) (bgp.Global, []bgp.Peer) {
	g := bgp.Global{ASN: b.ASN, RouterID: b.RouterID}
	peers := make([]bgp.Peer, 0, len(b.Peers))
	for _, p := range b.Peers {
		peers = append(peers, bgp.Peer{Address: p.Address, ASN: p.ASN, Port: p.Port, HoldTime: p.HoldTime,
			Password: p.Password, Multihop: p.Multihop, LocalAddress: p.LocalAddress, GracefulRestart: b.GracefulRestart})
	}
	return g, peers
}

// configureBGP starts, reconfigures or stops the speaker after d.cfg
// changed. Called with d.mu held, from Run's goroutine or an API call,
// after Run has set d.runCtx.
func (d *Daemon) configureBGP() error {
	b := d.cfg.BGP
	if b == nil {
		d.stopBGP()
		return nil
	}
	g, peers := speakerConfig(b)
	if d.bgp == nil || d.bgp.sp == nil {
		ctx := d.runCtx
		if ctx == nil {
			return errors.New("bgp: the daemon is not running")
		}
		sp, err := bgp.New(ctx, g, bgp.Options{Logger: d.log, OnPeerState: d.onBGPPeer, Restarting: d.restarted})
		if err != nil {
			return fmt.Errorf("bgp: %w", err)
		}
		sctx, cancel := context.WithCancel(ctx)
		link := &bgpLink{sp: sp, cancel: cancel, done: make(chan struct{}), why: map[netip.Addr]string{}}
		if d.bgp != nil {
			link.drained = d.bgp.drained
		} else if drained, err := d.x.Drained(); err != nil {
			d.log.Error("bgp: cannot read the drain mark: announcing as undrained", "err", err)
		} else if drained {
			link.drained = true
			d.emit(nd.Event{Type: nd.EventBGPDrained, Message: "drained (kept from before ndd started): every VIP withdrawn, the data plane serving on"})
		}
		d.bgp = link
		d.loops.Add(1)
		go func() {
			defer d.loops.Done()
			defer close(link.done)
			sp.Run(sctx)
		}()
	}
	if err := d.bgp.sp.Configure(d.runCtx, g, peers); err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	return d.updateBGP()
}

// stopBGP closes the speaker (every session), if one runs. d.mu held.
func (d *Daemon) stopBGP() {
	if d.bgp == nil || d.bgp.sp == nil {
		return
	}
	d.bgp.cancel()
	d.bgp.sp.Stop()
	d.bgp.sp = nil
}

// unservable returns a function that says why a VIP cannot take new flows
// now, or "" when it can: the data plane is attached to every configured
// interface, the dispatcher is not the standby of an active-standby
// high-availability group (which holds no VIP), a node of an active-active
// group has learnt the group's flows since it started (flowsPending), and
// some port of the VIP has a server with a weight
// above 0 in the data plane (resolved, not quiesced, not taken out by an
// advisor, an agent or the manager). It reads the data plane once. d.mu
// held.
func (d *Daemon) unservable() func(vip netip.Addr) string {
	var all string
	if d.ha != nil && !d.ha.aa.Load() && !d.ha.standby.Load() {
		// The active of an active-standby group holds the group's flows
		// (it forwards them all): switched to active-active by a reload,
		// it carries on announcing while its peers switch too.
		d.ha.learnt.Store(true)
	}
	switch {
	case len(d.cfg.Interfaces) == 0 || len(d.attached) < len(d.cfg.Interfaces):
		all = "the data plane is not attached"
	case d.ha != nil && !d.ha.aa.Load() && d.ha.standby.Load():
		all = "a standby of its high-availability group"
	case d.ha != nil && d.ha.aa.Load():
		// Every node of an active-active group forwards, leader or not,
		// once it holds the group's flows.
		all = d.flowsPending()
	}
	if all != "" {
		return func(netip.Addr) string { return all }
	}
	serving := map[netip.Addr]bool{}
	for _, s := range d.x.Services() {
		for _, sv := range s.Servers {
			if sv.Weight > 0 {
				serving[s.Key.VIP] = true
			}
		}
	}
	return func(vip netip.Addr) string {
		if serving[vip] {
			return ""
		}
		return "no server can take new flows"
	}
}

// updateBGP announces the routes of the VIPs that can be served and
// withdraws the others, emitting an event for each VIP whose state
// changed. Called with d.mu held whenever what it reads may have changed:
// a configuration applied, a neighbour resolved or lost, weights committed,
// and every stats interval.
func (d *Daemon) updateBGP() error {
	if d.bgp == nil || d.bgp.sp == nil {
		return nil
	}
	var routes []bgp.Route
	why := map[netip.Addr]string{}
	unservable := d.unservable()
	for _, r := range d.cfg.Routes() {
		reason := unservable(r.VIP)
		switch {
		case d.bgp.stopping:
			reason = "ndd is stopping"
		case d.bgp.drained:
			reason = "drained by the operator"
		}
		why[r.VIP] = reason
		if reason == "" {
			routes = append(routes, bgp.Route{Prefix: netip.PrefixFrom(r.VIP, r.VIP.BitLen()),
				Communities: r.Communities, MED: r.MED, NextHop: r.NextHop})
		}
	}
	before := d.bgp.sp.Announced()
	err := d.bgp.sp.Announce(routes)
	for _, r := range routes {
		i := slices.IndexFunc(before, func(o bgp.Route) bool { return o.Prefix == r.Prefix })
		if i < 0 || !before[i].Equal(r) {
			d.emit(nd.Event{Type: nd.EventBGPAnnounced, Service: r.Prefix.Addr().String(), Message: describeRoute(r)})
		}
	}
	for _, r := range before {
		if w, ok := why[r.Prefix.Addr()]; !ok || w != "" {
			if !ok {
				w = "no longer announced by the configuration"
			}
			d.emit(nd.Event{Type: nd.EventBGPWithdrawn, Service: r.Prefix.Addr().String(), Message: w})
		}
	}
	d.bgp.why = why
	if err != nil {
		d.log.Error("bgp: announce", "err", err)
	}
	return err
}

func describeRoute(r bgp.Route) string {
	nh := "self"
	if r.NextHop.IsValid() {
		nh = r.NextHop.String()
	}
	return fmt.Sprintf("%s med %d communities [%s] next hop %s", r.Prefix, r.MED, strings.Join(communityNames(r.Communities), " "), nh)
}

func communityNames(cs []uint32) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = fmt.Sprintf("%d:%d", c>>16, c&0xffff)
	}
	return out
}

// onBGPPeer reports a session's change of state.
func (d *Daemon) onBGPPeer(p bgp.PeerStatus) {
	d.emit(nd.Event{Type: nd.EventBGPPeer, Server: p.Address, Message: fmt.Sprintf("peer %s (as %d) %s", p.Address, p.ASN, p.State)})
}

// BGPStatus describes the speaker, its sessions and every VIP's route.
func (d *Daemon) BGPStatus(ctx context.Context) (nd.BGPStatus, error) {
	d.mu.Lock()
	if d.cfg.BGP == nil || d.bgp == nil || d.bgp.sp == nil {
		d.mu.Unlock()
		return nd.BGPStatus{}, nd.ErrNoBGP
	}
	b, sp := d.cfg.BGP, d.bgp.sp
	st := nd.BGPStatus{ASN: b.ASN, RouterID: b.RouterID.String(), Drained: d.bgp.drained, Stopping: d.bgp.stopping}
	for _, r := range d.cfg.Routes() {
		reason, ok := d.bgp.why[r.VIP]
		if !ok {
			reason = "not evaluated yet"
		}
		v := nd.BGPVIP{VIP: r.VIP.String(), Announced: reason == "", Reason: reason, MED: r.MED, Communities: communityNames(r.Communities)}
		if r.NextHop.IsValid() {
			v.NextHop = r.NextHop.String()
		}
		st.VIPs = append(st.VIPs, v)
	}
	// A VIP the configuration never announces is listed too, saying so.
	for _, cl := range d.cfg.Clusters {
		if !slices.ContainsFunc(st.VIPs, func(v nd.BGPVIP) bool { return v.VIP == cl.VIP.String() }) {
			st.VIPs = append(st.VIPs, nd.BGPVIP{VIP: cl.VIP.String(), Reason: "never announced: bgp.vips[].announce is false"})
		}
	}
	d.mu.Unlock()
	peers, err := sp.Peers(ctx)
	if err != nil {
		return st, fmt.Errorf("bgp: %w", err)
	}
	st.Peers = peers
	return st, nil
}

// BGPDrain withdraws every route and keeps them withdrawn (drain true), or
// lets the servable VIPs be announced again (false). The data plane keeps
// serving established flows, and new ones that still arrive.
func (d *Daemon) BGPDrain(ctx context.Context, drain bool) (nd.BGPStatus, error) {
	d.mu.Lock()
	if d.cfg.BGP == nil || d.bgp == nil || d.bgp.sp == nil {
		d.mu.Unlock()
		return nd.BGPStatus{}, nd.ErrNoBGP
	}
	var err error
	if d.bgp.drained != drain {
		if err := d.x.SetDrained(drain); err != nil {
			d.mu.Unlock()
			return nd.BGPStatus{}, fmt.Errorf("bgp drain: %w", err)
		}
		d.bgp.drained = drain
		msg := "undrained: servable VIPs announced again"
		if drain {
			msg = "drained: every VIP withdrawn, the data plane serving on"
		}
		d.emit(nd.Event{Type: nd.EventBGPDrained, Message: msg})
		err = d.updateBGP()
	}
	d.mu.Unlock()
	if err != nil {
		return nd.BGPStatus{}, err
	}
	return d.BGPStatus(ctx)
}

// BGPShutdown withdraws every route for good (ndd is stopping) and waits,
// at most until ctx ends, until the withdrawals have been sent to every
// established peer. It returns how long ndd should keep serving before it
// exits (bgp.shutdown_grace); 0 without a bgp section.
func (d *Daemon) BGPShutdown(ctx context.Context) time.Duration {
	d.mu.Lock()
	if d.cfg.BGP == nil || d.bgp == nil || d.bgp.sp == nil {
		d.mu.Unlock()
		return 0
	}
	grace, sp := d.cfg.BGP.ShutdownGrace, d.bgp.sp
	if gr := d.cfg.BGP.GracefulRestart; gr > 0 {
		// A restart: the routes stay with the peers, the pinned data
		// plane forwards on, the next ndd picks the sessions up.
		sp.KeepRoutes()
		d.mu.Unlock()
		d.log.Info("bgp: stopping with graceful restart: routes left to the peers", "restart_time", gr)
		return 0
	}
	d.bgp.stopping = true
	_ = d.updateBGP() // logged
	d.mu.Unlock()
	start := time.Now()
	if err := sp.WaitWithdrawn(ctx); err != nil {
		d.log.Warn("bgp: withdrawals not confirmed sent", "err", err)
	}
	d.log.Info("bgp: every VIP withdrawn; serving on for the shutdown grace", "sent_in", time.Since(start), "grace", grace)
	return grace
}
