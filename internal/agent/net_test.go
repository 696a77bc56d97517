package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/connlimit"
	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// The network tests run agents and clients on 127.0.0.1 inside a fresh
// network namespace of their own.

const nsPrefix = "ndtag"

func newNS(t *testing.T) *netns.NS {
	t.Helper()
	return testutil.NewNS(t, nsPrefix)
}

// startAgent serves a on a fresh port of 127.0.0.1 in ns until the test
// ends (or stop is called) and returns its address.
func startAgent(t *testing.T, ns *netns.NS, a *Agent) (addr netip.AddrPort, stop func()) {
	t.Helper()
	l, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stop = testutil.Start(t, "Serve", 5*time.Second, func(ctx context.Context) error { return a.Serve(ctx, l) })
	return netip.MustParseAddrPort(l.Addr().String()), stop
}

// dial connects to addr in ns, within 5 s; the caller closes the connection.
func dial(t *testing.T, ns *netns.NS, addr netip.AddrPort) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rawExchange sends raw bytes to addr in ns and reads one response.
func rawExchange(t *testing.T, ns *netns.NS, addr netip.AddrPort, req []byte) *http.Response {
	t.Helper()
	c := dial(t, ns, addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	resp.Body.Close()
	return resp
}

func signedBytes(t *testing.T, key []byte, at time.Time) []byte {
	t.Helper()
	r, _ := signed(t, key, at)
	r.Host = "agent"
	var b bytes.Buffer
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestNetHMAC(t *testing.T) {
	ns := newNS(t)
	a := newTestAgent(t, func(c *Config) {
		c.SampleInterval = 100 * time.Millisecond
		c.Commands = []Command{
			{Name: "queue", Argv: []string{"sh", "-c", "echo 17"}, Interval: 100 * time.Millisecond},
			{Name: "junk", Argv: []string{"echo", "many", "words"}, Interval: 100 * time.Millisecond},
			{Name: "slow", Argv: []string{"sleep", "5"}, Interval: time.Second, Timeout: 200 * time.Millisecond},
		}
	})
	addr, stop := startAgent(t, ns, a)
	c := newTestClient(t, ClientOptions{Key: testKey, DialContext: ns.DialContext})

	var rep Report
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		rep, err = c.Poll(context.Background(), addr)
		if err != nil {
			t.Fatalf("Poll: %v", err)
		}
		if _, ok := rep.Errors["slow"]; ok && strings.Contains(rep.Errors["slow"], "timed out") &&
			rep.Metrics["queue"] == 17 && rep.Errors["junk"] != "not run yet" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5s the report is %+v", rep)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(rep.Errors["junk"], "not one finite number") {
		t.Errorf("junk: %q", rep.Errors["junk"])
	}
	if rep.Host != "web1" || rep.Metrics[MetricLoad1] != 0.42 || rep.Metrics[MetricTCPEstablished] != 3 {
		t.Errorf("report %+v", rep)
	}
	// testdata/proc/stat never changes, so no CPU time ever passes.
	if rep.Errors[MetricCPU] != errNoCPUChange.Error() {
		t.Errorf("cpu: %v %q", rep.Metrics[MetricCPU], rep.Errors[MetricCPU])
	}

	// The agent rejects a client with the wrong key.
	bad := newTestClient(t, ClientOptions{Key: wrongKey, DialContext: ns.DialContext})
	if _, err := bad.Poll(context.Background(), addr); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("wrong key: %v, want a 401 refusal", err)
	}
	// A replayed request is refused.
	req := signedBytes(t, testKey, time.Now())
	if r := rawExchange(t, ns, addr, req); r.StatusCode != 200 || r.Header.Get(HeaderMAC) == "" {
		t.Errorf("first request: %d", r.StatusCode)
	}
	if r := rawExchange(t, ns, addr, req); r.StatusCode != 401 {
		t.Errorf("replayed request: %d, want 401", r.StatusCode)
	}
	// A stale one too.
	if r := rawExchange(t, ns, addr, signedBytes(t, testKey, time.Now().Add(-10*time.Minute))); r.StatusCode != 401 {
		t.Errorf("stale request: %d, want 401", r.StatusCode)
	}
	// Malformed requests get an error and leave the agent serving.
	if r := rawExchange(t, ns, addr, []byte("BREW /pot HTTP/1.1\r\nHost: a\r\n\r\n")); r.StatusCode != 405 {
		t.Errorf("BREW: %d", r.StatusCode)
	}
	if r := rawExchange(t, ns, addr, []byte("GET /v1/report HTTP/1.1\r\nHost: a\r\nX-Big: "+strings.Repeat("a", 20000)+"\r\n\r\n")); r.StatusCode != 431 {
		t.Errorf("huge header: %d, want 431", r.StatusCode)
	}
	if r := rawExchange(t, ns, addr, []byte("\x16\x03\x01garbage\r\n\r\n")); r.StatusCode != 400 {
		t.Errorf("garbage: %d, want 400", r.StatusCode)
	}
	rep, err := c.Poll(context.Background(), addr)
	if err != nil {
		t.Fatalf("Poll after the abuse: %v", err)
	}
	for stat, min := range map[string]uint64{StatBadMAC: 1, StatReplay: 1, StatStale: 1, StatMalformed: 1} {
		if rep.Stats[stat] < min {
			t.Errorf("stat %s = %d, want at least %d (%v)", stat, rep.Stats[stat], min, rep.Stats)
		}
	}
	stop()
	if _, err := c.Poll(context.Background(), addr); err == nil {
		t.Error("Poll succeeded after the agent stopped")
	}
}

