package ha

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestDecide(t *testing.T) {
	a := netip.MustParseAddrPort("198.51.100.11:7400")
	b := netip.MustParseAddrPort("198.51.100.12:7400")
	c := netip.MustParseAddrPort("198.51.100.13:7400")
	pv := func(addr netip.AddrPort, prio uint8, st State, take bool) peerView {
		return peerView{rank: rank{prio, addr}, state: st, takeover: take}
	}
	cases := []struct {
		name string
		v    view
		want decision
	}{
		{"waits before settling", view{self: rank{100, a}, state: StateStandby}, decision{}},
		{"alone becomes active", view{self: rank{100, a}, state: StateStandby, settled: true}, decision{act: actBecomeActive}},
		{"higher priority wins", view{self: rank{100, a}, state: StateStandby, settled: true,
			livePeers: []peerView{pv(b, 200, StateStandby, false)}}, decision{}},
		{"beats lower priority", view{self: rank{200, a}, state: StateStandby, settled: true,
			livePeers: []peerView{pv(b, 100, StateStandby, false)}}, decision{act: actBecomeActive}},
		{"equal priority: higher address wins", view{self: rank{100, b}, state: StateStandby, settled: true,
			livePeers: []peerView{pv(a, 100, StateStandby, false)}}, decision{act: actBecomeActive}},
		{"equal priority: lower address waits", view{self: rank{100, a}, state: StateStandby, settled: true,
			livePeers: []peerView{pv(b, 100, StateStandby, false)}}, decision{}},
		{"takeover requester ranks first", view{self: rank{250, a}, state: StateStandby, settled: true,
			livePeers: []peerView{pv(b, 1, StateStandby, true)}}, decision{}},
		{"requester becomes active", view{self: rank{1, b}, state: StateStandby, settled: true, takeover: true,
			livePeers: []peerView{pv(a, 250, StateStandby, false)}}, decision{act: actBecomeActive}},
		{"standby stays under an active", view{self: rank{250, a}, state: StateStandby, settled: true,
			livePeers: []peerView{pv(b, 100, StateActive, false)}}, decision{act: actWithdraw}},
		{"preempt asks", view{self: rank{250, a}, preempt: true, state: StateStandby, settled: true,
			livePeers: []peerView{synced(pv(b, 100, StateActive, false))}}, decision{act: actRequest}},
		{"preempt waits for the active's flows", view{self: rank{250, a}, preempt: true, state: StateStandby, settled: true,
			livePeers: []peerView{pv(b, 100, StateActive, false)}}, decision{act: actWithdraw}},
		{"preempt not on equal priority", view{self: rank{100, c}, preempt: true, state: StateStandby, settled: true,
			livePeers: []peerView{pv(b, 100, StateActive, false)}}, decision{act: actWithdraw}},
		{"no preempt of the node handed over to", view{self: rank{250, a}, preempt: true, state: StateStandby, settled: true,
			yieldedTo: b, livePeers: []peerView{pv(b, 100, StateActive, false)}}, decision{act: actWithdraw}},
		{"active steps down to higher active", view{self: rank{100, a}, state: StateActive,
			livePeers: []peerView{pv(b, 100, StateActive, false)}}, decision{act: actStepDown, peer: b}},
		{"active keeps against lower active", view{self: rank{100, b}, state: StateActive,
			livePeers: []peerView{pv(a, 100, StateActive, false)}}, decision{act: actReannounce, peer: a}},
		{"active hands over on request", view{self: rank{250, a}, state: StateActive,
			livePeers: []peerView{pv(b, 1, StateStandby, true), pv(c, 5, StateStandby, false)}}, decision{act: actHandOver, peer: b}},
		{"active alone stays", view{self: rank{1, a}, state: StateActive,
			livePeers: []peerView{pv(b, 250, StateStandby, false)}}, decision{}},
	}
	for _, tc := range cases {
		if got := decide(tc.v); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// TestDecideOneActive checks, over every combination of three nodes'
// priorities and states, that after one round the split-brain rule leaves
// at most one active and never all of them standing down at once.
func TestDecideOneActive(t *testing.T) {
	addrs := []netip.AddrPort{
		netip.MustParseAddrPort("198.51.100.11:7400"),
		netip.MustParseAddrPort("198.51.100.12:7400"),
		netip.MustParseAddrPort("198.51.100.13:7400"),
	}
	prios := []uint8{1, 100, 100}
	for mask := 1; mask < 8; mask++ { // which nodes believe they are active
		for perm := range 3 {
			ps := []uint8{prios[perm%3], prios[(perm+1)%3], prios[(perm+2)%3]}
			after := 0
			for i := range 3 {
				v := view{self: rank{ps[i], addrs[i]}, state: StateStandby, settled: true}
				if mask&(1<<i) != 0 {
					v.state = StateActive
				}
				for j := range 3 {
					if j != i {
						st := StateStandby
						if mask&(1<<j) != 0 {
							st = StateActive
						}
						v.livePeers = append(v.livePeers, peerView{rank: rank{ps[j], addrs[j]}, state: st})
					}
				}
				d := decide(v)
				if v.state == StateActive && d.act != actStepDown {
					after++
				}
			}
			if after != 1 {
				t.Errorf("actives %03b, priorities %v: %d remain active, want 1", mask, ps, after)
			}
		}
	}
}

// synced marks a peer whose whole snapshot this node has received.
func synced(p peerView) peerView {
	p.synced = true
	return p
}
