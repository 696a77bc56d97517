package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNDDExited says that ndd exited on its own: before Stop signalled it,
// or before WaitReady saw it ready. NDD.Err holds its exit status.
var ErrNDDExited = errors.New("ndd exited")

// Bounds of the helpers below.
const (
	nddDestroyTimeout = 30 * time.Second
	nddPollInterval   = 50 * time.Millisecond
)

// NDDOptions say how StartNDD runs ndd.
type NDDOptions struct {
	// Binary is the ndd program and Config its configuration file.
	Binary, Config string
	// Log is the file, created afresh, that takes ndd's stdout and stderr.
	Log string
	// Args are more flags, after --config FILE.
	Args []string
	// OwnGroup puts ndd in a process group of its own, so that a
	// terminal's Ctrl-C reaches only the caller, which then stops ndd in
	// order (Stop, Destroy) rather than racing it.
	OwnGroup bool
}

// NDD is one ndd process running in a lab host's network namespace. Its
// owner stops it with Stop or Kill; should the owner die first, the kernel
// sends ndd SIGTERM.
type NDD struct {
	*Process
	host *Host
	o    NDDOptions
}

// StartNDD runs `ndd --config FILE [ARGS]` in h's namespace through
// nsenter (see netns.NS.Command: its data plane is pinned in the host's
// bpffs) and returns at once; WaitReady waits for it to answer.
func StartNDD(h *Host, o NDDOptions) (*NDD, error) {
	logf, err := os.Create(o.Log)
	if err != nil {
		return nil, fmt.Errorf("ndd's log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	// Not bound to a context: ndd is stopped in order by Stop, so that its
	// data plane can then be destroyed.
	cmd := h.NS.Command(context.Background(), o.Binary, append([]string{"--config", o.Config}, o.Args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: o.OwnGroup, Pdeathsig: syscall.SIGTERM}
	proc, err := StartProcess("ndd", cmd)
	if err != nil {
		return nil, fmt.Errorf("start ndd in %s: %w", h.Name, err)
	}
	return &NDD{Process: proc, host: h, o: o}, nil
}

// WaitReady polls ready until it returns nil, and fails when ndd exits
// first (ErrNDDExited), when limit passes (with ready's last error), or
// when ctx ends (ctx.Err()). Pass an API client's Health for "its control
// socket answers".
func (p *NDD) WaitReady(ctx context.Context, limit time.Duration, ready func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if p.Exited() {
			return p.exitedErr("before it was ready")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ndd not ready within %v: %w", limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(nddPollInterval):
		}
	}
}

// Stop sends sig to ndd and waits for it to exit; if it has not within
// timeout, Stop kills it and says so. Once ndd has exited after the signal
// Stop returns nil whatever its exit status (see Err: SIGTERM should give a
// clean exit, SIGKILL cannot). If ndd had exited before, Stop returns
// ErrNDDExited.
func (p *NDD) Stop(sig syscall.Signal, timeout time.Duration) error {
	if p.Exited() {
		return p.exitedErr("before " + unix.SignalName(sig))
	}
	return p.Process.Stop(sig, timeout)
}

// Signal sends sig to ndd (SIGHUP: reload its configuration file) and
// returns at once.
func (p *NDD) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return p.exitedErr("before " + unix.SignalName(sig))
	}
	return p.cmd.Process.Signal(sig)
}

// Destroy runs `ndd --destroy --config FILE` in the host's namespace, to
// remove the data plane that ndd pinned; run it after Stop.
func (p *NDD) Destroy() error {
	ctx, cancel := context.WithTimeout(context.Background(), nddDestroyTimeout)
	defer cancel()
	out, err := p.host.NS.Command(ctx, p.o.Binary, "--destroy", "--config", p.o.Config).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ndd --destroy in %s: %w: %s", p.host.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// LogTail returns the last n lines of ndd's log, "" if it wrote nothing,
// or why the log cannot be read.
func (p *NDD) LogTail(n int) string { return FileTail(p.o.Log, n, "\n") }

func (p *NDD) exitedErr(when string) error {
	if p.err != nil {
		return fmt.Errorf("%w %s: %w", ErrNDDExited, when, p.err)
	}
	return fmt.Errorf("%w %s", ErrNDDExited, when)
}