// fakeAgent serves h on 127.0.0.1 in ns, standing in for an agent that
// misbehaves.
func fakeAgent(t *testing.T, ns *netns.NS, h http.HandlerFunc) netip.AddrPort {
	t.Helper()
	l, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(l.Addr().String())
}

func TestNetClientRejectsBadResponses(t *testing.T) {
	ns := newNS(t)
	c := newTestClient(t, ClientOptions{Key: testKey, Timeout: 500 * time.Millisecond, DialContext: ns.DialContext})
	body := []byte(`{"version":1,"host":"h","time":"2026-11-26T03:00:00Z","metrics":{"load1":1}}`)

	wrong := fakeAgent(t, ns, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(HeaderMAC, hex.EncodeToString(responseMAC(wrongKey, r.Header.Get(HeaderNonce), body)))
		w.Write(body)
	})
	if _, err := c.Poll(context.Background(), wrong); !errors.Is(err, ErrBadMAC) {
		t.Errorf("response signed with the wrong key: %v", err)
	}

	// A recorder that captured one genuine answer and plays it back.
	var recorded []byte
	var recordedMAC string
	replayer := fakeAgent(t, ns, func(w http.ResponseWriter, r *http.Request) {
		if recorded == nil {
			recorded = body
			recordedMAC = hex.EncodeToString(responseMAC(testKey, r.Header.Get(HeaderNonce), body))
		}
		w.Header().Set(HeaderMAC, recordedMAC)
		w.Write(recorded)
	})
	if _, err := c.Poll(context.Background(), replayer); err != nil {
		t.Fatalf("genuine response: %v", err)
	}
	if _, err := c.Poll(context.Background(), replayer); !errors.Is(err, ErrBadMAC) {
		t.Errorf("replayed response: %v", err)
	}

	huge := fakeAgent(t, ns, func(w http.ResponseWriter, r *http.Request) {
		big := append([]byte(`{"version":1,"host":"`), bytes.Repeat([]byte("a"), 2*MaxResponseBody)...)
		w.Header().Set(HeaderMAC, hex.EncodeToString(responseMAC(testKey, r.Header.Get(HeaderNonce), big)))
		w.Write(big)
	})
	if _, err := c.Poll(context.Background(), huge); !errors.Is(err, ErrMalformed) {
		t.Errorf("oversized response: %v", err)
	}

	hang := fakeAgent(t, ns, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	start := time.Now()
	if _, err := c.Poll(context.Background(), hang); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("agent that never answers: %v after %v", err, time.Since(start))
	}

	garbage := fakeAgent(t, ns, func(w http.ResponseWriter, r *http.Request) {
		b := []byte("not json at all")
		w.Header().Set(HeaderMAC, hex.EncodeToString(responseMAC(testKey, r.Header.Get(HeaderNonce), b)))
		w.Write(b)
	})
	if _, err := c.Poll(context.Background(), garbage); !errors.Is(err, ErrMalformed) {
		t.Errorf("garbage response: %v", err)
	}
}

