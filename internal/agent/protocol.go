// Package agent is nd's host-metric agent and the dispatcher's client for it.
//
// The agent runs on each server. It samples host metrics from /proc (load,
// CPU, memory, established TCP connections, processes) and runs the
// operator's own commands from its own configuration file, caching the last
// value of each. The dispatcher polls it over an authenticated channel: a
// shared key (HMAC-SHA256 over each request and each response) or mutual
// TLS. Unlike the paper's agent, this one never runs anything the
// dispatcher sends: a request names nothing but the report it wants.
//
// docs/AGENT.md specifies the wire protocol precisely.
package agent

import (
	"crypto/hmac"
	"encoding/hex"
	"errors"
	"math"
	"regexp"
	"strconv"
	"time"

	"github.com/nd-dispatcher/nd/internal/keyfile"
	"github.com/nd-dispatcher/nd/internal/mac"
)

// Standard metric names, as they appear in a Report.
const (
	MetricLoad1          = "load1"           // 1-minute load average
	MetricCPU            = "cpu"             // CPU busy, percent, over the agent's sample interval
	MetricMemory         = "memory"          // memory in use, percent: (MemTotal-MemAvailable)/MemTotal
	MetricTCPEstablished = "tcp_established" // TCP connections in state ESTABLISHED (IPv4 and IPv6)
	MetricProcesses      = "processes"       // processes (numeric entries of /proc)
)

// StandardMetrics lists the metrics every agent reports, in a stable order.
var StandardMetrics = []string{MetricLoad1, MetricCPU, MetricMemory, MetricTCPEstablished, MetricProcesses}

// Wire constants; docs/AGENT.md is the specification.
const (
	// ReportPath is the only resource the agent serves.
	ReportPath = "/v1/report"
	// ProtocolVersion is the "version" field of a report.
	ProtocolVersion = 1

	HeaderTime  = "X-Nd-Time"  // request: Unix time in seconds, decimal
	HeaderNonce = "X-Nd-Nonce" // request: 16 random bytes, 32 lowercase hex digits
	HeaderMAC   = "X-Nd-Mac"   // request and response: HMAC-SHA256, 64 lowercase hex digits

	requestLabel  = "nd-agent-request-v1"
	responseLabel = "nd-agent-response-v1"

	nonceBytes = 16
	macHexLen  = 2 * mac.Size

	// MinKeyLen is the shortest shared key accepted.
	MinKeyLen = 16

	// MaxResponseBody bounds a report on the wire; the agent refuses to
	// produce a larger one and the client refuses to read one.
	MaxResponseBody = 256 << 10
	// maxMetrics bounds the entries of a report's metrics plus errors.
	maxMetrics = 512
	// maxErrorLen bounds one error string in a report.
	maxErrorLen = 512
	// maxHostLen bounds the host name in a report.
	maxHostLen = 253
)

// Errors the protocol reports. Requests and responses that fail
// verification wrap one of these.
var (
	ErrBadMAC     = errors.New("bad or missing MAC")
	ErrStale      = errors.New("timestamp outside the accepted window")
	ErrReplay     = errors.New("nonce already used")
	ErrMalformed  = errors.New("malformed message")
	ErrReplayFull = errors.New("replay cache full")
)

// metricName is the form of every metric name: standard and operator
// metrics alike.
var metricName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// ValidMetricName reports whether s may name a metric.
func ValidMetricName(s string) bool { return metricName.MatchString(s) }

// requestMAC is the MAC a request carries. The label separates it from
// response MACs so that one can never stand for the other.
func requestMAC(key []byte, method, path, ts, nonce string) []byte {
	return mac.Sum(key, requestLabel, []byte(method), []byte(path), []byte(ts), []byte(nonce))
}

// responseMAC binds a response body to the nonce of the request it answers,
// so that a recorded response does not satisfy any later request.
func responseMAC(key []byte, nonce string, body []byte) []byte {
	return mac.Sum(key, responseLabel, []byte(nonce), body)
}

// checkMAC compares a hex MAC from the wire with the expected one in
// constant time. It parses the hex strictly (lowercase, exact length).
func checkMAC(got string, want []byte) bool {
	if len(got) != macHexLen || !isLowerHex(got) || want == nil {
		return false
	}
	b, err := hex.DecodeString(got)
	if err != nil {
		return false
	}
	return hmac.Equal(b, want)
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// validNonce reports whether s has the nonce's wire form.
func validNonce(s string) bool { return len(s) == 2*nonceBytes && isLowerHex(s) }

// parseTime parses the request's timestamp: decimal Unix seconds, digits
// only, no sign or leading zeros.
func parseTime(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 18 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}

// withinWindow reports whether ts (Unix seconds) is no further than skew
// from now, in either direction.
func withinWindow(ts int64, now time.Time, skew time.Duration) bool {
	d := now.Unix() - ts
	if d < 0 {
		d = -d
	}
	return d <= int64(skew/time.Second)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// LoadKeyFile reads a shared key (see keyfile.Load): at least MinKeyLen
// bytes, in a file other users cannot access.
func LoadKeyFile(path string) ([]byte, error) {
	return keyfile.Load(path, MinKeyLen)
}
