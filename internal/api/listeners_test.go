package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/connlimit"
	"github.com/nd-dispatcher/nd/internal/daemon"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// freePort returns a loopback address no one listens on, for listeners
// that the configuration names by port (it refuses port 0).
func freePort(t *testing.T) string {
	t.Helper()
	return freePorts(t, 1)[0]
}

// freePorts returns n distinct loopback addresses no one listens on. Each
// port is held until all are chosen: closed one by one, the kernel may
// hand the same port out twice.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		addrs[i] = l.Addr().String()
	}
	return addrs
}

// get asks addr for path with a bearer token ("" for none) over a fresh
// connection and returns the status, or the dial error.
func get(addr, path, token string) (int, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// wantStatus checks that addr answers path with status.
func wantStatus(t *testing.T, what, addr, path, token string, status int) {
	t.Helper()
	got, err := get(addr, path, token)
	if err != nil || got != status {
		t.Errorf("%s: GET %s%s: status %d, err %v; want %d", what, addr, path, got, err, status)
	}
}

// wantClosed checks that nothing listens on addr any more.
func wantClosed(t *testing.T, what, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		t.Errorf("%s: %s still accepts connections", what, addr)
	}
}

const otherToken = "fedcba9876543210-other-token"

var plainMetrics = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "nd_up 1\n") })

// TestConfigureListenersLive: Configure changes the token, the API's
// address and the metrics' address of a serving server: the old token is
// refused when it returns, a new address serves and the old one is
// closed; metrics are served without a token, on their port only.
func TestConfigureListenersLive(t *testing.T) {
	f := newFake(t)
	s := serve(t, f, ServerOptions{Listen: "127.0.0.1:0", Token: testToken, Metrics: plainMetrics})
	first := s.TCPAddr().String()
	wantStatus(t, "start", first, "/v1/health", testToken, 200)

	if err := s.Configure(config.API{Listen: "127.0.0.1:0", Token: otherToken}, config.Metrics{}); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "old token after a new one", first, "/v1/health", testToken, 401)
	wantStatus(t, "new token", first, "/v1/health", otherToken, 200)

	two := freePorts(t, 2)
	second, mAddr := two[0], two[1]
	if err := s.Configure(config.API{Listen: second, Token: otherToken}, config.Metrics{Listen: mAddr}); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "new address", second, "/v1/health", otherToken, 200)
	wantClosed(t, "old address", first)
	wantStatus(t, "metrics without a token", mAddr, "/metrics", "", 200)
	wantStatus(t, "the API is not on the metrics port", mAddr, "/v1/config", "", 404)
	wantStatus(t, "the API's metrics still need the token", second, "/metrics", "", 401)

	// A busy address changes nothing.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if err := s.Configure(config.API{Listen: busy.Addr().String(), Token: testToken}, config.Metrics{}); err == nil {
		t.Error("Configure on a busy port succeeded")
	}
	wantStatus(t, "after a refused change", second, "/v1/health", otherToken, 200)
	wantStatus(t, "metrics after a refused change", mAddr, "/metrics", "", 200)

	mAddr2 := freePort(t)
	if err := s.Configure(config.API{Listen: second, Token: otherToken}, config.Metrics{Listen: mAddr2}); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "metrics moved", mAddr2, "/metrics", "", 200)
	wantClosed(t, "old metrics address", mAddr)

	if err := s.Configure(config.API{}, config.Metrics{}); err != nil {
		t.Fatal(err)
	}
	wantClosed(t, "API listener removed", second)
	wantClosed(t, "metrics listener removed", mAddr2)
	if s.TCPAddr() != nil || s.MetricsAddr() != nil {
		t.Errorf("addresses after removal: %v %v", s.TCPAddr(), s.MetricsAddr())
	}
}

