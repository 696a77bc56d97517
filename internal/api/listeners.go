package api

import (
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/keyfile"
)

// tcpListener is one of the TCP listeners the configuration names: the
// API's (api.listen, with its token and TLS) or the metrics' (metrics.listen).
type tcpListener struct {
	addr            string // as configured
	tlsCert, tlsKey string
	l               net.Listener
	handler         http.Handler
	srv             *http.Server // nil until served
	done            chan struct{}
	// retired: the listener was closed on purpose, not by a failure.
	retired atomic.Bool
}

func (t *tcpListener) same(addr, cert, key string) bool {
	return t != nil && t.addr == addr && t.tlsCert == cert && t.tlsKey == key
}

func (t *tcpListener) Addr() net.Addr {
	if t == nil {
		return nil
	}
	return t.l.Addr()
}

// listenTCP binds addr, in TLS with cert and key when given.
func listenTCP(addr, cert, key string) (*tcpListener, error) {
	var tlsConfig *tls.Config
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("api: load TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("api: listen on %s: %w", addr, err)
	}
	if tlsConfig != nil {
		l = tls.NewListener(l, tlsConfig)
	}
	return &tcpListener{addr: addr, tlsCert: cert, tlsKey: key, l: l}, nil
}

// Configure makes the server's TCP listeners those of the configuration:
// api.listen (bearer token api.token or the content of api.token_file,
// TLS with api.tls_cert and api.tls_key) and metrics.listen (GET /metrics
// only, without a token, as Prometheus exporters serve). It changes them
// live and all or nothing: a listener that cannot be opened (a busy port,
// an unreadable token file or certificate) leaves every listener and the
// token as they were. A new address is opened before the old one is
// closed (changing only TLS on one address closes it first); a new token
// is in force, and the old one refused, when Configure returns.
// Requests in flight on a closed listener get a few seconds to finish.
func (s *Server) Configure(a config.API, m config.Metrics) error {
	var token string
	if a.Listen != "" {
		switch {
		case a.Token != "":
			token = a.Token
		case a.TokenFile != "":
			t, err := keyfile.Token(a.TokenFile)
			if err != nil {
				return fmt.Errorf("api.token_file: %w", err)
			}
			token = t
		default:
			return errors.New("api: a TCP listener requires a token")
		}
	}
	if (a.TLSCert == "") != (a.TLSKey == "") {
		return errors.New("api: TLS needs both a certificate and a key")
	}
	if a.TLSCert != "" && a.Listen == "" {
		return errors.New("api: TLS applies to the TCP listener: set Listen too")
	}
	if m.Listen != "" && s.metrics == nil {
		return errors.New("api: no metrics to serve on metrics.listen")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("api: server closed")
	}
	// Open what is new first, so that a failure changes nothing. An
	// address kept with other TLS settings must be closed to be reopened.
	var retire []*tcpListener
	open := func(cur *tcpListener, addr, cert, key string) (*tcpListener, bool, error) {
		if addr == "" || cur.same(addr, cert, key) {
			return nil, false, nil
		}
		if cur != nil && cur.addr == addr {
			return nil, true, nil // reopened below, after closing
		}
		t, err := listenTCP(addr, cert, key)
		return t, false, err
	}
	newAPI, reopenAPI, err := open(s.tcp, a.Listen, a.TLSCert, a.TLSKey)
	if err != nil {
		return err
	}
	newMetrics, _, err := open(s.metricsL, m.Listen, "", "") // no TLS: never reopened
	if err != nil {
		if newAPI != nil {
			newAPI.l.Close()
		}
		return err
	}
	if reopenAPI {
		// Check the certificate before closing anything.
		if _, err := tls.LoadX509KeyPair(a.TLSCert, a.TLSKey); a.TLSCert != "" && err != nil {
			for _, t := range []*tcpListener{newAPI, newMetrics} {
				if t != nil {
					t.l.Close()
				}
			}
			return fmt.Errorf("api: load TLS certificate: %w", err)
		}
	}

	// The token first: from here on only the new one opens the API.
	sum := sha256.Sum256([]byte(token))
	s.token.Store(&sum)

	switch {
	case a.Listen == "" && s.tcp != nil:
		retire, s.tcp = append(retire, s.tcp), nil
	case newAPI != nil:
		if s.tcp != nil {
			retire = append(retire, s.tcp)
		}
		s.tcp = newAPI
		s.startLocked(s.tcp, s.authenticate(s.handler))
	case reopenAPI:
		s.retireLocked(s.tcp)
		t, err := listenTCP(a.Listen, a.TLSCert, a.TLSKey)
		s.tcp = t
		if err != nil {
			s.log.Error("api: reopen the TCP listener with its new TLS settings", "listen", a.Listen, "err", err)
			s.tcp = nil
		} else {
			s.startLocked(s.tcp, s.authenticate(s.handler))
		}
	}
	switch {
	case m.Listen == "" && s.metricsL != nil:
		retire, s.metricsL = append(retire, s.metricsL), nil
	case newMetrics != nil:
		if s.metricsL != nil {
			retire = append(retire, s.metricsL)
		}
		s.metricsL = newMetrics
		s.startLocked(s.metricsL, s.metricsOnly())
	}
	for _, t := range retire {
		s.retireLocked(t)
	}
	return nil
}

// metricsOnly serves GET /metrics and nothing else.
func (s *Server) metricsOnly() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metrics)
	return s.recoverPanics(mux)
}

// startLocked serves t with h once Serve runs (at once if it runs).
func (s *Server) startLocked(t *tcpListener, h http.Handler) {
	t.handler = h
	if s.serving {
		s.runLocked(t)
	}
}

// runLocked starts serving t.
func (s *Server) runLocked(t *tcpListener) {
	t.srv = s.httpServer(s.ctx, t.handler)
	t.done = make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(t.done)
		err := t.srv.Serve(t.l)
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !t.retired.Load() {
			select {
			case s.errc <- fmt.Errorf("api: serve %s: %w", t.addr, err):
			default:
			}
		}
	}()
}

// retireLocked closes t's listener at once, so that its address refuses
// connections, and gives its requests in flight a few seconds.
func (s *Server) retireLocked(t *tcpListener) {
	if t == nil {
		return
	}
	t.retired.Store(true)
	t.l.Close()
	if t.srv == nil {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.shutdown(t.srv)
		<-t.done
	}()
}
