package ha

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"

	"github.com/nd-dispatcher/nd/internal/mac"
)

// Every message, datagram or stream, is one sealed frame:
//
//	off len field
//	0   4   magic "NDHA"
//	4   1   wire version (1)
//	5   1   message type
//	6   1   channel: 0 datagram (UDP), 1 stream (TCP)
//	7   1   reserved, 0
//	8   4   group id: FNV-1a 32 of the group name
//	12  16  sender address (IPv4 as ::ffff:a.b.c.d)
//	28  2   sender port
//	30  2   reserved, 0
//	32  8   sender epoch (boot id)
//	40  8   sequence number, per sender, epoch and channel, from 1
//	48  4   payload length
//	52  n   payload
//	52+n 32 HMAC-SHA256(key, bytes 0 .. 52+n)
//
// All integers are big-endian. docs/HA.md describes each payload.
const (
	wireMagic   = "NDHA"
	wireVersion = 2
	// frameLabel names what a frame's MAC authenticates (package mac): a
	// frame of this wire version, nothing else signed with the same key.
	frameLabel = "nd-ha-frame-v2"
	headerLen  = 52
	macLen     = mac.Size
	overhead   = headerLen + macLen

	// maxDatagram keeps heartbeats within one unfragmented packet.
	maxDatagram = 1200
	// maxFrame bounds a stream frame; a configuration larger than this
	// cannot be synchronised.
	maxFrame = 16 << 20
	// maxFlowsPerFrame bounds a flow batch on the wire.
	maxFlowsPerFrame = 1024
)

type msgType uint8

const (
	msgHeartbeat     msgType = 1
	msgFlows         msgType = 2
	msgConfig        msgType = 3
	msgSnapshotBegin msgType = 4
	msgSnapshotEnd   msgType = 5
)

