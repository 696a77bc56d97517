package ha

import "net/netip"

// Frames seals messages as a given sender would, for tests that play a
// peer (or an attacker) on the wire.
type Frames struct {
	key    []byte
	group  uint32
	sender netip.AddrPort
	epoch  uint64
	seq    uint64
}

func NewTestFrames(key []byte, group string, sender netip.AddrPort) *Frames {
	return &Frames{key: key, group: groupID(group), sender: sender, epoch: newEpoch()}
}

func (f *Frames) next(t msgType, ch channel, payload []byte) []byte {
	f.seq++
	return seal(nil, f.key, header{Type: t, Channel: ch, Group: f.group, Sender: f.sender, Epoch: f.epoch, Seq: f.seq}, payload)
}

func (f *Frames) Heartbeat(s State, prio uint8) []byte {
	return f.next(msgHeartbeat, chanDatagram, heartbeat{State: s, Priority: prio}.append(nil))
}

func (f *Frames) Flows(recs []FlowRecord) []byte {
	return f.next(msgFlows, chanStream, appendFlows(nil, recs))
}

// StrangerDatagrams is strangerDatagrams, for the flood test.
const StrangerDatagrams = strangerDatagrams
