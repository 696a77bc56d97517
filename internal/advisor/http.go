package advisor

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"time"
)

// HTTP sends one request and measures the time until the whole response
// body has been read: the paper's forward metric, covering the server's
// queues and application path and not only its accept queue.
type HTTP struct {
	Spec HTTPSpec // normalized
	TLS  bool     // https
	// RootCAs verifies servers' certificates when Spec.Insecure is false;
	// nil means the host's roots.
	RootCAs *x509.CertPool
}

// Name returns "http" or "https".
func (h *HTTP) Name() string {
	if h.TLS {
		return KindHTTPS
	}
	return KindHTTP
}

// Probe makes a fresh connection through t's dial function, sends the
// request and reads the response to its end.
func (h *HTTP) Probe(ctx context.Context, t Target) Result {
	scheme := "http"
	if h.TLS {
		scheme = "https"
	}
	url := scheme + "://" + t.Addr.String() + h.Spec.Path
	req, err := http.NewRequestWithContext(ctx, h.Spec.Method, url, nil)
	if err != nil {
		return down("%s %s: build request: %v", h.Spec.Method, url, err)
	}
	if h.Spec.Host != "" {
		req.Host = h.Spec.Host
	}
	req.Header.Set("User-Agent", "nd-advisor")

	// A transport per attempt, without keep-alives: every probe pays for a
	// new connection as a client would, none is shared between targets,
	// and nothing lingers after the probe returns.
	tr := &http.Transport{
		DialContext:        t.dialer(),
		DisableKeepAlives:  true,
		DisableCompression: true,
		// Proxies from the environment must not reroute a health probe.
		Proxy:                  nil,
		MaxResponseHeaderBytes: 64 << 10,
	}
	if h.TLS {
		tr.TLSClientConfig = &tls.Config{
			InsecureSkipVerify: h.Spec.Insecure,
			RootCAs:            h.RootCAs,
			ServerName:         sniName(h.Spec.Host),
		}
		tr.ForceAttemptHTTP2 = false
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport: tr,
		// The status of the server's own answer is what counts; a redirect
		// elsewhere would measure something else.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		// The url.Error would repeat the method and URL.
		var uerr *neturl.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return down("%s %s: %v", h.Spec.Method, url, err)
	}
	defer resp.Body.Close()
	var head bytes.Buffer
	if _, err := io.Copy(&head, io.LimitReader(resp.Body, MaxBodyMatch)); err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	if err != nil {
		return down("%s %s: read body: %v", h.Spec.Method, url, err)
	}
	took := time.Since(start)

	if !h.statusOK(resp.StatusCode) {
		return down("%s %s: status %d, want %s", h.Spec.Method, url, resp.StatusCode, h.wantStatus())
	}
	if h.Spec.Body != "" && !bytes.Contains(head.Bytes(), []byte(h.Spec.Body)) {
		return down("%s %s: body does not contain %q", h.Spec.Method, url, h.Spec.Body)
	}
	return up(took)
}

func (h *HTTP) statusOK(code int) bool {
	if h.Spec.Status == 0 {
		return code >= 200 && code <= 399
	}
	return code == h.Spec.Status
}

func (h *HTTP) wantStatus() string {
	if h.Spec.Status == 0 {
		return "200-399"
	}
	return fmt.Sprint(h.Spec.Status)
}

// sniName turns a Host header into a TLS server name, without a port. For
// an IP literal crypto/tls sends no SNI and checks the certificate's IP
// addresses instead.
func sniName(host string) string {
	if host == "" {
		return ""
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	return host
}
