// Package lograte lets one log line of a kind through per period, so that
// what a client sends (refused requests, bad handshakes) cannot fill the
// logs. It imports nothing of nd.
package lograte

import (
	"log/slog"
	"sync"
	"time"
)

// Limiter passes one warning of each kind per Every; the next one that
// passes says how many were suppressed since. The zero Limiter passes
// everything; its kinds are the caller's constants (a bounded set).
type Limiter struct {
	Every time.Duration

	mu   sync.Mutex
	last map[string]state
}

type state struct {
	at         time.Time
	suppressed int
}

// Warn logs msg with args at warning level on log, unless a line of the
// same kind passed less than Every ago.
func (l *Limiter) Warn(log *slog.Logger, kind, msg string, args ...any) {
	l.mu.Lock()
	if l.last == nil {
		l.last = map[string]state{}
	}
	st := l.last[kind]
	now := time.Now()
	if !st.at.IsZero() && now.Sub(st.at) < l.Every {
		st.suppressed++
		l.last[kind] = st
		l.mu.Unlock()
		return
	}
	suppressed := st.suppressed
	l.last[kind] = state{at: now}
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed_since_last", suppressed)
	}
	log.Warn(msg, args...)
}
