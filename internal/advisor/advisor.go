// Package advisor measures forward metrics (paper §4.2): from the dispatcher
// host it sends a request to each server's service and times the answer, or
// finds that no answer came.
//
// A probe kind (TCP connect, HTTP, HTTPS, a custom command) is a small type
// with a Probe method that makes one attempt and says how long it took or
// why it failed. Everything else lives in one place, the Runner: when to
// probe, how long to wait, how many times to retry, and how many results in
// a row it takes to mark a server down or up again. The manager reads the
// Runner's Snapshot, or is told at once through Options.OnChange, and uses
// the latency as the advisor part of its load index and "down" as weight 0.
//
// With direct server return the service listens on the cluster address (the
// VIP) held on each server's loopback, so connecting to the server's own
// address may reach a different socket from the one clients use. An advisor
// in "vip" mode therefore connects to VIP:port through a dial function that
// steers the connection to one chosen server; that dial function comes from
// Options.ViaVIP, which the executor provides.
package advisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// DialFunc makes a connection, as net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Target is one server an advisor measures.
type Target struct {
	// Server is the server measured. With Port (and VIP) it names the
	// target, so state survives a reconfiguration that keeps it.
	Server netip.Addr
	// Port is the service port, on the server in server mode and on the VIP
	// in vip mode.
	Port uint16
	// VIP is the cluster address the server serves. It is required in vip
	// mode and handed to custom commands as ND_VIP in either mode.
	VIP netip.Addr
	// Dial, if set, makes the probe's connections in server mode, for
	// example from another network namespace; nil means a plain
	// net.Dialer. In vip mode it must be nil: the dial function there comes
	// from Options.ViaVIP, so that a probe can never silently reach the
	// wrong socket.
	Dial DialFunc

	// Addr is where a probe connects: Server:Port in server mode, VIP:Port
	// in vip mode. The Runner fills it in; leave it zero in a Spec.
	Addr netip.AddrPort
}

func (t Target) key() targetKey { return targetKey{t.Server, t.Port, t.VIP} }

// targetKey identifies a target within an advisor.
type targetKey struct {
	server netip.Addr
	port   uint16
	vip    netip.Addr
}

func (k targetKey) String() string {
	s := netip.AddrPortFrom(k.server, k.port).String()
	if k.vip.IsValid() {
		s += " (vip " + k.vip.String() + ")"
	}
	return s
}

// dialer returns the target's dial function, or a plain net.Dialer's.
func (t Target) dialer() DialFunc {
	if t.Dial != nil {
		return t.Dial
	}
	var d net.Dialer
	return d.DialContext
}

// Result is the outcome of one probe attempt: a latency, or down with the
// reason.
type Result struct {
	Latency time.Duration
	Down    bool
	Err     string
	At      time.Time // when the attempt ended
}

// up and down build results stamped with the current time.
func up(latency time.Duration) Result { return Result{Latency: latency, At: time.Now()} }

// maxErr bounds a probe's error text: it quotes what the server sent (a
// status line, a header), and it goes into events, logs and the API.
const maxErr = 256

func down(format string, args ...any) Result {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxErr {
		msg = strings.ToValidUTF8(msg[:maxErr], "") + "..."
	}
	return Result{Down: true, Err: msg, At: time.Now()}
}

// Probe makes one attempt at measuring a target. It must return once ctx is
// done; the Runner sets ctx's deadline to the advisor's timeout.
type Probe interface {
	Name() string
	Probe(ctx context.Context, t Target) Result
}

// Probe kinds.
const (
	KindTCP    = "tcp"
	KindHTTP   = "http"
	KindHTTPS  = "https"
	KindCustom = "custom"
)

// Target modes.
const (
	ModeServer = "server"
	ModeVIP    = "vip"
)

// Defaults applied to zero fields of a Spec.
const (
	DefaultInterval = 5 * time.Second
	DefaultRise     = 2
	DefaultFall     = 2
	// The timeout defaults to half the interval.
)

// MinInterval is the shortest interval the library accepts. The config
// layer enforces a larger floor for operators (100 ms); tests use less.
const MinInterval = 10 * time.Millisecond

// MaxRetries and MaxRiseFall bound the counts a Spec may ask for.
const (
	MaxRetries  = 10
	MaxRiseFall = 100
)

