package api

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/connlimit"
)

// tcpListener is one of the TCP listeners the configuration names: the
// API's (api.listen, with its token and TLS) or the metrics' (metrics.listen).
type tcpListener struct {
	addr            string // as configured
	tlsCert, tlsKey string
	l               net.Listener
	limit           *connlimit.Listener // under l (TLS, if any, wraps it)
	// cert is the certificate TLS serves; a reload replaces it when the
	// files were rewritten in place (a renewed certificate).
	cert    atomic.Pointer[tls.Certificate]
	handler http.Handler
	srv     *http.Server // nil until served
	done    chan struct{}
	// retired: the listener was closed on purpose, not by a failure.
	retired atomic.Bool
}

func (t *tcpListener) same(addr, cert, key string) bool {
	return t != nil && t.addr == addr && t.tlsCert == cert && t.tlsKey == key
}

// limiter is t's connection limiter; nil for no listener.
func (t *tcpListener) limiter() *connlimit.Listener {
	if t == nil {
		return nil
	}
	return t.limit
}

func (t *tcpListener) Addr() net.Addr {
	if t == nil {
		return nil
	}
	return t.l.Addr()
}

// connCounters count one kind of TCP listener's connections across the
// listeners that succeed one another on reloads.
type connCounters struct {
	accepted, evicted atomic.Uint64
	current           atomic.Pointer[connlimit.Listener]
}

// listenTCP binds addr, in TLS with cert and key when given, within the
// connection limits of a control listener: idle or slow connections,
// however many, neither keep an operator's request out nor use up the
// file descriptors that ndd's advisors, agents and peers need.
func listenTCP(addr, cert, key string, counters *connCounters) (*tcpListener, error) {
	t := &tcpListener{addr: addr, tlsCert: cert, tlsKey: key}
	var tlsConfig *tls.Config
	if cert != "" {
		c, err := loadCertificate(cert, key)
		if err != nil {
			return nil, err
		}
		t.cert.Store(c)
		tlsConfig = &tls.Config{
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return t.cert.Load(), nil },
			MinVersion:     tls.VersionTLS12,
		}
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("api: listen on %s: %w", addr, err)
	}
	t.limit = connlimit.New(l, connlimit.Default, &counters.accepted, &counters.evicted)
	t.l = t.limit
	if tlsConfig != nil {
		t.l = tls.NewListener(t.l, tlsConfig)
	}
	return t, nil
}

func loadCertificate(cert, key string) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("api: load TLS certificate: %w", err)
	}
	return &c, nil
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
	token, err := a.ReadToken()
	if err != nil {
		return err
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
	// Open what is new first, so that a failure changes nothing.
	apiChange, err := planListener(s.tcp, a.Listen, a.TLSCert, a.TLSKey, &s.apiConns)
	if err != nil {
		return err
	}
	metricsChange, err := planListener(s.metricsL, m.Listen, "", "", &s.metricsConns)
	if err != nil {
		apiChange.abandon()
		return err
	}
	// The token first: from here on only the new one opens the API.
	s.setToken(token)
	s.setDashboard(a.Dashboard)
	s.tcp = s.switchLocked(s.tcp, apiChange, s.tcpHandler)
	s.metricsL = s.switchLocked(s.metricsL, metricsChange, s.metricsOnly)
	s.apiConns.current.Store(s.tcp.limiter())
	s.metricsConns.current.Store(s.metricsL.limiter())
	return nil
}

// listenerChange is what Configure does to one TCP listener.
type listenerChange struct {
	keep            bool             // the listener stays (its certificate may be renewed)
	renewed         *tls.Certificate // the kept listener's certificate, read again
	next            *tcpListener     // the new listener, opened already; nil: none, or reopen
	reopen          bool             // the same address with other TLS settings: close, then open
	addr, cert, key string
	counters        *connCounters
}

// planListener opens what replacing cur with addr (and TLS cert and key)
// needs opened before anything is closed.
func planListener(cur *tcpListener, addr, cert, key string, counters *connCounters) (listenerChange, error) {
	c := listenerChange{addr: addr, cert: cert, key: key, counters: counters}
	switch {
	case cur == nil && addr == "":
		c.keep = true
	case cur.same(addr, cert, key):
		// The files may have been rewritten in place: every apply reads
		// them again, as it does api.token_file.
		c.keep = true
		if cert != "" {
			renewed, err := loadCertificate(cert, key)
			if err != nil {
				return c, err
			}
			c.renewed = renewed
		}
	case addr == "":
		// Close cur.
	case cur != nil && cur.addr == addr:
		// The address is taken by cur itself: check what can be checked
		// before closing it.
		if cert != "" {
			if _, err := loadCertificate(cert, key); err != nil {
				return c, err
			}
		}
		c.reopen = true
	default:
		t, err := listenTCP(addr, cert, key, counters)
		if err != nil {
			return c, err
		}
		c.next = t
	}
	return c, nil
}

// abandon closes what planListener opened.
func (c listenerChange) abandon() {
	if c.next != nil {
		c.next.l.Close()
	}
}

// switchLocked applies c to the listener cur and returns the one in its
// place: the new one is served before the old one is closed.
func (s *Server) switchLocked(cur *tcpListener, c listenerChange, handler func() http.Handler) *tcpListener {
	if c.keep {
		if c.renewed != nil {
			cur.cert.Store(c.renewed)
		}
		return cur
	}
	next := c.next
	if c.reopen {
		s.retireLocked(cur)
		cur = nil
		t, err := listenTCP(c.addr, c.cert, c.key, c.counters)
		if err != nil {
			s.log.Error("api: reopen a TCP listener with its new TLS settings", "listen", c.addr, "err", err)
			return nil
		}
		next = t
	}
	if next != nil {
		s.startLocked(next, handler())
	}
	s.retireLocked(cur)
	return next
}

// metricsOnly serves GET /metrics and nothing else. Anything else is
// refused with its connection closed, its body unread: the port needs no
// token, and a connection waiting for a body nobody reads would hold a slot.
func (s *Server) metricsOnly() http.Handler {
	return s.recoverPanics(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path != "/metrics":
			rejectAndClose(w, http.StatusNotFound, "not found: this listener serves GET /metrics only")
		case r.Method != http.MethodGet && r.Method != http.MethodHead:
			w.Header().Set("Allow", "GET, HEAD")
			rejectAndClose(w, http.StatusMethodNotAllowed, "method not allowed: this listener serves GET /metrics only")
		case r.ContentLength != 0:
			rejectAndClose(w, http.StatusBadRequest, "a scrape has no body")
		default:
			s.metrics.ServeHTTP(w, r)
		}
	}))
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
	t.srv.ConnState = t.limit.ConnState
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

// ConnStats are the TCP listeners' connection counts, by listener ("api"
// for api.listen, "metrics" for metrics.listen): accepted and evicted
// since the server started, open now (0 without the listener).
func (s *Server) ConnStats() map[string]connlimit.Stats {
	stats := map[string]connlimit.Stats{}
	for name, c := range map[string]*connCounters{"api": &s.apiConns, "metrics": &s.metricsConns} {
		st := connlimit.Stats{Accepted: c.accepted.Load(), Evicted: c.evicted.Load()}
		if l := c.current.Load(); l != nil {
			st.Open = l.Stats().Open
		}
		stats[name] = st
	}
	return stats
}
