package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// fakeClient is a client host as far as validation can tell, without a
// namespace behind it: entering it fails.
func fakeClient() *Host {
	return &Host{
		Name: "client",
		NS:   &netns.NS{},
		Iface: Iface{
			Ifname: "eth0",
			Addr4:  netip.MustParseAddr("198.51.100.2"),
			Addr6:  netip.MustParseAddr("2001:db8::2"),
		},
	}
}

func TestTrafficRefusesTargetsOutsideTheLab(t *testing.T) {
	for _, target := range []string{
		"192.0.2.10:80", // this machine's own uplink
		"10.0.0.1:80",
		"127.0.0.1:80",
		"8.8.8.8:53",
		"198.51.101.100:80",
		"203.0.114.1:80",
		"[::1]:80",
		"[2001:db9::100]:80",
		"[fe80::1%eth0]:80",
		"[2606:4700::1111]:443",
	} {
		t.Run(target, func(t *testing.T) {
			ap := netip.MustParseAddrPort(target)
			called := false
			_, err := RunTraffic(context.Background(), fakeClient(), ap, 10, time.Second, func(Result) { called = true })
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("RunTraffic to %s: %v, want ErrRefused", target, err)
			}
			if !strings.Contains(err.Error(), "outside the lab") {
				t.Errorf("error %q does not say why", err)
			}
			if called {
				t.Error("a request was made")
			}
		})
	}
}

func TestTrafficRefusesBadClients(t *testing.T) {
	vip := netip.AddrPortFrom(VIP4, 80)
	outside := fakeClient()
	outside.Addr4 = netip.MustParseAddr("192.0.2.2")
	noV6 := fakeClient()
	noV6.Addr6 = netip.Addr{}
	for _, tc := range []struct {
		name   string
		client *Host
		target netip.AddrPort
	}{
		{"no client", nil, vip},
		{"no namespace", &Host{Name: "client", Iface: fakeClient().Iface}, vip},
		{"source outside the lab", outside, vip},
		{"no address of the target's family", noV6, netip.AddrPortFrom(VIP6, 80)},
		{"port 0", fakeClient(), netip.AddrPortFrom(VIP4, 0)},
		{"no target", fakeClient(), netip.AddrPort{}},
		// Validation passes; entering the namespace fails, which refuses too.
		{"namespace that cannot be entered", fakeClient(), vip},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RunTraffic(context.Background(), tc.client, tc.target, 10, time.Second, nil)
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("got %v, want ErrRefused", err)
			}
		})
	}
}

func TestTrafficRejectsBadRates(t *testing.T) {
	vip := netip.AddrPortFrom(VIP4, 80)
	for _, rate := range []float64{0, -1, math.NaN(), math.Inf(1), MaxTrafficRate + 1} {
		_, err := RunTraffic(context.Background(), fakeClient(), vip, rate, time.Second, nil)
		if !errors.Is(err, ErrBadOptions) {
			t.Errorf("rate %v: got %v, want ErrBadOptions", rate, err)
		}
	}
	tr := &Traffic{Client: fakeClient(), Target: vip, Rate: 1, Duration: -time.Second}
	if _, err := tr.Run(context.Background()); !errors.Is(err, ErrBadOptions) {
		t.Errorf("negative duration: got %v, want ErrBadOptions", err)
	}
}

// The dialer must be inside the named namespace it was given; this test's
// own thread is not in any lab client's namespace, whatever it is in.
func TestCheckClientNSRefusesOtherNamespaces(t *testing.T) {
	cur, err := netns.Current()
	if err != nil {
		t.Skipf("cannot tell the current namespace here: %v", err)
	}
	for _, want := range []string{"", "ndlab1-0000-c", cur + "-not"} {
		if _, err := checkClientNS(want); !errors.Is(err, ErrRefused) {
			t.Errorf("checkClientNS(%q) from namespace %q: %v, want ErrRefused", want, cur, err)
		}
	}
}

