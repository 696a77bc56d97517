package lab

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// StopProcess sends sig to p and waits until done is closed (p's Wait has
// returned). If that takes longer than timeout, it kills p, waits, and
// returns an error saying that name was killed.
func StopProcess(name string, p *os.Process, done <-chan struct{}, sig syscall.Signal, timeout time.Duration) error {
	// A failure here is the process exiting at this instant; done tells.
	p.Signal(sig)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		p.Kill()
		<-done
		return fmt.Errorf("%s did not stop within %v of %s and was killed", name, timeout, unix.SignalName(sig))
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