func (t msgType) String() string {
	switch t {
	case msgHeartbeat:
		return "heartbeat"
	case msgFlows:
		return "flows"
	case msgConfig:
		return "config"
	case msgSnapshotBegin:
		return "snapshot-begin"
	case msgSnapshotEnd:
		return "snapshot-end"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

type channel uint8

const (
	chanDatagram channel = 0
	chanStream   channel = 1
)

// Reasons a received message is rejected; Status counts each.
const (
	RejectMalformed = "malformed"    // too short, bad magic, lengths or payload
	RejectVersion   = "version"      // unknown wire version
	RejectAuth      = "auth"         // HMAC does not match: wrong key or tampered
	RejectReplay    = "replay"       // sequence already seen, too old, or an older epoch
	RejectGroup     = "group"        // another group's message
	RejectPeer      = "unknown-peer" // sender is not a configured peer
	RejectChannel   = "channel"      // a datagram message on a stream or the reverse
	RejectQueue     = "queue-full"   // dropped because the node could not keep up
)

var rejectReasons = []string{RejectMalformed, RejectVersion, RejectAuth, RejectReplay, RejectGroup, RejectPeer, RejectChannel, RejectQueue}

// ErrRejected is wrapped by every error for a message that was refused.
var ErrRejected = errors.New("ha message rejected")

type rejectError struct {
	reason string
	detail string
}

func (e *rejectError) Error() string {
	return fmt.Sprintf("%v: %s: %s", ErrRejected, e.reason, e.detail)
}
func (e *rejectError) Unwrap() error { return ErrRejected }

func reject(reason, format string, args ...any) error {
	return &rejectError{reason: reason, detail: fmt.Sprintf(format, args...)}
}

// rejectReason returns the counter a rejection error belongs to.
func rejectReason(err error) string {
	var re *rejectError
	if errors.As(err, &re) {
		return re.reason
	}
	return RejectMalformed
}

type header struct {
	Type    msgType
	Channel channel
	Group   uint32
	Sender  netip.AddrPort
	Epoch   uint64
	Seq     uint64
}

// groupID is the short form of a group name carried in every frame.
func groupID(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return h.Sum32()
}

// seal appends the frame for h and payload, authenticated with key, to dst.
func seal(dst []byte, key []byte, h header, payload []byte) []byte {
	start := len(dst)
	dst = append(dst, wireMagic...)
	dst = append(dst, wireVersion, byte(h.Type), byte(h.Channel), 0)
	dst = binary.BigEndian.AppendUint32(dst, h.Group)
	a := h.Sender.Addr().As16()
	dst = append(dst, a[:]...)
	dst = binary.BigEndian.AppendUint16(dst, h.Sender.Port())
	dst = append(dst, 0, 0)
	dst = binary.BigEndian.AppendUint64(dst, h.Epoch)
	dst = binary.BigEndian.AppendUint64(dst, h.Seq)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	dst = append(dst, payload...)
	return append(dst, mac.Sum(key, frameLabel, dst[start:])...)
}

// frameLen reads the total frame length from the first headerLen bytes of
// a stream, so that a reader knows how much more to read. It checks only
// what it needs to: the rest is checked by open.
func frameLen(hdr []byte) (int, error) {
	if len(hdr) < headerLen {
		return 0, reject(RejectMalformed, "short header: %d bytes", len(hdr))
	}
	if string(hdr[:4]) != wireMagic {
		return 0, reject(RejectMalformed, "bad magic %q", hdr[:4])
	}
	n := binary.BigEndian.Uint32(hdr[48:52])
	if n > maxFrame-overhead {
		return 0, reject(RejectMalformed, "payload of %d bytes exceeds %d", n, maxFrame-overhead)
	}
	return overhead + int(n), nil
}

// open checks a whole frame's structure and MAC and returns its header and
// payload. The payload aliases b. Replay, group and sender checks are the
// caller's, since they need state.
func open(key []byte, b []byte) (header, []byte, error) {
	var h header
	if len(b) < overhead {
		return h, nil, reject(RejectMalformed, "frame of %d bytes is shorter than %d", len(b), overhead)
	}
	if string(b[:4]) != wireMagic {
		return h, nil, reject(RejectMalformed, "bad magic %q", b[:4])
	}
	if b[4] != wireVersion {
		return h, nil, reject(RejectVersion, "wire version %d, want %d", b[4], wireVersion)
	}
	n := binary.BigEndian.Uint32(b[48:52])
	if uint64(n)+overhead != uint64(len(b)) {
		return h, nil, reject(RejectMalformed, "payload length %d does not match frame of %d bytes", n, len(b))
	}
	if !mac.Equal(b[len(b)-macLen:], key, frameLabel, b[:len(b)-macLen]) {
		return h, nil, reject(RejectAuth, "bad HMAC")
	}
	// Authenticated from here on: the remaining checks catch a peer that
	// runs a different (buggy or newer) encoder with the same key.
	if b[7] != 0 || b[30] != 0 || b[31] != 0 {
		return h, nil, reject(RejectMalformed, "reserved bytes set")
	}
	h.Type = msgType(b[5])
	h.Channel = channel(b[6])
	if h.Channel > chanStream {
		return h, nil, reject(RejectMalformed, "channel %d", h.Channel)
	}
	h.Group = binary.BigEndian.Uint32(b[8:12])
	addr := netip.AddrFrom16([16]byte(b[12:28])).Unmap()
	h.Sender = netip.AddrPortFrom(addr, binary.BigEndian.Uint16(b[28:30]))
	h.Epoch = binary.BigEndian.Uint64(b[32:40])
	h.Seq = binary.BigEndian.Uint64(b[40:48])
	if h.Seq == 0 {
		return h, nil, reject(RejectMalformed, "sequence number 0")
	}
	return h, b[headerLen : len(b)-macLen], nil
}

// heartbeat is the payload of msgHeartbeat:
//
//	0 1 state (1 standby, 2 active, 3 stopping)
//	1 1 priority
//	2 1 flags: bit 0 preempt, bit 1 takeover requested
//	3 1 reserved, 0
//	4 8 configuration version the sender holds (0: none)
type heartbeat struct {
	State     State
	Priority  uint8
	Preempt   bool
	Takeover  bool
	ConfigVer uint64
}

const heartbeatLen = 12

const (
	hbPreempt  = 1 << 0
	hbTakeover = 1 << 1
)

func (hb heartbeat) append(dst []byte) []byte {
	var flags byte
	if hb.Preempt {
		flags |= hbPreempt
	}
	if hb.Takeover {
		flags |= hbTakeover
	}
	dst = append(dst, byte(hb.State), hb.Priority, flags, 0)
	return binary.BigEndian.AppendUint64(dst, hb.ConfigVer)
}

func parseHeartbeat(p []byte) (heartbeat, error) {
	var hb heartbeat
	if len(p) != heartbeatLen {
		return hb, reject(RejectMalformed, "heartbeat of %d bytes, want %d", len(p), heartbeatLen)
	}
	hb.State = State(p[0])
	if hb.State != StateStandby && hb.State != StateActive && hb.State != StateStopping {
		return hb, reject(RejectMalformed, "heartbeat state %d", p[0])
	}
	if p[2]&^(hbPreempt|hbTakeover) != 0 || p[3] != 0 {
		return hb, reject(RejectMalformed, "heartbeat flags %#x %#x", p[2], p[3])
	}
	hb.Priority = p[1]
	hb.Preempt = p[2]&hbPreempt != 0
	hb.Takeover = p[2]&hbTakeover != 0
	hb.ConfigVer = binary.BigEndian.Uint64(p[4:12])
	return hb, nil
}

// FlowRecord is one connection of the active's table, as shadowed on the
// standbys. Closed says the flow is gone and the standby should delete it;
// otherwise the record opens (or refreshes) it.
type FlowRecord struct {
	Client  netip.AddrPort // the client's address and port
	VIP     netip.AddrPort // the cluster address and port the client reached
	Proto   uint8          // IP protocol number: 6 TCP, 17 UDP
	Server  netip.Addr     // the server the flow is pinned to; may be unset when Closed
	Closing bool           // the flow saw FIN or RST and is winding down
	Closed  bool           // the flow was removed from the active's table
}

// A flow record on the wire:
//
//	0 1 flags: bit 0 closing, bit 1 closed
//	1 1 protocol
//	  then three addresses, each a family byte (0 none, 4, 6) and 0, 4 or 16
//	  bytes; the client's and the VIP's are followed by a 2-byte port.
const (
	recClosing = 1 << 0
	recClosed  = 1 << 1
)

func appendAddr(dst []byte, a netip.Addr) []byte {
	switch {
	case !a.IsValid():
		return append(dst, 0)
	case a.Is4() || a.Is4In6():
		b := a.Unmap().As4()
		return append(append(dst, 4), b[:]...)
	default:
		b := a.As16()
		return append(append(dst, 6), b[:]...)
	}
}

func (r FlowRecord) append(dst []byte) []byte {
	var flags byte
	if r.Closing {
		flags |= recClosing
	}
	if r.Closed {
		flags |= recClosed
	}
	dst = append(dst, flags, r.Proto)
	dst = appendAddr(dst, r.Client.Addr())
	dst = binary.BigEndian.AppendUint16(dst, r.Client.Port())
	dst = appendAddr(dst, r.VIP.Addr())
	dst = binary.BigEndian.AppendUint16(dst, r.VIP.Port())
	return appendAddr(dst, r.Server)
}

// reader walks a payload; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = reject(RejectMalformed, "payload truncated: need %d bytes, have %d", n, len(r.b))
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() byte {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) addr(required bool) netip.Addr {
	switch fam := r.u8(); fam {
	case 0:
		if required && r.err == nil {
			r.err = reject(RejectMalformed, "missing address")
		}
		return netip.Addr{}
	case 4:
		if v := r.take(4); v != nil {
			return netip.AddrFrom4([4]byte(v))
		}
	case 6:
		if v := r.take(16); v != nil {
			return netip.AddrFrom16([16]byte(v))
		}
	default:
		if r.err == nil {
			r.err = reject(RejectMalformed, "address family %d", fam)
		}
	}
	return netip.Addr{}
}

func (r *reader) record() FlowRecord {
	var rec FlowRecord
	flags := r.u8()
	if flags&^(recClosing|recClosed) != 0 && r.err == nil {
		r.err = reject(RejectMalformed, "flow flags %#x", flags)
	}
	rec.Closing = flags&recClosing != 0
	rec.Closed = flags&recClosed != 0
	rec.Proto = r.u8()
	ca := r.addr(true)
	rec.Client = netip.AddrPortFrom(ca, r.u16())
	va := r.addr(true)
	rec.VIP = netip.AddrPortFrom(va, r.u16())
	rec.Server = r.addr(!rec.Closed)
	if r.err == nil && ca.Is4() != va.Is4() {
		r.err = reject(RejectMalformed, "flow mixes address families: %s -> %s", rec.Client, rec.VIP)
	}
	return rec
}

// A flows payload: a 2-byte count, then that many records.
func appendFlows(dst []byte, recs []FlowRecord) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(recs)))
	for _, r := range recs {
		dst = r.append(dst)
	}
	return dst
}

