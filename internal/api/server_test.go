package api

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/history"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

const testToken = "0123456789abcdef-test-token"

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// socketPath returns a socket path in a fresh directory short enough for
// sun_path.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ndapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "run", "ndd.sock")
}

// serve starts a server over f and stops it when the test ends, checking
// that Serve returns nil.
func serve(t *testing.T, f Controller, o ServerOptions) *Server {
	t.Helper()
	if o.Socket == "" {
		o.Socket = socketPath(t)
	}
	if o.Logger == nil {
		o.Logger = quietLogger()
	}
	s, err := NewServer(f, o)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	start(t, s)
	return s
}

func start(t *testing.T, s *Server) {
	t.Helper()
	testutil.Start(t, "Serve", 10*time.Second, s.Serve)
}

func unixClient(t *testing.T, s *Server) *Client {
	t.Helper()
	c, err := NewClient(s.SocketPath(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestRoutes(t *testing.T) {
	f := newFake(t)
	f.status = nd.Status{
		Interfaces: []string{"eth0"},
		Ports: []nd.PortStatus{{VIP: "198.51.100.100", Port: 80, Protocol: "tcp", StickyTime: "0s", Packets: 7,
			Servers: []nd.ServerStatus{{Address: "198.51.100.11", State: nd.StateUp, Weight: 10, ConfigWeight: 10}}}},
		Global: executor.GlobalStats{Passed: 3},
	}
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "nd_scrape_error 0\n") })
	s := serve(t, f, ServerOptions{Metrics: metrics})
	c := unixClient(t, s)

	if err := c.Health(); err != nil {
		t.Fatalf("Health: %v", err)
	}
	st, err := c.Status()
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if len(st.Ports) != 1 || st.Ports[0].Servers[0].Address != "198.51.100.11" || st.Global.Passed != 3 {
		t.Errorf("Status = %+v", st)
	}

	y, err := c.Config()
	if err != nil {
		t.Fatalf("Config: %v", err)
	}
	if string(y) != f.yaml(t) {
		t.Errorf("Config returned\n%s\nwant\n%s", y, f.yaml(t))
	}

	mustChange := func(what string, changes string, err error, want ...string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		for _, w := range want {
			if !strings.Contains(changes, w) {
				t.Errorf("%s: changes %q lack %q", what, changes, w)
			}
		}
	}

	ch, err := c.AddCluster("203.0.113.1", PortRequest{Port: 8080, Servers: []ServerRequest{{Address: "203.0.113.11"}}})
	mustChange("AddCluster", ch, err, "add port 203.0.113.1:8080/tcp", "server 203.0.113.11 weight 50")

	ch, err = c.AddPort("203.0.113.1", PortRequest{Port: 80, Protocol: "udp", StickyTime: "30s", WeightBound: 10})
	mustChange("AddPort", ch, err, "add port 203.0.113.1:80/udp: sticky_time 30s, weight_bound 10")

	ch, err = c.AddServer("203.0.113.1", 80, "udp", ServerRequest{Address: "203.0.113.12"})
	mustChange("AddServer default weight", ch, err, "add server 203.0.113.12 weight 5")

	w := uint32(0)
	ch, err = c.AddServer("203.0.113.1", 80, "udp", ServerRequest{Address: "203.0.113.13", Weight: &w, Quiesce: true})
	mustChange("AddServer weight 0", ch, err, "add server 203.0.113.13 weight 0 quiesced")

	w = 7
	ch, err = c.SetServer("203.0.113.1", 80, "udp", "203.0.113.12", ServerPatch{Weight: &w})
	mustChange("SetServer weight", ch, err, "server 203.0.113.12 weight 5 -> 7")

	q := true
	ch, err = c.SetServer("203.0.113.1", 80, "udp", "203.0.113.12", ServerPatch{Quiesce: &q})
	mustChange("SetServer quiesce", ch, err, "quiesce false -> true")
	srv := f.Config().Clusters[2].Ports[1].Servers[0]
	if srv.Weight != 7 || !srv.Quiesce {
		t.Errorf("after SetServer: %+v, want weight 7 quiesced", srv)
	}

	ch, err = c.RemoveServer("203.0.113.1", 80, "udp", "203.0.113.12")
	mustChange("RemoveServer", ch, err, "remove server 203.0.113.12")

	ch, err = c.RemovePort("203.0.113.1", 80, "udp")
	mustChange("RemovePort", ch, err, "remove port 203.0.113.1:80/udp")

	ch, err = c.RemoveCluster("203.0.113.1")
	mustChange("RemoveCluster", ch, err, "remove port 203.0.113.1:8080/tcp")

	// IPv6 addresses in paths.
	ch, err = c.AddServer("2001:db8::100", 443, "tcp", ServerRequest{Address: "2001:db8::12", Weight: &w})
	mustChange("AddServer IPv6", ch, err, "add server 2001:db8::12 weight 7")
	ch, err = c.RemoveServer("2001:DB8::100", 443, "tcp", "2001:db8::12")
	mustChange("RemoveServer IPv6", ch, err, "remove server 2001:db8::12")

	if got := f.yaml(t); got != string(y) {
		t.Errorf("after adding and removing, config is\n%s\nwant\n%s", got, y)
	}

	// PUT /v1/config: the fake's file with a server added.
	next := strings.Replace(fakeYAML, "{address: 2001:db8::11}", "{address: 2001:db8::11}\n          - {address: 2001:db8::13, weight: 3}", 1)
	ch, err = c.ApplyConfig([]byte(next))
	mustChange("ApplyConfig", ch, err, "add server 2001:db8::13 weight 3")
	ch, err = c.ApplyConfig([]byte(next))
	mustChange("ApplyConfig again", ch, err, "no changes")

	// Reload without a file is refused; with one, applied.
	if _, err := c.Reload(); errStatus(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "no configuration file") {
		t.Errorf("Reload without a file: %v, want 400 no configuration file", err)
	}
	f.file, _ = config.Parse([]byte(fakeYAML), "nd.yaml")
	ch, err = c.Reload()
	mustChange("Reload", ch, err, "remove server 2001:db8::13")

	// /metrics is the handler given.
	resp, err := c.http.Get(c.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "nd_scrape_error 0\n" {
		t.Errorf("/metrics: %d %q", resp.StatusCode, b)
	}
}

func TestConfigContentType(t *testing.T) {
	s := handlerServer(newFake(t))
	rec := do(s, "GET", "/v1/config", "")
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/yaml" {
		t.Fatalf("GET /v1/config: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	if _, err := config.Parse(rec.Body.Bytes(), "got"); err != nil {
		t.Errorf("GET /v1/config is not a valid configuration: %v", err)
	}
	rec = do(s, "GET", "/v1/health", "")
	if rec.Code != 200 || strings.TrimSpace(rec.Body.String()) != `{"ok":true}` {
		t.Errorf("GET /v1/health: %d %s", rec.Code, rec.Body)
	}
}

func TestErrors(t *testing.T) {
	f := newFake(t)
	s := serve(t, f, ServerOptions{})
	c := unixClient(t, s)
	before := f.yaml(t)
	w := uint32(101)
	one := uint32(1)

	for _, tc := range []struct {
		name   string
		call   func() error
		status int
		msg    string
	}{
		{"duplicate cluster", func() error { _, err := c.AddCluster("198.51.100.100", PortRequest{Port: 1}); return err }, 400, "cluster 198.51.100.100: already exists"},
		{"cluster without ports", func() error { _, err := c.AddCluster("203.0.113.1"); return err }, 400, "no ports: a VIP needs at least one (give the cluster's ports in the request"},
		{"cluster bad vip", func() error { _, err := c.AddCluster("not-an-ip"); return err }, 400, `vip: "not-an-ip" is not an IP address`},
		{"cluster loopback vip", func() error { _, err := c.AddCluster("127.0.0.1", PortRequest{Port: 1}); return err }, 400, "loopback"},
		{"remove missing cluster", func() error { _, err := c.RemoveCluster("203.0.113.9"); return err }, 404, "cluster 203.0.113.9: not found"},
		{"duplicate port", func() error { _, err := c.AddPort("198.51.100.100", PortRequest{Port: 80}); return err }, 400, "port 198.51.100.100:80/tcp: already exists"},
		{"port on missing cluster", func() error { _, err := c.AddPort("203.0.113.9", PortRequest{Port: 80}); return err }, 404, "cluster 203.0.113.9: not found"},
		{"port 0", func() error { _, err := c.AddPort("198.51.100.100", PortRequest{}); return err }, 400, "port: required"},
		{"port bad protocol", func() error {
			_, err := c.AddPort("198.51.100.100", PortRequest{Port: 1, Protocol: "sctp"})
			return err
		}, 400, "sctp"},
		{"port bad sticky", func() error {
			_, err := c.AddPort("198.51.100.100", PortRequest{Port: 1, StickyTime: "soon"})
			return err
		}, 400, "sticky_time"},
		{"port sticky fraction", func() error {
			_, err := c.AddPort("198.51.100.100", PortRequest{Port: 1, StickyTime: "1.5s"})
			return err
		}, 400, "not a whole number of seconds"},
		{"port huge bound", func() error {
			_, err := c.AddPort("198.51.100.100", PortRequest{Port: 1, WeightBound: 5000})
			return err
		}, 400, "weight_bound"},
		{"remove missing port", func() error { _, err := c.RemovePort("198.51.100.100", 81, "tcp"); return err }, 404, "port 198.51.100.100:81/tcp: not found"},
		{"remove last port", func() error { _, err := c.RemovePort("2001:db8::100", 443, "tcp"); return err }, 400, "no ports: a VIP needs at least one (to remove the last port of 2001:db8::100, remove the cluster)"},
		{"duplicate server", func() error {
			_, err := c.AddServer("198.51.100.100", 80, "tcp", ServerRequest{Address: "198.51.100.11"})
			return err
		}, 400, "server 198.51.100.11 of port 198.51.100.100:80/tcp: already exists"},
		{"server of missing port", func() error {
			_, err := c.AddServer("198.51.100.100", 81, "tcp", ServerRequest{Address: "198.51.100.13"})
			return err
		}, 404, "not found"},
		{"server of wrong family", func() error {
			_, err := c.AddServer("198.51.100.100", 80, "tcp", ServerRequest{Address: "2001:db8::1"})
			return err
		}, 400, "family"},
		{"server weight over bound", func() error {
			_, err := c.AddServer("198.51.100.100", 80, "tcp", ServerRequest{Address: "198.51.100.13", Weight: &w})
			return err
		}, 400, "out of range"},
		{"server bad address", func() error {
			_, err := c.AddServer("198.51.100.100", 80, "tcp", ServerRequest{Address: "198.51.100.300"})
			return err
		}, 400, "address"},
		{"set missing server", func() error {
			_, err := c.SetServer("198.51.100.100", 80, "tcp", "198.51.100.99", ServerPatch{Weight: &one})
			return err
		}, 404, "server 198.51.100.99 of port 198.51.100.100:80/tcp: not found"},
		{"set nothing", func() error {
			_, err := c.SetServer("198.51.100.100", 80, "tcp", "198.51.100.11", ServerPatch{})
			return err
		}, 400, "nothing to change"},
		{"set weight over bound", func() error {
			_, err := c.SetServer("198.51.100.100", 80, "tcp", "198.51.100.11", ServerPatch{Weight: &w})
			return err
		}, 400, "out of range"},
		{"remove missing server", func() error { _, err := c.RemoveServer("198.51.100.100", 80, "tcp", "198.51.100.99"); return err }, 404, "not found"},
		{"bad port in path", func() error { _, err := c.RemoveServer("198.51.100.100", 0, "tcp", "198.51.100.11"); return err }, 400, "port"},
		{"bad protocol in path", func() error { _, err := c.RemovePort("198.51.100.100", 80, "icmp"); return err }, 400, "icmp"},
		{"config syntax", func() error { _, err := c.ApplyConfig([]byte("interfaces: [eth0\n")); return err }, 400, "request:"},
		{"config restart", func() error {
			_, err := c.ApplyConfig([]byte(fakeYAML + "data_plane: {max_flows: 10}\n"))
			return err
		}, 400, "restart"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T), want *Error", err, err)
			}
			if e.Status != tc.status || !strings.Contains(e.Message, tc.msg) {
				t.Errorf("got %d %q, want %d containing %q", e.Status, e.Message, tc.status, tc.msg)
			}
			if strings.Contains(e.Message, "\n") {
				t.Errorf("message %q has more than one line", e.Message)
			}
			if got := f.yaml(t); got != before {
				t.Errorf("configuration changed by a refused request:\n%s", got)
			}
		})
	}
}

