package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/daemon"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/web"
)

// fetch asks addr for path with a token ("" for none), without following
// redirects, and returns the response with its body read.
func fetch(t *testing.T, method, addr, path, token, body string) (*http.Response, string) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestDashboardByReload: api.dashboard is off by default; a reload turns it
// on (its files served without a token and with a strict policy, its data
// with the token only, the history filling as the manager computes) and
// off again (everything 404, the history forgotten).
func TestDashboardByReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nd.yaml")
	addr := freePort(t)
	version := func(dashboard bool) string {
		return fakeYAML + fmt.Sprintf("api:\n  listen: %q\n  token: %s\n  dashboard: %t\n", addr, testToken, dashboard)
	}
	if err := os.WriteFile(path, []byte(version(false)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := runDaemon(t, cfg, daemon.Options{ConfigPath: path})
	s := serve(t, d, ServerOptions{})
	if err := s.Configure(cfg.API, cfg.Metrics); err != nil {
		t.Fatal(err)
	}
	d.SetListeners(s)
	reload := func(on bool) {
		t.Helper()
		if err := os.WriteFile(path, []byte(version(on)), 0o600); err != nil {
			t.Fatal(err)
		}
		ch, err := d.Reload()
		if err != nil {
			t.Fatalf("reload: %v", err)
		}
		if want := fmt.Sprintf("api.dashboard: %t -> %t", !on, on); !strings.Contains(ch.String(), want) {
			t.Errorf("reload changes %q, want %q", ch.String(), want)
		}
	}
	wantOff := func(when string) {
		t.Helper()
		for _, p := range []string{web.Prefix, web.Prefix + "app.js", "/v1/dashboard"} {
			if resp, body := fetch(t, "GET", addr, p, testToken, ""); resp.StatusCode != 404 || !strings.Contains(body, "api.dashboard") {
				t.Errorf("%s: GET %s: %d %s, want 404 saying how to turn it on", when, p, resp.StatusCode, body)
			}
		}
		if resp, _ := fetch(t, "GET", addr, "/", "", ""); resp.StatusCode != 401 {
			t.Errorf("%s: GET / without a token: %d, want 401", when, resp.StatusCode)
		}
	}
	wantOff("by default")

	reload(true)
	resp, body := fetch(t, "GET", addr, "/", "", "")
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != web.Prefix {
		t.Errorf("GET /: %d to %q, want a redirect to %s", resp.StatusCode, resp.Header.Get("Location"), web.Prefix)
	}
	resp, body = fetch(t, "GET", addr, web.Prefix, "", "")
	if resp.StatusCode != 200 || !strings.Contains(body, "app.js") {
		t.Fatalf("GET %s without a token: %d, want the page", web.Prefix, resp.StatusCode)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); csp != web.ContentSecurityPolicy {
		t.Errorf("CSP %q", csp)
	}
	if resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v: want framing refused and no sniffing", resp.Header)
	}
	for _, tok := range []string{"", otherToken} {
		if resp, _ := fetch(t, "GET", addr, "/v1/dashboard", tok, ""); resp.StatusCode != 401 {
			t.Errorf("GET /v1/dashboard with token %q: %d, want 401", tok, resp.StatusCode)
		}
	}
	for _, q := range []string{"?since=yesterday", "?since=-5", "?since=1.5"} {
		resp, body := fetch(t, "GET", addr, "/v1/dashboard"+q, testToken, "")
		if resp.StatusCode != 400 || !strings.Contains(body, "since") {
			t.Errorf("GET /v1/dashboard%s: %d %s, want 400 about since", q, resp.StatusCode, body)
		}
	}

	// The history fills as the manager computes (once a second).
	var dr DashboardResponse
	points := func() int {
		resp, body := fetch(t, "GET", addr, "/v1/dashboard", testToken, "")
		if resp.StatusCode != 200 {
			t.Fatalf("GET /v1/dashboard: %d %s", resp.StatusCode, body)
		}
		dr = DashboardResponse{}
		if err := json.Unmarshal([]byte(body), &dr); err != nil {
			t.Fatalf("decode: %v", err)
		}
		n := 0
		for _, p := range dr.History {
			for _, s := range p.Servers {
				n += len(s.T)
			}
		}
		return n
	}
	waitFor(t, "two readings in the history", func() bool { return points() >= 2 })
	if len(dr.Status.Ports) != 3 || len(dr.Manager.Ports) != 3 || dr.HA != nil || dr.Points != 3600 {
		t.Errorf("dashboard: %d ports, %d reports, HA %v, %d points; want 3, 3, none, 3600",
			len(dr.Status.Ports), len(dr.Manager.Ports), dr.HA, dr.Points)
	}
	var last int64
	for _, p := range dr.History {
		for _, s := range p.Servers {
			if n := len(s.T); n > 0 {
				last = max(last, s.T[n-1])
			}
			if len(s.Weight) != len(s.T) || len(s.LMI) != len(s.T) || len(s.NewPerSec) != len(s.T) || len(s.AdvisorMS) != len(s.T) {
				t.Errorf("series %s of %s: columns of unequal length", s.Server, p.Port)
			}
		}
	}
	resp, body = fetch(t, "GET", addr, fmt.Sprintf("/v1/dashboard?since=%d", last), testToken, "")
	var later DashboardResponse
	if err := json.Unmarshal([]byte(body), &later); resp.StatusCode != 200 || err != nil {
		t.Fatalf("since=%d: %d %v", last, resp.StatusCode, err)
	}
	for _, p := range later.History {
		for _, s := range p.Servers {
			for _, at := range s.T {
				if at <= last {
					t.Errorf("since=%d gave a reading at %d", last, at)
				}
			}
		}
	}

	// An action the page takes: the same PATCH as ndctl, on the listener.
	resp, body = fetch(t, "PATCH", addr, "/v1/clusters/198.51.100.100/ports/80/tcp/servers/198.51.100.12", testToken, `{"quiesce":true}`)
	if resp.StatusCode != 200 || !strings.Contains(body, "quiesce") {
		t.Errorf("quiesce through the listener: %d %s", resp.StatusCode, body)
	}
	// ... marked on the port's plots, from the daemon's event.
	waitFor(t, "the quiesce marked on the port's plots", func() bool {
		points()
		for _, p := range dr.History {
			for _, m := range p.Marks {
				if p.Port == "198.51.100.100:80/tcp" && m.Kind == "config" && strings.Contains(m.Text, "198.51.100.12 quiesce false -> true") {
					return true
				}
			}
		}
		return false
	})

	reload(false)
	wantOff("after a reload turned it off")
	if n := len(s.history.Ports()); n != 0 {
		t.Errorf("the history kept %d ports after the dashboard was turned off", n)
	}
}

// haFake is the fake controller of a node in a high-availability group.
type haFake struct{ *fakeController }

func (haFake) HAStatus() (ha.Status, error) {
	return ha.Status{Group: "lb", State: ha.StateActive, Self: netip.MustParseAddrPort("198.51.100.3:7100")}, nil
}

// TestDashboardHA: the dashboard carries this node's HA state, and null
// without an ha section (TestDashboardByReload).
func TestDashboardHA(t *testing.T) {
	s := handlerServer(haFake{newFake(t)})
	rec := do(s, "GET", "/v1/dashboard", "")
	if rec.Code != 404 {
		t.Errorf("GET /v1/dashboard while off: %d, want 404", rec.Code)
	}
	s.setDashboard(true)
	rec = do(s, "GET", "/v1/dashboard?since=0", "")
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"ha":{"Group":"lb","Self":"198.51.100.3:7100","State":"active"`) {
		t.Errorf("GET /v1/dashboard: %d %s", rec.Code, rec.Body)
	}
}
