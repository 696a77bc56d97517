package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/daemon"
	"github.com/nd-dispatcher/nd/internal/lab"
)

// A variant is one way of running nd through the same workload.
type variant struct {
	name     string
	about    string
	interval time.Duration // the manager's; for static, the same 2s as a yardstick
	// manager, port and advisors are YAML fragments of ndd's
	// configuration: the manager section's body, extra lines of the port,
	// and the advisors section (empty for none).
	manager, port, advisors string
}

// fbVariants are the variants of the issue, in the order they run.
var fbVariants = []variant{
	{
		name: "static", about: "static equal weights", interval: 2 * time.Second,
		manager: "policy: static",
	},
	{
		name: "manager-default", about: "the manager, default proportions (active 50, new 50)", interval: 2 * time.Second,
		manager: "policy: default\n  interval: 2s",
	},
	{
		name: "manager-advisor", about: "the manager with an HTTP advisor (active 30, new 30, advisor 40)", interval: 2 * time.Second,
		manager: "policy: default\n  interval: 2s\n  proportions: {active: 30, new: 30, advisor: 40, host: 0}",
		port:    "advisor: work",
		advisors: "advisors:\n" +
			"  - {name: work, kind: http, port: 80, interval: 1s, timeout: 900ms}\n",
	},
	{
		name: "p2c-manager", about: "the power-of-two-choices scheduler with the default manager", interval: 2 * time.Second,
		manager: "policy: default\n  interval: 2s",
		port:    "scheduler: p2c",
	},
}

func findVariant(name string) (variant, bool) {
	for _, v := range fbVariants {
		if v.name == name {
			return v, true
		}
	}
	return variant{}, false
}

// nddConfig is ndd's configuration for variant v in lab l: the VIP's port
// 80 with every server at the default weight, nothing pinned (the data
// plane goes with the daemon), the API socket in dir.
func nddConfig(v variant, l *lab.Lab, dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "interfaces: [%s]\n", l.Dispatcher.Ifname)
	fmt.Fprintf(&b, "data_plane: {max_flows: 65536, max_affinity: 4096, pin_path: \"\"}\n")
	fmt.Fprintf(&b, "api: {socket: %s}\n", filepath.Join(dir, "ndd.sock"))
	fmt.Fprintf(&b, "manager:\n  %s\n", v.manager)
	b.WriteString(v.advisors)
	fmt.Fprintf(&b, "clusters:\n  - vip: %s\n    ports:\n      - port: %d\n", l.VIP4, servicePort)
	if v.port != "" {
		fmt.Fprintf(&b, "        %s\n", v.port)
	}
	b.WriteString("        servers:\n")
	for _, s := range l.Servers {
		fmt.Fprintf(&b, "          - {address: %s}\n", s.Addr4)
	}
	return b.String()
}

// errNotAvailable marks a variant whose configuration this ndd does not
// understand yet.
var errNotAvailable = errors.New("not available yet")

// checkConfig runs `ndd --check` on the file; a refusal is errNotAvailable
// with ndd's first complaint.
func checkConfig(ctx context.Context, nddPath, cfgPath string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, nddPath, "--check", cfgPath).CombinedOutput()
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return fmt.Errorf("%w: ndd --check: %s", errNotAvailable, first)
	}
	return fmt.Errorf("ndd --check: %w", err)
}

// nddLogLines is how much of ndd's log an error quotes.
const nddLogLines = 5

// startNDD runs ndd in the dispatcher's namespace, in a process group of
// its own so that a Ctrl-C reaches only ndbench, which stops it in order.
func startNDD(l *lab.Lab, nddPath, cfgPath, logPath string) (*lab.NDD, error) {
	return lab.StartNDD(&l.Dispatcher, lab.NDDOptions{Binary: nddPath, Config: cfgPath, Log: logPath,
		Args: []string{"--log-level", "warn"}, OwnGroup: true})
}

// stopNDD stops ndd with SIGTERM, killing it after wait; ndd gone before
// is an error that quotes its log.
func stopNDD(p *lab.NDD, wait time.Duration) error {
	err := p.Stop(syscall.SIGTERM, wait)
	if errors.Is(err, lab.ErrNDDExited) {
		return fmt.Errorf("%w; log: %s", err, p.LogTail(nddLogLines))
	}
	return err
}

// waitReady waits for ndd's API to answer and every server to be resolved.
func waitReady(ctx context.Context, c *api.Client, p *lab.NDD, limit time.Duration) error {
	err := p.WaitReady(ctx, limit, func() error {
		st, err := c.Status()
		if err != nil {
			return err
		}
		for _, port := range st.Ports {
			for _, s := range port.Servers {
				if s.State == daemon.StateUnresolved {
					return fmt.Errorf("server %s unresolved: %s", s.Address, s.Reason)
				}
			}
		}
		if len(st.Ports) == 0 {
			return errors.New("no ports yet")
		}
		return nil
	})
	if errors.Is(err, lab.ErrNDDExited) {
		return fmt.Errorf("%w: %s", err, p.LogTail(nddLogLines))
	}
	return err
}

// buildNDD compiles cmd/ndd into dir, for a run without --ndd. It names
// the package by its import path, so it works from anywhere inside the
// repository.
func buildNDD(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "ndd")
	b, err := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/nd-dispatcher/nd/cmd/ndd").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/ndd (run inside the nd repository, or give --ndd): %w: %s", err, bytes.TrimSpace(b))
	}
	return out, nil
}