// HTTPSpec describes the request of an http or https advisor.
type HTTPSpec struct {
	// Method defaults to GET.
	Method string
	// Path is the request target, starting with "/". Required.
	Path string
	// Host is the Host header, and the TLS server name (SNI) for https.
	// Empty means the address connected to.
	Host string
	// Status is the status code expected; 0 accepts any 200-399.
	Status int
	// Body, if set, must occur in the first MaxBodyMatch bytes of the body.
	Body string
	// Insecure skips verification of the server's certificate (https).
	Insecure bool
}

// MaxBodyMatch bounds how much of a body is searched for HTTPSpec.Body. The
// rest is still read, so latency covers the whole response.
const MaxBodyMatch = 1 << 20

// Spec configures one advisor: one probe kind applied to a list of targets.
type Spec struct {
	// Name identifies the advisor; unique within a Set.
	Name string
	// Kind is tcp, http, https or custom.
	Kind string
	// Interval between the starts of two probe rounds. Default 5 s.
	Interval time.Duration
	// Timeout for one attempt; less than Interval. Default Interval/2.
	Timeout time.Duration
	// Retries is how many more attempts a round makes after a failed one
	// before the round counts as a failure. Default 0.
	Retries int
	// Rise is how many successful rounds in a row mark a down target up;
	// Fall how many failed rounds in a row mark an up target down.
	// Defaults 2 and 3.
	Rise, Fall int
	// Mode is server (default) or vip.
	Mode string
	// HTTP describes the request of http and https advisors.
	HTTP HTTPSpec
	// Command is the argv of a custom advisor, run without a shell.
	Command []string
	// Targets are the servers measured.
	Targets []Target
}

// Errors returned by Set and Run.
var (
	ErrInvalidSpec = errors.New("invalid advisor spec")
	ErrRunTwice    = errors.New("advisor runner: Run called twice")
)

// normalize returns s with defaults applied and target addresses filled
// in, or an error wrapping ErrInvalidSpec that names the advisor and field.
func (s Spec) normalize() (Spec, error) {
	bad := func(format string, args ...any) (Spec, error) {
		name := s.Name
		if name == "" {
			name = "(unnamed)"
		}
		return Spec{}, fmt.Errorf("%w: advisor %s: %s", ErrInvalidSpec, name, fmt.Sprintf(format, args...))
	}
	if s.Name == "" {
		return bad("name is empty")
	}
	if strings.ContainsFunc(s.Name, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return bad("name %q contains control characters", s.Name)
	}
	switch s.Kind {
	case KindTCP, KindHTTP, KindHTTPS, KindCustom:
	case "":
		return bad("kind is empty, want tcp, http, https or custom")
	default:
		return bad("unknown kind %q, want tcp, http, https or custom", s.Kind)
	}

	if s.Interval == 0 {
		s.Interval = DefaultInterval
	}
	if s.Interval < MinInterval {
		return bad("interval %v is shorter than %v", s.Interval, MinInterval)
	}
	if s.Timeout == 0 {
		s.Timeout = s.Interval / 2
	}
	if s.Timeout < 0 {
		return bad("timeout %v is negative", s.Timeout)
	}
	if s.Timeout >= s.Interval {
		return bad("timeout %v must be shorter than the interval %v", s.Timeout, s.Interval)
	}
	if s.Retries < 0 || s.Retries > MaxRetries {
		return bad("retries %d outside 0-%d", s.Retries, MaxRetries)
	}
	if s.Rise == 0 {
		s.Rise = DefaultRise
	}
	if s.Fall == 0 {
		s.Fall = DefaultFall
	}
	if s.Rise < 1 || s.Rise > MaxRiseFall {
		return bad("rise %d outside 1-%d", s.Rise, MaxRiseFall)
	}
	if s.Fall < 1 || s.Fall > MaxRiseFall {
		return bad("fall %d outside 1-%d", s.Fall, MaxRiseFall)
	}

	switch s.Mode {
	case "":
		s.Mode = ModeServer
	case ModeServer, ModeVIP:
	default:
		return bad("unknown mode %q, want server or vip", s.Mode)
	}

	switch s.Kind {
	case KindHTTP, KindHTTPS:
		h, err := s.HTTP.normalize(s.Kind)
		if err != nil {
			return bad("%v", err)
		}
		s.HTTP = h
		if len(s.Command) > 0 {
			return bad("command is set but kind is %s", s.Kind)
		}
	case KindCustom:
		if len(s.Command) == 0 || s.Command[0] == "" {
			return bad("command is empty; a custom advisor needs a program to run")
		}
		if s.Mode == ModeVIP {
			return bad("mode vip is not possible for custom advisors: the runner cannot steer a command's own connections to one server (the command gets ND_VIP and ND_SERVER to do that itself)")
		}
		if s.HTTP != (HTTPSpec{}) {
			return bad("http options are set but kind is custom")
		}
	default:
		if s.HTTP != (HTTPSpec{}) {
			return bad("http options are set but kind is %s", s.Kind)
		}
		if len(s.Command) > 0 {
			return bad("command is set but kind is %s", s.Kind)
		}
	}

	seen := make(map[targetKey]bool, len(s.Targets))
	targets := make([]Target, len(s.Targets))
	for i, t := range s.Targets {
		if !t.Server.IsValid() {
			return bad("target %d: server address is missing", i)
		}
		if t.Server.Zone() != "" || t.VIP.Zone() != "" {
			return bad("target %d: zoned addresses are not supported", i)
		}
		if t.Port == 0 {
			return bad("target %d (%s): port is 0", i, t.Server)
		}
		if t.Addr.IsValid() {
			return bad("target %d (%s): Addr is filled in by the runner from the mode; leave it empty", i, t.Server)
		}
		if t.VIP.IsValid() && t.VIP.Is4() != t.Server.Is4() {
			return bad("target %d: server %s and VIP %s are of different address families", i, t.Server, t.VIP)
		}
		switch s.Mode {
		case ModeServer:
			t.Addr = netip.AddrPortFrom(t.Server, t.Port)
		case ModeVIP:
			if !t.VIP.IsValid() {
				return bad("target %d (%s): mode vip needs the target's VIP", i, t.Server)
			}
			if t.Dial != nil {
				return bad("target %d (%s): mode vip takes its dial function from Options.ViaVIP; Target.Dial must be nil", i, t.Server)
			}
			t.Addr = netip.AddrPortFrom(t.VIP, t.Port)
		}
		if seen[t.key()] {
			return bad("target %s is listed twice", t.key())
		}
		seen[t.key()] = true
		targets[i] = t
	}
	s.Targets = targets
	s.Command = append([]string(nil), s.Command...)
	return s, nil
}

