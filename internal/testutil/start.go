package testutil

import (
	"context"
	"sync"
	"testing"
	"time"
)

// Start runs run in a goroutine under a context that ends when the test
// does, or when stop is called (once is enough; the test's cleanup calls it
// too). Stopping waits up to wait for run to return and fails the test if
// it does not, or returns an error; what names run in those failures, e.g.
// "Serve".
func Start(tb testing.TB, what string, wait time.Duration, run func(context.Context) error) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("%s: %v", what, err)
			}
		case <-time.After(wait):
			tb.Errorf("%s did not return within %v of its context ending", what, wait)
		}
	})
	tb.Cleanup(stop)
	return stop
}
