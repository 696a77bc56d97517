package ha

import "net/netip"

// replayWindow is how many sequence numbers below the highest seen are
// still accepted, for datagrams that arrive out of order.
const replayWindow = 64

// replayKey names one sequence space: a sender's datagrams or its stream
// frames. The spaces are separate because a snapshot on the stream can
// run thousands of numbers ahead of the heartbeats.
type replayKey struct {
	sender netip.AddrPort
	ch     channel
}

type replayState struct {
	epoch  uint64
	max    uint64
	window uint64 // bit i set: max-i was seen
}

// replayGuard remembers, per sender and channel, the newest epoch and the
// sequence numbers seen in it. It is not safe for concurrent use.
//
// A sender's epoch is its start time, so a restarted peer is accepted at
// once and its previous life's messages are refused for ever. The guard
// never forgets a sender: forgetting would let a recording of a dead
// active's heartbeats keep its standbys from taking over.
type replayGuard struct {
	m map[replayKey]*replayState
}

func newReplayGuard() *replayGuard { return &replayGuard{m: make(map[replayKey]*replayState)} }

// check reports whether (epoch, seq) is new for k. Only messages whose MAC
// verified may be checked, since check records what it accepts.
func (g *replayGuard) check(k replayKey, epoch, seq uint64) error {
	s := g.m[k]
	if s == nil || epoch > s.epoch {
		g.m[k] = &replayState{epoch: epoch, max: seq, window: 1}
		return nil
	}
	if epoch < s.epoch {
		return reject(RejectReplay, "%s: epoch %d is older than %d", k.sender, epoch, s.epoch)
	}
	switch {
	case seq > s.max:
		shift := seq - s.max
		if shift >= replayWindow {
			s.window = 1
		} else {
			s.window = s.window<<shift | 1
		}
		s.max = seq
		return nil
	case s.max-seq >= replayWindow:
		return reject(RejectReplay, "%s: sequence %d is below the window (newest %d)", k.sender, seq, s.max)
	default:
		bit := uint64(1) << (s.max - seq)
		if s.window&bit != 0 {
			return reject(RejectReplay, "%s: sequence %d seen before", k.sender, seq)
		}
		s.window |= bit
		return nil
	}
}
