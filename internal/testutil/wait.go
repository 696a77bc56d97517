package testutil

import (
	"testing"
	"time"
)

// Eventually polls cond until it holds and returns how long that took; it
// fails the test, naming what was awaited, when cond has not held within
// the given time.
func Eventually(tb testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			tb.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// Recv receives from c, failing the test when nothing comes within the
// given time.
func Recv[T any](tb testing.TB, c <-chan T, within time.Duration) T {
	tb.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(within):
		tb.Fatalf("nothing received within %s", within)
	}
	var zero T
	return zero
}
