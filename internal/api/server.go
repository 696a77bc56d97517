package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
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
	"time"
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
)

// Server serves the control API. NewServer creates its listeners; Serve
// serves them until its context ends. A Server that will not be served must
// be closed.
type Server struct {
	c       Controller
	log     *slog.Logger
	handler http.Handler // routes, without authentication

	unix   net.Listener
	socket string
	// socketFile identifies the socket file created, so that shutdown
	// removes that one and not another daemon's.
	socketFile os.FileInfo

	tcp   net.Listener
	token [sha256.Size]byte // hash of the token: compared in constant time

	// edits serialises the API's changes: Controller.Update copies the
	// running configuration, edits the copy and applies it, so two edits
	// running at once could each apply a copy without the other's change.
	edits sync.Mutex

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
		c: c, log: o.Logger, socket: o.Socket,
		token:       sha256.Sum256([]byte(o.Token)),
		readTimeout: readTimeout,
	}
	s.handler = s.routes(o.Metrics)

	var tlsConfig *tls.Config
	if o.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("api: load TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	var err error
	if s.unix, s.socketFile, err = listenUnix(o.Socket); err != nil {
		return nil, err
	}
	if o.Listen != "" {
		s.tcp, err = net.Listen("tcp", o.Listen)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("api: listen on %s: %w", o.Listen, err)
		}
		if tlsConfig != nil {
			s.tcp = tls.NewListener(s.tcp, tlsConfig)
		}
	}
	return s, nil
}

// SocketPath is the unix socket the server listens on.
func (s *Server) SocketPath() string { return s.socket }

// TCPAddr is the address of the TCP listener, nil when there is none.
func (s *Server) TCPAddr() net.Addr {
	if s.tcp == nil {
		return nil
	}
	return s.tcp.Addr()
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
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type served struct {
		srv *http.Server
		l   net.Listener
	}
	var all []served
	all = append(all, served{s.httpServer(ctx, s.handler), s.unix})
	if s.tcp != nil {
		all = append(all, served{s.httpServer(ctx, s.authenticate(s.handler)), s.tcp})
	}

	errc := make(chan error, len(all))
	for _, x := range all {
		go func() {
			err := x.srv.Serve(x.l)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		}()
	}
	s.log.Info("api serving", "socket", s.socket, "listen", s.TCPAddr())

	var err error
	running := len(all)
	select {
	case <-ctx.Done():
	case err = <-errc:
		running--
		if err != nil {
			err = fmt.Errorf("api: serve: %w", err)
		}
	}
	// Requests' contexts derive from ctx: cancelling it ends the event
	// streams, which would otherwise hold the shutdown for its whole
	// timeout.
	cancel()
	shutdownCtx, stop := context.WithTimeout(context.Background(), shutdownTimeout)
	defer stop()
	for _, x := range all {
		if serr := x.srv.Shutdown(shutdownCtx); serr != nil {
			x.srv.Close()
		}
	}
	for ; running > 0; running-- {
		if serr := <-errc; serr != nil && err == nil {
			err = fmt.Errorf("api: serve: %w", serr)
		}
	}
	s.log.Info("api stopped")
	return err
}

func (s *Server) httpServer(ctx context.Context, h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       s.readTimeout,
		IdleTimeout:       idleTimeout,
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
		for _, l := range []net.Listener{s.unix, s.tcp} {
			if l != nil {
				if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
					errs = append(errs, err)
				}
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

// authenticate requires the bearer token of every request.
func (s *Server) authenticate(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := bearer(r.Header.Get("Authorization"))
		sum := sha256.Sum256([]byte(tok))
		if !ok || subtle.ConstantTimeCompare(sum[:], s.token[:]) != 1 {
			s.log.Warn("api request refused: bad or missing token", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
			w.Header().Set("WWW-Authenticate", `Bearer realm="nd"`)
			writeError(w, http.StatusUnauthorized, "unauthorized: a valid bearer token is required")
			return
		}
		h.ServeHTTP(w, r)
	})
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
