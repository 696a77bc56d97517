package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"time"
	"unicode"
	"unicode/utf8"
)

// Report is one answer from an agent.
type Report struct {
	// Host is the name the agent reports itself by (its configuration's
	// host, by default the machine's host name).
	Host string
	// Time is when the agent built the report, by the agent's clock.
	Time time.Time
	// Metrics holds each metric that has a value: the standard ones
	// (MetricLoad1, ...) and the operator's commands, by name.
	Metrics map[string]float64
	// Errors holds, for each metric that has no value, why. A name is in
	// at most one of Metrics and Errors.
	Errors map[string]string
	// Stats are the agent's own counters: requests served and rejected by
	// reason (see docs/AGENT.md).
	Stats map[string]uint64
}

// wireReport is a report's JSON form. Pointers mark required fields.
type wireReport struct {
	Version *int               `json:"version"`
	Host    *string            `json:"host"`
	Time    *time.Time         `json:"time"`
	Metrics map[string]float64 `json:"metrics"`
	Errors  map[string]string  `json:"errors"`
	Stats   map[string]uint64  `json:"stats"`
}

// encodeReport renders r for the wire. It refuses a report the client
// would refuse, so that a bad operator metric is caught at the agent.
func encodeReport(r Report) ([]byte, error) {
	if err := validateReport(r); err != nil {
		return nil, err
	}
	v := ProtocolVersion
	t := r.Time.UTC()
	w := wireReport{Version: &v, Host: &r.Host, Time: &t, Metrics: orEmpty(r.Metrics), Errors: orEmpty(r.Errors), Stats: orEmpty(r.Stats)}
	b, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("encode report: %w", err)
	}
	if len(b) > MaxResponseBody {
		return nil, fmt.Errorf("encode report: %d bytes, limit %d", len(b), MaxResponseBody)
	}
	return b, nil
}

// decodeReport parses a report body strictly: exactly one JSON object, no
// unknown fields, every required field present, every value in range.
func decodeReport(body []byte) (Report, error) {
	if len(body) > MaxResponseBody {
		return Report{}, fmt.Errorf("%w: report of %d bytes exceeds %d", ErrMalformed, len(body), MaxResponseBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var w wireReport
	if err := dec.Decode(&w); err != nil {
		return Report{}, fmt.Errorf("%w: report: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Report{}, fmt.Errorf("%w: report: data after the JSON object", ErrMalformed)
	}
	switch {
	case w.Version == nil:
		return Report{}, fmt.Errorf("%w: report: no version", ErrMalformed)
	case *w.Version != ProtocolVersion:
		return Report{}, fmt.Errorf("%w: report: version %d, want %d", ErrMalformed, *w.Version, ProtocolVersion)
	case w.Host == nil:
		return Report{}, fmt.Errorf("%w: report: no host", ErrMalformed)
	case w.Time == nil:
		return Report{}, fmt.Errorf("%w: report: no time", ErrMalformed)
	}
	r := Report{Host: *w.Host, Time: *w.Time, Metrics: orEmpty(w.Metrics), Errors: orEmpty(w.Errors), Stats: orEmpty(w.Stats)}
	if err := validateReport(r); err != nil {
		return Report{}, fmt.Errorf("%w: report: %v", ErrMalformed, err)
	}
	return r, nil
}

// orEmpty is m, or an empty map for nil: a report's maps are never nil, on
// the wire ({}, not null) or decoded.
func orEmpty[M ~map[K]V, K comparable, V any](m M) M {
	if m == nil {
		return M{}
	}
	return m
}

func validateReport(r Report) error {
	if r.Host == "" || len(r.Host) > maxHostLen || !printable(r.Host) {
		return fmt.Errorf("host %q: want 1 to %d printable characters", r.Host, maxHostLen)
	}
	if r.Time.IsZero() {
		return fmt.Errorf("zero time")
	}
	if n := len(r.Metrics) + len(r.Errors); n > maxMetrics {
		return fmt.Errorf("%d metrics, limit %d", n, maxMetrics)
	}
	for name, v := range r.Metrics {
		if !ValidMetricName(name) {
			return fmt.Errorf("bad metric name %q", name)
		}
		if !finite(v) {
			return fmt.Errorf("metric %s: %v is not a finite number", name, v)
		}
		if _, dup := r.Errors[name]; dup {
			return fmt.Errorf("metric %s has both a value and an error", name)
		}
	}
	for name, msg := range r.Errors {
		if !ValidMetricName(name) {
			return fmt.Errorf("bad metric name %q in errors", name)
		}
		if len(msg) > maxErrorLen || !utf8.ValidString(msg) {
			return fmt.Errorf("metric %s: error is not valid UTF-8 of at most %d bytes", name, maxErrorLen)
		}
	}
	if len(r.Stats) > maxMetrics {
		return fmt.Errorf("%d stats, limit %d", len(r.Stats), maxMetrics)
	}
	for name := range r.Stats {
		if !ValidMetricName(name) {
			return fmt.Errorf("bad stat name %q", name)
		}
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return false
		}
	}
	return true
}
