package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nd-dispatcher/nd/internal/connlimit"
	"github.com/nd-dispatcher/nd/internal/lograte"
)

// Server timeouts: every connection is bounded in time, so a client that
// trickles bytes (slowloris) holds a connection for seconds, not forever.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 8 << 10
	// logEvery is the least time between two log lines for the same kind
	// of rejection; the ones in between are counted and summarised.
	logEvery = 10 * time.Second
)

// Stat names: the agent's counters as they appear in Report.Stats.
const (
	StatConnections = "connections"         // connections accepted
	StatEvicted     = "connections_evicted" // waiting connections closed to make room (package connlimit)
	StatRequests    = "requests"            // every request that reached the handler
	StatServed      = "served"              // reports sent
	StatMalformed   = "rejected_malformed"  // wrong method, path, body or header syntax
	StatBadMAC      = "rejected_bad_mac"    // MAC missing or wrong
	StatStale       = "rejected_stale"      // timestamp outside max_clock_skew
	StatReplay      = "rejected_replay"     // nonce seen before
	StatBusy        = "rejected_busy"       // replay cache full of live nonces
	StatTLS         = "rejected_tls"        // TLS handshakes that failed (no or bad client certificate, ...)
	StatEncodeError = "report_encode_error" // reports that could not be encoded
)

var statNames = []string{StatConnections, StatEvicted, StatRequests, StatServed, StatMalformed, StatBadMAC, StatStale, StatReplay, StatBusy, StatTLS, StatEncodeError}

// Agent is the host-metric agent: it samples, runs the operator's
// commands, and serves reports to authenticated dispatchers.
type Agent struct {
	cfg     *Config
	log     *slog.Logger
	host    string
	key     []byte
	tls     *tls.Config
	sampler *sampler
	cmds    *commandCache
	replay  *replayCache

	counters map[string]*atomic.Uint64
	limiter  lograte.Limiter
	timeouts serverTimeouts
	limits   connlimit.Limits
}

// serverTimeouts are the http.Server's; tests shorten them.
type serverTimeouts struct {
	readHeader, read, write, idle time.Duration
}

// New checks cfg (Validate), loads its key and certificates, and returns
// an agent ready to Run. A nil logger discards logs.
func New(cfg *Config, logger *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cfg:      cfg,
		log:      logger,
		host:     cfg.Host,
		sampler:  newSampler(Proc{Root: cfg.ProcRoot}),
		cmds:     newCommandCache(cfg.Commands),
		replay:   newReplayCache(cfg.ReplayCacheSize),
		counters: map[string]*atomic.Uint64{},
		limiter:  lograte.Limiter{Every: logEvery},
		timeouts: serverTimeouts{readHeaderTimeout, readTimeout, writeTimeout, idleTimeout},
		limits:   connlimit.Default,
	}
	for _, n := range statNames {
		a.counters[n] = new(atomic.Uint64)
	}
	if a.host == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("agent: host name: %w", err)
		}
		a.host = h
	}
	if cfg.KeyFile != "" {
		key, err := LoadKeyFile(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		a.key = key
	}
	if cfg.TLS != nil {
		tc, err := serverTLS(cfg.TLS)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		a.tls = tc
	}
	return a, nil
}

func serverTLS(c *TLSConfig) (*tls.Config, error) {
	cert, pool, err := LoadMutualTLS(c.CertFile, c.KeyFile, c.ClientCAFile, "tls certificate", "tls client CA")
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// LoadMutualTLS reads what each end of the agent protocol needs for mutual
// TLS: its own certificate and key, and the CA that the other end's
// certificate must be signed by. keyPair and ca name the files in errors.
func LoadMutualTLS(certFile, keyFile, caFile, keyPair, ca string) (tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("%s: %w", keyPair, err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("%s: %w", ca, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return tls.Certificate{}, nil, fmt.Errorf("%s %s: no PEM certificate", ca, caFile)
	}
	return cert, pool, nil
}

// Run listens on the configured address and serves until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("agent: listen: %w", err)
	}
	return a.Serve(ctx, l)
}

