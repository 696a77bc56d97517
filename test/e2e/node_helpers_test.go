package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/lab"
)

// nddNode is one dispatcher of a lab with several and the ndd that runs
// there: its directory, configuration, API client and every run. The HA
// and BGP labs' nodes embed it and add their own sections.
type nddNode struct {
	name    string
	lab     *lab.Lab
	host    *lab.Host
	dir     string
	cfg     nddConfig
	cfgPath string
	api     *api.Client
	nddRuns
	// stop is the signal teardown stops a running ndd with.
	stop syscall.Signal
}

// nddRuns are the runs of one ndd over its configuration file: the latest,
// and every one for its log.
type nddRuns struct {
	proc *lab.NDD   // the latest run
	runs []*lab.NDD // every run, for their logs
}

// run starts bin on host over the configuration file cfg, logging to the
// next ndd-N.log in dir, and waits until ready answers. who, unless "",
// starts the messages of a failure.
func (r *nddRuns) run(t *testing.T, who string, host *lab.Host, bin, cfg, dir string, ready func() error) {
	t.Helper()
	p, err := lab.StartNDD(host, lab.NDDOptions{Binary: bin, Config: cfg,
		Log: filepath.Join(dir, fmt.Sprintf("ndd-%d.log", len(r.runs)+1))})
	if err != nil {
		t.Fatalf("%s%v", prefix(who), err)
	}
	r.proc = p
	r.runs = append(r.runs, p)
	start := time.Now()
	// On failure, showLogs shows the log.
	if err := p.WaitReady(context.Background(), nddStartTimeout, ready); err != nil {
		t.Fatalf("%s%v", prefix(who), err)
	}
	t.Logf("%sndd answering %v after it started", prefix(who), time.Since(start).Round(time.Millisecond))
}

func (r *nddRuns) running() bool { return r.proc != nil && !r.proc.Exited() }

// end stops a running ndd with sig (after SIGTERM it must have exited
// cleanly) and destroys its pinned data plane.
func (r *nddRuns) end(t *testing.T, who string, sig syscall.Signal) {
	if r.running() {
		if err := r.proc.Stop(sig, nddStopTimeout); err != nil {
			t.Errorf("%sstop ndd: %v", prefix(who), err)
		} else if sig == syscall.SIGTERM && r.proc.Err() != nil {
			t.Errorf("%sndd exited with %v after SIGTERM", prefix(who), r.proc.Err())
		}
	}
	if r.proc != nil {
		if err := r.proc.Destroy(); err != nil {
			t.Errorf("%s%v", prefix(who), err)
		}
	}
}

// showLogs shows every run's log if t failed.
func (r *nddRuns) showLogs(t *testing.T, who string) {
	if t.Failed() {
		whose := ""
		if who != "" {
			whose = who + "'s "
		}
		for i, p := range r.runs {
			t.Logf("log of %sndd run %d:\n%s", whose, i+1, p.LogTail(nddLogLines))
		}
	}
}

// prefix is "who: ", or "" for no one.
func prefix(who string) string {
	if who == "" {
		return ""
	}
	return who + ": "
}

// newNDDNode makes lab l's dispatcher d's directory under parent and a
// node whose configuration serves port on d's interface, with a pin path
// and a socket of its own. t.Cleanup tears it down: ndd stopped with stop, its pinned
// data plane destroyed, and on failure its logs shown.
func newNDDNode(t *testing.T, l *lab.Lab, parent string, d *lab.Host, port portConfig, stop syscall.Signal) *nddNode {
	t.Helper()
	dir := filepath.Join(parent, d.Name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	n := &nddNode{name: d.Name, lab: l, host: d, dir: dir, cfgPath: filepath.Join(dir, "nd.yaml"), stop: stop,
		cfg: nddConfig{
			PinPath:    newPinPath(),
			Socket:     filepath.Join(dir, "ndd.sock"),
			Interfaces: []string{d.Ifname},
			Ports:      []portConfig{port},
		}}
	n.api = apiClient(t, n.cfg.Socket)
	t.Cleanup(func() { n.teardown(t) })
	return n
}

// writeConfig writes text as the node's configuration file.
func (n *nddNode) writeConfig(t *testing.T, text string) {
	t.Helper()
	if err := os.WriteFile(n.cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs ndd on the node and waits until its API answers.
func (n *nddNode) start(t *testing.T) {
	t.Helper()
	n.run(t, n.name, n.host, nddBinary(t), n.cfgPath, n.dir, n.api.Health)
}

// teardown stops ndd with n.stop, destroys its pinned data plane, and on
// failure shows its logs.
func (n *nddNode) teardown(t *testing.T) {
	n.end(t, n.name, n.stop)
	os.RemoveAll(n.cfg.PinPath)
	n.showLogs(t, n.name)
}

// status is the node's HA status; the test fails if it cannot be read.
func (n *nddNode) status(t *testing.T) ha.Status {
	t.Helper()
	st, err := n.api.HAStatus()
	if err != nil {
		t.Fatalf("%s: ha status: %v", n.name, err)
	}
	return st
}

// ndctlJSON runs `ndctl --socket (the node's) --json args...` and decodes
// what it prints into v.
func (n *nddNode) ndctlJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, stderr, code, err := runNDCTL(t, append([]string{"--socket", n.cfg.Socket, "--json"}, args...)...)
	if err != nil || code != 0 {
		t.Fatalf("%s: ndctl %v --json: exit %d, %v: %s", n.name, args, code, err, stderr)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("%s: ndctl %v --json printed %q: %v", n.name, args, firstBytes(out, 300), err)
	}
}
