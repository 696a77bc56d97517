package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/connlimit"
	"github.com/nd-dispatcher/nd/internal/history"
	"github.com/nd-dispatcher/nd/internal/lograte"
)

// ServerOptions configure the API server.
type ServerOptions struct {
	// Socket is the unix socket path. It is created mode 0600 (its parent
	// directory 0700 when missing); a stale socket left by a previous ndd
	// is replaced. Filesystem permissions are its authentication: no token
	// is asked of its clients. Required.
	Socket string
	// Listen is an optional TCP listener, "addr:port". Every request on it
	// must carry "Authorization: Bearer <Token>".
	Listen string
	// Token is the bearer token of the TCP listener. Required with Listen.
	Token string
	// TLSCert and TLSKey are PEM files; when given, the TCP listener speaks
	// TLS. Both or neither, and only with Listen.
	TLSCert, TLSKey string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics, when not nil, is served at /metrics (see package metrics).
	Metrics http.Handler
}

// Limits of the server.
const (
	// MaxConfigSize bounds the body of PUT /v1/config.
	MaxConfigSize = 4 << 20
	// maxJSONSize bounds the other request bodies.
	maxJSONSize = 1 << 20

	shutdownTimeout   = 5 * time.Second
	readHeaderTimeout = 10 * time.Second
	readTimeout       = time.Minute
	idleTimeout       = 2 * time.Minute
	// maxHeaderBytes bounds a request's line and headers (net/http's
	// default is 1 MiB); the API's requests carry a token and little else.
	maxHeaderBytes = 32 << 10
)

// Server serves the control API. NewServer creates its listeners; Serve
// serves them until its context ends; Configure changes the TCP listeners
// live. A Server that will not be served must be closed.
type Server struct {
	c       Controller
	log     *slog.Logger
	handler http.Handler // routes, without authentication
	metrics http.Handler // nil without metrics

	unix   net.Listener
	socket string
	// socketFile identifies the socket file created, so that shutdown
	// removes that one and not another daemon's.
	socketFile os.FileInfo

	// token is the TCP listener's token; Configure replaces it.
	token atomic.Pointer[bearerToken]
	// refused rate-limits the log lines of requests refused for their
	// token: anyone who reaches the port can send them.
	refused lograte.Limiter

	// mu guards the TCP listeners and the serving state.
	mu       sync.Mutex
	tcp      *tcpListener // api.listen; nil without
	metricsL *tcpListener // metrics.listen; nil without
	serving  bool         // Serve runs: new listeners are served at once
	closed   bool
	// ctx is every served connection's base context; Serve cancels it to
	// end event streams at shutdown.
	ctx    context.Context
	cancel context.CancelFunc
	// wg counts the TCP listeners' goroutines; errc takes the first
	// failure of one.
	wg   sync.WaitGroup
	errc chan error

	// edits serialises the API's changes: Controller.Update copies the
	// running configuration, edits the copy and applies it, so two edits
	// running at once could each apply a copy without the other's change.
	edits sync.Mutex

	// dashboardOn is api.dashboard; history is the manager's recent past
	// that the dashboard plots, kept while it is on.
	dashboardOn atomic.Bool
	history     *history.History

	// apiConns and metricsConns count the TCP listeners' connections
	// (atomics: not under mu).
	apiConns, metricsConns connCounters

	// readTimeout bounds reading a request (readTimeout; tests shorten it).
	readTimeout time.Duration

	closeOnce sync.Once
	closeErr  error
}

