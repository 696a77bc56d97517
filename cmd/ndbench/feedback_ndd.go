package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// A balancer is what spreads the workload over the servers in a run: nd
// (ndd in the dispatcher's namespace, XDP, direct server return) or HAProxy
// (a proxy in the same namespace, replies through it).
type balancerSpec struct {
	Name  string `json:"name"`
	About string `json:"about"`
	// nd: the port's scheduler ("" for nd's default). HAProxy: health
	// checks or none; an oracle is told of every change to a server as
	// it is made.
	haproxy   bool
	scheduler string
	checks    bool
	oracle    bool
}

// isND tells nd's balancers from HAProxy's.
func (b balancerSpec) isND() bool { return !b.haproxy }

// Balancer names.
const (
	balND            = "nd"
	balNDP2C         = "nd-p2c"
	balHAProxyChecks = "haproxy-checks"
	balHAProxy       = "haproxy"
	balHAProxyOracle = "haproxy-oracle"
)

// fbBalancers are the balancers of the issue, in the order they run.
var fbBalancers = []balancerSpec{
	{Name: balND, About: "ndd out of the box: default manager and scheduler, default weights, an HTTP advisor every 1 s on /health"},
	{Name: balNDP2C, About: "the same with the port's scheduler: p2c", scheduler: "p2c"},
	{Name: balHAProxyChecks, About: "HAProxy, mode tcp, balance leastconn, option httpchk GET /health, check inter 1s fall 2 rise 2", haproxy: true, checks: true},
	{Name: balHAProxy, About: "HAProxy, mode tcp, balance leastconn, no health checks", haproxy: true},
	{Name: balHAProxyOracle, About: "HAProxy leastconn told of each change as it is made: server1 drained while it is slow or a sinkhole " +
		"(no balancer can know sooner; with a slow server out, the others' load is the least any balancer gives them)", haproxy: true, oracle: true},
}

// appliesTo tells whether b has anything to show in sc: an oracle with
// nothing to be told is plain HAProxy.
func (b balancerSpec) appliesTo(sc *scenario) bool { return !b.oracle || sc.changes() }

func findBalancer(name string) (balancerSpec, bool) {
	for _, b := range fbBalancers {
		if b.Name == name {
			return b, true
		}
	}
	return balancerSpec{}, false
}

// healthPath is what nd's advisor and HAProxy's checks ask the servers
// for: served through the same queue as the workload, like a 1 ms request.
const healthPath = "/health"

// nddConfig is ndd's configuration for balancer b in scenario sc on lab l:
// the VIP's port 80 with the scenario's servers (the late one left out)
// at their configured weights (nd's default when 0), an HTTP advisor on
// /health every second as docs/ADVISORS.md shows, no manager section (its
// defaults), nothing pinned (the data plane goes with the daemon), the API
// socket in dir.
func nddConfig(b balancerSpec, sc *scenario, l *lab.Lab, dir string) string {
	var w strings.Builder
	fmt.Fprintf(&w, "interfaces: [%s]\n", l.Dispatcher.Ifname)
	fmt.Fprintf(&w, "data_plane: {max_flows: 65536, max_affinity: 4096, pin_path: \"\"}\n")
	fmt.Fprintf(&w, "api: {socket: %s}\n", filepath.Join(dir, "ndd.sock"))
	fmt.Fprintf(&w, "advisors:\n  - {name: health, kind: http, interval: 1s, http: {path: %s}}\n", healthPath)
	fmt.Fprintf(&w, "clusters:\n  - vip: %s\n    ports:\n      - port: %d\n        advisor: health\n", l.VIP4, servicePort)
	if b.scheduler != "" {
		fmt.Fprintf(&w, "        scheduler: %s\n", b.scheduler)
	}
	w.WriteString("        servers:\n")
	for i := range sc.Workers {
		if i == sc.Late {
			continue
		}
		w.WriteString(nddServerLine(l.Servers[i].Addr4.String(), sc.Weights[i]))
	}
	return w.String()
}