// TestReloadAppliesListeners: a daemon's reload (and an API change) that
// changes api.token, api.token_file, api.listen or metrics.listen is in
// force when acknowledged: the old token refused, the new one accepted; a
// new address served and the old one closed; metrics served on
// metrics.listen, moved and stopped.
func TestReloadAppliesListeners(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nd.yaml")
	tokenFile := filepath.Join(dir, "token")
	write := func(p, content string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	four := freePorts(t, 4)
	apiA, apiB, m1, m2 := four[0], four[1], four[2], four[3]
	version := func(api, metrics string) string {
		y := fakeYAML + "api:\n" + api
		if metrics != "" {
			y += fmt.Sprintf("metrics: {listen: %q}\n", metrics)
		}
		return y
	}
	write(path, version(fmt.Sprintf("  listen: %q\n  token: %s\n", apiA, testToken), ""))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := runDaemon(t, cfg, daemon.Options{ConfigPath: path})
	s := serve(t, d, ServerOptions{Metrics: plainMetrics})
	if err := s.Configure(cfg.API, cfg.Metrics); err != nil {
		t.Fatal(err)
	}
	d.SetListeners(s)
	wantStatus(t, "start", apiA, "/v1/health", testToken, 200)

	reload := func(what, yaml string) {
		t.Helper()
		write(path, yaml)
		if _, err := d.Reload(); err != nil {
			t.Fatalf("%s: reload: %v", what, err)
		}
	}
	reload("new token", version(fmt.Sprintf("  listen: %q\n  token: %s\n", apiA, otherToken), ""))
	wantStatus(t, "old token after reload", apiA, "/v1/health", testToken, 401)
	wantStatus(t, "new token after reload", apiA, "/v1/health", otherToken, 200)

	// A token file rewritten and reloaded revokes the token it held.
	write(tokenFile, testToken+"\n")
	reload("token file", version(fmt.Sprintf("  listen: %q\n  token_file: %s\n", apiA, tokenFile), ""))
	wantStatus(t, "token file", apiA, "/v1/health", testToken, 200)
	write(tokenFile, otherToken+"\n")
	reload("token file rewritten", version(fmt.Sprintf("  listen: %q\n  token_file: %s\n", apiA, tokenFile), ""))
	wantStatus(t, "old token of the file", apiA, "/v1/health", testToken, 401)
	wantStatus(t, "new token of the file", apiA, "/v1/health", otherToken, 200)

	reload("new listen and metrics", version(fmt.Sprintf("  listen: %q\n  token: %s\n", apiB, otherToken), m1))
	wantStatus(t, "new address", apiB, "/v1/health", otherToken, 200)
	wantClosed(t, "old address", apiA)
	wantStatus(t, "metrics.listen", m1, "/metrics", "", 200)

	// Through the API: the whole configuration put on the new listener.
	apply := func(what, via, token, yaml string) {
		t.Helper()
		c, err := NewClient("http://"+via, token)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		next, err := config.Parse([]byte(yaml), "put")
		if err != nil {
			t.Fatal(err)
		}
		b, err := config.Marshal(next)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ApplyConfig(b); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	apply("apply through the API", apiB, otherToken, version(fmt.Sprintf("  listen: %q\n  token: %s\n", apiB, testToken), m2))
	wantStatus(t, "token changed through the API: old", apiB, "/v1/health", otherToken, 401)
	wantStatus(t, "token changed through the API: new", apiB, "/v1/health", testToken, 200)
	wantStatus(t, "metrics moved", m2, "/metrics", "", 200)
	wantClosed(t, "metrics' old address", m1)

	// Moving the listener the request came in on: the request is
	// answered, then its listener closed.
	apiC := freePort(t)
	apply("move the listener through itself", apiB, testToken, version(fmt.Sprintf("  listen: %q\n  token: %s\n", apiC, testToken), m2))
	wantStatus(t, "moved through itself", apiC, "/v1/health", testToken, 200)
	wantClosed(t, "the listener the move came through", apiB)

	reload("no TCP listeners", fakeYAML)
	wantClosed(t, "api.listen removed", apiC)
	wantClosed(t, "metrics.listen removed", m2)
}

// TestConfigureTLSOnSameAddress: turning TLS on for the address the API
// already listens on closes it and opens it again in TLS; a certificate
// that cannot be loaded changes nothing.
func TestConfigureTLSOnSameAddress(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t, t.TempDir())
	addr := freePort(t)
	s := serve(t, newFake(t), ServerOptions{Listen: addr, Token: testToken})
	wantStatus(t, "plain", addr, "/v1/health", testToken, 200)

	bad := config.API{Listen: addr, Token: testToken, TLSCert: keyFile, TLSKey: certFile}
	if err := s.Configure(bad, config.Metrics{}); err == nil {
		t.Error("Configure with swapped certificate and key succeeded")
	}
	wantStatus(t, "plain after a refused change", addr, "/v1/health", testToken, 200)

	if err := s.Configure(config.API{Listen: addr, Token: testToken, TLSCert: certFile, TLSKey: keyFile}, config.Metrics{}); err != nil {
		t.Fatal(err)
	}
	c, err := NewClient("https://"+addr, testToken, WithTLSConfig(&tls.Config{RootCAs: pool}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Health(); err != nil {
		t.Fatalf("Health over TLS after the change: %v", err)
	}
	if got, err := get(addr, "/v1/health", testToken); err == nil && got == 200 {
		t.Error("plain HTTP still served after TLS was turned on")
	}
}

// serveAPIAndMetrics serves a fake daemon's API on api.listen (testToken)
// and its metrics on metrics.listen, each on a fresh loopback port.
func serveAPIAndMetrics(t *testing.T) (s *Server, apiAddr, metricsAddr string) {
	t.Helper()
	ports := freePorts(t, 2)
	apiAddr, metricsAddr = ports[0], ports[1]
	s = serve(t, newFake(t), ServerOptions{Listen: apiAddr, Token: testToken, Metrics: plainMetrics})
	if err := s.Configure(config.API{Listen: apiAddr, Token: testToken}, config.Metrics{Listen: metricsAddr}); err != nil {
		t.Fatal(err)
	}
	return s, apiAddr, metricsAddr
}

// TestIdleConnectionsAreShed: 2,000 connections to api.listen and as many
// to metrics.listen that never send a request (all from the operator's
// own address) neither keep an authenticated request or a scrape out nor
// stay open: each listener holds at most its limit, closing the waiting
// connections that have waited longest, and counts them.
func TestIdleConnectionsAreShed(t *testing.T) {
	s, apiAddr, metricsAddr := serveAPIAndMetrics(t)
	const idle = 2000
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, addr := range []string{apiAddr, metricsAddr} {
		for range idle {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatalf("idle connection %d to %s: %v", len(conns), addr, err)
			}
			conns = append(conns, c)
		}
	}
	wantStatus(t, "API with idle connections open", apiAddr, "/v1/health", testToken, 200)
	wantStatus(t, "metrics with idle connections open", metricsAddr, "/metrics", "", 200)

	// The server's side of a shed connection is closed: the client reads
	// EOF at once, where a held one would wait for its header timeout.
	closed := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			closed++
		}
	}
	limit := connlimit.Default.Conns
	if want := 2 * (idle - limit); closed < want {
		t.Errorf("%d of %d idle connections closed by the server, want at least %d", closed, len(conns), want)
	}
	for name, st := range s.ConnStats() {
		if st.Open > limit {
			t.Errorf("%s: %d connections open, over the limit %d", name, st.Open, limit)
		}
		if st.Evicted < uint64(idle-limit) || st.Accepted < idle {
			t.Errorf("%s: accepted %d, evicted %d; want at least %d and %d", name, st.Accepted, st.Evicted, idle, idle-limit)
		}
	}
}

