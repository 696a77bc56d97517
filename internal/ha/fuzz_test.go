package ha

import (
	"net/netip"
	"testing"
	"time"
)

// FuzzDecode feeds arbitrary bytes to both message handlers: as they came
// off the wire, and sealed with the group key, so that the payload
// parsers behind the HMAC are reached too. Nothing may panic, and what is
// refused must be refused with a counted reason.
func FuzzDecode(f *testing.F) {
	pf := newPeerFrames()
	rec := FlowRecord{Client: netip.MustParseAddrPort("198.51.100.2:40000"), VIP: netip.MustParseAddrPort("198.51.100.100:80"), Proto: 6, Server: netip.MustParseAddr("203.0.113.21")}
	f.Add(pf.frame(msgHeartbeat, chanDatagram, heartbeat{State: StateActive, Priority: 9}.append(nil)), uint8(0), false)
	f.Add(pf.frame(msgFlows, chanStream, appendFlows(nil, []FlowRecord{rec})), uint8(0), false)
	f.Add(appendFlows(nil, []FlowRecord{rec, {Client: rec.Client, VIP: rec.VIP, Closed: true}}), uint8(msgFlows), true)
	f.Add(heartbeat{State: StateStandby, Takeover: true}.append(nil), uint8(msgHeartbeat), true)
	f.Add(configMsg{Version: 1}.append(nil), uint8(msgConfig), true)
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 5}, uint8(msgSnapshotEnd), true)
	f.Fuzz(func(t *testing.T, data []byte, typ uint8, sealed bool) {
		n := offlineNode(t, Options{
			OnFlows:  func([]FlowRecord) error { return nil },
			OnConfig: func([]byte) error { return nil },
		})
		frame := data
		if sealed {
			ch := chanStream
			if msgType(typ) == msgHeartbeat {
				ch = chanDatagram
			}
			frame = seal(nil, testKey, header{Type: msgType(typ), Channel: ch, Group: n.group, Sender: testPeer, Epoch: 1, Seq: 1}, data)
		}
		errD := n.handleDatagram(frame, time.Now())
		n.replay = newReplayGuard()
		_, errS := n.handleFrame(frame, netip.AddrPort{})
		if len(frame) >= headerLen {
			frameLen(frame[:headerLen])
		}
		for _, err := range []error{errD, errS} {
			if err != nil && n.c.rejected[rejectReason(err)] == nil {
				t.Fatalf("uncounted reason for %v", err)
			}
		}
		if !sealed && errD == nil && errS == nil {
			t.Fatalf("unsealed input accepted by both handlers: %x", data)
		}
	})
}
