package ha

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// rank orders nodes for election: priority, then address. It is total, so
// two nodes never tie, and every node computes the same order.
type rank struct {
	priority uint8
	addr     netip.AddrPort
}

func (a rank) less(b rank) bool {
	if a.priority != b.priority {
		return a.priority < b.priority
	}
	if c := a.addr.Addr().Compare(b.addr.Addr()); c != 0 {
		return c < 0
	}
	return a.addr.Port() < b.addr.Port()
}

// view is what decide needs to know; it is built under n.mu.
type view struct {
	self      rank
	preempt   bool
	takeover  bool // this node asks for the VIPs (Takeover or preemption)
	state     State
	settled   bool // listened for DeadAfter since start, or heard every peer
	yieldedTo netip.AddrPort
	livePeers []peerView
}

type peerView struct {
	rank
	state    State
	takeover bool
	// synced: this node has received a whole snapshot of the peer's flows
	// since it started.
	synced bool
}

type action int

const (
	actNone action = iota
	actBecomeActive
	actStepDown   // another active outranks this one
	actHandOver   // a standby asked for the VIPs
	actReannounce // a lower-ranked active also holds the VIPs: reclaim the caches
	actRequest    // preemption: ask the active to hand over
	actWithdraw   // stop asking
)

type decision struct {
	act  action
	peer netip.AddrPort // who to hand over to
}

// decide is the election, a pure function of the view:
//
//   - An active that hears a higher-ranked active steps down (split brain
//     heals the same way on every node); one that hears a standby asking
//     for a takeover hands over to it; one that hears a lower-ranked
//     active announces the VIPs again, since the other may have moved the
//     caches while both were active.
//   - A standby that hears an active stays. With preempt, and a higher
//     priority than that active, it asks for a handover, unless it handed
//     over to that very node by request.
//   - A standby that hears no live active, once it has listened for
//     DeadAfter or heard every peer, becomes active if it ranks first among itself and the
//     live standbys, where asking for a takeover ranks before priority.
func decide(v view) decision {
	if v.state == StateActive {
		var hi *peerView
		for i := range v.livePeers {
			p := &v.livePeers[i]
			if p.state == StateActive && v.self.less(p.rank) {
				return decision{act: actStepDown, peer: p.addr}
			}
		}
		for i := range v.livePeers {
			p := &v.livePeers[i]
			if p.state == StateStandby && p.takeover && (hi == nil || hi.less(p.rank)) {
				hi = p
			}
		}
		if hi != nil {
			return decision{act: actHandOver, peer: hi.addr}
		}
		for _, p := range v.livePeers {
			if p.state == StateActive {
				return decision{act: actReannounce, peer: p.addr}
			}
		}
		return decision{}
	}

	var active *peerView
	for i := range v.livePeers {
		p := &v.livePeers[i]
		if p.state == StateActive && (active == nil || active.less(p.rank)) {
			active = p
		}
	}
	if active != nil {
		// A node that takes the VIPs back must know the active's flows
		// first: under a scheduler that is not a function of the flow's
		// hash alone (p2c, delay) a flow it does not know goes to
		// another server.
		want := v.preempt && v.self.priority > active.priority && v.yieldedTo != active.addr && active.synced
		return decision{act: map[bool]action{true: actRequest, false: actWithdraw}[want]}
	}
	if !v.settled {
		return decision{}
	}
	before := func(aTake bool, a rank, bTake bool, b rank) bool {
		if aTake != bTake {
			return aTake
		}
		return b.less(a)
	}
	for _, p := range v.livePeers {
		if p.state == StateStandby && before(p.takeover, p.rank, v.takeover, v.self) {
			return decision{}
		}
	}
	return decision{act: actBecomeActive}
}

type stepResult int

const (
	stepNone stepResult = iota
	stepChanged
	stepBecameActive
	stepReannounce
)

