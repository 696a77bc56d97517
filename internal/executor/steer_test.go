package executor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

const (
	steerBuild   = 60 * time.Second
	steerTimeout = 3 * time.Second // one HTTP exchange that should work
	steerFail    = time.Second     // one dial that should not
	loopbackPort = 8080
	sinkPort     = 9000
	udpEchoPort  = 9001
)

type dialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// newSteerLab builds a lab, runs the HTTP servers on the servers' VIPs and
// a local one on the dispatcher's VIPs (so that a probe answered by the
// local stack is told apart from a refused one) and on its loopback.
func newSteerLab(t *testing.T, o lab.Options) *lab.Lab {
	t.Helper()
	if _, err := lab.SweepStale(t.Logf); err != nil {
		t.Logf("sweep stale labs: %v", err)
	}
	o.Logf = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), steerBuild)
	defer cancel()
	l, err := lab.New(ctx, o)
	if err != nil {
		t.Fatalf("build lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	vips := []netip.AddrPort{netip.AddrPortFrom(l.VIP4, 80), netip.AddrPortFrom(l.VIP6, 80)}
	for i := range l.Servers {
		stop, err := lab.ServeHTTP(context.Background(), &l.Servers[i], vips...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	local := append(vips,
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), loopbackPort),
		netip.AddrPortFrom(netip.IPv6Loopback(), loopbackPort))
	stop, err := lab.ServeHTTP(context.Background(), &l.Dispatcher, local...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return l
}

// get does one GET of http://addr/ with connections made by dial inside
// ns, and returns the body: the name of the host that answered.
func get(ns *netns.NS, dial dialFunc, addr netip.AddrPort, timeout time.Duration) (string, error) {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, address string) (c net.Conn, err error) {
				err = ns.Do(func() error {
					c, err = dial(ctx, network, address)
					return err
				})
				return c, err
			},
		},
	}
	resp, err := client.Get("http://" + addr.String() + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(body), nil
}

func wantBody(t *testing.T, what string, ns *netns.NS, dial dialFunc, addr netip.AddrPort, want string) {
	t.Helper()
	got, err := get(ns, dial, addr, steerTimeout)
	if err != nil {
		t.Errorf("%s: GET %s: %v", what, addr, err)
		return
	}
	if got != want+"\n" {
		t.Errorf("%s: GET %s answered by %q, want %q", what, addr, got, want)
	}
}

// wantTimeout asserts that a dial with dial times out: the frames went
// nowhere, and in particular not to the local stack.
func wantTimeout(t *testing.T, what string, ns *netns.NS, dial dialFunc, addr netip.AddrPort) {
	t.Helper()
	got, err := get(ns, dial, addr, steerFail)
	var ne net.Error
	switch {
	case err == nil:
		t.Errorf("%s: GET %s answered by %q, want a timeout", what, addr, got)
	case !errors.As(err, &ne) || !ne.Timeout():
		t.Errorf("%s: GET %s: %v, want a timeout", what, addr, err)
	}
}