func TestInLabRange(t *testing.T) {
	for a, want := range map[string]bool{
		"198.51.100.0":        true,
		"198.51.100.255":      true,
		"203.0.113.7":         true,
		"2001:db8::100":       true,
		"2001:db8:1::11":      true,
		"2001:db8:ffff::1":    true,
		"::ffff:198.51.100.5": true,
		"198.51.99.255":       false,
		"198.51.101.0":        false,
		"192.0.2.1":           false,
		"203.0.112.255":       false,
		"2001:db9::1":         false,
		"::":                  false,
		"0.0.0.0":             false,
	} {
		if got := InLabRange(netip.MustParseAddr(a)); got != want {
			t.Errorf("InLabRange(%s) = %v, want %v", a, got, want)
		}
	}
}

func TestPlanned(t *testing.T) {
	for _, tc := range []struct {
		rate     float64
		duration time.Duration
		max      int
		want     int
	}{
		{100, 10 * time.Second, 0, 1000},
		{0.5, time.Second, 0, 1},
		{3, 500 * time.Millisecond, 0, 2},
		{100000, time.Hour, 0, MaxTrafficRequests},
		{10, 0, 0, MaxTrafficRequests},
		{10, 0, 5, 5},
		{100, 10 * time.Second, 50, 50},
		{100, 10 * time.Second, MaxTrafficRequests + 1, 1000},
	} {
		r := &run{Traffic: &Traffic{Rate: tc.rate, Duration: tc.duration, MaxRequests: tc.max}}
		if got := r.planned(); got != tc.want {
			t.Errorf("rate %v for %v (max %d): %d requests planned, want %d", tc.rate, tc.duration, tc.max, got, tc.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	if got := Percentile(d, 0.5); got != 50*time.Millisecond {
		t.Errorf("p50 = %v", got)
	}
	if got := Percentile(d, 0.99); got != 99*time.Millisecond {
		t.Errorf("p99 = %v", got)
	}
	if got := Percentile(d[:1], 0.99); got != time.Millisecond {
		t.Errorf("p99 of one = %v", got)
	}
	if got := Percentile(nil, 0.5); got != 0 {
		t.Errorf("p50 of none = %v", got)
	}
}

func TestErrorKind(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("request 1: %w", ErrOverrun), "overrun"},
		{fmt.Errorf("dial: %w", context.DeadlineExceeded), "timeout"},
		{&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, "timeout"},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, "refused"},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, "reset"},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, "unreachable"},
		{fmt.Errorf("read reply: %w", io.ErrUnexpectedEOF), "eof"},
		{&statusError{"503 Service Unavailable"}, "http"},
		{fmt.Errorf("%w: elsewhere", ErrRefused), "refused-to-run"},
		{errors.New("something"), "other"},
	} {
		if got := ErrorKind(tc.err); got != tc.want {
			t.Errorf("ErrorKind(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestTrafficThroughLab sends traffic from the client straight to one server
// (no dispatcher involved) and to a port nobody serves.
func TestTrafficThroughLab(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := New(ctx, Options{Servers: 2, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	s := &l.Servers[1]
	stop, err := ServeHTTP(ctx, s, netip.AddrPortFrom(s.Addr4, 80), netip.AddrPortFrom(s.Addr6, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	for _, target := range []netip.AddrPort{netip.AddrPortFrom(s.Addr4, 80), netip.AddrPortFrom(s.Addr6, 80)} {
		t.Run(target.String(), func(t *testing.T) {
			var mu sync.Mutex
			var results []Result
			sum, err := RunTraffic(ctx, &l.Client, target, 200, time.Second, func(r Result) {
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", sum)
			if sum.Planned != 200 || sum.Requests != 200 || len(results) != 200 {
				t.Errorf("planned %d, made %d, %d results; want 200 each", sum.Planned, sum.Requests, len(results))
			}
			if sum.OK != 200 || sum.Errors != 0 || sum.PerServer[s.Name] != 200 {
				t.Errorf("ok %d, errors %d (%v, first %q), per server %v; want all 200 from %s",
					sum.OK, sum.Errors, sum.ErrorKinds, sum.FirstError, sum.PerServer, s.Name)
			}
			if sum.Elapsed < 900*time.Millisecond || sum.Elapsed > 5*time.Second {
				t.Errorf("took %v for 1s of traffic", sum.Elapsed)
			}
			if sum.P50 <= 0 || sum.P99 < sum.P50 || sum.Max < sum.P99 {
				t.Errorf("latencies p50 %v p99 %v max %v", sum.P50, sum.P99, sum.Max)
			}
		})
	}

	t.Run("nothing listening", func(t *testing.T) {
		tr := &Traffic{Client: &l.Client, Target: netip.AddrPortFrom(s.Addr4, 81), Rate: 50, Duration: 200 * time.Millisecond}
		sum, err := tr.Run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if sum.OK != 0 || sum.Errors != sum.Planned || sum.ErrorKinds["refused"] != sum.Planned {
			t.Errorf("%+v: want every request refused", sum)
		}
	})

	t.Run("interrupted", func(t *testing.T) {
		ictx, icancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer icancel()
		began := time.Now()
		sum, err := RunTraffic(ictx, &l.Client, netip.AddrPortFrom(s.Addr4, 80), 100, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(began); took > 3*time.Second {
			t.Errorf("took %v to stop", took)
		}
		if !sum.Interrupted || sum.Planned != MaxTrafficRequests || sum.Requests == 0 || sum.Errors != 0 {
			t.Errorf("%+v: want an interrupted run without errors", sum)
		}
	})

	t.Run("server stops", func(t *testing.T) {
		stop()
		stop() // idempotent
		c, err := l.Client.NS.DialContext(ctx, "tcp", netip.AddrPortFrom(s.Addr4, 80).String())
		if err == nil {
			c.Close()
			t.Fatal("the HTTP server still accepts connections after stop")
		}
	})
}

func TestServeHTTPAnswersWithTheHostName(t *testing.T) {
	testutil.RequirePrivileged(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, err := netns.New(netns.OwnedName(sweepPrefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h := &Host{Name: "server7", NS: ns}
	stop, err := ServeHTTP(ctx, h, netip.MustParseAddrPort("127.0.0.1:8080"))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := ServeHTTP(ctx, h, netip.MustParseAddrPort("127.0.0.1:8080")); err == nil {
		t.Error("a second server on the same address started")
	}
	// The transport dials on goroutines of its own: give it the namespace.
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return ns.DialContext(ctx, network, addr)
	}}}
	resp, err := client.Get("http://127.0.0.1:8080/")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	body := string(b)
	if !resp.Close {
		t.Error("the server keeps connections open; want every request a new flow")
	}
	if body != "server7\n" {
		t.Errorf("body %q, want %q", body, "server7\n")
	}
}

func TestFloodRefuses(t *testing.T) {
	attacker := &Host{Name: "attacker", Iface: Iface{MAC: net.HardwareAddr{2, 0, 0, 0, 0, 5}}}
	attacker.NS = &netns.NS{}
	ok := Flood{Attacker: attacker, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 3}, Target: netip.MustParseAddrPort("198.51.100.100:80"),
		Sources: netip.MustParsePrefix("203.0.113.0/24"), Duration: time.Second, MaxPackets: 10}
	if err := ok.validate(); err != nil {
		t.Fatalf("valid flood refused: %v", err)
	}
	for name, edit := range map[string]func(*Flood){
		"target outside the lab":  func(f *Flood) { f.Target = netip.MustParseAddrPort("192.0.2.1:80") },
		"sources outside the lab": func(f *Flood) { f.Sources = netip.MustParsePrefix("10.0.0.0/24") },
		"sources too wide":        func(f *Flood) { f.Sources = netip.MustParsePrefix("198.0.0.0/8") },
		"not the attacker":        func(f *Flood) { c := *f.Attacker; c.Name = "client"; f.Attacker = &c },
		"unbounded time":          func(f *Flood) { f.Duration = time.Hour },
		"unbounded count":         func(f *Flood) { f.MaxPackets = 0 },
	} {
		f := ok
		edit(&f)
		if err := f.validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
