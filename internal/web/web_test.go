package web

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandlerServesFilesWithHeaders(t *testing.T) {
	h := Handler()
	for _, c := range []struct{ path, ctype, contains string }{
		{Prefix, "text/html", `<script src="app.js"`},
		{Prefix + "app.js", "javascript", "sessionStorage"},
		{Prefix + "style.css", "text/css", "body"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, c.path, nil))
		body, _ := io.ReadAll(rec.Body)
		if rec.Code != http.StatusOK {
			t.Errorf("GET %s: %d", c.path, rec.Code)
			continue
		}
		if ct := rec.Header().Get("Content-Type"); !strings.Contains(ct, c.ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", c.path, ct, c.ctype)
		}
		if !strings.Contains(string(body), c.contains) {
			t.Errorf("GET %s: body lacks %q", c.path, c.contains)
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: CSP %q", c.path, csp)
		}
		if rec.Header().Get("X-Content-Type-Options") != "nosniff" || rec.Header().Get("X-Frame-Options") != "DENY" {
			t.Errorf("GET %s: headers %v", c.path, rec.Header())
		}
	}
	for _, c := range []struct {
		method, path string
		code         int
	}{
		{http.MethodGet, Prefix + "nothing.js", http.StatusNotFound},
		{http.MethodPost, Prefix, http.StatusMethodNotAllowed},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
		if rec.Code != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, rec.Code, c.code)
		}
	}
}

// TestNoInlineScript: the policy forbids inline script and style, so the
// page must have none (the browser would refuse them).
func TestNoInlineScript(t *testing.T) {
	b, err := static.ReadFile("static/index.html")
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	for _, bad := range []string{"<script>", "onclick=", "onload=", "onsubmit=", "style=", "<style", "javascript:"} {
		if strings.Contains(page, bad) {
			t.Errorf("index.html contains %q, which the Content-Security-Policy refuses", bad)
		}
	}
}
