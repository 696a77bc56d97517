package agent

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"
)

// maxCommandOutput bounds what is kept of a command's stdout and stderr.
const maxCommandOutput = 4096

// cappedBuffer keeps the first max bytes written and counts the rest, so a
// chatty command cannot grow the agent's memory.
type cappedBuffer struct {
	buf       bytes.Buffer
	max       int
	truncated bool
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	room := b.max - b.buf.Len()
	if len(p) > room {
		b.truncated = true
		b.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.buf.Write(p)
}

// result is the last outcome of a metric source.
type result struct {
	value float64
	err   string
}

// runCommand runs cmd once, bounded by its timeout, and returns its value
// or why there is none. The command runs in its own process group so that
// a timeout kills what it started too (as with ["sh", "-c", ...]).
func runCommand(ctx context.Context, cmd Command) result {
	ctx, cancel := context.WithTimeout(ctx, cmd.Timeout)
	defer cancel()
	c := exec.CommandContext(ctx, cmd.Argv[0], cmd.Argv[1:]...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error {
		// Negative pid: the whole process group.
		return syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
	}
	// A grandchild holding stdout open must not keep Wait waiting.
	c.WaitDelay = time.Second
	var stdout, stderr cappedBuffer
	stdout.max, stderr.max = maxCommandOutput, 256
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	if ctx.Err() == context.DeadlineExceeded {
		return result{err: fmt.Sprintf("timed out after %v", cmd.Timeout)}
	}
	if err != nil {
		msg := err.Error()
		if s := strings.TrimSpace(stderr.buf.String()); s != "" {
			msg += ": " + s
		}
		return result{err: clip(msg)}
	}
	if stdout.truncated {
		return result{err: fmt.Sprintf("output longer than %d bytes", maxCommandOutput)}
	}
	s := strings.TrimSpace(stdout.buf.String())
	v, perr := strconv.ParseFloat(s, 64)
	if perr != nil || !finite(v) {
		return result{err: clip(fmt.Sprintf("output is not one finite number: %q", s))}
	}
	return result{value: v}
}

// clip shortens an error message to what a report may carry, keeping it
// valid UTF-8.
func clip(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "?")
	}
	if len(s) <= maxErrorLen {
		return s
	}
	s = s[:maxErrorLen-3]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}

// commandCache holds the last result of each operator command.
type commandCache struct {
	mu   sync.Mutex
	last map[string]result
}

func newCommandCache(cmds []Command) *commandCache {
	c := &commandCache{last: map[string]result{}}
	for _, cmd := range cmds {
		c.last[cmd.Name] = result{err: "not run yet"}
	}
	return c
}

func (c *commandCache) set(name string, r result) {
	c.mu.Lock()
	c.last[name] = r
	c.mu.Unlock()
}

func (c *commandCache) fill(metrics map[string]float64, errs map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, r := range c.last {
		if r.err != "" {
			errs[name] = r.err
		} else {
			metrics[name] = r.value
		}
	}
}

// runSchedule runs cmd now and then every interval until ctx ends. Runs
// never overlap: the timeout is at most the interval.
func (c *commandCache) runSchedule(ctx context.Context, cmd Command) {
	t := time.NewTicker(cmd.Interval)
	defer t.Stop()
	for {
		r := runCommand(ctx, cmd)
		if ctx.Err() != nil {
			return
		}
		c.set(cmd.Name, r)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