func TestNetMutualTLS(t *testing.T) {
	ns := newNS(t)
	pki := newTestPKI(t)
	a := newTestAgent(t, func(c *Config) {
		c.KeyFile = ""
		c.TLS = &TLSConfig{CertFile: pki.serverCert, KeyFile: pki.serverKey, ClientCAFile: pki.caFile}
	})
	addr, _ := startAgent(t, ns, a)

	good := newTestClient(t, ClientOptions{
		TLS:         &tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{pki.client}},
		DialContext: ns.DialContext,
	})
	rep, err := good.Poll(context.Background(), addr)
	if err != nil {
		t.Fatalf("mutual TLS poll: %v", err)
	}
	if rep.Host != "web1" || rep.Metrics[MetricMemory] != 25 && rep.Errors[MetricMemory] == "" {
		t.Errorf("report %+v", rep)
	}

	anon := newTestClient(t, ClientOptions{TLS: &tls.Config{RootCAs: pki.pool}, DialContext: ns.DialContext})
	if _, err := anon.Poll(context.Background(), addr); err == nil {
		t.Error("a client without a certificate was served")
	}
	// A client that does not trust the agent's CA refuses the agent.
	untrusting := newTestClient(t, ClientOptions{
		TLS:         &tls.Config{Certificates: []tls.Certificate{pki.client}, RootCAs: newTestPKI(t).pool},
		DialContext: ns.DialContext,
	})
	if _, err := untrusting.Poll(context.Background(), addr); err == nil {
		t.Error("client accepted an agent certificate from an unknown CA")
	}
	// Plain HTTP to the TLS agent is refused too.
	plain := newTestClient(t, ClientOptions{Key: testKey, DialContext: ns.DialContext})
	if _, err := plain.Poll(context.Background(), addr); err == nil {
		t.Error("plain HTTP poll of a TLS agent succeeded")
	}

	deadline := time.Now().Add(5 * time.Second)
	for a.Stats()[StatTLS] < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("failed handshakes not counted: %v", a.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := good.Poll(context.Background(), addr); err != nil {
		t.Errorf("poll after the refusals: %v", err)
	}
}

func TestNetTLSAndKey(t *testing.T) {
	ns := newNS(t)
	pki := newTestPKI(t)
	a := newTestAgent(t, func(c *Config) {
		c.TLS = &TLSConfig{CertFile: pki.serverCert, KeyFile: pki.serverKey, ClientCAFile: pki.caFile}
	})
	addr, _ := startAgent(t, ns, a)
	tc := &tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{pki.client}}
	both := newTestClient(t, ClientOptions{Key: testKey, TLS: tc, DialContext: ns.DialContext})
	if _, err := both.Poll(context.Background(), addr); err != nil {
		t.Fatalf("TLS and key: %v", err)
	}
	tlsOnly := newTestClient(t, ClientOptions{TLS: tc, DialContext: ns.DialContext})
	if _, err := tlsOnly.Poll(context.Background(), addr); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("TLS without the key against an agent that wants both: %v", err)
	}
}

func TestNetTrackerDisablesMissingAgent(t *testing.T) {
	ns := newNS(t)
	a := newTestAgent(t, nil)
	live, stopLive := startAgent(t, ns, a)
	// A port nobody listens on: take one and give it back.
	l, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	missing := netip.MustParseAddrPort(l.Addr().String())
	l.Close()

	c := newTestClient(t, ClientOptions{Key: testKey, Timeout: 100 * time.Millisecond, DialContext: ns.DialContext})
	const disableAfter = 600 * time.Millisecond
	tr, err := NewTracker(TrackerOptions{Client: c, Interval: 150 * time.Millisecond, DisableAfter: disableAfter})
	if err != nil {
		t.Fatal(err)
	}
	added := time.Now() // no later than the tracker's own record of it
	tr.Set([]netip.AddrPort{live, missing})
	testutil.Start(t, "tracker", 5*time.Second, tr.Run)

	// Before the threshold the missing agent is failing but not disabled.
	waitFor(t, 5*time.Second, "first polls", func() bool {
		s := tr.Snapshot()
		return !s[live].Last.IsZero() && s[missing].Err != ""
	})
	s := tr.Snapshot()
	if time.Since(added) < disableAfter && s[missing].Disabled {
		t.Errorf("missing agent disabled after %v, threshold %v", time.Since(added), disableAfter)
	}
	if s[live].Report.Host != "web1" || s[live].Disabled || s[live].Err != "" {
		t.Errorf("live agent: %+v", s[live])
	}

	waitFor(t, 5*time.Second, "missing agent disabled", func() bool { return tr.Snapshot()[missing].Disabled })
	if el := time.Since(added); el < disableAfter {
		t.Errorf("disabled after %v, before the %v threshold", el, disableAfter)
	}
	if s := tr.Snapshot()[live]; s.Disabled {
		t.Errorf("live agent disabled: %+v", s)
	}

	// The agent that stops answering is disabled in its turn, keeping its
	// last report.
	lastBefore := tr.Snapshot()[live].Last
	stopLive()
	waitFor(t, 5*time.Second, "stopped agent disabled", func() bool { return tr.Snapshot()[live].Disabled })
	if el := time.Since(lastBefore); el < disableAfter {
		t.Errorf("disabled %v after its last report, threshold %v", el, disableAfter)
	}
	if s := tr.Snapshot()[live]; s.Report.Host != "web1" || s.Err == "" {
		t.Errorf("stopped agent: %+v", s)
	}

	tr.Set([]netip.AddrPort{missing})
	if s := tr.Snapshot(); len(s) != 1 || !s[missing].Disabled {
		t.Errorf("after Set: %v", s)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, d, what, cond)
}

