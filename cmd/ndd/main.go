// Command ndd is the nd dispatcher daemon: it loads the XDP data plane (or
// takes over the pinned one), applies the configuration, follows the
// neighbour table and serves the control API until stopped. SIGHUP reloads
// the configuration file; SIGINT and SIGTERM stop the daemon and leave the
// pinned data plane forwarding, so that a restarted ndd keeps every flow.
// With a bgp section they first withdraw every VIP and serve on for
// bgp.shutdown_grace.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/connlimit"
	"github.com/nd-dispatcher/nd/internal/daemon"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/metrics"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/neighbor"
	"github.com/nd-dispatcher/nd/internal/sdnotify"
	"github.com/nd-dispatcher/nd/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ndd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/nd/nd.yaml", "configuration file")
	check := fs.String("check", "", "validate this configuration file, print every error with its location, and exit")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logJSON := fs.Bool("log-json", false, "log as JSON lines instead of text")
	destroy := fs.Bool("destroy", false, "detach and remove the pinned data plane (every flow is lost), then exit")
	showVersion := fs.Bool("version", false, "print the build (version, VCS revision and time, Go version) and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: ndd [--config FILE] [--check FILE] [--destroy] [--log-level LEVEL] [--log-json] [--version]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, version.Line("ndd"))
		return 0
	}

	if *check != "" {
		// Every check the daemon runs before it accepts a configuration,
		// so that --check passes only what a start or a reload accepts.
		cfg, err := config.Load(*check)
		if err == nil {
			err = daemon.Check(cfg, netInterface, nil)
		}
		if err != nil {
			msg := strings.TrimPrefix(err.Error(), nd.ErrRejected.Error()+": ")
			for _, line := range strings.Split(msg, "\n") {
				fmt.Fprintln(stderr, line)
			}
			return 1
		}
		fmt.Fprintf(stdout, "%s: ok\n", *check)
		return 0
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "ndd: --log-level: %v\n", err)
		return 2
	}
	hopts := &slog.HandlerOptions{Level: level}
	var handler slog.Handler = slog.NewTextHandler(stderr, hopts)
	if *logJSON {
		handler = slog.NewJSONHandler(stderr, hopts)
	}
	log := slog.New(handler)

	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "ndd: %v\n", err)
		return 1
	}
	if *destroy {
		return destroyDataPlane(cfg, log, stderr)
	}
	if err := serve(cfg, *path, log); err != nil {
		log.Error("ndd stopped", "err", err)
		return 1
	}
	return 0
}