func nddServerLine(addr string, weight int) string {
	if weight == 0 {
		return fmt.Sprintf("          - {address: %s}\n", addr)
	}
	return fmt.Sprintf("          - {address: %s, weight: %d}\n", addr, weight)
}

// errNotAvailable marks a balancer that cannot run: an ndd that does not
// understand its configuration, or no haproxy installed.
var errNotAvailable = errors.New("not available yet")

// errNotApplicable marks a balancer that a scenario has no use for.
var errNotApplicable = errors.New("not applicable")

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
		Args: []string{"--log-level", "info"}, OwnGroup: true})
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
				if s.State == nd.StateUnresolved {
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

// runningBalancer is a balancer up for one run.
type runningBalancer interface {
	// weights are the servers' weights in the data plane now, 0 for a
	// server not in it; ok is false when they cannot be read or the
	// balancer has none.
	weights() ([]float64, bool)
	// follow calls onCommit with the time of each weight commit until ctx
	// ends; it returns at once for a balancer without commits.
	follow(ctx context.Context, onCommit func(time.Time)) error
	// add makes server i join.
	add(i int) error
	// alive is nil while the balancer's process runs.
	alive() error
	stop() error
}

// ndRun is ndd running for one run.
type ndRun struct {
	p     *lab.NDD
	c     *api.Client
	vip   string
	addrs []string // the scenario's servers' addresses
	wts   []int    // and their configured weights
}

// startND writes ndd's configuration into dir, has ndd check it (a
// refusal is errNotAvailable), runs it in the dispatcher's namespace and
// waits until it is ready.
func startND(ctx context.Context, b balancerSpec, sc *scenario, l *lab.Lab, nddPath, dir string) (_ *ndRun, err error) {
	cfgPath := filepath.Join(dir, "nd.yaml")
	if err := os.WriteFile(cfgPath, []byte(nddConfig(b, sc, l, dir)), 0o600); err != nil {
		return nil, err
	}
	if err := checkConfig(ctx, nddPath, cfgPath); err != nil {
		return nil, err
	}
	p, err := startNDD(l, nddPath, cfgPath, filepath.Join(dir, "ndd.log"))
	if err != nil {
		return nil, err
	}
	n := &ndRun{p: p, vip: l.VIP4.String(), wts: sc.Weights}
	for i := range sc.Workers {
		n.addrs = append(n.addrs, l.Servers[i].Addr4.String())
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.stop())
		}
	}()
	if n.c, err = api.NewClient(filepath.Join(dir, "ndd.sock"), "", api.WithTimeout(800*time.Millisecond)); err != nil {
		return nil, err
	}
	if err := waitReady(ctx, n.c, p, 20*time.Second); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *ndRun) weights() ([]float64, bool) {
	st, err := n.c.Status()
	if err != nil {
		return nil, false
	}
	ws := make([]float64, len(n.addrs))
	for _, port := range st.Ports {
		for _, s := range port.Servers {
			for i, a := range n.addrs {
				if a == s.Address {
					ws[i] = float64(s.Weight)
				}
			}
		}
	}
	return ws, true
}

func (n *ndRun) follow(ctx context.Context, onCommit func(time.Time)) error {
	err := n.c.Events(ctx, true, func(ev nd.Event) error {
		if ev.Type == nd.EventWeightsCommitted {
			onCommit(ev.Time)
		}
		return nil
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// add is `ndctl server add VIP 80 ADDRESS [--weight W]` through the API.
func (n *ndRun) add(i int) error {
	req := api.ServerRequest{Address: n.addrs[i]}
	if n.wts[i] != 0 {
		w := uint32(n.wts[i])
		req.Weight = &w
	}
	_, err := n.c.AddServer(n.vip, servicePort, "tcp", req)
	return err
}

func (n *ndRun) alive() error {
	if n.p.Exited() {
		return fmt.Errorf("ndd exited during the run: %v: %s", n.p.Err(), n.p.LogTail(nddLogLines))
	}
	return nil
}

func (n *ndRun) stop() error {
	if n.c != nil {
		n.c.Close()
	}
	return stopNDD(n.p, 5*time.Second)
}
