package ha_test

import (
	"net/netip"
	"testing"

	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// TestKernelVIPsSet: a group whose VIPs change while it runs. Active, the
// new set is on the interface at once and the dropped address gone;
// standing by, nothing is added until Up.
func TestKernelVIPsSet(t *testing.T) {
	testutil.RequirePrivileged(t)
	tp := newTopo(t, 1)
	h := tp.nd[0]
	other := netip.MustParseAddr("198.51.100.101")
	var kv *ha.KernelVIPs
	must(t, h.ns.Do(func() error {
		var err error
		kv, err = ha.NewKernelVIPs("eth0", []netip.Addr{vip4})
		return err
	}))
	defer kv.Close()
	must(t, kv.Up())
	if !hasAddr(t, h, vip4) {
		t.Fatal("Up did not add the VIP")
	}
	must(t, kv.Set([]netip.Addr{other, vip6}, true))
	if hasAddr(t, h, vip4) || !hasAddr(t, h, other) || !hasAddr(t, h, vip6) {
		t.Errorf("after Set while up: %v %v %v, want only the new set", hasAddr(t, h, vip4), hasAddr(t, h, other), hasAddr(t, h, vip6))
	}
	must(t, kv.Down())
	must(t, kv.Set([]netip.Addr{vip4}, false))
	if hasAddr(t, h, vip4) || hasAddr(t, h, other) {
		t.Error("Set while down changed the interface")
	}
	must(t, kv.Up())
	if !hasAddr(t, h, vip4) || hasAddr(t, h, other) {
		t.Error("Up after Set did not bring the new set")
	}
}