func steerDo(t *testing.T, ns *netns.NS, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

// openSteering makes a Steering with open in ns. The returned function
// closes it there (failing the test it is given on an error); if no test
// has, the test's end closes it.
func openSteering(t *testing.T, ns *netns.NS, open func() (*executor.Steering, error)) (*executor.Steering, func(*testing.T)) {
	t.Helper()
	var s *executor.Steering
	steerDo(t, ns, func() (err error) {
		s, err = open()
		return err
	})
	closed := false
	t.Cleanup(func() {
		if !closed {
			s.Close()
		}
	})
	return s, func(t *testing.T) {
		t.Helper()
		steerDo(t, ns, s.Close)
		closed = true
	}
}

func steerStats(t *testing.T, ns *netns.NS, s *executor.Steering) executor.SteeringStats {
	t.Helper()
	var st executor.SteeringStats
	steerDo(t, ns, func() (err error) {
		st, err = s.Stats()
		return err
	})
	return st
}

func sysctl(t *testing.T, ns *netns.NS, key string) string {
	t.Helper()
	v, err := ns.ReadSysctl(key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSteering: from the dispatcher, which holds the VIPs and runs the XDP
// data plane for VIP:80 as well as a local listener on it, probes of VIP:80
// steered to a server are answered by that server, over IPv4 and IPv6;
// unsteered ones and loopback traffic still reach the local stack.
func TestSteering(t *testing.T) {
	testutil.RequirePrivileged(t)
	l := newSteerLab(t, lab.Options{Servers: 2})
	d := &l.Dispatcher
	backends := l.Backends()
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))

	// The dispatcher's data plane, so that steering is shown beside it:
	// the servers' replies to probes are not for a VIP and pass it.
	var x *executor.BPF
	steerDo(t, d.NS, func() (err error) {
		x, err = executor.New(executor.Config{MaxFlows: 1 << 12, Logger: logger})
		return err
	})
	t.Cleanup(func() {
		if err := x.Destroy(); err != nil {
			t.Errorf("destroy executor: %v", err)
		}
	})
	steerDo(t, d.NS, func() error { return x.Attach(d.Ifindex) })
	for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
		svc := executor.Service{Key: executor.ServiceKey{VIP: vip, Port: 80, Proto: executor.TCP}}
		for _, b := range backends {
			addr := b.Addr4
			if vip.Is6() {
				addr = b.Addr6
			}
			svc.Servers = append(svc.Servers, executor.Server{Addr: addr, MAC: b.DstMAC, Ifindex: b.Ifindex, Weight: 1})
		}
		steerDo(t, d.NS, func() error { return x.UpsertService(svc) })
	}

	oldAcceptLocal := sysctl(t, d.NS, "net.ipv4.conf.eth0.accept_local")
	s, closeSteering := openSteering(t, d.NS, func() (*executor.Steering, error) {
		return executor.NewSteering(executor.SteeringOptions{Logger: logger})
	})
	if h := s.Hook(); h != "tcx" {
		t.Errorf("attached with %q, want tcx on this kernel", h)
	}

	// One route per server serves both families: it names a MAC and an
	// interface, not an address.
	marks := map[string]uint32{}
	for _, b := range backends {
		steerDo(t, d.NS, func() error {
			m, err := s.Route(b.Addr4, b.DstMAC, b.Ifindex)
			marks[b.Name] = m
			return err
		})
		again, _ := s.Mark(b.Addr4)
		if again != marks[b.Name] || marks[b.Name]&executor.DefaultSteerMarkMask != executor.DefaultSteerMarkBase {
			t.Fatalf("%s: mark %#x (again %#x), want one of the default range", b.Name, marks[b.Name], again)
		}
	}
	if marks["server1"] == marks["server2"] {
		t.Fatalf("both servers got mark %#x", marks["server1"])
	}
	steerDo(t, d.NS, func() error {
		m, err := s.Route(backends[0].Addr4, backends[0].DstMAC, backends[0].Ifindex)
		if err == nil && m != marks["server1"] {
			err = fmt.Errorf("route again: mark %#x, want %#x", m, marks["server1"])
		}
		return err
	})
	if got := sysctl(t, d.NS, "net.ipv4.conf.eth0.accept_local"); got != "1" {
		t.Errorf("accept_local on eth0 is %s after Route, want 1", got)
	}

	isVIP := func(a netip.Addr) bool { return a == l.VIP4 || a == l.VIP6 }
	for _, fam := range []struct {
		ipv6 bool
		want netip.Addr
	}{{false, d.Addr4}, {true, d.Addr6}} {
		steerDo(t, d.NS, func() error {
			got, err := executor.InterfaceSource(d.Ifindex, fam.ipv6, isVIP)
			if err == nil && got != fam.want {
				err = fmt.Errorf("source for ipv6 %v on eth0: %s, want %s", fam.ipv6, got, fam.want)
			}
			return err
		})
	}

	dialer := func(server netip.Addr, source netip.Addr) dialFunc {
		t.Helper()
		f, err := s.DialFunc(server, source)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}

	for _, fam := range []struct {
		name   string
		vip    netip.Addr
		source netip.Addr
	}{
		{"ipv4", l.VIP4, d.Addr4},
		{"ipv6", l.VIP6, d.Addr6},
	} {
		t.Run(fam.name, func(t *testing.T) {
			vip := netip.AddrPortFrom(fam.vip, 80)
			before := steerStats(t, d.NS, s)
			wantBody(t, "steered to server2", d.NS, dialer(backends[1].Addr4, fam.source), vip, "server2")
			wantBody(t, "steered to server1", d.NS, dialer(backends[0].Addr4, fam.source), vip, "server1")
			wantBody(t, "steered to server2 again", d.NS, dialer(backends[1].Addr4, fam.source), vip, "server2")
			wantBody(t, "unsteered", d.NS, nil, vip, "dispatcher")
			after := steerStats(t, d.NS, s)
			// A handshake, a request, a FIN and acknowledgements each.
			if n := after.Redirected - before.Redirected; n < 3*4 {
				t.Errorf("the program redirected %d frames for 3 exchanges", n)
			}
			// The reply is from the VIP, local here: IPv4 drops it as a
			// martian without accept_local, IPv6 needs nothing.
			steerDo(t, d.NS, func() error { return writeConf("eth0", "accept_local", "0") })
			if fam.vip.Is4() {
				wantTimeout(t, "steered without accept_local", d.NS, dialer(backends[1].Addr4, fam.source), vip)
			} else {
				wantBody(t, "steered without accept_local", d.NS, dialer(backends[1].Addr4, fam.source), vip, "server2")
			}
			steerDo(t, d.NS, func() error { return writeConf("eth0", "accept_local", "1") })
		})
	}

	t.Run("checksum offload", func(t *testing.T) {
		// The lab turns checksum offload off, so the core completes the
		// checksums lo left partial; with it on, the veth hands them on
		// partial, as a NIC would complete them. Both must work, for a
		// small exchange and for a bulk one that TCP segments.
		sink := startSink(t, &l.Servers[1], netip.AddrPortFrom(l.VIP4, sinkPort))
		f := dialer(backends[1].Addr4, d.Addr4)
		for _, on := range []bool{false, true} {
			steerDo(t, d.NS, func() error { return lab.SetTxChecksum("eth0", on) })
			what := fmt.Sprintf("tx checksum offload %v", on)
			wantBody(t, what, d.NS, f, netip.AddrPortFrom(l.VIP4, 80), "server2")
			before := steerStats(t, d.NS, s)
			if err := bulk(d.NS, f, sink, 4<<20); err != nil {
				t.Errorf("%s: bulk send: %v", what, err)
			}
			// At most 64 KiB a frame, even as one GSO frame on lo.
			if n := steerStats(t, d.NS, s).Redirected - before.Redirected; n < 64 {
				t.Errorf("%s: the program redirected %d frames for 4 MiB", what, n)
			}
		}
		steerDo(t, d.NS, func() error { return lab.SetTxChecksum("eth0", false) })
	})

	t.Run("udp", func(t *testing.T) {
		// A datagram probe: the echo runs on server2 only.
		for _, fam := range []struct{ vip, source netip.Addr }{{l.VIP4, d.Addr4}, {l.VIP6, d.Addr6}} {
			addr := netip.AddrPortFrom(fam.vip, udpEchoPort)
			startEcho(t, &l.Servers[1], addr)
			if err := echo(d.NS, dialer(backends[1].Addr4, fam.source), addr); err != nil {
				t.Errorf("steered udp to %s: %v", addr, err)
			}
		}
	})

	t.Run("clients", func(t *testing.T) {
		// The data plane still serves clients.
		for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
			got, err := get(l.Client.NS, nil, netip.AddrPortFrom(vip, 80), steerTimeout)
			if err != nil || (got != "server1\n" && got != "server2\n") {
				t.Errorf("client GET %s: %q, %v; want a server's name", vip, got, err)
			}
		}
	})

	t.Run("loopback", func(t *testing.T) {
		other := executor.SteeredDialer(0x1234, netip.MustParseAddr("127.0.0.1"), 0).DialContext
		other6 := executor.SteeredDialer(0x1234, netip.IPv6Loopback(), 0).DialContext
		lo4 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), loopbackPort)
		lo6 := netip.AddrPortFrom(netip.IPv6Loopback(), loopbackPort)
		before := steerStats(t, d.NS, s)
		wantBody(t, "loopback", d.NS, nil, lo4, "dispatcher")
		wantBody(t, "loopback", d.NS, nil, lo6, "dispatcher")
		wantBody(t, "loopback with a mark of another range", d.NS, other, lo4, "dispatcher")
		wantBody(t, "loopback with a mark of another range", d.NS, other6, lo6, "dispatcher")
		if after := steerStats(t, d.NS, s); after != before {
			t.Errorf("loopback traffic moved the steering counters from %+v to %+v", before, after)
		}
	})

	t.Run("route update", func(t *testing.T) {
		// server1's route, pointed at server2's MAC, keeps its mark and
		// now reaches server2.
		b1, b2 := backends[0], backends[1]
		steerDo(t, d.NS, func() error {
			m, err := s.Route(b1.Addr4, b2.DstMAC, b1.Ifindex)
			if err == nil && m != marks["server1"] {
				err = fmt.Errorf("updated route: mark %#x, want %#x", m, marks["server1"])
			}
			return err
		})
		wantBody(t, "server1's mark after the update", d.NS, dialer(b1.Addr4, d.Addr4), netip.AddrPortFrom(l.VIP4, 80), "server2")
		steerDo(t, d.NS, func() error {
			_, err := s.Route(b1.Addr4, b1.DstMAC, b1.Ifindex)
			return err
		})
		wantBody(t, "server1's mark restored", d.NS, dialer(b1.Addr4, d.Addr4), netip.AddrPortFrom(l.VIP4, 80), "server1")
	})

	t.Run("unroute", func(t *testing.T) {
		b2 := backends[1]
		vip := netip.AddrPortFrom(l.VIP4, 80)
		f := dialer(b2.Addr4, d.Addr4)
		steerDo(t, d.NS, func() error { return s.Unroute(b2.Addr4) })
		if err := s.Unroute(b2.Addr4); !errors.Is(err, executor.ErrNotFound) {
			t.Errorf("second Unroute: %v, want ErrNotFound", err)
		}
		// Through DialFunc: refused at once.
		start := time.Now()
		if _, err := get(d.NS, f, vip, steerTimeout); !errors.Is(err, executor.ErrNotFound) {
			t.Errorf("dial via an unrouted server: %v, want ErrNotFound", err)
		} else if e := time.Since(start); e > steerFail {
			t.Errorf("dial via an unrouted server took %v", e)
		}
		// With the stale mark itself: dropped on lo, never answered by
		// the local listener.
		before := steerStats(t, d.NS, s)
		stale := executor.SteeredDialer(marks["server2"], d.Addr4, 0).DialContext
		wantTimeout(t, "stale mark", d.NS, stale, vip)
		if after := steerStats(t, d.NS, s); after.NoRoute == before.NoRoute {
			t.Errorf("no-route counter stayed at %d", after.NoRoute)
		}
		// Routed again, server2 gets a mark other than the one probes may
		// still hold.
		var m uint32
		steerDo(t, d.NS, func() (err error) {
			m, err = s.Route(b2.Addr4, b2.DstMAC, b2.Ifindex)
			return err
		})
		if m == marks["server2"] {
			t.Errorf("server2 routed again got its old mark %#x back", m)
		}
		wantBody(t, "routed again", d.NS, dialer(b2.Addr4, d.Addr4), vip, "server2")
	})

	t.Run("close", func(t *testing.T) {
		closeSteering(t)
		if got := sysctl(t, d.NS, "net.ipv4.conf.eth0.accept_local"); got != oldAcceptLocal {
			t.Errorf("accept_local on eth0 is %s after Close, want %s back", got, oldAcceptLocal)
		}
		// Detached: a marked probe now reaches the local stack.
		stale := executor.SteeredDialer(marks["server1"], d.Addr4, 0).DialContext
		wantBody(t, "marked after Close", d.NS, stale, netip.AddrPortFrom(l.VIP4, 80), "dispatcher")
		if _, err := s.Route(backends[0].Addr4, backends[0].DstMAC, backends[0].Ifindex); !errors.Is(err, executor.ErrClosed) {
			t.Errorf("Route after Close: %v, want ErrClosed", err)
		}
	})
}

