package ha_test

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestLeftoverVIPsRemoved: a node that starts where an earlier run died
// holding the VIPs removes them, so that a standby never answers for them.
func TestLeftoverVIPsRemoved(t *testing.T) {
	tp := newTopo(t, 2)
	b := tp.nd[1]
	hh, err := b.ns.Netlink()
	must(t, err)
	l, err := hh.LinkByName("eth0")
	must(t, err)
	must(t, hh.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: vip4.AsSlice(), Mask: net.CIDRMask(32, 32)}}))
	if !hasAddr(t, b, vip4) {
		t.Fatal("the leftover VIP was not added")
	}
	a := tp.start(tp.nd[0], 200, false)
	tp.start(b, 100, false)
	eventually(t, settle, "a active", func() bool { got := actives(a); return len(got) == 1 })
	eventually(t, settle, "the leftover VIP gone from b", func() bool { return !hasAddr(t, b, vip4) })
}
