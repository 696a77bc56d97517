package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// routes builds the handler of every route. Unknown paths and methods get
// JSON errors too, and a panic in a handler becomes a 500, not a dropped
// connection.
func (s *Server) routes(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	const (
		cluster = "/v1/clusters/{vip}"
		port    = cluster + "/ports/{port}/{protocol}"
		server  = port + "/servers/{address}"
	)
	mux.HandleFunc("GET /v1/health", s.health)
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/config", s.getConfig)
	mux.HandleFunc("PUT /v1/config", s.putConfig)
	mux.HandleFunc("POST /v1/config/reload", s.reload)
	mux.HandleFunc("POST /v1/clusters", s.addCluster)
	mux.HandleFunc("DELETE "+cluster, s.removeCluster)
	mux.HandleFunc("POST "+cluster+"/ports", s.addPort)
	mux.HandleFunc("DELETE "+port, s.removePort)
	mux.HandleFunc("POST "+port+"/servers", s.addServer)
	mux.HandleFunc("PATCH "+server, s.setServer)
	mux.HandleFunc("DELETE "+server, s.removeServer)
	mux.HandleFunc("GET /v1/events", s.events)
	mux.HandleFunc("GET /v1/manager", s.getManager)
	mux.HandleFunc("PATCH /v1/manager", s.setManager)
	mux.HandleFunc("GET /v1/advisors", s.advisors)
	mux.HandleFunc("GET /v1/agents", s.agents)
	mux.HandleFunc("GET /v1/ha", s.haStatus)
	mux.HandleFunc("POST /v1/ha/takeover", s.haTakeover)
	mux.HandleFunc("GET /v1/bgp", s.bgpStatus)
	mux.HandleFunc("POST /v1/bgp/drain", s.bgpDrain(true))
	mux.HandleFunc("POST /v1/bgp/undrain", s.bgpDrain(false))
	mux.HandleFunc("GET /v1/flows", s.flows)
	mux.HandleFunc("GET /v1/dashboard", s.dashboard)
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return s.recoverPanics(jsonFallback(mux))
}

// jsonFallback answers what mux does not route (404, 405) with JSON errors,
// keeping the mux's status and Allow header.
func jsonFallback(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, pattern := mux.Handler(r)
		if pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		rec := &statusRecorder{header: http.Header{}}
		h.ServeHTTP(rec, r)
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		switch rec.status {
		case http.StatusMethodNotAllowed:
			writeError(w, rec.status, fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path))
		case http.StatusNotFound, 0:
			writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s", r.URL.Path))
		default:
			writeError(w, rec.status, http.StatusText(rec.status))
		}
	})
}

// statusRecorder keeps the status and headers of the mux's own 404 and 405
// answers, and drops their plain-text bodies.
type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

func (s *Server) recoverPanics(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v) // net/http's way to abort a response quietly
			}
			s.log.Error("api handler panicked", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
			writeError(w, http.StatusInternalServerError, "internal error")
		}()
		h.ServeHTTP(w, r)
	})
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, HealthResponse{OK: true})
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.c.Status()
	if err != nil {
		s.fail(w, r, "status", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) getConfig(w http.ResponseWriter, r *http.Request) {
	b, err := config.Marshal(s.c.Config())
	if err != nil {
		s.fail(w, r, "config", fmt.Errorf("write the running configuration: %w", noStatus{err}))
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

func (s *Server) putConfig(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxConfigSize))
	if err != nil {
		s.fail(w, r, "apply configuration", readError(err))
		return
	}
	cfg, err := config.Parse(body, "request")
	if err != nil {
		s.fail(w, r, "apply configuration", err)
		return
	}
	s.edits.Lock()
	defer s.edits.Unlock()
	ch, err := s.c.Apply(cfg)
	s.done(w, r, http.StatusOK, "apply configuration", ch, err)
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	s.edits.Lock()
	defer s.edits.Unlock()
	ch, err := s.c.Reload()
	s.done(w, r, http.StatusOK, "reload configuration", ch, err)
}

func (s *Server) addCluster(w http.ResponseWriter, r *http.Request) {
	var req ClusterRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, "add cluster", err)
		return
	}
	vip, err := parseAddr("vip", req.VIP)
	if err != nil {
		s.fail(w, r, "add cluster", err)
		return
	}
	ports := make([]config.PortSpec, 0, len(req.Ports))
	for _, pr := range req.Ports {
		p, err := pr.portSpec()
		if err != nil {
			s.fail(w, r, "add cluster", err)
			return
		}
		ports = append(ports, p)
	}
	edit := addCluster(vip, ports)
	if len(ports) == 0 {
		// The configuration may refuse a VIP without ports: say how to
		// give them.
		edit = withHint(edit, fmt.Sprintf(`give the cluster's ports in the request, e.g. {"vip":%q,"ports":[{"port":80}]}`, vip))
	}
	s.update(w, r, http.StatusCreated, "add cluster", edit, "vip", vip)
}