// TestSteeringTwoNetworks: with the tc fallback, probes leave by the
// internal network while the VIPs sit on the external one, under strict
// reverse-path filtering, which steering relaxes on the interface it uses.
func TestSteeringTwoNetworks(t *testing.T) {
	testutil.RequirePrivileged(t)
	l := newSteerLab(t, lab.Options{Servers: 1, TwoNetworks: true})
	d := &l.Dispatcher
	b := l.Backends()[0]
	if b.Ifname != "eth1" {
		t.Fatalf("server reached over %s, want eth1", b.Ifname)
	}
	if err := d.NS.Sysctl("net.ipv4.conf.all.rp_filter", "1"); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))

	s, closeSteering := openSteering(t, d.NS, func() (*executor.Steering, error) {
		return executor.NewSteeringTC(executor.SteeringOptions{Logger: logger, MarkBase: 0x6e640000, MarkMask: 0xfffff000})
	})
	if h := s.Hook(); h != "tc" {
		t.Fatalf("attached with %q, want tc", h)
	}
	if n := steerFilters(t, d.NS); n != 1 {
		t.Fatalf("%d nd_steer filters on lo egress, want 1", n)
	}
	var mark uint32
	steerDo(t, d.NS, func() (err error) {
		mark, err = s.Route(b.Addr4, b.DstMAC, b.Ifindex)
		return err
	})
	if mark&0xfffff000 != 0x6e640000 {
		t.Errorf("mark %#x outside the configured range", mark)
	}
	if got := sysctl(t, d.NS, "net.ipv4.conf.eth1.rp_filter"); got != "2" {
		t.Errorf("rp_filter on eth1 is %s, want 2 (loose)", got)
	}
	if got := sysctl(t, d.NS, "net.ipv4.conf.eth0.accept_local"); got != "0" {
		t.Errorf("accept_local on eth0, not steered through, is %s, want 0", got)
	}
	var src4, src6 netip.Addr
	steerDo(t, d.NS, func() (err error) {
		if src4, err = executor.InterfaceSource(b.Ifindex, false, nil); err != nil {
			return err
		}
		src6, err = executor.InterfaceSource(b.Ifindex, true, nil)
		return err
	})
	if src4 != d.Int.Addr4 || src6 != d.Int.Addr6 {
		t.Fatalf("sources on eth1 %s and %s, want %s and %s", src4, src6, d.Int.Addr4, d.Int.Addr6)
	}
	for _, fam := range []struct {
		vip, source netip.Addr
	}{{l.VIP4, src4}, {l.VIP6, src6}} {
		f, err := s.DialFunc(b.Addr4, fam.source)
		if err != nil {
			t.Fatal(err)
		}
		wantBody(t, "steered over eth1", d.NS, f, netip.AddrPortFrom(fam.vip, 80), "server1")
	}
	// Strict filtering, as before Route, drops the replies: the VIP is
	// not on eth1.
	steerDo(t, d.NS, func() error { return writeConf("eth1", "rp_filter", "0") })
	f, _ := s.DialFunc(b.Addr4, src4)
	wantTimeout(t, "steered under strict rp_filter", d.NS, f, netip.AddrPortFrom(l.VIP4, 80))
	steerDo(t, d.NS, func() error { return writeConf("eth1", "rp_filter", "2") })

	closeSteering(t)
	if n := steerFilters(t, d.NS); n != 0 {
		t.Errorf("%d nd_steer filters on lo egress after Close, want 0", n)
	}
	if got := sysctl(t, d.NS, "net.ipv4.conf.eth1.rp_filter"); got != "0" {
		t.Errorf("rp_filter on eth1 is %s after Close, want 0 back", got)
	}
	if got := sysctl(t, d.NS, "net.ipv4.conf.eth1.accept_local"); got != "0" {
		t.Errorf("accept_local on eth1 is %s after Close, want 0 back", got)
	}
}