func (h HTTPSpec) normalize(kind string) (HTTPSpec, error) {
	if h.Method == "" {
		h.Method = "GET"
	}
	if !isToken(h.Method) {
		return h, fmt.Errorf("http method %q is not a valid token", h.Method)
	}
	if h.Path == "" {
		return h, errors.New("http path is empty; want one starting with /, e.g. /")
	}
	if !strings.HasPrefix(h.Path, "/") {
		return h, fmt.Errorf("http path %q must start with /", h.Path)
	}
	if strings.ContainsFunc(h.Path, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return h, fmt.Errorf("http path %q contains spaces or control characters", h.Path)
	}
	if h.Host != "" {
		if strings.ContainsFunc(h.Host, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '/' }) {
			return h, fmt.Errorf("http host %q contains spaces, slashes or control characters", h.Host)
		}
	}
	if h.Status != 0 && (h.Status < 100 || h.Status > 599) {
		return h, fmt.Errorf("http status %d outside 100-599", h.Status)
	}
	if h.Insecure && kind != KindHTTPS {
		return h, errors.New("insecure (skip certificate verification) only applies to https")
	}
	return h, nil
}

// isToken reports whether s is an HTTP token (RFC 9110 §5.6.2).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r > 0x7e || r <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}

// sameProbe reports whether a and b measure the same thing, so that state
// kept for a target under a stays meaningful under b. Scheduling fields
// (interval, timeout, retries, rise, fall) may differ.
func sameProbe(a, b Spec) bool {
	return a.Kind == b.Kind && a.Mode == b.Mode && a.HTTP == b.HTTP &&
		strings.Join(a.Command, "\x00") == strings.Join(b.Command, "\x00")
}

// newProbe returns the probe for a normalized spec.
func newProbe(s Spec, o *Options) Probe {
	switch s.Kind {
	case KindTCP:
		return TCP{}
	case KindHTTP, KindHTTPS:
		return &HTTP{Spec: s.HTTP, TLS: s.Kind == KindHTTPS, RootCAs: o.RootCAs}
	case KindCustom:
		return &Custom{Command: s.Command, Advisor: s.Name}
	}
	panic("advisor: newProbe on unnormalized kind " + strconv.Quote(s.Kind))
}
