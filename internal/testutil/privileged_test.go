package testutil

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// recorder is a testing.TB that records Skip and Fatal instead of acting on
// them; the embedded TB supplies everything else.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
}

func TestRequirePrivilegedDecision(t *testing.T) {
	problem := errors.New("not running as root (euid 1000)")
	for _, tc := range []struct {
		name       string
		problem    error
		require    bool
		skip, fail bool
	}{
		{name: "privileged", problem: nil, require: false},
		{name: "privileged required", problem: nil, require: true},
		{name: "unprivileged skips", problem: problem, require: false, skip: true},
		{name: "unprivileged required fails", problem: problem, require: true, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{TB: t}
			requirePrivileged(r, tc.problem, tc.require)
			if got := r.skipped != ""; got != tc.skip {
				t.Errorf("skipped = %v (%q), want %v", got, r.skipped, tc.skip)
			}
			if got := r.failed != ""; got != tc.fail {
				t.Errorf("failed = %v (%q), want %v", got, r.failed, tc.fail)
			}
			for _, msg := range []string{r.skipped, r.failed} {
				if msg != "" && (!strings.Contains(msg, "euid 1000") || !strings.Contains(msg, RequirePrivilegedEnv)) {
					t.Errorf("message %q lacks the reason or the variable's name", msg)
				}
			}
		})
	}
}

func TestRequirePrivileged(t *testing.T) {
	RequirePrivileged(t)
	if err := privilegeProblem(); err != nil {
		t.Fatalf("RequirePrivileged let the test run, but the probe says: %v", err)
	}
}