// steerFilters counts the steering filters on lo's clsact egress hook.
func steerFilters(t *testing.T, ns *netns.NS) int {
	t.Helper()
	h, lo := testutil.Link(t, ns, "lo")
	fs, err := h.FilterList(lo, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == "nd_steer" {
			n++
		}
	}
	return n
}

// writeConf sets net.ipv4.conf.<iface>.<key> of the calling thread's
// namespace.
func writeConf(iface, key, value string) error {
	return writeFile("/proc/sys/net/ipv4/conf/"+iface+"/"+key, value)
}

func writeFile(path, value string) error { return os.WriteFile(path, []byte(value), 0o644) }

// startSink listens on addr in host's namespace; each connection is read to
// its end and answered with the number of bytes read.
func startSink(t *testing.T, host *lab.Host, addr netip.AddrPort) netip.AddrPort {
	t.Helper()
	ln, err := host.NS.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, ln, func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			n, _ := io.Copy(io.Discard, c)
			io.WriteString(c, strconv.FormatInt(n, 10))
			c.Close()
		}
	})
	return addr
}

// serveUntilCleanup runs loop, which returns once c is closed, until the
// test ends; then it closes c and waits for loop.
func serveUntilCleanup(t *testing.T, c io.Closer, loop func()) {
	done := make(chan struct{})
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	go func() {
		defer close(done)
		loop()
	}()
}

