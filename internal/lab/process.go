package lab

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Process is a program run in the lab (ndd, BIRD, a bench's proxy):
// started, watched until it exits, and stopped in order by its owner.
type Process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // from Wait, once done is closed
}

// StartProcess starts cmd and watches it until it exits; name names it in
// errors.
func StartProcess(name string, cmd *exec.Cmd) (*Process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has exited, for whatever reason.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is the process's exit status once it has exited (nil for a clean
// exit), and nil while it runs.
func (p *Process) Err() error {
	if !p.Exited() {
		return nil
	}
	return p.err
}

// Pid is the process's id: the program's own when run through nsenter,
// which executes it in its own place (for reading its CPU time in /proc).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Kill kills the process at once and waits until it is gone.
func (p *Process) Kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// Stop sends sig to the process and waits for it to exit; if it has not
// within timeout, Stop kills it and says so. A process gone already is no
// error.
func (p *Process) Stop(sig syscall.Signal, timeout time.Duration) error {
	if p.Exited() {
		return nil
	}
	// A failure here is the process exiting at this instant; done tells.
	p.cmd.Process.Signal(sig)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		p.Kill()
		return fmt.Errorf("%s did not stop within %v of %s and was killed", p.name, timeout, unix.SignalName(sig))
	}
}

// FileTail returns the last n lines of the file at path, joined by sep, or
// why the file cannot be read.
func FileTail(path string, n int, sep string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], sep)
}
