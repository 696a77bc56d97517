package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// DefaultTimeout bounds each request of a Client but an events stream.
const DefaultTimeout = 30 * time.Second

// Client talks to ndd's control API, on its unix socket or over TCP. Its
// methods mirror the routes; an error response comes back as *Error.
type Client struct {
	base    string // scheme://host, without a trailing slash
	token   string
	http    *http.Client
	timeout time.Duration
}

// ClientOption adjusts a Client.
type ClientOption func(*clientOptions)

type clientOptions struct {
	tls     *tls.Config
	timeout time.Duration
}

// WithTLSConfig sets the TLS configuration of an https:// target, e.g. to
// trust the certificate authority of a self-signed certificate.
func WithTLSConfig(c *tls.Config) ClientOption {
	return func(o *clientOptions) { o.tls = c }
}

// WithTimeout bounds each request (events streams excepted); default
// DefaultTimeout.
func WithTimeout(d time.Duration) ClientOption {
	return func(o *clientOptions) { o.timeout = d }
}

// NewClient returns a client of the API at target: a unix socket path ("" for
// config.DefaultSocket, /run/nd/ndd.sock), or an http:// or https:// URL of
// the TCP listener. token is sent as a bearer token when not empty; the TCP
// listener requires it, the socket does not.
func NewClient(target, token string, opts ...ClientOption) (*Client, error) {
	o := clientOptions{timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	tr := &http.Transport{
		Proxy:               nil, // ndd is reached directly, never through HTTP_PROXY
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        4,
		IdleConnTimeout:     time.Minute,
	}
	c := &Client{token: token, http: &http.Client{Transport: tr}, timeout: o.timeout}
	switch {
	case strings.HasPrefix(target, "http://"), strings.HasPrefix(target, "https://"):
		u, err := url.Parse(target)
		if err != nil {
			return nil, fmt.Errorf("api client: target %q: %w", target, err)
		}
		if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("api client: target %q: want http(s)://host:port", target)
		}
		c.base = u.Scheme + "://" + u.Host
		tr.TLSClientConfig = o.tls
	default:
		path := strings.TrimPrefix(target, "unix://")
		if path == "" {
			path = config.DefaultSocket
		}
		c.base = "http://ndd" // the host is not used: every request dials the socket
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	}
	return c, nil
}

// Health checks that ndd answers.
func (c *Client) Health() error {
	var out HealthResponse
	if err := c.call(http.MethodGet, "/v1/health", nil, &out); err != nil {
		return err
	}
	if !out.OK {
		return errors.New("ndd reports itself unhealthy")
	}
	return nil
}

// Status returns the dispatcher's status.
func (c *Client) Status() (nd.Status, error) {
	var st nd.Status
	err := c.call(http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Config returns the running configuration as YAML.
func (c *Client) Config() ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	resp, err := c.do(ctx, http.MethodGet, "/v1/config", "", nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	return b, nil
}

// ApplyConfig makes the YAML configuration the running one and returns the
// changes made.
func (c *Client) ApplyConfig(yaml []byte) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	resp, err := c.do(ctx, http.MethodPut, "/v1/config", "application/yaml", bytes.NewReader(yaml))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	return changes(resp.Body)
}

// Reload makes ndd re-read its configuration file.
func (c *Client) Reload() (string, error) {
	return c.change(http.MethodPost, "/v1/config/reload", nil)
}

// AddCluster adds a VIP with the ports given. The configuration refuses a
// VIP without ports.
func (c *Client) AddCluster(vip string, ports ...PortRequest) (string, error) {
	return c.change(http.MethodPost, "/v1/clusters", ClusterRequest{VIP: vip, Ports: ports})
}

// RemoveCluster removes a VIP and all its ports.
func (c *Client) RemoveCluster(vip string) (string, error) {
	return c.change(http.MethodDelete, clusterPath(vip), nil)
}

// AddPort adds a port to a VIP.
func (c *Client) AddPort(vip string, p PortRequest) (string, error) {
	return c.change(http.MethodPost, clusterPath(vip)+"/ports", p)
}

// RemovePort removes a port of a VIP; proto is tcp or udp.
func (c *Client) RemovePort(vip string, port uint16, proto string) (string, error) {
	return c.change(http.MethodDelete, portPath(vip, port, proto), nil)
}

// AddServer adds a server to a port.
func (c *Client) AddServer(vip string, port uint16, proto string, s ServerRequest) (string, error) {
	return c.change(http.MethodPost, portPath(vip, port, proto)+"/servers", s)
}

// SetServer changes a server's weight or quiesce flag.
func (c *Client) SetServer(vip string, port uint16, proto, addr string, p ServerPatch) (string, error) {
	return c.change(http.MethodPatch, serverPath(vip, port, proto, addr), p)
}

// RemoveServer removes a server from a port.
func (c *Client) RemoveServer(vip string, port uint16, proto, addr string) (string, error) {
	return c.change(http.MethodDelete, serverPath(vip, port, proto, addr), nil)
}

// Events calls fn for each of ndd's recent events and, with follow, for every
// new one until ctx ends (Events then returns ctx's error), the server ends
// the stream, or fn returns an error (which Events returns).
func (c *Client) Events(ctx context.Context, follow bool, fn func(nd.Event) error) error {
	path := "/v1/events"
	if follow {
		path += "?follow=true"
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	resp, err := c.do(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev nd.Event
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read events: %w", err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
}

func clusterPath(vip string) string {
	return "/v1/clusters/" + url.PathEscape(vip)
}

func portPath(vip string, port uint16, proto string) string {
	return clusterPath(vip) + "/ports/" + strconv.FormatUint(uint64(port), 10) + "/" + url.PathEscape(proto)
}

func serverPath(vip string, port uint16, proto, addr string) string {
	return portPath(vip, port, proto) + "/servers/" + url.PathEscape(addr)
}

// change sends a request that changes the configuration and returns the
// changes made.
func (c *Client) change(method, path string, body any) (string, error) {
	var out ChangesResponse
	if err := c.call(method, path, body, &out); err != nil {
		return "", err
	}
	return out.Changes, nil
}

// call sends body (when not nil) as JSON and decodes the JSON answer into out.
func (c *Client) call(method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var r io.Reader
	ctype := ""
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		r, ctype = bytes.NewReader(b), "application/json"
	}
	resp, err := c.do(ctx, method, path, ctype, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

func changes(body io.Reader) (string, error) {
	var out ChangesResponse
	if err := json.NewDecoder(body).Decode(&out); err != nil {
		return "", fmt.Errorf("decode response: %w", err)
	}
	return out.Changes, nil
}

// do sends a request and returns a 2xx response; any other becomes *Error.
func (c *Client) do(ctx context.Context, method, path, ctype string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, responseError(resp)
}

// responseError reads an error response.
func responseError(resp *http.Response) *Error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode}
	var er ErrorResponse
	if json.Unmarshal(b, &er) == nil && er.Error != "" {
		e.Message = er.Error
	} else {
		e.Message = oneLine(string(b))
	}
	if e.Message == "" {
		e.Message = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	return e
}

// Close releases the client's idle connections.
func (c *Client) Close() {
	c.http.CloseIdleConnections()
}