func TestParseErrorsJoined(t *testing.T) {
	s := handlerServer(newFake(t))
	body := "interfaces: [eth0]\nclusters:\n  - vip: 1.2.3\n    ports:\n      - {port: 80, wieght: 3}\n"
	rec := do(s, "PUT", "/v1/config", body)
	if rec.Code != 400 {
		t.Fatalf("status %d, want 400: %s", rec.Code, rec.Body)
	}
	msg := errorOf(t, rec)
	parts := strings.Split(msg, "; ")
	if len(parts) != 2 || !strings.HasPrefix(parts[0], "request:3:") || !strings.HasPrefix(parts[1], "request:5:") {
		t.Errorf("message %q: want two located problems joined by \"; \"", msg)
	}
}

func TestStatusError(t *testing.T) {
	f := newFake(t)
	f.statusErr = errors.New("read counters: boom")
	rec := do(handlerServer(f), "GET", "/v1/status", "")
	if rec.Code != 500 || errorOf(t, rec) != "read counters: boom" {
		t.Errorf("got %d %s", rec.Code, rec.Body)
	}
}

func TestUnknownRoutes(t *testing.T) {
	s := handlerServer(newFake(t))
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/v2/health", 404, ""},
		{"GET", "/", 404, ""},
		{"GET", "/metrics", 404, ""}, // no metrics handler given
		{"POST", "/v1/health", 405, "GET, HEAD"},
		{"DELETE", "/v1/clusters", 405, "POST"},
		{"GET", "/v1/clusters/198.51.100.100", 405, "DELETE"},
		{"PUT", "/v1/clusters/198.51.100.100/ports/80/tcp/servers/198.51.100.11", 405, "DELETE, PATCH"},
	} {
		rec := do(s, tc.method, tc.path, "")
		if rec.Code != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, rec.Code, tc.status)
		}
		if rec.Header().Get("Content-Type") != "application/json" || errorOf(t, rec) == "" {
			t.Errorf("%s %s: not a JSON error: %s", tc.method, tc.path, rec.Body)
		}
		if got := rec.Header().Get("Allow"); got != tc.allow {
			t.Errorf("%s %s: Allow %q, want %q", tc.method, tc.path, got, tc.allow)
		}
	}
}