// TestRefusedRequestsHoldNoSlot: requests that will not be served (no
// token on api.listen; a POST on metrics.listen), each sent with a body
// announced and never finished, from 8 addresses, 32 each (every slot of
// the listener): each is answered and its connection closed at once, so a
// token holder and a scraper still get through.
func TestRefusedRequestsHoldNoSlot(t *testing.T) {
	_, apiAddr, metricsAddr := serveAPIAndMetrics(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, target := range []struct{ addr, req string }{
		{apiAddr, "POST /v1/config HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx"},
		{metricsAddr, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx"},
	} {
		for src := 2; src < 10; src++ {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(src))}}
			for range connlimit.Default.PerSource {
				c, err := d.Dial("tcp", target.addr)
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
				if _, err := c.Write([]byte(target.req)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// Every refused connection is answered and closed: the client reads
	// the answer, then EOF, without sending the rest of its body.
	testutil.WantAnsweredAndClosed(t, conns, "HTTP/1.1 4", 5*time.Second)
	wantStatus(t, "token holder", apiAddr, "/v1/health", testToken, 200)
	wantStatus(t, "scraper", metricsAddr, "/metrics", "", 200)
	if resp, err := http.Head("http://" + metricsAddr + "/metrics"); err != nil || resp.StatusCode != 200 {
		t.Errorf("HEAD /metrics: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

// TestTokenChangeEndsItsStreams: an event stream opened with a token ends
// when the token is replaced and delivers nothing after; one opened on the
// unix socket (no token) goes on.
func TestTokenChangeEndsItsStreams(t *testing.T) {
	f := newFake(t)
	addr := freePort(t)
	s := serve(t, f, ServerOptions{Listen: addr, Token: testToken})
	follow := func(c *http.Client, url, token string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", url, resp.StatusCode)
		}
		return resp
	}
	tcp := follow(http.DefaultClient, "http://"+addr+"/v1/events?follow=true", testToken)
	unix := follow(unixHTTPClient(s.SocketPath()), "http://nd/v1/events?follow=true", "")
	lines := func(r io.Reader) <-chan string {
		ch := make(chan string, 16)
		go func() {
			defer close(ch)
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				ch <- sc.Text()
			}
		}()
		return ch
	}
	tcpLines, unixLines := lines(tcp.Body), lines(unix.Body)

	// The same token again changes nothing.
	if err := s.Configure(config.API{Listen: addr, Token: testToken}, config.Metrics{}); err != nil {
		t.Fatal(err)
	}
	f.publish(nd.Event{Type: nd.EventError, Message: "before-rotation"})
	for name, ch := range map[string]<-chan string{"tcp": tcpLines, "unix": unixLines} {
		select {
		case l := <-ch:
			if !strings.Contains(l, "before-rotation") {
				t.Errorf("%s stream: %s", name, l)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s stream delivered nothing while the token stood", name)
		}
	}

	if err := s.Configure(config.API{Listen: addr, Token: otherToken}, config.Metrics{}); err != nil {
		t.Fatal(err)
	}
	f.publish(nd.Event{Type: nd.EventError, Message: "after-rotation"})
	ended := time.After(5 * time.Second)
wait:
	for {
		select {
		case l, open := <-tcpLines:
			if !open {
				break wait
			}
			t.Errorf("the old token's stream delivered after the change: %s", l)
		case <-ended:
			t.Error("the old token's stream is still open 5 s after the change")
			break wait
		}
	}
	select {
	case l := <-unixLines:
		if !strings.Contains(l, "after-rotation") {
			t.Errorf("unix stream: %s", l)
		}
	case <-time.After(5 * time.Second):
		t.Error("the unix socket's stream ended with the token")
	}
}

// TestRefusedRequestsLogLittle: requests refused for their token, however
// many and however long their paths, leave a line or so in the log.
func TestRefusedRequestsLogLittle(t *testing.T) {
	var logs lockedBuffer
	addr := freePort(t)
	serve(t, newFake(t), ServerOptions{Listen: addr, Token: testToken, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	path := "/" + strings.Repeat("a", 16<<10)
	for range 50 {
		wantStatus(t, "no token", addr, path, "", 401)
	}
	if n := logs.Len(); n > 4<<10 {
		t.Errorf("50 refused requests wrote %d bytes of log", n)
	}
	if !strings.Contains(logs.String(), "api request refused") {
		t.Errorf("no refusal logged:\n%s", logs.String())
	}
}

// lockedBuffer is a bytes.Buffer safe for the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Len() int { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Len() }

func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// unixHTTPClient speaks HTTP over the unix socket at path.
func unixHTTPClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// TestRenewedCertificateServedAfterReload: certificate and key files
// rewritten in place (a renewal, the paths unchanged) are served once the
// configuration is applied again; files that no longer load refuse the
// change and the listener goes on with the certificate it had.
func TestRenewedCertificateServedAfterReload(t *testing.T) {
	certFile, keyFile, _ := selfSigned(t, t.TempDir())
	renewedCert, renewedKey, _ := selfSigned(t, t.TempDir())
	addr := freePort(t)
	s := serve(t, newFake(t), ServerOptions{Listen: addr, Token: testToken, TLSCert: certFile, TLSKey: keyFile})
	served := func() []byte {
		t.Helper()
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Raw
	}
	leaf := func(file string) []byte {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		return block.Bytes
	}
	if !bytes.Equal(served(), leaf(certFile)) {
		t.Fatal("the listener does not serve its certificate")
	}
	first := leaf(certFile)
	copyFile := func(from, to string) {
		t.Helper()
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(renewedCert, certFile)
	copyFile(renewedKey, keyFile)
	if err := s.Configure(config.API{Listen: addr, Token: testToken, TLSCert: certFile, TLSKey: keyFile}, config.Metrics{}); err != nil {
		t.Fatal(err)
	}
	if got := served(); !bytes.Equal(got, leaf(renewedCert)) || bytes.Equal(got, first) {
		t.Error("the renewed certificate is not served after the configuration was applied again")
	}

	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Configure(config.API{Listen: addr, Token: testToken, TLSCert: certFile, TLSKey: keyFile}, config.Metrics{}); err == nil {
		t.Error("a certificate file that does not load was accepted")
	}
	if !bytes.Equal(served(), leaf(renewedCert)) {
		t.Error("a refused renewal changed the certificate served")
	}
}
