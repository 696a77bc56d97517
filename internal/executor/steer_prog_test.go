package executor

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

func TestSteeringOptions(t *testing.T) {
	for _, tc := range []struct {
		name       string
		base, mask uint32
		ok         bool
	}{
		{"defaults", 0, 0, true},
		{"custom range", 0x12345600, 0xffffff00, true},
		{"one bit of slots", 0x80000000, 0xfffffffe, true},
		{"no slot bits", 0x4e440000, 0xffffffff, false},
		{"holey mask", 0x4e440000, 0xffff00f0, false},
		{"base outside mask", 0x4e440001, 0xffff0000, false},
		{"zero base", 0, 0xffff0000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := SteeringOptions{MarkBase: tc.base, MarkMask: tc.mask}
			err := o.fill()
			if tc.ok && err != nil {
				t.Fatalf("fill: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalid) {
				t.Fatalf("fill = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestSteeredDialerRejects(t *testing.T) {
	// Control fails before connect, so nothing is sent anywhere.
	for _, tc := range []struct {
		name    string
		source  netip.Addr
		network string
		address string
	}{
		{"no source", netip.Addr{}, "tcp", "127.0.0.1:9"},
		{"v6 source, v4 destination", netip.MustParseAddr("2001:db8::3"), "tcp", "127.0.0.1:9"},
		{"v4 source, v6 destination", netip.MustParseAddr("198.51.100.3"), "tcp", "[::1]:9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := SteeredDialer(DefaultSteerMarkBase|1, tc.source, 0).Dial(tc.network, tc.address)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("dial = %v, want ErrInvalid", err)
			}
		})
	}
}

// steerFrame is an IPv4 TCP SYN as lo carries it: all-zero MACs.
func steerFrame() []byte {
	f := make([]byte, 14+20+20)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], 40)
	copy(ip[12:], []byte{198, 51, 100, 3})
	copy(ip[16:], []byte{198, 51, 100, 100})
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 80)
	tcp[12], tcp[13] = 5<<4, 0x02
	return f
}

// skbCtx is the head of struct __sk_buff up to mark; the kernel zeroes
// the rest.
type skbCtx struct {
	Len, PktType, Mark uint32
}

const (
	tcActUnspec   = 0xffffffff // TC_ACT_UNSPEC (-1)
	tcActShot     = 2
	tcActRedirect = 7
)

// TestSteerProgram runs bpf/steer.c on fixtures with BPF_PROG_RUN: marked
// frames with a route are redirected with both MACs rewritten; any other
// frame is left alone, except marked ones of the range with no route,
// which are dropped.
func TestSteerProgram(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, rng := range []struct{ base, mask uint32 }{
		{DefaultSteerMarkBase, DefaultSteerMarkMask},
		{0x12345600, 0xffffff00},
	} {
		o := SteeringOptions{MarkBase: rng.base, MarkMask: rng.mask, MaxRoutes: 16}
		if err := o.fill(); err != nil {
			t.Fatal(err)
		}
		var objs steerObjects
		if err := loadSteering(o, &objs); err != nil {
			t.Fatal(err)
		}
		defer objs.Close()

		server := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x12}
		iface := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x03}
		routed := rng.base | 5
		var r steerSteerRoute
		copy(r.DstMac[:], server)
		copy(r.SrcMac[:], iface)
		r.Ifindex = 7
		if err := objs.SteerRoutes.Put(routed, &r); err != nil {
			t.Fatal(err)
		}
		in := steerFrame()
		redirected := append(append(append([]byte{}, server...), iface...), in[12:]...)

		for _, tc := range []struct {
			name   string
			mark   uint32
			action uint32
			want   []byte
		}{
			{"routed mark", routed, tcActRedirect, redirected},
			{"no mark", 0, tcActUnspec, in},
			{"mark outside the range", (rng.base ^ 0x01000000) | 5, tcActUnspec, in},
			{"mark of the range without a route", rng.base | 6, tcActShot, in},
			{"the range's base alone", rng.base, tcActShot, in},
		} {
			t.Run(tc.name, func(t *testing.T) {
				out := make([]byte, len(in)+256)
				ctx := skbCtx{Mark: tc.mark}
				ret, err := objs.NdSteer.Run(&ebpf.RunOptions{Data: in, DataOut: out, Context: ctx})
				if err != nil {
					t.Fatalf("run: %v", err)
				}
				if ret != tc.action {
					t.Errorf("%#x/%#x mark %#x: action %d, want %d", rng.base, rng.mask, tc.mark, int32(ret), int32(tc.action))
				}
				if !bytes.Equal(out[:len(in)], tc.want) {
					t.Errorf("frame\n got  % x\n want % x", out[:len(in)], tc.want)
				}
			})
		}

		// The counters saw one redirect and two drops per run above.
		var per []uint64
		sum := func(i uint32) (n uint64) {
			if err := objs.SteerStats.Lookup(i, &per); err != nil {
				t.Fatal(err)
			}
			for _, v := range per {
				n += v
			}
			return n
		}
		if got := sum(steerRedirected); got != 1 {
			t.Errorf("redirected counter %d, want 1", got)
		}
		if got := sum(steerNoRoute); got != 2 {
			t.Errorf("no-route counter %d, want 2", got)
		}
	}
}

// TestSteeringPinned: with a pin path the attachment outlives Close, a new
// Steering takes its place instead of adding a second program, and Destroy
// removes it.
func TestSteeringPinned(t *testing.T) {
	ns := testutil.NewNS(t, "ndtsteer")
	pin := "/sys/fs/bpf/" + randomName("ndtest")
	t.Cleanup(func() { os.RemoveAll(pin) })
	o := SteeringOptions{PinPath: pin}

	attached := func() (n int) {
		t.Helper()
		err := ns.Do(func() error {
			lo, err := loopback()
			if err != nil {
				return err
			}
			res, err := link.QueryPrograms(link.QueryOptions{Target: lo.Index, Attach: ebpf.AttachTCXEgress})
			if err != nil {
				return err
			}
			n = len(res.Programs)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	open := func() *Steering {
		t.Helper()
		var s *Steering
		if err := ns.Do(func() (err error) {
			s, err = NewSteering(o)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return s
	}

	s := open()
	if n := attached(); n != 1 {
		t.Fatalf("%d programs on lo's tcx egress, want 1", n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(pin, "steer_lo")); err != nil {
		t.Fatalf("pin after Close: %v", err)
	}
	if n := attached(); n != 1 {
		t.Fatalf("%d programs on lo's tcx egress after Close, want the pinned 1", n)
	}
	s = open()
	if n := attached(); n != 1 {
		t.Fatalf("%d programs on lo's tcx egress after a takeover, want 1", n)
	}
	if err := s.Destroy(); err != nil {
		t.Fatal(err)
	}
	if n := attached(); n != 0 {
		t.Fatalf("%d programs on lo's tcx egress after Destroy, want 0", n)
	}
	if _, err := os.Stat(filepath.Join(pin, "steer_lo")); !os.IsNotExist(err) {
		t.Fatalf("pin after Destroy: %v", err)
	}
}
