package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	// --version reads no configuration and loads nothing.
	if code := run([]string{"--version", "--config", "/nonexistent"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "ndd ") {
		t.Errorf("ndd --version: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	if code := run([]string{"--bogus"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--version") {
		t.Errorf("ndd --bogus: exit %d, usage %q", code, errb.String())
	}
}

// TestServeMetrics serves over a unix socket (the code takes any listener)
// so that the test listens on no network.
func TestServeMetrics(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "metrics.sock"))
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "nd_scrape_error 0\n") })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveMetrics(ctx, ln, h) }()

	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", ln.Addr().String())
	}}}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get("http://ndd" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics"); code != 200 || body != "nd_scrape_error 0\n" {
		t.Errorf("GET /metrics: %d %q", code, body)
	}
	if code, _ := get("/v1/status"); code != http.StatusNotFound {
		t.Errorf("GET /v1/status on the metrics listener: %d, want 404", code)
	}
	client.CloseIdleConnections()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serveMetrics after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serveMetrics did not return after cancel")
	}
}
