package executor

import (
	"errors"
	"os"
	"strings"
	"testing"
)

const hostMountinfo = `22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
40 25 0:33 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:16 - bpf bpf rw,mode=700
51 22 0:45 / /mnt/with\040space rw,relatime shared:30 - tmpfs tmpfs rw
`

// What `ip netns exec` leaves: every mount a slave of the host's, /sys
// remounted for the network namespace, a bpffs mounted there by hand.
const netnsExecMountinfo = `300 299 252:1 / / rw,relatime master:1 - ext4 /dev/vda1 rw
301 300 0:90 / /sys rw,relatime - sysfs ns1 rw
302 301 0:91 / /sys/fs/bpf rw,relatime - bpf bpf rw
`

func TestParseMountinfo(t *testing.T) {
	m, err := parseMountinfo(strings.NewReader(hostMountinfo))
	if err != nil || len(m) != 4 {
		t.Fatalf("parsed %+v, %v", m, err)
	}
	if m[3].point != "/mnt/with space" || m[2].fstype != "bpf" || !m[2].shared {
		t.Fatalf("parsed %+v", m)
	}
	if e, ok := mountOf(m, "/sys/fs/bpf/nd"); !ok || e.point != "/sys/fs/bpf" || e.fstype != "bpf" {
		t.Fatalf("mount of /sys/fs/bpf/nd: %+v %v", e, ok)
	}
	if e, _ := mountOf(m, "/sysfoo"); e.point != "/" {
		t.Fatalf("mount of /sysfoo: %+v, want /", e)
	}
	ns, err := parseMountinfo(strings.NewReader(netnsExecMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	root, _ := mountOf(ns, "/")
	bpf, _ := mountOf(ns, "/sys/fs/bpf/nd")
	if root.shared || !root.master || bpf.shared || bpf.master {
		t.Fatalf("under ip netns exec: root %+v, bpffs %+v: want a slave root and a private bpffs", root, bpf)
	}
	if !privateNS(ns) || privateNS(m) {
		t.Fatalf("privateNS: %v under ip netns exec, %v on the host; want true, false", privateNS(ns), privateNS(m))
	}
}

// TestPinPathLock: a second data plane on the pin path of a running one is
// refused, and the path is free again once the first closes.
func TestPinPathLock(t *testing.T) {
	pin := "/sys/fs/bpf/" + randomName("ndtest")
	t.Cleanup(func() { os.RemoveAll(pin) })
	h := newHarness(t, Config{MaxFlows: 1 << 10, PinPath: pin})
	h.do(func() error {
		x, err := New(Config{MaxFlows: 1 << 10, PinPath: pin})
		if err == nil {
			x.Close()
			return errors.New("a second data plane on one pin path was accepted")
		}
		if !errors.Is(err, ErrBusy) {
			return err
		}
		t.Logf("refused: %v", err)
		return nil
	})
	if err := h.x.Close(); err != nil {
		t.Fatal(err)
	}
	h.do(func() error {
		x, err := New(Config{MaxFlows: 1 << 10, PinPath: pin})
		if err != nil {
			return err
		}
		h.x = x
		return nil
	})
}