func (s *Server) removeCluster(w http.ResponseWriter, r *http.Request) {
	vip, err := parseAddr("vip", r.PathValue("vip"))
	if err != nil {
		s.fail(w, r, "remove cluster", err)
		return
	}
	s.update(w, r, http.StatusOK, "remove cluster", removeCluster(vip), "vip", vip)
}

func (s *Server) addPort(w http.ResponseWriter, r *http.Request) {
	vip, err := parseAddr("vip", r.PathValue("vip"))
	if err != nil {
		s.fail(w, r, "add port", err)
		return
	}
	var req PortRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, "add port", err)
		return
	}
	p, err := req.portSpec()
	if err != nil {
		s.fail(w, r, "add port", err)
		return
	}
	s.update(w, r, http.StatusCreated, "add port", addPort(vip, p), "port", portID{vip, p.Port, p.Protocol})
}

func (s *Server) removePort(w http.ResponseWriter, r *http.Request) {
	id, err := pathPort(r)
	if err != nil {
		s.fail(w, r, "remove port", err)
		return
	}
	edit := removePort(id)
	if cfg := s.c.Config(); lastPort(cfg, id) {
		edit = withHint(edit, fmt.Sprintf("to remove the last port of %s, remove the cluster", id.vip))
	}
	s.update(w, r, http.StatusOK, "remove port", edit, "port", id)
}

func (s *Server) addServer(w http.ResponseWriter, r *http.Request) {
	id, err := pathPort(r)
	if err != nil {
		s.fail(w, r, "add server", err)
		return
	}
	var req ServerRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, "add server", err)
		return
	}
	// Read the address now, so that a bad one is a bad request whether or
	// not the port exists.
	if _, err := req.server(config.DefaultWeightBound); err != nil {
		s.fail(w, r, "add server", err)
		return
	}
	s.update(w, r, http.StatusCreated, "add server", addServer(id, req), "port", id, "server", req.Address)
}

func (s *Server) setServer(w http.ResponseWriter, r *http.Request) {
	id, addr, err := pathServer(r)
	if err != nil {
		s.fail(w, r, "change server", err)
		return
	}
	var patch ServerPatch
	if err := decodeJSON(w, r, &patch); err != nil {
		s.fail(w, r, "change server", err)
		return
	}
	if patch.Weight == nil && patch.Quiesce == nil && patch.Fixed == nil {
		s.fail(w, r, "change server", badRequest("nothing to change: give weight, quiesce or fixed"))
		return
	}
	attrs := []any{"port", id, "server", addr}
	if patch.Weight != nil {
		attrs = append(attrs, "weight", *patch.Weight)
	}
	if patch.Quiesce != nil {
		attrs = append(attrs, "quiesce", *patch.Quiesce)
	}
	if patch.Fixed != nil {
		attrs = append(attrs, "fixed", *patch.Fixed)
	}
	s.update(w, r, http.StatusOK, "change server", setServer(id, addr, patch), attrs...)
}

func (s *Server) removeServer(w http.ResponseWriter, r *http.Request) {
	id, addr, err := pathServer(r)
	if err != nil {
		s.fail(w, r, "remove server", err)
		return
	}
	s.update(w, r, http.StatusOK, "remove server", removeServer(id, addr), "port", id, "server", addr)
}

// events writes events as NDJSON: the recent ones, then, with follow, every
// new one until the client leaves or the server shuts down.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	follow := false
	if v := r.URL.Query().Get("follow"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			s.fail(w, r, "events", badRequest("follow: %q is not true or false", v))
			return
		}
		follow = b
	}
	ch, stop := s.c.Events()
	defer stop()

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if !follow {
		for {
			select {
			case ev, ok := <-ch:
				if !ok {
					return
				}
				if enc.Encode(ev) != nil {
					return
				}
			default:
				return
			}
		}
	}

	// The server's read timeout does not cut the stream: net/http lifts
	// the read deadline once a body-less request has been read.
	rc := http.NewResponseController(w)
	if rc.Flush() != nil {
		return
	}
	s.log.Debug("events stream opened", "remote", remote(r))
	defer s.log.Debug("events stream closed", "remote", remote(r))
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-ch:
			if !ok || !authorized(r.Context()) {
				return
			}
			if enc.Encode(ev) != nil || rc.Flush() != nil {
				return
			}
		}
	}
}

