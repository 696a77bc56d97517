package ha

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// session streams this node's flows and configuration to one peer over a
// TCP connection that it dials and redials. Each connection starts with
// the configuration and a snapshot, so a peer that (re)joins is complete
// again before the live stream resumes.
type session struct {
	n      *Node
	peer   netip.AddrPort
	queue  chan []FlowRecord
	cfg    chan struct{} // configuration changed
	resnap chan struct{} // records were dropped
	redial chan struct{} // the peer restarted
	rekick chan struct{} // the refresh periods changed
	cancel context.CancelFunc

	connected atomic.Bool
}

// startSessionsLocked starts a session for every peer that has none.
func (n *Node) startSessionsLocked(ctx context.Context) {
	for _, p := range n.cfg.Peers {
		if n.sessions[p] != nil {
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		s := &session{
			n:      n,
			peer:   p,
			queue:  make(chan []FlowRecord, n.o.QueueLen),
			cfg:    make(chan struct{}, 1),
			resnap: make(chan struct{}, 1),
			redial: make(chan struct{}, 1),
			rekick: make(chan struct{}, 1),
			cancel: cancel,
		}
		n.sessions[p] = s
		n.sessWG.Go(func() { s.run(sctx) })
	}
}

// stop ends the session without waiting: it may be called under n.mu,
// which the session itself takes. Run waits for all sessions at the end.
func (s *session) stop() { s.cancel() }

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *session) kickConfig() { signal(s.cfg) }
func (s *session) resync()     { signal(s.resnap) }
func (s *session) restarted()  { signal(s.redial) }

var (
	errPeerClosed    = errors.New("peer closed the connection")
	errPeerRestarted = errors.New("peer restarted")
)

// enqueue queues a batch unless the peer is not connected, in which case
// the snapshot on connecting will cover it.
func (s *session) enqueue(recs []FlowRecord) {
	if !s.connected.Load() {
		return
	}
	select {
	case s.queue <- recs:
	default:
		s.n.c.flowsDrop.Add(uint64(len(recs)))
		s.resync()
	}
}

// waitDrained waits until every session's queue is empty or deadline.
func waitDrained(sessions []*session, deadline time.Time) {
	for time.Now().Before(deadline) {
		busy := false
		for _, s := range sessions {
			if s.connected.Load() && len(s.queue) > 0 {
				busy = true
			}
		}
		if !busy {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *session) run(ctx context.Context) {
	log := s.n.log.With("peer", s.peer.String())
	for ctx.Err() == nil {
		err := s.connect(ctx)
		s.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		log.Debug("ha: sync session ended", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.n.cfg.Interval):
		}
	}
}

func (s *session) connect(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, s.n.cfg.DeadAfter)
	conn, err := s.n.o.Dial(dctx, "tcp", s.peer.String())
	cancel()
	if err != nil {
		return fmt.Errorf("dial %s: %w", s.peer, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	// The peer never writes: a read returns only when the connection
	// ends, which is how a peer that restarted or went away is noticed
	// even when there is nothing to send.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		io.Copy(io.Discard, io.LimitReader(conn, 1))
	}()
	defer func() { conn.Close(); <-gone }()

	w := &frameWriter{n: s.n, conn: conn, bw: bufio.NewWriterSize(conn, 64<<10)}
	// Queue live records from here on, so none falls between the
	// snapshot and the stream; replaying one twice is harmless.
	s.connected.Store(true)
	drain(s.resnap)
	drain(s.redial)
	if err := w.config(); err != nil {
		return err
	}
	// The snapshot dates the peer's copies from when it arrives: the
	// first refresh round covers what carried packets from its start on.
	var rs refreshSchedule
	rs.reset(time.Now())
	if err := w.snapshot(); err != nil {
		return err
	}
	if err := w.flush(); err != nil {
		return err
	}
	every := time.NewTicker(s.n.o.ConfigEvery)
	defer every.Stop()
	refresh := time.NewTimer(time.Hour)
	defer refresh.Stop()
	for {
		refresh.Reset(rs.wait(s.n.refreshPeriods()))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-gone:
			return errPeerClosed
		case <-s.redial:
			return errPeerRestarted
		case recs := <-s.queue:
			if err := w.flows(recs); err != nil {
				return err
			}
			// Batch what else is waiting into the same write.
			for more := true; more; {
				select {
				case recs := <-s.queue:
					if err := w.flows(recs); err != nil {
						return err
					}
				default:
					more = false
				}
			}
		case <-s.cfg:
			if err := w.config(); err != nil {
				return err
			}
		case <-every.C:
			if err := w.config(); err != nil {
				return err
			}
		case <-s.resnap:
			rs.reset(time.Now())
			if err := w.snapshot(); err != nil {
				return err
			}
		case <-s.rekick:
			continue // the timer is set again from the new periods
		case <-refresh.C:
			est, cl := s.n.refreshPeriods()
			round, ok := rs.next(time.Now(), est, cl)
			if !ok {
				continue
			}
			if err := w.refresh(round); err != nil {
				return err
			}
		}
		if err := w.flush(); err != nil {
			return err
		}
	}
}

