package advisor

import (
	"bytes"
	"context"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Environment variables a custom command receives, besides the runner's
// own environment.
const (
	EnvServer  = "ND_SERVER"  // the server measured
	EnvPort    = "ND_PORT"    // the service port
	EnvVIP     = "ND_VIP"     // the cluster address, empty if none is known
	EnvAddress = "ND_ADDRESS" // host:port to connect to
	EnvAdvisor = "ND_ADVISOR" // the advisor's name
)

// maxOutput bounds how much of a command's stdout and stderr is kept.
const maxOutput = 4 << 10

// Custom runs an operator's command on the dispatcher host, without a
// shell. Exit status 0 means up. If stdout holds just a non-negative
// number, it is the load value in milliseconds; otherwise the latency is
// how long the command ran.
type Custom struct {
	Command []string // argv; Command[0] is looked up in PATH
	Advisor string   // passed as ND_ADVISOR
}

// Name returns "custom".
func (*Custom) Name() string { return KindCustom }

// Probe runs the command once, killing its process group when ctx is done.
func (c *Custom) Probe(ctx context.Context, t Target) Result {
	cmd := exec.CommandContext(ctx, c.Command[0], c.Command[1:]...)
	vip := ""
	if t.VIP.IsValid() {
		vip = t.VIP.String()
	}
	cmd.Env = append(os.Environ(),
		EnvServer+"="+t.Server.String(),
		EnvPort+"="+strconv.Itoa(int(t.Port)),
		EnvVIP+"="+vip,
		EnvAddress+"="+t.Addr.String(),
		EnvAdvisor+"="+c.Advisor,
	)
	var stdout, stderr capped
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A timed-out command is killed with everything it started, so a
	// script's children do not outlive the probe or hold its pipes open.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second

	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if ctx.Err() != nil {
		return down("command %s: %v after %v", c.Command[0], ctx.Err(), took.Round(time.Millisecond))
	}
	if err != nil {
		msg := firstLine(stderr.String())
		if msg == "" {
			msg = firstLine(stdout.String())
		}
		if msg != "" {
			return down("command %s: %v: %s", c.Command[0], err, msg)
		}
		return down("command %s: %v", c.Command[0], err)
	}
	if ms, ok := loadValue(stdout.String()); ok {
		return up(ms)
	}
	return up(took)
}

// loadValue parses a command's output as a load value in milliseconds.
func loadValue(out string) (time.Duration, bool) {
	v, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) || v > float64(math.MaxInt64/int64(time.Millisecond)) {
		return 0, false
	}
	return time.Duration(v * float64(time.Millisecond)), true
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// capped keeps the first maxOutput bytes written to it and drops the rest,
// while reporting every write as complete so the command is never blocked.
type capped struct{ bytes.Buffer }

func (c *capped) Write(p []byte) (int, error) {
	if room := maxOutput - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