// Serve samples, runs the commands and serves reports on l until ctx
// ends; it closes l. It returns nil after a clean stop.
func (a *Agent) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The first report already has every metric but CPU, which needs two.
	a.sampler.sample()
	var wg sync.WaitGroup
	wg.Go(func() { a.sampler.run(ctx, a.cfg.SampleInterval) })
	for _, cmd := range a.cfg.Commands {
		wg.Go(func() { a.cmds.runSchedule(ctx, cmd) })
	}
	defer wg.Wait()

	limiter := connlimit.New(l, a.limits, a.counters[StatConnections], a.counters[StatEvicted])
	l = limiter
	if a.tls != nil {
		l = tls.NewListener(l, a.tls)
	}
	srv := &http.Server{
		Handler:           a,
		ReadHeaderTimeout: a.timeouts.readHeader,
		ReadTimeout:       a.timeouts.read,
		WriteTimeout:      a.timeouts.write,
		IdleTimeout:       a.timeouts.idle,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(&serverErrorLog{a: a}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnState:         limiter.ConnState,
	}
	a.log.Info("agent serving", "addr", l.Addr().String(), "host", a.host,
		"hmac", a.key != nil, "mutual_tls", a.tls != nil, "commands", len(a.cfg.Commands))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("agent: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-errc
	return nil
}

// Stats returns the agent's counters.
func (a *Agent) Stats() map[string]uint64 {
	m := make(map[string]uint64, len(a.counters))
	for n, c := range a.counters {
		m[n] = c.Load()
	}
	return m
}

func (a *Agent) count(name string) { a.counters[name].Add(1) }

// rejection is a refused request: the counter it bumps and why.
type rejection struct {
	stat   string
	status int
	err    error
}

// ServeHTTP answers one request: a report to an authenticated GET of
// ReportPath, a counted and logged refusal to anything else. Serve puts it
// behind the connection limits, timeouts and TLS.
func (a *Agent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.count(StatRequests)
	now := time.Now()
	nonce, rej := a.verify(r, now)
	if rej != nil {
		a.reject(w, r, rej)
		return
	}
	rep := a.report(now)
	body, err := encodeReport(rep)
	if err != nil {
		a.count(StatEncodeError)
		a.logLimited(StatEncodeError, "agent cannot encode its report", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if a.key != nil {
		h.Set(HeaderMAC, hex.EncodeToString(responseMAC(a.key, nonce, body)))
	}
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(body); err != nil {
		a.log.Debug("agent could not send its report", "remote", r.RemoteAddr, "err", err)
		return
	}
	a.count(StatServed)
	a.log.Debug("agent served a report", "remote", r.RemoteAddr, "bytes", len(body))
}

// verify checks everything about a request but its TLS, which the
// listener has checked already. It returns the request's nonce (empty
// without a shared key).
func (a *Agent) verify(r *http.Request, now time.Time) (string, *rejection) {
	malformed := func(status int, format string, args ...any) *rejection {
		return &rejection{StatMalformed, status, fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)}
	}
	if r.Method != http.MethodGet {
		return "", malformed(http.StatusMethodNotAllowed, "method %.16q", r.Method)
	}
	// The MAC covers the path only, so nothing else may ride along.
	if r.RequestURI != ReportPath {
		return "", malformed(http.StatusNotFound, "target %.64q", r.RequestURI)
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		return "", malformed(http.StatusBadRequest, "request has a body")
	}
	if a.key == nil {
		return "", nil
	}
	ts, ok1 := oneHeader(r, HeaderTime)
	nonce, ok2 := oneHeader(r, HeaderNonce)
	mac, ok3 := oneHeader(r, HeaderMAC)
	if !ok1 || !ok2 || !ok3 {
		if !ok3 {
			return "", &rejection{StatBadMAC, http.StatusUnauthorized, fmt.Errorf("%w: want one each of %s, %s, %s", ErrBadMAC, HeaderTime, HeaderNonce, HeaderMAC)}
		}
		return "", malformed(http.StatusBadRequest, "want exactly one each of %s, %s, %s", HeaderTime, HeaderNonce, HeaderMAC)
	}
	sec, ok := parseTime(ts)
	if !ok {
		return "", malformed(http.StatusBadRequest, "%s %.24q: want decimal Unix seconds", HeaderTime, ts)
	}
	if !validNonce(nonce) {
		return "", malformed(http.StatusBadRequest, "%s: want %d lowercase hex digits", HeaderNonce, 2*nonceBytes)
	}
	// Authenticate before anything else that depends on the values, so
	// that no unauthenticated request reaches the replay cache.
	if !checkMAC(mac, requestMAC(a.key, r.Method, r.RequestURI, ts, nonce)) {
		return "", &rejection{StatBadMAC, http.StatusUnauthorized, ErrBadMAC}
	}
	if !withinWindow(sec, now, a.cfg.MaxClockSkew) {
		return "", &rejection{StatStale, http.StatusUnauthorized,
			fmt.Errorf("%w: request time %d, agent time %d, window %v", ErrStale, sec, now.Unix(), a.cfg.MaxClockSkew)}
	}
	expires := time.Unix(sec, 0).Add(a.cfg.MaxClockSkew + time.Second)
	switch err := a.replay.add(nonce, expires, now); {
	case errors.Is(err, ErrReplay):
		return "", &rejection{StatReplay, http.StatusUnauthorized, err}
	case err != nil:
		return "", &rejection{StatBusy, http.StatusServiceUnavailable, err}
	}
	return nonce, nil
}

func oneHeader(r *http.Request, name string) (string, bool) {
	v := r.Header.Values(name)
	if len(v) != 1 {
		return "", false
	}
	return v[0], true
}

func (a *Agent) reject(w http.ResponseWriter, r *http.Request, rej *rejection) {
	a.count(rej.stat)
	a.logLimited(rej.stat, "agent rejected a request", "remote", r.RemoteAddr, "reason", rej.stat, "err", rej.err)
	connlimit.Release(w)
	http.Error(w, http.StatusText(rej.status), rej.status)
}

// report assembles the current report.
func (a *Agent) report(now time.Time) Report {
	r := Report{Host: a.host, Time: now, Metrics: map[string]float64{}, Errors: map[string]string{}, Stats: a.Stats()}
	a.sampler.fill(r.Metrics, r.Errors)
	a.cmds.fill(r.Metrics, r.Errors)
	return r
}

func (a *Agent) logLimited(kind, msg string, args ...any) {
	a.limiter.Warn(a.log, kind, msg, args...)
}

// serverErrorLog receives net/http's own error lines (failed TLS
// handshakes, bad request lines) and counts and rate-limits them.
type serverErrorLog struct{ a *Agent }

func (s *serverErrorLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	kind := "http_error"
	if strings.Contains(line, "TLS handshake error") {
		kind = StatTLS
		s.a.count(StatTLS)
	}
	s.a.logLimited(kind, "agent connection error", "err", line)
	return len(p), nil
}