func drain(ch chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

// frameWriter seals stream frames onto a buffered connection.
type frameWriter struct {
	n    *Node
	conn net.Conn
	bw   *bufio.Writer
	buf  []byte
}

func (w *frameWriter) write(t msgType, payload []byte) error {
	w.buf = seal(w.buf[:0], w.n.cfg.Key, w.n.header(t, chanStream), payload)
	// A peer that stops reading must not hold this goroutine for ever.
	w.conn.SetWriteDeadline(time.Now().Add(w.n.cfg.DeadAfter))
	if _, err := w.bw.Write(w.buf); err != nil {
		return fmt.Errorf("write %s: %w", t, err)
	}
	w.n.c.bytesOut.Add(uint64(len(w.buf)))
	return nil
}

func (w *frameWriter) flush() error {
	w.conn.SetWriteDeadline(time.Now().Add(w.n.cfg.DeadAfter))
	if err := w.bw.Flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

func (w *frameWriter) config() error {
	w.n.mu.Lock()
	c := w.n.config
	// In active-active mode only the leader's configuration travels: a
	// follower's copy may be older than what its peers hold.
	follower := w.n.aa.Load() && w.n.state != StateActive
	w.n.mu.Unlock()
	if c.Data == nil || follower {
		return nil
	}
	if err := w.write(msgConfig, c.append(nil)); err != nil {
		return err
	}
	w.n.c.cfgSent.Add(1)
	return nil
}

func (w *frameWriter) flows(recs []FlowRecord) error {
	var payload []byte
	for len(recs) > 0 {
		k := min(len(recs), maxFlowsPerFrame)
		payload = appendFlows(payload[:0], recs[:k])
		if err := w.write(msgFlows, payload); err != nil {
			return err
		}
		w.n.c.flowsSent.Add(uint64(k))
		recs = recs[k:]
	}
	return nil
}

const snapshotBatch = 256

// refreshSchedule keeps one connection's refresh rounds: when its peer's
// copies were last refreshed, those of every flow and those of closing
// flows (refreshed more often).
type refreshSchedule struct {
	full, closing time.Time
}

func (rs *refreshSchedule) reset(now time.Time) { rs.full, rs.closing = now, now }

// idleWait is how long a session waits when refreshing is off: a change
// of the periods wakes it anyway.
const idleWait = time.Hour

// wait is the time until the next round is due under periods est and cl
// (refreshPeriods), at least a millisecond.
func (rs *refreshSchedule) wait(est, cl time.Duration) time.Duration {
	if est <= 0 {
		return idleWait
	}
	due := rs.full.Add(est)
	if c := rs.closing.Add(cl); c.Before(due) {
		due = c
	}
	return max(time.Until(due), time.Millisecond)
}

// next returns the round due at now, if any, and records it as done.
func (rs *refreshSchedule) next(now time.Time, est, cl time.Duration) (RefreshRound, bool) {
	if est <= 0 {
		return RefreshRound{}, false
	}
	full := !now.Before(rs.full.Add(est))
	if !full && now.Before(rs.closing.Add(cl)) {
		return RefreshRound{}, false
	}
	r := RefreshRound{Since: rs.full, ClosingSince: rs.closing, ClosingOnly: !full}
	rs.closing = now
	if full {
		rs.full = now
	}
	return r, true
}

// refresh sends the records of one refresh round as ordinary flow
// records: a standby applies them as it applies any (an upsert, which
// dates its copy anew), so a node of an older version takes them too.
func (w *frameWriter) refresh(r RefreshRound) error {
	var (
		batch []FlowRecord
		total uint64
		werr  error
	)
	send := func() {
		werr = w.flows(batch)
		total += uint64(len(batch))
		batch = batch[:0]
	}
	err := w.n.o.Refresh(r, func(rec FlowRecord) bool {
		batch = append(batch, rec)
		if len(batch) == maxFlowsPerFrame {
			send()
		}
		return werr == nil
	})
	if werr == nil && err == nil && len(batch) > 0 {
		send()
	}
	if werr != nil {
		return werr
	}
	if err != nil {
		return fmt.Errorf("refresh: %w", err)
	}
	w.n.c.flowsRefr.Add(total)
	w.n.c.refrRounds.Add(1)
	return nil
}

// snapshot sends the whole table. Without a Snapshot callback it sends an
// empty one, which still tells the peer the stream is up.
func (w *frameWriter) snapshot() error {
	if err := w.write(msgSnapshotBegin, nil); err != nil {
		return err
	}
	var (
		batch []FlowRecord
		total uint64
		werr  error
	)
	iterate := w.n.o.Snapshot
	if iterate == nil {
		iterate = func(func(FlowRecord) bool) error { return nil }
	}
	err := iterate(func(r FlowRecord) bool {
		batch = append(batch, r)
		total++
		if len(batch) == snapshotBatch {
			werr = w.flows(batch)
			batch = batch[:0]
		}
		return werr == nil
	})
	if werr != nil {
		return werr
	}
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := w.flows(batch); err != nil {
		return err
	}
	if err := w.write(msgSnapshotEnd, binary.BigEndian.AppendUint64(nil, total)); err != nil {
		return err
	}
	w.n.c.snapSent.Add(1)
	return nil
}

// maxSyncConns bounds the connections accepted at once, authenticated or
// not, from each configured peer's address, and from all other addresses
// together.
const maxSyncConns = 4

// acceptSync accepts synchronisation connections until the listener closes.
// Slots are kept by source address: a peer dials from its own address
// (Config.Self), so each peer has maxSyncConns of its own, and every other
// source shares another maxSyncConns, in which it can only fail to
// authenticate. A stranger holding idle connections therefore never keeps
// a peer's stream out.
func (n *Node) acceptSync(ctx context.Context, wg *sync.WaitGroup) {
	var mu sync.Mutex
	held := map[netip.Addr]int{}           // by peer address; strangers under the zero Addr
	conns := map[net.Conn]netip.AddrPort{} // to its sender once authenticated
	// A sender's new connection replaces its old one, which may linger
	// half-open after a crash until TCP keepalive notices.
	claim := func(conn net.Conn, sender netip.AddrPort) {
		mu.Lock()
		defer mu.Unlock()
		for c, s := range conns {
			if s == sender && c != conn {
				c.Close()
			}
		}
		conns[conn] = sender
	}
	defer func() {
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	for {
		conn, err := n.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			n.log.Debug("ha: accept", "err", err)
			time.Sleep(n.cfg.Interval / 4)
			continue
		}
		var src netip.Addr
		if ap, err := netip.ParseAddrPort(conn.RemoteAddr().String()); err == nil && n.peerAddr[ap.Addr().Unmap()] {
			src = ap.Addr().Unmap()
		}
		mu.Lock()
		full := held[src] >= maxSyncConns
		if !full {
			held[src]++
			conns[conn] = netip.AddrPort{}
		}
		mu.Unlock()
		if full {
			conn.Close()
			if src.IsValid() {
				n.c.rejected[RejectQueue].Add(1)
			} else {
				n.c.rejected[RejectPeer].Add(1)
			}
			continue
		}
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, conn)
				held[src]--
				mu.Unlock()
				conn.Close()
			}()
			if err := n.receive(ctx, conn, claim); err != nil && ctx.Err() == nil {
				n.log.Debug("ha: sync connection closed", "remote", conn.RemoteAddr().String(), "err", err)
			}
		})
	}
}

