package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"
)

// ClientOptions configure a Client. Key, TLS or both must be set, matching
// the agents' configuration.
type ClientOptions struct {
	// Key is the shared key (at least MinKeyLen bytes; see LoadKeyFile).
	// With it every request and response is MAC'ed.
	Key []byte
	// TLS, when set, makes the client speak HTTPS. It must carry the
	// client certificate and the CA that signed the agents' certificates.
	// Without ServerName, an agent's certificate must name its IP address.
	TLS *tls.Config
	// Timeout bounds one Poll, connection included. Default 2s.
	Timeout time.Duration
	// DialContext, if set, opens connections (tests use it to dial inside
	// a network namespace). Default: a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// DefaultPollTimeout bounds a poll when ClientOptions.Timeout is zero.
const DefaultPollTimeout = 2 * time.Second

// maxResponseHeader bounds an agent's response header block.
const maxResponseHeader = 16 << 10

// Client polls agents for reports. It is safe for concurrent use.
type Client struct {
	key     []byte
	tls     bool
	timeout time.Duration
	hc      *http.Client
	tr      *http.Transport
}

// NewClient returns a client for agents configured like o.
func NewClient(o ClientOptions) (*Client, error) {
	if o.Key == nil && o.TLS == nil {
		return nil, errors.New("agent client: no authentication: set Key, TLS or both")
	}
	if o.Key != nil && len(o.Key) < MinKeyLen {
		return nil, fmt.Errorf("agent client: key is %d bytes, want at least %d", len(o.Key), MinKeyLen)
	}
	if o.Timeout < 0 {
		return nil, fmt.Errorf("agent client: negative timeout %v", o.Timeout)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultPollTimeout
	}
	dial := o.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: o.Timeout}).DialContext
	}
	tr := &http.Transport{
		DialContext:            dial,
		MaxIdleConnsPerHost:    1,
		IdleConnTimeout:        30 * time.Second,
		TLSHandshakeTimeout:    o.Timeout,
		ResponseHeaderTimeout:  o.Timeout,
		MaxResponseHeaderBytes: maxResponseHeader,
		DisableCompression:     true,
		ForceAttemptHTTP2:      false,
	}
	if o.TLS != nil {
		tc := o.TLS.Clone()
		if tc.MinVersion < tls.VersionTLS13 {
			tc.MinVersion = tls.VersionTLS13
		}
		tr.TLSClientConfig = tc
	}
	c := &Client{
		key: bytes.Clone(o.Key), // nil stays nil: no key

		tls:     o.TLS != nil,
		timeout: o.Timeout,
		tr:      tr,
		hc: &http.Client{
			Transport: tr,
			// An agent never redirects; following one would send the
			// request somewhere the operator did not name.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	return c, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.tr.CloseIdleConnections() }

// Poll asks the agent at addr for its report. Every failure is an error:
// no connection, a refusal, a bad MAC, a malformed report.
func (c *Client) Poll(ctx context.Context, addr netip.AddrPort) (Report, error) {
	if !addr.IsValid() {
		return Report{}, fmt.Errorf("poll agent: invalid address")
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	scheme := "http"
	if c.tls {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr.String()+ReportPath, nil)
	if err != nil {
		return Report{}, fmt.Errorf("poll agent %s: %w", addr, err)
	}
	var nonce string
	if c.key != nil {
		nonce, err = signRequest(req, c.key, time.Now())
		if err != nil {
			return Report{}, fmt.Errorf("poll agent %s: %w", addr, err)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return Report{}, fmt.Errorf("poll agent %s: %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBody+1))
	if err != nil {
		return Report{}, fmt.Errorf("poll agent %s: read: %w", addr, err)
	}
	rep, err := c.parseResponse(resp.StatusCode, resp.Header.Values(HeaderMAC), nonce, body)
	if err != nil {
		return Report{}, fmt.Errorf("poll agent %s: %w", addr, err)
	}
	return rep, nil
}

// signRequest adds the timestamp, a fresh nonce and the MAC to req.
func signRequest(req *http.Request, key []byte, now time.Time) (string, error) {
	var b [nonceBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("nonce: %w", err)
	}
	nonce := hex.EncodeToString(b[:])
	ts := strconv.FormatInt(now.Unix(), 10)
	req.Header.Set(HeaderTime, ts)
	req.Header.Set(HeaderNonce, nonce)
	req.Header.Set(HeaderMAC, hex.EncodeToString(requestMAC(key, req.Method, ReportPath, ts, nonce)))
	return nonce, nil
}

// parseResponse checks an agent's answer to the request that carried
// nonce: the status, then the MAC over the raw body, and only then the
// body's content.
func (c *Client) parseResponse(status int, macs []string, nonce string, body []byte) (Report, error) {
	if status != http.StatusOK {
		return Report{}, fmt.Errorf("agent refused: %d %s", status, http.StatusText(status))
	}
	if len(body) > MaxResponseBody {
		return Report{}, fmt.Errorf("%w: response longer than %d bytes", ErrMalformed, MaxResponseBody)
	}
	if c.key != nil {
		if len(macs) != 1 || !checkMAC(macs[0], responseMAC(c.key, nonce, body)) {
			return Report{}, fmt.Errorf("response: %w", ErrBadMAC)
		}
	}
	return decodeReport(body)
}