// pathPort reads the {vip}/{port}/{protocol} of the request's path.
func pathPort(r *http.Request) (portID, error) {
	return parsePortID(r.PathValue("vip"), r.PathValue("port"), r.PathValue("protocol"))
}

func pathServer(r *http.Request) (portID, netip.Addr, error) {
	id, err := pathPort(r)
	if err != nil {
		return id, netip.Addr{}, err
	}
	a, err := parseAddr("address", r.PathValue("address"))
	return id, a, err
}

// update applies one edit through the controller and answers with the
// changes, logging the mutation.
func (s *Server) update(w http.ResponseWriter, r *http.Request, okStatus int, what string, edit editFunc, attrs ...any) {
	// The controller wraps the edit's error in its own (a rejection):
	// keep the edit's, which says which cluster, port or server is
	// missing or already there.
	var editErr error
	s.edits.Lock()
	defer s.edits.Unlock()
	ch, err := s.c.Update(func(c *config.Config) error {
		editErr = edit.fn(c)
		return editErr
	})
	switch {
	case err != nil && editErr != nil:
		err = editErr
	case err != nil && edit.hint != "" && errors.Is(err, nd.ErrRejected):
		err = fmt.Errorf("%w (%s)", err, edit.hint)
	}
	s.done(w, r, okStatus, what, ch, err, attrs...)
}

// done answers a request that changed, or tried to change, the
// configuration.
func (s *Server) done(w http.ResponseWriter, r *http.Request, okStatus int, what string, ch config.Changes, err error, attrs ...any) {
	if err != nil {
		s.fail(w, r, what, err, attrs...)
		return
	}
	s.log.Info("api: "+what, append(attrs, "remote", remote(r), "changes", ch.String())...)
	writeJSON(w, okStatus, ChangesResponse{Changes: ch.String()})
}

// fail answers with the error's status and message, and logs it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, what string, err error, attrs ...any) {
	code := statusOf(err)
	msg := message(err)
	level := slog.LevelWarn
	if code >= 500 {
		level = slog.LevelError
	}
	s.log.Log(r.Context(), level, "api: "+what+" failed", append(attrs, "remote", remote(r), "status", code, "err", msg)...)
	writeError(w, code, msg)
}

// noStatus hides the sentinels an error wraps from statusOf: a running
// configuration that cannot be written is the server's fault, whatever
// config.ErrInvalid says.
type noStatus struct{ err error }

func (e noStatus) Error() string { return e.err.Error() }

// statusOf maps an error to its HTTP status.
func statusOf(err error) int {
	var ns noStatus
	switch {
	case errors.As(err, &ns):
		return http.StatusInternalServerError
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrExists), errors.Is(err, ErrBadRequest),
		errors.Is(err, nd.ErrRejected), errors.Is(err, config.ErrInvalid):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// message writes an error as one line: a configuration's problems, each
// located as name:line:col, are joined by "; ".
func message(err error) string {
	var list config.Errors
	if errors.As(err, &list) && err.Error() == list.Error() {
		parts := make([]string, len(list))
		for i, e := range list {
			parts[i] = e.Error()
		}
		return strings.Join(parts, "; ")
	}
	return oneLine(err.Error())
}

func oneLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	out := lines[:0]
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}

// remote names the client for the logs: its TCP address, or the socket.
func remote(r *http.Request) string {
	if r.RemoteAddr == "" || r.RemoteAddr == "@" {
		return "unix"
	}
	return r.RemoteAddr
}

// decodeJSON reads the request's body, one JSON object with known fields
// only, into v.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJSONSize))
	if err != nil {
		return readError(err)
	}
	// encoding/json keeps the last of two equal keys; the configuration
	// file refuses them, and so does the API.
	if err := duplicateKey(body); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return readError(err)
		}
		return badRequest("malformed JSON: one object expected, found more after it")
	}
	return nil
}