func (n *Node) viewLocked(now time.Time) view {
	v := view{
		self:      rank{n.cfg.Priority, n.cfg.Self},
		preempt:   n.cfg.Preempt,
		takeover:  n.takeoverReq || n.autoReq,
		state:     n.state,
		settled:   now.Sub(n.started) >= n.cfg.DeadAfter,
		yieldedTo: n.yieldedTo,
	}
	// Having heard every peer, a starting node knows all it would learn
	// by listening longer.
	heardAll := true
	for _, a := range n.cfg.Peers {
		heardAll = heardAll && n.peers[a].heard
	}
	v.settled = v.settled || heardAll
	for _, a := range n.cfg.Peers {
		p := n.peers[a]
		if !n.alive(p, now) {
			continue
		}
		v.livePeers = append(v.livePeers, peerView{rank: rank{p.hb.Priority, a}, state: p.hb.State, takeover: p.hb.Takeover,
			synced: p.snapshotAt.After(n.started)})
	}
	return v
}

// step runs one round of the election and carries out its decision. Only
// Run's goroutine calls it, so transitions never race each other.
func (n *Node) step(ctx context.Context, now time.Time) stepResult {
	n.mu.Lock()
	if n.yieldedTo.IsValid() {
		if p := n.peers[n.yieldedTo]; p == nil || !n.alive(p, now) {
			n.yieldedTo = netip.AddrPort{}
		}
	}
	// In active-active mode every node streams to every peer. Otherwise
	// sessions of a node that handed over linger so that flows its data
	// plane still reports reach the new active; then they go.
	if n.aa.Load() {
		n.startSessionsLocked(ctx)
	} else if n.state != StateActive && len(n.sessions) > 0 && now.After(n.syncUntil) {
		for _, s := range n.sessions {
			s.stop()
		}
		clear(n.sessions)
	}
	d := decide(n.viewLocked(now))
	joined := n.peerJoined
	n.peerJoined = false
	if d.act == actNone && joined && n.state == StateActive {
		d.act = actReannounce
	}
	switch d.act {
	case actRequest, actWithdraw:
		want := d.act == actRequest
		changed := n.autoReq != want
		n.autoReq = want
		n.mu.Unlock()
		if changed {
			n.log.Info("ha: preemption", "asking-handover", want)
			return stepChanged
		}
		return stepNone
	case actBecomeActive:
		n.takeoverReq, n.autoReq = false, false
		n.yieldedTo = netip.AddrPort{}
		n.setStateLocked(StateActive, now)
		n.startSessionsLocked(ctx)
		n.mu.Unlock()
		n.c.takeovers.Add(1)
		n.log.Info("ha: becoming active")
		// In active-active mode the active only leads: the VIPs are the
		// routing's.
		if !n.aa.Load() {
			if err := n.vips.Up(); err != nil {
				n.c.vipErrs.Add(1)
				n.log.Error("ha: add VIPs", "err", err)
			}
			n.announce()
		}
		n.notifyState(StateActive)
		return stepBecameActive
	case actStepDown, actHandOver:
		if d.act == actHandOver {
			n.yieldedTo = d.peer
		}
		n.setStateLocked(StateStandby, now)
		n.syncUntil = now.Add(n.cfg.DeadAfter)
		sessions := make([]*session, 0, len(n.sessions))
		for _, s := range n.sessions {
			sessions = append(sessions, s)
		}
		n.mu.Unlock()
		n.c.stepDowns.Add(1)
		if d.act == actHandOver {
			n.log.Info("ha: handing over", "to", d.peer.String())
			// Nothing lost: the standbys get every queued flow before the
			// new active can take the VIPs, which it does only on hearing
			// this node say it stands by.
			waitDrained(sessions, now.Add(n.cfg.DeadAfter/2))
		} else {
			n.log.Warn("ha: another active outranks this node; stepping down", "other", d.peer.String())
		}
		if err := n.vips.Down(); err != nil {
			n.c.vipErrs.Add(1)
			n.log.Error("ha: remove VIPs", "err", err)
		}
		n.notifyState(StateStandby)
		return stepChanged
	case actReannounce:
		n.mu.Unlock()
		return stepReannounce
	}
	n.mu.Unlock()
	return stepNone
}

func (n *Node) heartbeat() heartbeat {
	n.mu.Lock()
	defer n.mu.Unlock()
	return heartbeat{
		State:     n.state,
		Priority:  n.cfg.Priority,
		Preempt:   n.cfg.Preempt,
		Takeover:  (n.takeoverReq || n.autoReq) && n.state == StateStandby,
		ConfigVer: n.config.Version,
	}
}

