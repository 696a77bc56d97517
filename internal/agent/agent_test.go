package agent

import (
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

// signed returns a request signed with key at time at, and its nonce.
func signed(t *testing.T, key []byte, at time.Time) (*http.Request, string) {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, ReportPath, nil)
	nonce, err := signRequest(r, key, at)
	if err != nil {
		t.Fatal(err)
	}
	return r, nonce
}

func serve(a *Agent, r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	a.ServeHTTP(w, r)
	return w
}

func TestAgentServesSignedReport(t *testing.T) {
	a := newTestAgent(t, func(c *Config) {
		c.Commands = []Command{{Name: "never_run", Argv: []string{"true"}}}
	})
	a.sampler.sample()
	c := newTestClient(t, ClientOptions{Key: testKey})
	r, nonce := signed(t, testKey, time.Now())
	w := serve(a, r)
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	rep, err := c.parseResponse(w.Code, w.Header().Values(HeaderMAC), nonce, w.Body.Bytes())
	if err != nil {
		t.Fatalf("client rejected a good response: %v", err)
	}
	if rep.Host != "web1" || time.Since(rep.Time) > time.Minute {
		t.Errorf("host %q time %v", rep.Host, rep.Time)
	}
	want := map[string]float64{MetricLoad1: 0.42, MetricMemory: 25, MetricTCPEstablished: 3, MetricProcesses: 3}
	for k, v := range want {
		if rep.Metrics[k] != v {
			t.Errorf("%s = %v, want %v", k, rep.Metrics[k], v)
		}
	}
	if rep.Errors[MetricCPU] == "" || rep.Errors["never_run"] != "not run yet" {
		t.Errorf("errors %v: want cpu (one sample) and never_run", rep.Errors)
	}
	if rep.Stats[StatRequests] != 1 || rep.Stats[StatServed] != 0 {
		// The report is built before it is counted as served.
		t.Errorf("stats %v", rep.Stats)
	}

	// The same response does not answer another request (another nonce).
	_, nonce2 := signed(t, testKey, time.Now())
	if _, err := c.parseResponse(w.Code, w.Header().Values(HeaderMAC), nonce2, w.Body.Bytes()); !errors.Is(err, ErrBadMAC) {
		t.Errorf("replayed response accepted: %v", err)
	}
	// A client with another key rejects it.
	cw := newTestClient(t, ClientOptions{Key: wrongKey})
	if _, err := cw.parseResponse(w.Code, w.Header().Values(HeaderMAC), nonce, w.Body.Bytes()); !errors.Is(err, ErrBadMAC) {
		t.Errorf("client with the wrong key accepted the response: %v", err)
	}
	// A body changed in flight is rejected.
	body := strings.Replace(w.Body.String(), `"web1"`, `"web2"`, 1)
	if _, err := c.parseResponse(w.Code, w.Header().Values(HeaderMAC), nonce, []byte(body)); !errors.Is(err, ErrBadMAC) {
		t.Errorf("tampered body accepted: %v", err)
	}
}