// TestMalformed sends bodies and paths that must be refused with 400 and
// must leave the configuration as it was.
// The servers of the fake's port 80, and one of them.
const (
	serversURL = "/v1/clusters/198.51.100.100/ports/80/tcp/servers"
	serverURL  = serversURL + "/198.51.100.11"
)

func TestMalformed(t *testing.T) {
	f := newFake(t)
	s := handlerServer(f)
	before := f.yaml(t)
	huge := `{"vip":"` + strings.Repeat("1", maxJSONSize) + `"}`
	for _, tc := range []struct{ method, path, body, msg string }{
		{"POST", "/v1/clusters", "", "empty request body"},
		{"POST", "/v1/clusters", "{", "malformed JSON"},
		{"POST", "/v1/clusters", `{"vip":"198.51.100.1"`, "malformed JSON"},
		{"POST", "/v1/clusters", `{"vip":1}`, "vip: number is not a string"},
		{"POST", "/v1/clusters", `{"vip":"198.51.100.1","extra":1}`, `unknown field "extra"`},
		{"POST", "/v1/clusters", `{"vip":"198.51.100.1"} {"vip":"198.51.100.2"}`, "found more"},
		{"POST", "/v1/clusters", `[]`, "JSON object"},
		{"POST", "/v1/clusters", `"x"`, "JSON object"},
		{"POST", "/v1/clusters", huge, "exceeds the limit of 1 MiB"},
		{"POST", "/v1/clusters", `{"vip":"fe80::1%eth0","ports":[{"port":1}]}`, "zone"},
		{"POST", "/v1/clusters", `{"vip":"::ffff:198.51.100.1","ports":[{"port":1}]}`, "IPv4-mapped"},
		{"POST", "/v1/clusters", `{"vip":"203.0.113.1","ports":[{"port":1,"servers":[{"address":"203.0.113.2"},{"address":"203.0.113.2"}]}]}`, "listed twice"},
		{"POST", "/v1/clusters", `{"vip":"203.0.113.1","ports":[{"port":1},{"port":1}]}`, "duplicate port"},
		{"POST", "/v1/clusters/198.51.100.100/ports", `{"port":70000}`, "port: number 70000 is out of range 0..65535"},
		{"POST", "/v1/clusters/198.51.100.100/ports", `{"port":-1}`, "out of range"},
		{"POST", "/v1/clusters/198.51.100.100/ports", `{"port":"80"}`, "port: string is not a number"},
		{"POST", "/v1/clusters/198.51.100.100/ports", `{"port":81,"sticky_time":"-5s"}`, "sticky_time"},
		{"POST", "/v1/clusters/198.51.100.100/ports", `{"port":81,"sticky_time":"48h"}`, "sticky_time"},
		{"POST", "/v1/clusters/not-an-ip/ports", `{"port":81}`, "vip"},
		{"POST", serversURL, `{"address":""}`, "address: required"},
		{"POST", serversURL, `{"address":"198.51.100.13","weight":-1}`, "weight"},
		{"POST", serversURL, `{"address":"198.51.100.13","weight":1e20}`, "weight"},
		{"POST", serversURL, `{"address":"198.51.100.13","quiesce":"yes"}`, "quiesce: string is not true or false"},
		{"POST", serversURL, `{"address":"198.51.100.100"}`, "the VIP itself"},
		{"POST", serversURL, `{"address":"224.0.0.1"}`, "multicast"},
		{"PATCH", serverURL, `{}`, "nothing to change"},
		{"PATCH", serverURL, `{"weight":null}`, "nothing to change"},
		{"PATCH", serverURL, `{"address":"198.51.100.12"}`, "unknown field"},
		{"PATCH", serverURL, `{"weight":"high"}`, "weight"},
		{"PATCH", "/v1/clusters/198.51.100.100/ports/80/tcp/servers/bogus", `{"weight":1}`, "address"},
		{"DELETE", "/v1/clusters/198.51.100.100/ports/abc/tcp", "", "port"},
		{"DELETE", "/v1/clusters/198.51.100.100/ports/65536/tcp", "", "port"},
		{"DELETE", "/v1/clusters/198.51.100.100/ports/80/TCP", "", "protocol"},
		{"PUT", "/v1/config", "", "interfaces"},
		{"PUT", "/v1/config", "interfaces: [eth0]\n---\ninterfaces: [eth1]\n", "second YAML document"},
		{"PUT", "/v1/config", strings.Repeat("#", MaxConfigSize+1), "exceeds the limit of 4 MiB"},
		{"GET", "/v1/events?follow=maybe", "", "follow"},
	} {
		rec := do(s, tc.method, tc.path, tc.body)
		name := tc.method + " " + tc.path + " " + truncate(tc.body)
		if !wantBadRequest(t, name, rec, tc.msg) {
			continue
		}
		if got := f.yaml(t); got != before {
			t.Fatalf("%s changed the configuration:\n%s", name, got)
		}
	}
	if f.applied != 0 {
		t.Errorf("%d configurations applied, want none", f.applied)
	}
}

