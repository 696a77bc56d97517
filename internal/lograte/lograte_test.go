package lograte

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestLimiter: one line of a kind per period, the next one counting those
// suppressed; kinds are limited apart.
func TestLimiter(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	l := Limiter{Every: 50 * time.Millisecond}
	for range 100 {
		l.Warn(log, "a", "refused")
	}
	l.Warn(log, "b", "other")
	if got := strings.Count(buf.String(), "msg=refused"); got != 1 {
		t.Errorf("%d lines of kind a within the period, want 1:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "msg=other") {
		t.Errorf("kind b suppressed by kind a:\n%s", buf.String())
	}
	time.Sleep(60 * time.Millisecond)
	l.Warn(log, "a", "refused")
	if !strings.Contains(buf.String(), "suppressed_since_last=99") {
		t.Errorf("the next line does not count the 99 suppressed:\n%s", buf.String())
	}
}