func TestAgentRejects(t *testing.T) {
	a := newTestAgent(t, nil)
	now := time.Now()
	type tc struct {
		name   string
		req    func() *http.Request
		status int
		stat   string
	}
	header := func(mut func(h http.Header)) func() *http.Request {
		return func() *http.Request {
			r, _ := signed(t, testKey, now)
			mut(r.Header)
			return r
		}
	}
	cases := []tc{
		{"wrong key", func() *http.Request { r, _ := signed(t, wrongKey, now); return r }, 401, StatBadMAC},
		{"no auth headers", func() *http.Request { return httptest.NewRequest("GET", ReportPath, nil) }, 401, StatBadMAC},
		{"stale", func() *http.Request { r, _ := signed(t, testKey, now.Add(-31*time.Second)); return r }, 401, StatStale},
		{"future", func() *http.Request { r, _ := signed(t, testKey, now.Add(45*time.Second)); return r }, 401, StatStale},
		{"POST", func() *http.Request {
			r := httptest.NewRequest("POST", ReportPath, nil)
			signRequest(r, testKey, now)
			return r
		}, 405, StatMalformed},
		{"other path", func() *http.Request { return httptest.NewRequest("GET", "/v1/run", nil) }, 404, StatMalformed},
		{"query string", func() *http.Request {
			r := httptest.NewRequest("GET", ReportPath+"?cmd=rm", nil)
			signRequest(r, testKey, now)
			return r
		}, 404, StatMalformed},
		{"body", func() *http.Request {
			r := httptest.NewRequest("GET", ReportPath, strings.NewReader("echo hi"))
			signRequest(r, testKey, now)
			return r
		}, 400, StatMalformed},
		{"two nonces", header(func(h http.Header) { h.Add(HeaderNonce, strings.Repeat("a", 32)) }), 400, StatMalformed},
		{"two MACs", header(func(h http.Header) { h.Add(HeaderMAC, strings.Repeat("a", 64)) }), 401, StatBadMAC},
		{"short nonce", header(func(h http.Header) { h.Set(HeaderNonce, "abcd") }), 400, StatMalformed},
		{"uppercase nonce", header(func(h http.Header) { h.Set(HeaderNonce, strings.ToUpper(h.Get(HeaderNonce))) }), 400, StatMalformed},
		{"signed time", header(func(h http.Header) { h.Set(HeaderTime, "+"+h.Get(HeaderTime)) }), 400, StatMalformed},
		{"time not a number", header(func(h http.Header) { h.Set(HeaderTime, "yesterday") }), 400, StatMalformed},
		{"time changed", header(func(h http.Header) {
			s, _ := strconv.ParseInt(h.Get(HeaderTime), 10, 64)
			h.Set(HeaderTime, strconv.FormatInt(s+1, 10))
		}), 401, StatBadMAC},
		{"MAC not hex", header(func(h http.Header) { h.Set(HeaderMAC, strings.Repeat("z", 64)) }), 401, StatBadMAC},
		{"MAC truncated", header(func(h http.Header) { h.Set(HeaderMAC, h.Get(HeaderMAC)[:62]) }), 401, StatBadMAC},
	}
	want := map[string]uint64{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := serve(a, c.req())
			if w.Code != c.status {
				t.Errorf("status %d, want %d", w.Code, c.status)
			}
			if w.Header().Get(HeaderMAC) != "" || strings.Contains(w.Body.String(), "metrics") {
				t.Errorf("a rejected request got a report: %s", w.Body)
			}
		})
		want[c.stat]++
	}
	st := a.Stats()
	for k, v := range want {
		if st[k] != v {
			t.Errorf("stat %s = %d, want %d", k, st[k], v)
		}
	}
	if st[StatServed] != 0 || st[StatRequests] != uint64(len(cases)) {
		t.Errorf("stats %v", st)
	}
	if a.replay.len() != 0 {
		t.Errorf("rejected requests left %d nonces in the replay cache", a.replay.len())
	}
}

func TestAgentRejectsReplay(t *testing.T) {
	a := newTestAgent(t, nil)
	r, _ := signed(t, testKey, time.Now())
	replay := r.Clone(r.Context())
	if w := serve(a, r); w.Code != 200 {
		t.Fatalf("first request: %d", w.Code)
	}
	if w := serve(a, replay); w.Code != 401 {
		t.Errorf("replayed request: status %d, want 401", w.Code)
	}
	if st := a.Stats(); st[StatReplay] != 1 || st[StatServed] != 1 {
		t.Errorf("stats %v", st)
	}
}

func TestReplayCache(t *testing.T) {
	c := newReplayCache(2)
	now := time.Unix(1000, 0)
	if err := c.add("a", now.Add(time.Second), now); err != nil {
		t.Fatal(err)
	}
	if err := c.add("a", now.Add(time.Second), now); !errors.Is(err, ErrReplay) {
		t.Errorf("duplicate: %v", err)
	}
	c.add("b", now.Add(10*time.Second), now)
	if err := c.add("c", now.Add(10*time.Second), now); !errors.Is(err, ErrReplayFull) {
		t.Errorf("full cache of live nonces: %v", err)
	}
	// Once a has expired there is room again.
	later := now.Add(2 * time.Second)
	if err := c.add("c", later.Add(10*time.Second), later); err != nil {
		t.Errorf("after expiry: %v", err)
	}
	if err := c.add("b", later.Add(10*time.Second), later); !errors.Is(err, ErrReplay) {
		t.Errorf("live nonce b forgotten: %v", err)
	}
}