func (n *Node) header(t msgType, ch channel) header {
	h := header{Type: t, Channel: ch, Group: n.group, Sender: n.cfg.Self, Epoch: n.epoch}
	if ch == chanDatagram {
		h.Seq = n.seqDgram.Add(1)
	} else {
		h.Seq = n.seqStream.Add(1)
	}
	return h
}

func (n *Node) sendHeartbeats(hb heartbeat) {
	payload := hb.append(nil)
	for _, p := range n.cfg.Peers {
		frame := seal(nil, n.cfg.Key, n.header(msgHeartbeat, chanDatagram), payload)
		if _, err := n.udp.WriteToUDPAddrPort(frame, p); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				n.log.Debug("ha: send heartbeat", "peer", p.String(), "err", err)
			}
			continue
		}
		n.c.hbSent.Add(1)
	}
}

// strangerDatagrams is how many datagrams a second from addresses that
// are not peers the node authenticates (and counts by what is wrong with
// them); beyond it they are dropped unread, counted unknown-peer. A peer
// sends from its own address (Config.Self), so a flood from elsewhere
// costs an HMAC each no more and cannot starve the peers' heartbeats.
const strangerDatagrams = 100

// readHeartbeats receives datagrams until the socket closes.
func (n *Node) readHeartbeats(ctx context.Context) {
	buf := make([]byte, maxDatagram+1)
	var second time.Time // the second strangers' datagrams are counted in
	strangers := 0
	for ctx.Err() == nil {
		m, from, err := n.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			n.log.Debug("ha: read heartbeat", "err", err)
			continue
		}
		now := time.Now()
		if !n.peerAddr[from.Addr().Unmap()] {
			if now.Sub(second) >= time.Second {
				second, strangers = now, 0
			}
			if strangers++; strangers > strangerDatagrams {
				n.c.rejected[RejectPeer].Add(1)
				continue
			}
		}
		if err := n.handleDatagram(buf[:m], now); err != nil {
			n.countReject(err)
			n.log.Debug("ha: datagram rejected", "err", err)
		}
	}
}

// handleDatagram authenticates a heartbeat and records it. Any error is a
// rejection.
func (n *Node) handleDatagram(b []byte, now time.Time) error {
	if len(b) > maxDatagram {
		return reject(RejectMalformed, "datagram of %d bytes", len(b))
	}
	h, payload, err := open(n.cfg.Key, b)
	if err != nil {
		return err
	}
	if err := n.checkHeader(h, chanDatagram); err != nil {
		return err
	}
	if h.Type != msgHeartbeat {
		return reject(RejectChannel, "%s in a datagram", h.Type)
	}
	hb, err := parseHeartbeat(payload)
	if err != nil {
		return err
	}
	if err := n.checkReplay(h); err != nil {
		return err
	}
	n.c.hbRecv.Add(1)
	n.mu.Lock()
	p := n.peers[h.Sender]
	restarted := p.heard && p.epoch != h.Epoch
	if !n.alive(p, now) {
		// It may have held the VIPs while it could not hear this node
		// (a healed split brain): if this node is active, it announces
		// them again.
		n.peerJoined = true
	}
	p.hb, p.heard, p.lastHeard, p.epoch = hb, true, now, h.Epoch
	if s := n.sessions[h.Sender]; s != nil && restarted {
		// Its shadow table died with it: connect again, which sends
		// everything again.
		s.restarted()
	}
	n.mu.Unlock()
	n.poke()
	return nil
}

// checkHeader checks what a frame says about where it belongs.
func (n *Node) checkHeader(h header, ch channel) error {
	if h.Group != n.group {
		return reject(RejectGroup, "group id %#x, want %#x", h.Group, n.group)
	}
	if h.Channel != ch {
		return reject(RejectChannel, "channel %d on the wrong transport", h.Channel)
	}
	if _, ok := n.peers[h.Sender]; !ok {
		return reject(RejectPeer, "sender %s", h.Sender)
	}
	return nil
}

// checkReplay must come last, after every other check: it records the
// sequence number as used.
func (n *Node) checkReplay(h header) error {
	n.replayMu.Lock()
	defer n.replayMu.Unlock()
	return n.replay.check(replayKey{h.Sender, h.Channel}, h.Epoch, h.Seq)
}