// receive reads frames from one synchronisation connection. A rejected
// frame ends the connection, since the stream can no longer be trusted;
// the sender redials and starts over with a snapshot.
func (n *Node) receive(ctx context.Context, conn net.Conn, claim func(net.Conn, netip.AddrPort)) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	br := bufio.NewReaderSize(conn, 64<<10)
	hdr := make([]byte, headerLen)
	var frame []byte
	// An unauthenticated connection gets DeadAfter to prove itself; after
	// that the sender's periodic configuration keeps it busy.
	conn.SetReadDeadline(time.Now().Add(n.cfg.DeadAfter))
	authed := false
	var sender netip.AddrPort
	for {
		if _, err := io.ReadFull(br, hdr); err != nil {
			return err
		}
		size, err := frameLen(hdr)
		if err != nil {
			n.countReject(err)
			return err
		}
		if frame, err = readFrame(br, append(frame[:0], hdr...), size); err != nil {
			return err
		}
		h, err := n.handleFrame(frame, sender)
		if err != nil {
			if !errors.Is(err, errCallback) {
				n.countReject(err)
				return err
			}
			n.log.Warn("ha: sync", "from", h.Sender.String(), "err", err)
		}
		if !authed {
			authed, sender = true, h.Sender
			claim(conn, sender)
			conn.SetReadDeadline(time.Time{})
		}
	}
}