// duplicateKey refuses a JSON body in which an object has a key twice
// (`{"weight":10,"weight":90}`), naming the key and its path. A body that
// is not valid JSON is left for the decoder to describe.
func duplicateKey(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	type frame struct {
		object  bool
		keys    map[string]bool
		path    string
		wantKey bool // in an object, the next string is a key
		index   int  // in an array, the next element's index
		lastKey string
	}
	var stack []*frame
	// elem is the path of the value about to be read.
	elem := func() string {
		if len(stack) == 0 {
			return ""
		}
		f := stack[len(stack)-1]
		if f.object {
			return strings.TrimPrefix(f.path+"."+f.lastKey, ".")
		}
		return fmt.Sprintf("%s[%d]", f.path, f.index)
	}
	// valueDone marks the end of a value in the enclosing frame.
	valueDone := func() {
		if len(stack) == 0 {
			return
		}
		f := stack[len(stack)-1]
		if f.object {
			f.wantKey = true
		} else {
			f.index++
		}
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil // the end, or malformed: the decoder says which
		}
		top := (*frame)(nil)
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.wantKey {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				valueDone()
				continue
			}
			key, _ := tok.(string)
			if top.keys[key] {
				return badRequest("duplicate JSON key %q%s: give each key once", key, inPath(top.path))
			}
			top.keys[key] = true
			top.lastKey = key
			top.wantKey = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, keys: map[string]bool{}, path: elem(), wantKey: true})
		case json.Delim('['):
			stack = append(stack, &frame{path: elem()})
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
			valueDone()
		default:
			valueDone()
		}
	}
}

func inPath(p string) string {
	if p == "" {
		return ""
	}
	return " in " + p
}

// jsonError describes why a body is not the JSON expected.
func jsonError(err error) error {
	var (
		syntax   *json.SyntaxError
		typ      *json.UnmarshalTypeError
		tooBig   *http.MaxBytesError
		msg      = strings.TrimPrefix(err.Error(), "json: ")
		unknownF = strings.HasPrefix(msg, "unknown field ")
	)
	switch {
	case errors.As(err, &tooBig):
		return readError(err)
	case errors.Is(err, io.EOF):
		return badRequest("empty request body: a JSON object is expected")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("malformed JSON: the body ends early")
	case errors.As(err, &syntax):
		return badRequest("malformed JSON at byte %d: %s", syntax.Offset, msg)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return badRequest("malformed request: a JSON object is expected, not %s", typ.Value)
		}
		return badRequest("%s: %s", typ.Field, typeMismatch(typ.Value, typ.Type.Kind().String()))
	case unknownF:
		return badRequest("%s", msg)
	}
	return badRequest("malformed request: %s", msg)
}

// uintMax is the largest value of an unsigned Go kind.
func uintMax(kind string) string {
	switch kind {
	case "uint8":
		return "255"
	case "uint16":
		return "65535"
	case "uint32":
		return "4294967295"
	}
	return "18446744073709551615"
}

// typeMismatch says why a JSON value (as UnmarshalTypeError names it: "string",
// "number -1") does not fit a Go kind.
func typeMismatch(value, kind string) string {
	isNumber := strings.HasPrefix(value, "number")
	switch {
	case isNumber && strings.HasPrefix(kind, "uint"):
		return fmt.Sprintf("%s is out of range 0..%s", value, uintMax(kind))
	case isNumber && strings.HasPrefix(kind, "int"):
		return fmt.Sprintf("%s is out of range", value)
	case kind == "bool":
		return fmt.Sprintf("%s is not true or false", value)
	case kind == "string":
		return fmt.Sprintf("%s is not a string", value)
	case kind == "slice", kind == "array":
		return fmt.Sprintf("%s is not a list", value)
	case kind == "struct", kind == "map":
		return fmt.Sprintf("%s is not a JSON object", value)
	case strings.HasPrefix(kind, "uint"), strings.HasPrefix(kind, "int"), strings.HasPrefix(kind, "float"):
		return fmt.Sprintf("%s is not a number", value)
	}
	return fmt.Sprintf("%s is not a %s", value, kind)
}

func readError(err error) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return badRequest("request body exceeds the limit of %s", sizeString(tooBig.Limit))
	}
	return badRequest("read request body: %v", err)
}

func sizeString(n int64) string {
	if n%(1<<20) == 0 {
		return strconv.FormatInt(n>>20, 10) + " MiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := encodeJSON(v)
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = encodeJSON(ErrorResponse{Error: "encode response: " + err.Error()})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(b)
}

// encodeJSON writes v on one line, leaving "->" and "<" as they are for
// people reading responses with curl.
func encodeJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err := enc.Encode(v)
	return b.Bytes(), err
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorResponse{Error: msg})
}