// dialIn connects to addr over a socket made by dial in ns, within timeout,
// which also bounds the connection's use.
func dialIn(ns *netns.NS, dial dialFunc, network string, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var c net.Conn
	if err := ns.Do(func() (err error) {
		c, err = dial(ctx, network, addr.String())
		return err
	}); err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	return c, nil
}

// bulk sends size bytes to the sink at addr over a connection made by
// dial in ns and checks that the sink read them all.
func bulk(ns *netns.NS, dial dialFunc, addr netip.AddrPort, size int) error {
	c, err := dialIn(ns, dial, "tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(i)
	}
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			return fmt.Errorf("after %d bytes: %w", sent, err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(reply) != strconv.Itoa(size) {
		return fmt.Errorf("sink read %q bytes, want %d", reply, size)
	}
	return nil
}

// startEcho answers each datagram to addr in host's namespace with itself.
func startEcho(t *testing.T, host *lab.Host, addr netip.AddrPort) {
	t.Helper()
	pc, err := host.NS.ListenPacket("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	serveUntilCleanup(t, pc, func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	})
}

// echo sends a datagram to addr over a socket made by dial in ns and
// waits for it to come back.
func echo(ns *netns.NS, dial dialFunc, addr netip.AddrPort) error {
	c, err := dialIn(ns, dial, "udp", addr, steerTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	msg := []byte("nd steering probe")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != string(msg) {
		return fmt.Errorf("echo %q, want %q", buf[:n], msg)
	}
	return nil
}