// frameChunk is how much a frame's buffer grows at a time while it is read.
const frameChunk = 64 << 10

// readFrame reads the rest of a frame of size bytes whose header frame
// holds, growing the buffer only as bytes arrive: a header alone,
// announcing the largest frame, cannot make the node allocate it (four
// unauthenticated strangers would otherwise hold 64 MiB for nothing).
func readFrame(br *bufio.Reader, frame []byte, size int) ([]byte, error) {
	for len(frame) < size {
		n := min(size-len(frame), frameChunk)
		frame = slices.Grow(frame, n)
		if _, err := io.ReadFull(br, frame[len(frame):len(frame)+n]); err != nil {
			return frame, err
		}
		frame = frame[:len(frame)+n]
	}
	return frame, nil
}

var errCallback = errors.New("callback failed")

// handleFrame authenticates one stream frame and hands its content on.
// Once a connection has a sender, frames from another are refused.
func (n *Node) handleFrame(b []byte, sender netip.AddrPort) (header, error) {
	h, payload, err := open(n.cfg.Key, b)
	if err != nil {
		return h, err
	}
	if err := n.checkHeader(h, chanStream); err != nil {
		return h, err
	}
	if sender.IsValid() && h.Sender != sender {
		return h, reject(RejectPeer, "sender %s on %s's connection", h.Sender, sender)
	}
	var (
		recs []FlowRecord
		cm   configMsg
	)
	switch h.Type {
	case msgFlows:
		recs, err = parseFlows(payload)
	case msgConfig:
		cm, err = parseConfig(payload)
	case msgSnapshotBegin:
		if len(payload) != 0 {
			err = reject(RejectMalformed, "snapshot begin with %d bytes", len(payload))
		}
	case msgSnapshotEnd:
		_, err = parseSnapshotEnd(payload)
	default:
		err = reject(RejectChannel, "%s on a stream", h.Type)
	}
	if err != nil {
		return h, err
	}
	if err := n.checkReplay(h); err != nil {
		return h, err
	}
	switch h.Type {
	case msgFlows:
		if n.o.OnFlows != nil && len(recs) > 0 {
			if err := n.o.OnFlows(recs); err != nil {
				n.c.flowErrs.Add(1)
				return h, fmt.Errorf("%w: flows: %w", errCallback, err)
			}
		}
		n.c.flowsRecv.Add(uint64(len(recs)))
	case msgConfig:
		return h, n.applyConfig(cm)
	case msgSnapshotEnd:
		n.c.snapRecv.Add(1)
		n.mu.Lock()
		if p := n.peers[h.Sender]; p != nil {
			p.snapshotAt = time.Now()
		}
		n.mu.Unlock()
	}
	return h, nil
}

func (n *Node) applyConfig(cm configMsg) error {
	n.mu.Lock()
	// An active keeps its own configuration: during a split brain the
	// other active's must not overwrite it.
	skip := n.applied == cm.Hash || n.state == StateActive
	n.mu.Unlock()
	if skip {
		return nil
	}
	// The frame buffer is reused for the next frame; OnConfig may keep
	// what it is given.
	cm.Data = append([]byte{}, cm.Data...)
	if n.o.OnConfig != nil {
		if err := n.o.OnConfig(cm.Data); err != nil {
			n.c.cfgErrs.Add(1)
			return fmt.Errorf("%w: config version %d: %w", errCallback, cm.Version, err)
		}
	}
	n.c.cfgRecv.Add(1)
	n.mu.Lock()
	n.applied = cm.Hash
	// A standby that becomes active sends on what it holds.
	if n.state != StateActive {
		n.config = configMsg{Version: cm.Version, Hash: cm.Hash, Data: append([]byte{}, cm.Data...)}
	}
	n.mu.Unlock()
	return nil
}
