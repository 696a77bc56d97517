package executor

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// The fixture world: a dispatcher with an ingress interface and a second
// interface toward another network, in a namespace of its own (interface
// indexes and the redirect map resolve in the caller's namespace).
var (
	macIn     = mustMAC("02:00:00:00:01:00") // dispatcher, ingress interface
	macOut    = mustMAC("02:00:00:00:02:00") // dispatcher, second interface
	macClient = mustMAC("02:00:00:00:00:02")
	macS1     = mustMAC("02:00:00:00:00:11")
	macS2     = mustMAC("02:00:00:00:00:12")
	macS3     = mustMAC("02:00:00:00:00:13")
	macS4     = mustMAC("02:00:00:00:00:14")

	vip4    = netip.MustParseAddr("198.51.100.100")
	vip6    = netip.MustParseAddr("2001:db8::100")
	client4 = netip.MustParseAddr("203.0.113.7")
	client6 = netip.MustParseAddr("2001:db8:1::7")
	s1      = netip.MustParseAddr("198.51.100.11")
	s2      = netip.MustParseAddr("198.51.100.12")
	s3      = netip.MustParseAddr("198.51.100.13")
	s4      = netip.MustParseAddr("198.51.100.14")
	s1v6    = netip.MustParseAddr("2001:db8::11")
	local4  = netip.MustParseAddr("198.51.100.3")
)

type harness struct {
	t   testing.TB
	ns  *netns.NS
	x   *BPF
	in  int // ifindex of the ingress interface
	out int // ifindex of the second interface
	cfg Config
}

func randomName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// newHarness builds the namespace with two dummy interfaces and loads the
// data plane in it.
func newHarness(t testing.TB, cfg Config) *harness {
	t.Helper()
	ns := testutil.NewNS(t, "ndxt")
	h := &harness{t: t, ns: ns, cfg: cfg}
	err := ns.Do(func() error {
		for _, d := range []struct {
			name string
			mac  net.HardwareAddr
			idx  *int
		}{{"in0", macIn, &h.in}, {"out0", macOut, &h.out}} {
			// veth, not dummy: this kernel may lack the dummy driver.
			l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: d.name, HardwareAddr: d.mac}, PeerName: d.name + "p"}
			if err := netlink.LinkAdd(l); err != nil {
				return fmt.Errorf("add %s: %w", d.name, err)
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
			got, err := netlink.LinkByName(d.name)
			if err != nil {
				return err
			}
			*d.idx = got.Attrs().Index
		}
		x, err := New(cfg)
		if err != nil {
			return err
		}
		h.x = x
		return nil
	})
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	t.Cleanup(func() { h.x.Destroy() })
	return h
}

// do runs fn inside the harness namespace and fails the test on error.
func (h *harness) do(fn func() error) {
	h.t.Helper()
	if err := h.ns.Do(fn); err != nil {
		h.t.Fatal(err)
	}
}

// must takes the results of a call that may fail and gives back, given the
// test, the value, failing the test on the error: must(h.x.ActiveFlows())(t).
func must[T any](v T, err error) func(testing.TB) T {
	return func(tb testing.TB) T {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
		return v
	}
}

// weightsOf maps each server of s to its weight.
func weightsOf(s Service) map[netip.Addr]uint32 {
	w := make(map[netip.Addr]uint32, len(s.Servers))
	for _, sv := range s.Servers {
		w[sv.Addr] = sv.Weight
	}
	return w
}

// restart closes the data plane, as a daemon that stops, and takes over what
// it pinned with a new one made from the harness's Config, attached to the
// ingress interface when attach is set.
func (h *harness) restart(attach bool) {
	h.t.Helper()
	if err := h.x.Close(); err != nil {
		h.t.Fatal(err)
	}
	h.do(func() error {
		x, err := New(h.cfg)
		if err != nil {
			return err
		}
		h.x = x
		if attach {
			return x.Attach(h.in)
		}
		return nil
	})
}

func (h *harness) upsert(s Service) {
	h.t.Helper()
	h.do(func() error { return h.x.UpsertService(s) })
}

func (h *harness) server(addr netip.Addr, mac net.HardwareAddr, weight uint32) Server {
	return Server{Addr: addr, MAC: mac, Ifindex: h.in, Weight: weight}
}

// run passes one frame through the program as if it arrived on the ingress
// interface and returns the action and the frame as the program left it.
func (h *harness) run(prog *ebpf.Program, in []byte) (uint32, []byte) {
	h.t.Helper()
	var (
		ret uint32
		out = make([]byte, len(in)+256)
	)
	h.do(func() error {
		var err error
		opts := &ebpf.RunOptions{
			Data:    in,
			DataOut: out,
			Context: xdpMD{DataEnd: uint32(len(in)), IngressIfindex: uint32(h.in)},
		}
		ret, err = prog.Run(opts)
		if err != nil {
			return fmt.Errorf("BPF_PROG_RUN: %w", err)
		}
		out = opts.DataOut
		return nil
	})
	return ret, out
}

// dispatch runs the dispatcher on one frame. Whatever the test goes on to
// check, every frame is held to the executor's contract byte for byte: a
// forwarded frame differs from its input in the Ethernet addresses only,
// with the ingress or second interface as source; any other frame is left
// exactly as it came.
func (h *harness) dispatch(in []byte) (uint32, []byte) {
	h.t.Helper()
	act, out := h.run(h.x.objs.NdDispatch, in)
	out = out[:len(in)]
	switch act {
	case xdpTX, xdpRedirect:
		src := macIn
		if act == xdpRedirect {
			src = macOut
		}
		if !bytes.Equal(out[12:], in[12:]) || !bytes.Equal(out[6:12], src) {
			h.t.Fatalf("forwarded frame changed beyond its destination MAC:\n in %x\nout %x", in, out)
		}
	default:
		if !bytes.Equal(out, in) {
			h.t.Fatalf("%s frame changed:\n in %x\nout %x", actionNames[act], in, out)
		}
	}
	return act, out
}

// xdpMD mirrors struct xdp_md, the context BPF_PROG_RUN takes for XDP.
type xdpMD struct {
	Data           uint32
	DataEnd        uint32
	DataMeta       uint32
	IngressIfindex uint32
	RxQueueIndex   uint32
	EgressIfindex  uint32
}

func (h *harness) stats() Stats {
	h.t.Helper()
	s, err := h.x.Stats()
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

// serverByMAC names the server a forwarded frame went to.
func serverByMAC(out []byte) string {
	switch net.HardwareAddr(out[0:6]).String() {
	case macS1.String():
		return "s1"
	case macS2.String():
		return "s2"
	case macS3.String():
		return "s3"
	case macS4.String():
		return "s4"
	}
	return "unknown " + net.HardwareAddr(out[0:6]).String()
}

func tcp4(sport uint16, dport uint16, flags uint8) frame {
	return frame{dstMAC: macIn, srcMAC: macClient, src: client4, dst: vip4, proto: 6, sport: sport, dport: dport, tcpFlags: flags}
}

func tcp4From(client netip.Addr, sport uint16, dport uint16, flags uint8) frame {
	f := tcp4(sport, dport, flags)
	f.src = client
	return f
}

// with returns the harness reporting to t, for use inside subtests and fuzz
// targets, which must not report to their parent.
func (h *harness) with(t testing.TB) *harness {
	c := *h
	c.t = t
	return &c
}