// TestNetSlowClient checks that a client trickling a request, or sending
// nothing at all, loses its connection once the header timeout passes.
func TestNetSlowClient(t *testing.T) {
	ns := newNS(t)
	a := newTestAgent(t, nil)
	a.timeouts = serverTimeouts{readHeader: 300 * time.Millisecond, read: 500 * time.Millisecond, write: time.Second, idle: time.Second}
	addr, _ := startAgent(t, ns, a)
	for name, send := range map[string]string{"silent": "", "trickle": "GET /v1/report HTTP/1.1\r\nHost: a\r\nX-Nd-"} {
		t.Run(name, func(t *testing.T) {
			c := dial(t, ns, addr)
			defer c.Close()
			start := time.Now()
			c.Write([]byte(send))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					var ne interface{ Timeout() bool }
					if errors.As(err, &ne) && ne.Timeout() {
						t.Fatal("agent kept the connection open for 5s")
					}
					break
				}
			}
			if el := time.Since(start); el < 250*time.Millisecond {
				t.Errorf("connection closed after %v, before the header timeout", el)
			}
		})
	}
	c := newTestClient(t, ClientOptions{Key: testKey, DialContext: ns.DialContext})
	if _, err := c.Poll(context.Background(), addr); err != nil {
		t.Errorf("Poll after slow clients: %v", err)
	}
	if st := a.Stats(); st[StatConnections] < 3 {
		t.Errorf("connections counted %d, want at least 3", st[StatConnections])
	}
}

// TestNetIdleConnectionsDoNotStarvePolls: with 2,000 connections open that
// never send a request (more than the agent's limit, and all from the
// poller's own address), an authenticated poll still gets its report; the
// agent made room by closing waiting connections.
func TestNetIdleConnectionsDoNotStarvePolls(t *testing.T) {
	ns := newNS(t)
	a := newTestAgent(t, nil)
	addr, _ := startAgent(t, ns, a)
	const idle = 2000
	conns := make([]net.Conn, 0, idle)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range idle {
		c, err := ns.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			t.Fatalf("idle connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	c := newTestClient(t, ClientOptions{Key: testKey, DialContext: ns.DialContext, Timeout: 3 * time.Second})
	rep, err := c.Poll(context.Background(), addr)
	if err != nil {
		t.Fatalf("poll with %d idle connections open: %v", idle, err)
	}
	if rep.Host == "" {
		t.Errorf("report without a host: %+v", rep)
	}
	if st := a.Stats(); st[StatEvicted] == 0 {
		t.Errorf("no waiting connection evicted: %v", st)
	}
}

// TestNetRefusedRequestsHoldNoSlot: requests without authentication that
// announce a body and never send it, from 8 addresses, 32 each (every slot
// of the agent), are answered and their connections closed at once: the
// dispatcher's poll still gets its report.
func TestNetRefusedRequestsHoldNoSlot(t *testing.T) {
	ns := newNS(t)
	a := newTestAgent(t, nil)
	addr, _ := startAgent(t, ns, a)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for src := 2; src < 10; src++ {
		err := ns.Do(func() error {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(src))}}
			for range connlimit.Default.PerSource {
				c, err := d.DialContext(ctx, "tcp", addr.String())
				if err != nil {
					return err
				}
				conns = append(conns, c)
				if _, err := c.Write([]byte("GET /v1/report HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx")); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	testutil.WantAnsweredAndClosed(t, conns, "HTTP/1.1 4", 5*time.Second)
	c := newTestClient(t, ClientOptions{Key: testKey, DialContext: ns.DialContext, Timeout: 3 * time.Second})
	if _, err := c.Poll(context.Background(), addr); err != nil {
		t.Fatalf("poll after %d refused requests: %v", len(conns), err)
	}
}