func TestAgentReplayCacheFull(t *testing.T) {
	a := newTestAgent(t, func(c *Config) { c.ReplayCacheSize = 16 })
	busy := 0
	for range 20 {
		r, _ := signed(t, testKey, time.Now())
		if w := serve(a, r); w.Code == http.StatusServiceUnavailable {
			busy++
		}
	}
	if busy != 4 || a.Stats()[StatBusy] != 4 {
		t.Errorf("%d busy refusals (stat %d), want 4", busy, a.Stats()[StatBusy])
	}
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte, mode os.FileMode) string {
		return testutil.WriteFile(t, dir, name, data, mode)
	}
	// keyfile.Load has the rules; the agent asks for MinKeyLen bytes.
	if _, err := LoadKeyFile(write("short", []byte("0123456789abcde\n"), 0o600)); err == nil {
		t.Error("a key shorter than MinKeyLen was accepted")
	}
	write("world readable", []byte("0123456789abcdef"), 0o644)
	// The agent refuses to start with a bad key file.
	cfg := &Config{KeyFile: filepath.Join(dir, "world readable")}
	cfg.SetDefaults()
	if _, err := New(cfg, nil); err == nil {
		t.Error("New accepted a world-readable key file")
	}
}

func TestNewClientOptions(t *testing.T) {
	if _, err := NewClient(ClientOptions{}); err == nil {
		t.Error("client without authentication accepted")
	}
	if _, err := NewClient(ClientOptions{Key: []byte("short")}); err == nil {
		t.Error("short key accepted")
	}
	c := newTestClient(t, ClientOptions{Key: testKey, Timeout: time.Second})
	if _, err := NewTracker(TrackerOptions{Client: c, Interval: time.Second}); err == nil {
		t.Error("tracker interval equal to the client timeout accepted")
	}
	if _, err := NewTracker(TrackerOptions{Client: c, Interval: 2 * time.Second, DisableAfter: time.Second}); err == nil {
		t.Error("disable-after below the interval accepted")
	}
}

func TestParseResponseRejects(t *testing.T) {
	c := newTestClient(t, ClientOptions{Key: testKey})
	nonce := strings.Repeat("ab", 16)
	good := `{"version":1,"host":"h","time":"2026-01-01T00:00:00Z","metrics":{"load1":1},"errors":{"cpu":"x"},"stats":{"requests":1}}`
	sign := func(body string) []string {
		return []string{hex.EncodeToString(responseMAC(testKey, nonce, []byte(body)))}
	}
	if _, err := c.parseResponse(200, sign(good), nonce, []byte(good)); err != nil {
		t.Fatalf("good body: %v", err)
	}
	for name, body := range map[string]string{
		"unknown field":   strings.Replace(good, `"stats"`, `"run"`, 1),
		"no version":      strings.Replace(good, `"version":1,`, ``, 1),
		"version 2":       strings.Replace(good, `"version":1`, `"version":2`, 1),
		"no host":         strings.Replace(good, `"host":"h",`, ``, 1),
		"empty host":      strings.Replace(good, `"host":"h"`, `"host":""`, 1),
		"no time":         strings.Replace(good, `"time":"2026-01-01T00:00:00Z",`, ``, 1),
		"bad time":        strings.Replace(good, `2026-01-01T00:00:00Z`, `yesterday`, 1),
		"huge number":     strings.Replace(good, `"load1":1`, `"load1":1e999`, 1),
		"string number":   strings.Replace(good, `"load1":1`, `"load1":"1"`, 1),
		"bad metric name": strings.Replace(good, `"load1":1`, `"Load 1":1`, 1),
		"value and error": strings.Replace(good, `"cpu":"x"`, `"load1":"x"`, 1),
		"negative stat":   strings.Replace(good, `"requests":1`, `"requests":-1`, 1),
		"trailing data":   good + `{}`,
		"array":           `[` + good + `]`,
		"empty":           ``,
		"null":            `null`,
		"long error":      strings.Replace(good, `"cpu":"x"`, `"cpu":"`+strings.Repeat("x", 600)+`"`, 1),
	} {
		if _, err := c.parseResponse(200, sign(body), nonce, []byte(body)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	if _, err := c.parseResponse(200, nil, nonce, []byte(good)); !errors.Is(err, ErrBadMAC) {
		t.Errorf("no MAC: %v", err)
	}
	if _, err := c.parseResponse(200, append(sign(good), sign(good)...), nonce, []byte(good)); !errors.Is(err, ErrBadMAC) {
		t.Errorf("two MACs: %v", err)
	}
	if _, err := c.parseResponse(401, sign(good), nonce, []byte(good)); err == nil {
		t.Error("a 401 was accepted")
	}
	big := make([]byte, MaxResponseBody+1)
	if _, err := c.parseResponse(200, sign(string(big)), nonce, big); !errors.Is(err, ErrMalformed) {
		t.Errorf("oversized body: %v", err)
	}
}
