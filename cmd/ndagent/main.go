// Command ndagent is nd's host-metric agent. It runs on each server,
// samples load, CPU, memory, established TCP connections, processes and the
// operator's own commands, and answers the dispatcher's authenticated polls.
// It never runs anything the dispatcher sends. docs/AGENT.md describes the
// configuration file and the protocol. SIGINT and SIGTERM stop it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nd-dispatcher/nd/internal/agent"
	"github.com/nd-dispatcher/nd/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ndagent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/nd/agent.yaml", "configuration file")
	check := fs.Bool("check", false, "validate the configuration (and load its key and certificates), then exit")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logJSON := fs.Bool("log-json", false, "log as JSON lines instead of text")
	showVersion := fs.Bool("version", false, "print the build (version, VCS revision and time, Go version) and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: ndagent [--config FILE] [--check] [--log-level LEVEL] [--log-json] [--version]\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, version.Line("ndagent"))
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ndagent: unexpected arguments %q\n", fs.Args())
		fs.Usage()
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "ndagent: --log-level %q: want debug, info, warn or error\n", *logLevel)
		return 2
	}
	hopts := &slog.HandlerOptions{Level: level}
	var handler slog.Handler = slog.NewTextHandler(stderr, hopts)
	if *logJSON {
		handler = slog.NewJSONHandler(stderr, hopts)
	}
	logger := slog.New(handler)

	cfg, err := agent.LoadConfig(*path)
	var a *agent.Agent
	if err == nil {
		a, err = agent.New(cfg, logger)
	}
	if err != nil {
		for line := range strings.SplitSeq(err.Error(), "\n") {
			fmt.Fprintln(stderr, line)
		}
		return 1
	}
	if *check {
		fmt.Fprintf(stdout, "%s: ok (%d commands)\n", *path, len(cfg.Commands))
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		logger.Error("ndagent stopped", "err", err)
		return 1
	}
	logger.Info("ndagent stopped")
	return 0
}
