package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// ServeHTTP runs a small HTTP server in host's namespace on each of addrs,
// typically the VIPs on port 80 of a server host. Every request is answered
// with 200 and a body of the host's name and a newline, which is how
// RunTraffic tells which server answered. Connections are closed after each
// response, so every request of a load generator is a new flow.
//
// The servers stop when ctx ends or when stop is called, whichever comes
// first; stop also waits for them and is safe to call more than once.
func ServeHTTP(ctx context.Context, host *Host, addrs ...netip.AddrPort) (stop func(), err error) {
	if host == nil || host.NS == nil {
		return nil, fmt.Errorf("%w: serve http: no host", ErrBadOptions)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%w: serve http in %s: no address", ErrBadOptions, host.Name)
	}
	body := []byte(host.Name + "\n")
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Nd-Server", host.Name)
		w.Write(body)
	})

	var listeners []net.Listener
	for _, a := range addrs {
		ln, err := host.NS.Listen("tcp", a.String())
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return nil, fmt.Errorf("serve http in %s on %s: %w", host.Name, a, err)
		}
		listeners = append(listeners, ln)
	}

	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       5 * time.Second,
		// Aborted connections are the load generator's business, not
		// worth a line on the terminal of the demo.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	srv.SetKeepAlivesEnabled(false)

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, ln := range listeners {
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				cancel() // a listener failed: take the others down with it
			}
		})
	}
	wg.Go(func() {
		<-ctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer scancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
	}, nil
}
