// Command ndctl is the operator's command line for ndd, the nd dispatcher
// daemon: it adds and removes clusters, ports and servers on the running
// dispatcher, sets weights and quiesces servers, shows status and events,
// shows, applies and saves the configuration, all through ndd's control API
// (internal/api), on its unix socket or over TCP. `ndctl lab` builds a
// namespace lab and shows nd balancing traffic in it.
//
// Every subcommand is a function over an env value (output streams and a
// client factory) so that tests drive it with a fake client; `ndctl help`
// lists the commands.
package main

import (
	"context"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/api"
)

func main() {
	// SIGPIPE too: a reader that goes away (ndctl lab | head) ends the
	// command like Ctrl-C does, so that the lab still cleans up.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGPIPE)
	e := &env{
		stdout: os.Stdout,
		stderr: os.Stderr,
		stdin:  os.Stdin,
		getenv: os.Getenv,
		dial: func(target, token string) (Client, error) {
			return api.NewClient(target, token)
		},
		terminal: isTerminal(os.Stdout),
		tick:     time.Second,
		lab: labEnv{
			geteuid:    os.Geteuid,
			executable: os.Executable,
			lookPath:   exec.LookPath,
		},
	}
	code := run(ctx, e, os.Args[1:])
	stop()
	os.Exit(code)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