func parseFlows(p []byte) ([]FlowRecord, error) {
	r := reader{b: p}
	n := int(r.u16())
	if r.err != nil {
		return nil, r.err
	}
	if n > maxFlowsPerFrame {
		return nil, reject(RejectMalformed, "%d flows in one frame, at most %d", n, maxFlowsPerFrame)
	}
	recs := make([]FlowRecord, 0, n)
	for range n {
		rec := r.record()
		if r.err != nil {
			return nil, r.err
		}
		recs = append(recs, rec)
	}
	if len(r.b) != 0 {
		return nil, reject(RejectMalformed, "%d trailing bytes after %d flows", len(r.b), n)
	}
	return recs, nil
}

// configMsg is the payload of msgConfig:
//
//	0  8  version: increases with each change on the sender
//	8  32 SHA-256 of the configuration bytes
//	40 n  the configuration (YAML, opaque here)
type configMsg struct {
	Version uint64
	Hash    [sha256.Size]byte
	Data    []byte
}

func (c configMsg) append(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, c.Version)
	dst = append(dst, c.Hash[:]...)
	return append(dst, c.Data...)
}

func parseConfig(p []byte) (configMsg, error) {
	var c configMsg
	if len(p) < 8+sha256.Size {
		return c, reject(RejectMalformed, "config of %d bytes", len(p))
	}
	c.Version = binary.BigEndian.Uint64(p[:8])
	c.Hash = [sha256.Size]byte(p[8:40])
	c.Data = p[40:]
	if sha256.Sum256(c.Data) != c.Hash {
		return c, reject(RejectMalformed, "config hash does not match its %d bytes", len(c.Data))
	}
	return c, nil
}

// A snapshot-end payload: the 8-byte count of records the snapshot held.
// Snapshot-begin has an empty payload.
func parseSnapshotEnd(p []byte) (uint64, error) {
	r := reader{b: p}
	n := r.u64()
	if r.err != nil || len(r.b) != 0 {
		return 0, reject(RejectMalformed, "snapshot end of %d bytes", len(p))
	}
	return n, nil
}