func serve(cfg *config.Config, path string, log *slog.Logger) error {
	// sig ends on SIGINT or SIGTERM; ctx, what the daemon and the API run
	// under, ends after the BGP routes are withdrawn and the shutdown grace
	// has passed (at once without bgp), or at once on an error.
	sig, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	xcfg := daemon.ExecutorConfig(cfg.DataPlane)
	xcfg.Logger = log
	x, err := executor.New(xcfg)
	if err != nil {
		return err
	}
	// Closing leaves a pinned data plane running for the next ndd.
	defer x.Close()

	nbr, err := neighbor.New(neighbor.Options{Logger: log})
	if err != nil {
		return err
	}
	defer nbr.Close()

	// Advisors with target vip probe through steering on lo, attached
	// while some advisor does; without it they report their targets
	// down, saying why.
	newSteering := func() (daemon.Steering, error) {
		return executor.NewSteering(executor.SteeringOptions{Logger: log})
	}

	// Under systemd (Type=notify) the service is ready once the data plane
	// is attached and the configuration installed, not merely started.
	notify := sdnotify.New(os.Getenv(sdnotify.Env))
	tell := func(states ...string) {
		if err := notify.Notify(states...); err != nil {
			log.Warn("tell the service manager", "err", err)
		}
	}
	ready := func() {
		tell(sdnotify.Ready, sdnotify.Status(fmt.Sprintf("dispatching on %s", strings.Join(cfg.Interfaces, ", "))))
	}

	d, err := daemon.New(cfg, daemon.Options{Executor: x, Neighbors: nbr, ConfigPath: path, Logger: log, NewSteering: newSteering, Ready: ready})
	if err != nil {
		return err
	}

	// The listeners' collector reads the server made below; nothing
	// scrapes before it is served.
	var srv *api.Server
	listenerStats := func() map[string]connlimit.Stats { return srv.ConnStats() }
	srv, err = api.NewServer(d, api.ServerOptions{
		Socket: cfg.API.Socket,
		Logger: log,
		Metrics: metrics.Handler(metrics.New(d.Status), metrics.NewDecisions(metrics.Decisions{
			Manager: d.ManagerReport, Advisors: d.AdvisorStatus, Agents: d.AgentStatus,
		}), metrics.NewHA(d.HAStatus), metrics.NewBGP(d.BGPStatus), metrics.NewListeners(listenerStats)),
	})
	if err != nil {
		return err
	}
	// api.listen, its token and TLS, and metrics.listen follow the
	// configuration: opened now, changed by every reload or API change.
	if err := srv.Configure(cfg.API, cfg.Metrics); err != nil {
		srv.Close()
		return err
	}
	d.SetListeners(srv)

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// The signal loop is waited for on the way out: it tells the service
	// manager STOPPING=1, which must be sent before the process exits.
	signalsDone := make(chan struct{})
	go func() {
		defer close(signalsDone)
		for {
			select {
			case <-sig.Done():
				tell(sdnotify.Stopping, sdnotify.Status("stopping; the data plane keeps forwarding"))
				return
			case <-ctx.Done():
				return
			case <-hup:
				if err := notify.BeginReload(); err != nil {
					log.Warn("tell the service manager", "err", err)
				}
				status := "reloaded"
				if ch, err := d.Reload(); err != nil {
					log.Error("reload refused; the running configuration stays", "err", err)
					status = "reload refused, the running configuration stays: " + err.Error()
				} else {
					log.Info("reloaded", "changes", ch.String())
				}
				tell(sdnotify.Ready, sdnotify.Status(status))
			}
		}
	}()

	errc := make(chan error, 2)
	running := 2
	go func() { errc <- d.Run(ctx) }()
	go func() { errc <- srv.Serve(ctx) }()
	go func() {
		select {
		case <-ctx.Done():
		case <-sig.Done():
			withdrawThenStop(ctx, d, log)
			cancel()
		}
	}()
	log.Info("ndd running", "config", path, "socket", cfg.API.Socket, "interfaces", cfg.Interfaces)
	var first error
	for range running {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	stop()
	<-signalsDone
	if first != nil && !errors.Is(first, context.Canceled) {
		return first
	}
	log.Info("ndd stopped; the data plane keeps forwarding", "pin_path", cfg.DataPlane.PinPath)
	return nil
}

// withdrawThenStop, on SIGTERM, withdraws every BGP route (waiting up to
// two seconds for the withdrawals to leave) and keeps ndd serving for the
// shutdown grace, so that the routers move new flows elsewhere while this
// dispatcher still forwards what is in flight. A second signal cuts the
// grace short.
func withdrawThenStop(ctx context.Context, d *daemon.Daemon, log *slog.Logger) {
	again := make(chan os.Signal, 1)
	signal.Notify(again, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(again)
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	grace := d.BGPShutdown(wctx)
	cancel()
	if grace <= 0 {
		return
	}
	log.Info("stopping after the bgp shutdown grace", "grace", grace)
	select {
	case <-time.After(grace):
	case <-again:
		log.Info("second signal: stopping now")
	case <-ctx.Done():
	}
}

func destroyDataPlane(cfg *config.Config, log *slog.Logger, stderr io.Writer) int {
	xcfg := daemon.ExecutorConfig(cfg.DataPlane)
	xcfg.Logger = log
	x, err := executor.New(xcfg)
	if err != nil {
		fmt.Fprintf(stderr, "ndd: %v\n", err)
		return 1
	}
	for _, name := range cfg.Interfaces {
		if ifi, err := netInterface(name); err == nil {
			_ = x.Attach(ifi.Index) // take the pinned attachment over, to remove it
		}
	}
	if err := x.Destroy(); err != nil {
		fmt.Fprintf(stderr, "ndd: destroy: %v\n", err)
		return 1
	}
	return 0
}
