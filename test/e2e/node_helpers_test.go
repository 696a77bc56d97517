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
	proc    *lab.NDD   // the latest run
	runs    []*lab.NDD // every run, for their logs
	// stop is the signal teardown stops a running ndd with.
	stop syscall.Signal
}

// newNDDNode makes lab l's dispatcher d's directory under parent and a node whose
// configuration serves port on d's interface, with a pin path and a socket
// of its own. t.Cleanup tears it down: ndd stopped with stop, its pinned
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
	p, err := lab.StartNDD(n.host, lab.NDDOptions{Binary: nddBinary(t), Config: n.cfgPath,
		Log: filepath.Join(n.dir, fmt.Sprintf("ndd-%d.log", len(n.runs)+1))})
	if err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
	n.proc = p
	n.runs = append(n.runs, p)
	start := time.Now()
	// On failure, teardown shows the log.
	if err := p.WaitReady(context.Background(), nddStartTimeout, n.api.Health); err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
	t.Logf("%s: ndd answering %v after it started", n.name, time.Since(start).Round(time.Millisecond))
}

func (n *nddNode) running() bool { return n.proc != nil && !n.proc.Exited() }

// teardown stops ndd with n.stop (after SIGTERM, it must have exited
// cleanly), destroys its pinned data plane, and on failure shows its logs.
func (n *nddNode) teardown(t *testing.T) {
	if n.running() {
		if err := n.proc.Stop(n.stop, nddStopTimeout); err != nil {
			t.Errorf("%s: stop ndd: %v", n.name, err)
		} else if n.stop == syscall.SIGTERM && n.proc.Err() != nil {
			t.Errorf("%s: ndd exited with %v after SIGTERM", n.name, n.proc.Err())
		}
	}
	if n.proc != nil {
		if err := n.proc.Destroy(); err != nil {
			t.Errorf("%s: %v", n.name, err)
		}
	}
	os.RemoveAll(n.cfg.PinPath)
	if t.Failed() {
		for i, p := range n.runs {
			t.Logf("log of %s's ndd run %d:\n%s", n.name, i+1, p.LogTail(nddLogLines))
		}
	}
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