func truncate(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

func TestSocket(t *testing.T) {
	path := socketPath(t)
	f := newFake(t)
	s, err := NewServer(f, ServerOptions{Socket: path, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v, want 0700", di.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".nd*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// A second server on the same socket is refused while the first lives.
	if _, err := NewServer(f, ServerOptions{Socket: path, Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second server on a live socket: %v, want in use", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	c := unixClient(t, s)
	if err := c.Health(); err != nil {
		t.Fatalf("Health: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket not removed after Serve: %v", err)
	}

	// A stale socket (nothing listens) is replaced.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	s2, err := NewServer(f, ServerOptions{Socket: path, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("NewServer over a stale socket: %v", err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket after replacing a stale one: %v %v", fi, err)
	}
	s2.Close()

	// A file that is not a socket is left alone.
	if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewServer(f, ServerOptions{Socket: path, Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("NewServer over a regular file: %v, want not a socket", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Errorf("regular file changed")
	}
}

func TestOptions(t *testing.T) {
	f := newFake(t)
	for _, tc := range []struct {
		name string
		o    ServerOptions
		msg  string
	}{
		{"no socket", ServerOptions{}, "socket"},
		{"listen without token", ServerOptions{Socket: "/x", Listen: "127.0.0.1:0"}, "token"},
		{"cert without key", ServerOptions{Socket: "/x", Listen: "127.0.0.1:0", Token: testToken, TLSCert: "/c"}, "TLS"},
		{"tls without listen", ServerOptions{Socket: "/x", TLSCert: "/c", TLSKey: "/k"}, "Listen"},
	} {
		if _, err := NewServer(f, tc.o); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want an error about %s", tc.name, err, tc.msg)
		}
	}
	if _, err := NewServer(nil, ServerOptions{Socket: "/x"}); err == nil {
		t.Error("NewServer without a controller succeeded")
	}
	// A busy TCP port fails NewServer and leaves no socket behind.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	path := socketPath(t)
	if _, err := NewServer(f, ServerOptions{Socket: path, Listen: busy.Addr().String(), Token: testToken}); err == nil {
		t.Error("NewServer on a busy port succeeded")
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left after a failed NewServer: %v", err)
	}
}

func TestTCPToken(t *testing.T) {
	f := newFake(t)
	s := serve(t, f, ServerOptions{Listen: "127.0.0.1:0", Token: testToken})
	base := "http://" + s.TCPAddr().String()

	for _, tc := range []struct {
		name, auth string
		status     int
	}{
		{"no token", "", 401},
		{"wrong token", "Bearer wrong-token-0123456789", 401},
		{"prefix of the token", "Bearer " + testToken[:len(testToken)-1], 401},
		{"token with more", "Bearer " + testToken + "x", 401},
		{"basic scheme", "Basic " + testToken, 401},
		{"empty bearer", "Bearer ", 401},
		{"right token", "Bearer " + testToken, 200},
		{"lower-case scheme", "bearer " + testToken, 200},
	} {
		for _, path := range []string{"/v1/health", "/v1/config", "/nope"} {
			req, _ := http.NewRequest("GET", base+path, nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := tc.status
			if want == 200 && path == "/nope" {
				want = 404
			}
			if resp.StatusCode != want {
				t.Errorf("%s %s: status %d, want %d", tc.name, path, resp.StatusCode, want)
			}
			if want == 401 {
				var er ErrorResponse
				if json.Unmarshal(body, &er) != nil || er.Error == "" {
					t.Errorf("%s: 401 body %q is not a JSON error", tc.name, body)
				}
				if resp.Header.Get("WWW-Authenticate") == "" {
					t.Errorf("%s: 401 without WWW-Authenticate", tc.name)
				}
			}
		}
	}

	// The client: refused without the token, served with it.
	bad, _ := NewClient(base, "")
	if err := bad.Health(); errStatus(err) != 401 {
		t.Errorf("client without token: %v, want 401", err)
	}
	good, _ := NewClient(base, testToken)
	if err := good.Health(); err != nil {
		t.Errorf("client with token: %v", err)
	}
	w := uint32(1)
	if _, err := bad.SetServer("198.51.100.100", 80, "tcp", "198.51.100.11", ServerPatch{Weight: &w}); errStatus(err) != 401 {
		t.Errorf("unauthenticated SetServer: %v, want 401", err)
	}
	if f.applied != 0 {
		t.Errorf("an unauthenticated request changed the configuration")
	}
	if _, err := good.SetServer("198.51.100.100", 80, "tcp", "198.51.100.11", ServerPatch{Weight: &w}); err != nil {
		t.Errorf("authenticated SetServer: %v", err)
	}

	// The unix socket asks for no token.
	if err := unixClient(t, s).Health(); err != nil {
		t.Errorf("unix socket: %v", err)
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	f := newFake(t)
	s := serve(t, f, ServerOptions{Listen: "127.0.0.1:0", Token: testToken, TLSCert: certFile, TLSKey: keyFile})
	base := "https://" + s.TCPAddr().String()

	c, err := NewClient(base, testToken, WithTLSConfig(&tls.Config{RootCAs: pool}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Health(); err != nil {
		t.Fatalf("Health over TLS: %v", err)
	}
	// Plain HTTP to the TLS port is not served.
	plain, _ := NewClient("http://"+s.TCPAddr().String(), testToken, WithTimeout(2*time.Second))
	if err := plain.Health(); err == nil {
		t.Error("plain HTTP to the TLS listener succeeded")
	}
	// An untrusted certificate is refused by the client.
	untrusting, _ := NewClient(base, testToken, WithTimeout(2*time.Second))
	if err := untrusting.Health(); err == nil {
		t.Error("client accepted an untrusted certificate")
	}
	if _, err := NewServer(f, ServerOptions{Socket: socketPath(t), Listen: "127.0.0.1:0", Token: testToken, TLSCert: keyFile, TLSKey: certFile}); err == nil {
		t.Error("NewServer with swapped certificate and key succeeded")
	}
}

func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ndd test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestEvents(t *testing.T) {
	f := newFake(t)
	ev := func(i int) nd.Event {
		return nd.Event{Time: time.Unix(int64(1700000000+i), 0).UTC(), Type: nd.EventServerResolved, Server: "198.51.100.11", Message: "n" + string(rune('0'+i))}
	}
	f.publish(ev(1))
	f.publish(ev(2))
	s := serve(t, f, ServerOptions{})
	c := unixClient(t, s)

	// Without follow: the recent events, then the end.
	var got []nd.Event
	if err := c.Events(context.Background(), false, func(e nd.Event) error { got = append(got, e); return nil }); err != nil {
		t.Fatalf("Events: %v", err)
	}
	if len(got) != 2 || got[0] != ev(1) || got[1] != ev(2) {
		t.Errorf("Events = %+v", got)
	}
	waitFor(t, "unsubscribed", func() bool { return f.subscribers() == 0 })

	// With follow: the recent ones, then new ones as they come.
	ctx, cancel := context.WithCancel(context.Background())
	evc := make(chan nd.Event, 16)
	errc := make(chan error, 1)
	go func() {
		errc <- c.Events(ctx, true, func(e nd.Event) error { evc <- e; return nil })
	}()
	for i := 1; i <= 2; i++ {
		if e := recv(t, evc); e != ev(i) {
			t.Errorf("recent event %d = %+v", i, e)
		}
	}
	waitFor(t, "subscribed", func() bool { return f.subscribers() == 1 })
	for i := 3; i <= 5; i++ {
		f.publish(ev(i))
		if e := recv(t, evc); e != ev(i) {
			t.Errorf("followed event %d = %+v", i, e)
		}
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Events after cancel: %v, want context.Canceled", err)
	}
	// The server notices the client left and ends the subscription.
	waitFor(t, "unsubscribed after the client left", func() bool { return f.subscribers() == 0 })

	// fn's error ends the stream and is returned.
	stop := errors.New("stop")
	if err := c.Events(context.Background(), true, func(nd.Event) error { return stop }); err != stop {
		t.Errorf("Events with fn error: %v, want it", err)
	}
}

func TestEventsRawNDJSON(t *testing.T) {
	f := newFake(t)
	f.publish(nd.Event{Type: nd.EventAttached, Message: "attached to eth0"})
	f.publish(nd.Event{Type: nd.EventDetached, Message: "detached from eth0"})
	rec := do(handlerServer(f), "GET", "/v1/events", "")
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("GET /v1/events: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	lines := strings.Split(strings.TrimSpace(rec.Body.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"type":"attached"`) || !strings.Contains(lines[1], `"type":"detached"`) {
		t.Errorf("body:\n%s", rec.Body)
	}
}

// TestEventsOutliveReadTimeout: a followed stream is not cut by the server's
// read timeout, and the server's shutdown ends it.
func TestEventsOutliveReadTimeout(t *testing.T) {
	f := newFake(t)
	s, err := NewServer(f, ServerOptions{Socket: socketPath(t), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	s.readTimeout = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	c := unixClient(t, s)

	evc := make(chan nd.Event, 16)
	errc := make(chan error, 1)
	go func() {
		errc <- c.Events(context.Background(), true, func(e nd.Event) error { evc <- e; return nil })
	}()
	waitFor(t, "subscribed", func() bool { return f.subscribers() == 1 })
	time.Sleep(4 * s.readTimeout)
	f.publish(nd.Event{Type: nd.EventError, Message: "late"})
	if e := recv(t, evc); e.Message != "late" {
		t.Errorf("event %+v", e)
	}

	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown with an open stream took %v", d)
	}
	if err := testutil.Recv(t, errc, 5*time.Second); err != nil {
		t.Logf("stream ended with %v", err)
	}
}

func recv(t *testing.T, c <-chan nd.Event) nd.Event {
	t.Helper()
	return testutil.Recv(t, c, 5*time.Second)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, what, cond)
}

func TestPanicBecomes500(t *testing.T) {
	s := handlerServer(panicky{newFake(t)})
	rec := do(s, "GET", "/v1/status", "")
	if rec.Code != 500 || errorOf(t, rec) != "internal error" {
		t.Errorf("got %d %s", rec.Code, rec.Body)
	}
}

type panicky struct{ *fakeController }

func (panicky) Status() (nd.Status, error) { panic("boom") }

func TestClientTargets(t *testing.T) {
	for _, tc := range []struct {
		target, base string
		ok           bool
	}{
		{"", "http://ndd", true},
		{"/run/nd/ndd.sock", "http://ndd", true},
		{"unix:///tmp/x.sock", "http://ndd", true},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080", true},
		{"https://nd.example:8443/", "https://nd.example:8443", true},
		{"http://127.0.0.1:8080/v1", "", false},
		{"http://", "", false},
	} {
		c, err := NewClient(tc.target, "")
		if (err == nil) != tc.ok {
			t.Errorf("NewClient(%q): %v", tc.target, err)
			continue
		}
		if err == nil && c.base != tc.base {
			t.Errorf("NewClient(%q).base = %q, want %q", tc.target, c.base, tc.base)
		}
	}
	// A missing socket is an ordinary error, not an *Error.
	c, _ := NewClient(filepath.Join(t.TempDir(), "none.sock"), "")
	if err := c.Health(); err == nil || errStatus(err) != 0 {
		t.Errorf("Health on a missing socket: %v", err)
	}
}

func TestPathEscaping(t *testing.T) {
	// A zone's % must reach the server as written, and be refused there.
	f := newFake(t)
	s := serve(t, f, ServerOptions{})
	c := unixClient(t, s)
	if _, err := c.RemoveCluster("fe80::1%eth0"); errStatus(err) != 404 {
		t.Errorf("RemoveCluster with a zone: %v, want 404", err)
	}
	if _, err := c.RemoveCluster("a/b"); errStatus(err) != 400 {
		t.Errorf("RemoveCluster(a/b): %v, want 400", err)
	}
}

// handlerServer is a Server without listeners, for httptest.
func handlerServer(c Controller) *Server {
	s := &Server{c: c, log: quietLogger(), history: history.New(0)}
	s.handler = s.routes(nil)
	return s
}

func do(s *Server, method, path, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, req)
	return rec
}

// wantBadRequest reports unless rec is a 400 whose error message contains
// msg; it returns whether rec was a 400 at all.
func wantBadRequest(t testing.TB, name string, rec *httptest.ResponseRecorder, msg string) bool {
	t.Helper()
	if rec.Code != 400 {
		t.Errorf("%s: status %d, want 400: %s", name, rec.Code, rec.Body)
		return false
	}
	if got := errorOf(t, rec); !strings.Contains(got, msg) {
		t.Errorf("%s: message %q, want it to contain %q", name, got, msg)
	}
	return true
}

func errorOf(t testing.TB, rec *httptest.ResponseRecorder) string {
	t.Helper()
	var er ErrorResponse
	dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&er); err != nil {
		t.Errorf("error body %q: %v", rec.Body, err)
	}
	return er.Error
}