// NewServer checks the options and creates the listeners, so that a daemon
// learns of a busy socket or port before it starts serving.
func NewServer(c Controller, o ServerOptions) (*Server, error) {
	if c == nil {
		return nil, errors.New("api: a controller is required")
	}
	if o.Socket == "" {
		return nil, errors.New("api: a unix socket path is required")
	}
	if o.Listen != "" && o.Token == "" {
		return nil, errors.New("api: a TCP listener requires a token")
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return nil, errors.New("api: TLS needs both a certificate and a key")
	}
	if o.TLSCert != "" && o.Listen == "" {
		return nil, errors.New("api: TLS applies to the TCP listener: set Listen too")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{
		c: c, log: o.Logger, socket: o.Socket, metrics: o.Metrics,
		readTimeout: readTimeout,
		refused:     lograte.Limiter{Every: 10 * time.Second},
		errc:        make(chan error, 1),
		history:     history.New(history.DefaultPoints),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.token.Store(newBearerToken(""))
	s.handler = s.routes(o.Metrics)

	// Check the certificate before creating the socket.
	if o.TLSCert != "" {
		if _, err := loadCertificate(o.TLSCert, o.TLSKey); err != nil {
			return nil, err
		}
	}
	var err error
	if s.unix, s.socketFile, err = listenUnix(o.Socket); err != nil {
		return nil, err
	}
	if o.Listen != "" {
		err := s.Configure(config.API{Listen: o.Listen, Token: o.Token, TLSCert: o.TLSCert, TLSKey: o.TLSKey}, config.Metrics{})
		if err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// SocketPath is the unix socket the server listens on.
func (s *Server) SocketPath() string { return s.socket }

// TCPAddr is the address of the API's TCP listener, nil when there is none.
func (s *Server) TCPAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tcp.Addr() // nil without one
}

// MetricsAddr is the address of the metrics listener, nil when there is
// none.
func (s *Server) MetricsAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.metricsL.Addr() // nil without one
}

// Serve answers requests until ctx ends, then shuts down: it stops accepting,
// ends event streams, waits a few seconds for requests in flight, and
// removes the socket. It returns nil after a shutdown that ctx asked for.
func (s *Server) Serve(ctx context.Context) error {
	defer func() {
		if err := s.Close(); err != nil {
			s.log.Warn("api: close", "err", err)
		}
	}()
	context.AfterFunc(ctx, s.cancel)

	unix := s.httpServer(s.ctx, s.handler)
	unixDone := make(chan error, 1)
	go func() {
		err := unix.Serve(s.unix)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		unixDone <- err
	}()
	s.wg.Add(1)
	go s.keepHistory()
	s.mu.Lock()
	s.serving = true
	for _, t := range []*tcpListener{s.tcp, s.metricsL} {
		if t != nil {
			s.runLocked(t)
		}
	}
	s.mu.Unlock()
	s.log.Info("api serving", "socket", s.socket, "listen", s.TCPAddr(), "metrics", s.MetricsAddr())

	var err error
	unixRunning := true
	select {
	case <-s.ctx.Done():
	case err = <-unixDone:
		unixRunning = false
		if err != nil {
			err = fmt.Errorf("api: serve: %w", err)
		}
	case err = <-s.errc:
	}
	// Requests' contexts derive from s.ctx: cancelling it ends the event
	// streams, which would otherwise hold the shutdown for its whole
	// timeout.
	s.cancel()
	s.mu.Lock()
	s.closed = true
	tcp := []*tcpListener{s.tcp, s.metricsL}
	s.tcp, s.metricsL = nil, nil
	for _, t := range tcp {
		s.retireLocked(t)
	}
	s.mu.Unlock()
	s.shutdown(unix)
	if unixRunning {
		if serr := <-unixDone; serr != nil && err == nil {
			err = fmt.Errorf("api: serve: %w", serr)
		}
	}
	s.wg.Wait()
	s.log.Info("api stopped")
	return err
}

// shutdown stops srv, giving its requests in flight shutdownTimeout.
func (s *Server) shutdown(srv *http.Server) {
	ctx, stop := context.WithTimeout(context.Background(), shutdownTimeout)
	defer stop()
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
	}
}

func (s *Server) httpServer(ctx context.Context, h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       s.readTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// No WriteTimeout: GET /v1/events?follow=true streams for as long
		// as the client stays.
		BaseContext: func(net.Listener) context.Context { return ctx },
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// Close releases the listeners and removes the socket. Serve calls it; call
// it only for a Server that is not served.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		s.mu.Lock()
		s.closed = true
		for _, t := range []*tcpListener{s.tcp, s.metricsL} {
			s.retireLocked(t)
		}
		s.tcp, s.metricsL = nil, nil
		s.mu.Unlock()
		s.cancel()
		if s.unix != nil {
			if err := s.unix.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
		if s.socketFile != nil {
			// Remove the socket only if it is still the one created here:
			// a newer daemon may have replaced it.
			if fi, err := os.Lstat(s.socket); err == nil && os.SameFile(fi, s.socketFile) {
				if err := os.Remove(s.socket); err != nil {
					errs = append(errs, fmt.Errorf("api: remove socket: %w", err))
				}
			}
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// listenUnix creates the unix socket at path with mode 0600. The socket is
// bound in a fresh private directory next to path, given its mode there and
// renamed into place, so that no one can connect to it before its mode is
// set, whatever the process umask. A stale socket at path is replaced; a
// socket that still answers, or a file that is not a socket, is an error.
func listenUnix(path string) (net.Listener, os.FileInfo, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("api: create socket directory: %w", err)
	}
	if err := checkStale(path); err != nil {
		return nil, nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".nd")
	if err != nil {
		return nil, nil, fmt.Errorf("api: create socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	tmpPath := filepath.Join(tmp, "s")
	l, err := net.Listen("unix", tmpPath)
	if err != nil {
		return nil, nil, fmt.Errorf("api: listen on %s: %w", path, err)
	}
	// The file is renamed away: Close must not unlink by the old name.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmpPath, 0o600); err != nil {
		l.Close()
		return nil, nil, fmt.Errorf("api: socket mode: %w", err)
	}
	if err := os.Rename(tmpPath, path); err != nil {
		l.Close()
		return nil, nil, fmt.Errorf("api: create socket %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		l.Close()
		return nil, nil, fmt.Errorf("api: create socket %s: %w", path, err)
	}
	return l, fi, nil
}

// checkStale makes sure that path is free or holds a socket no one serves.
func checkStale(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("api: socket %s: %w", path, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("api: socket %s: the path exists and is not a socket", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("api: socket %s is in use: is another ndd running?", path)
	}
	return nil // stale: the rename replaces it
}

// bearerToken is the TCP listener's token: its hash, compared in
// constant time, and a context that ends when the token is replaced, so
// that a request the old token let in (an event stream) ends with it.
type bearerToken struct {
	sum     [sha256.Size]byte
	revoked context.Context
	revoke  context.CancelFunc
}

func newBearerToken(token string) *bearerToken {
	t := &bearerToken{sum: sha256.Sum256([]byte(token))}
	t.revoked, t.revoke = context.WithCancel(context.Background())
	return t
}

// setToken puts token in force; a different token revokes the old one,
// and the requests it let in.
func (s *Server) setToken(token string) {
	next := newBearerToken(token)
	old := s.token.Load()
	if old != nil && old.sum == next.sum {
		next.revoke()
		return
	}
	s.token.Store(next)
	if old != nil {
		old.revoke()
	}
}

// authenticate requires the bearer token of every request. A request
// refused is answered and its connection closed at once, its body unread:
// a client without the token holds no connection slot (connlimit never
// evicts a connection in a request, and net/http would otherwise wait for
// the unread body up to the read timeout). A request let in ends when its
// token is replaced.
func (s *Server) authenticate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := bearer(r.Header.Get("Authorization"))
		sum := sha256.Sum256([]byte(tok))
		want := s.token.Load()
		if !ok || subtle.ConstantTimeCompare(sum[:], want.sum[:]) != 1 {
			s.refused.Warn(s.log, "token", "api request refused: bad or missing token", "remote", r.RemoteAddr, "method", r.Method, "path", clip(r.URL.Path))
			w.Header().Set("WWW-Authenticate", `Bearer realm="nd"`)
			rejectAndClose(w, http.StatusUnauthorized, "unauthorized: a valid bearer token is required")
			return
		}
		ctx, cancel := context.WithCancel(context.WithValue(r.Context(), tokenKey{}, want))
		defer cancel()
		stop := context.AfterFunc(want.revoked, cancel)
		defer stop()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// tokenKey keys the token a request was let in with in its context.
type tokenKey struct{}

// authorized reports whether the token a request was let in with is
// still in force (a request on the unix socket needs none). A stream asks
// before each write: the request's context ends soon after the token is
// replaced, but not before Configure returns.
func authorized(ctx context.Context) bool {
	t, ok := ctx.Value(tokenKey{}).(*bearerToken)
	return !ok || t.revoked.Err() == nil
}

// rejectAndClose answers a request that will not be served and closes its
// connection without reading what is left of its body.
func rejectAndClose(w http.ResponseWriter, status int, msg string) {
	connlimit.Release(w)
	writeError(w, status, msg)
}

// clip bounds a client's string in a log line.
func clip(s string) string {
	const most = 128
	if len(s) > most {
		return s[:most] + "..."
	}
	return s
}

// bearer extracts the token of an "Authorization: Bearer <token>" header.
func bearer(h string) (string, bool) {
	const prefix = "bearer "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	tok := strings.TrimSpace(h[len(prefix):])
	return tok, tok != ""
}
