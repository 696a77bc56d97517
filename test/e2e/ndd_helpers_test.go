package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/netns"
)

// Bounds of the daemon's life in a test.
const (
	buildNDDTimeout = 3 * time.Minute  // go build of cmd/ndd
	nddStartTimeout = 15 * time.Second // until the API answers
	nddReadyTimeout = 15 * time.Second // until every server is in the data plane
	nddStopTimeout  = 10 * time.Second // SIGTERM until exit, before SIGKILL
	nddRunTimeout   = 30 * time.Second // a one-shot ndd: --check
	apiTimeout      = 10 * time.Second // one API request
	nddLogLines     = 80               // of each run's log, shown when a test fails
)

// TestMain removes the binaries built for the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
	}
	os.Exit(code)
}

// binaries are the programs under test, each built once per test binary
// into one temporary directory.
var binaries struct {
	mu    sync.Mutex
	dir   string
	paths map[string]string
}

// goBinary builds cmd/NAME the first time it is asked for and returns the
// binary's path.
func goBinary(t *testing.T, name string) string {
	t.Helper()
	binaries.mu.Lock()
	defer binaries.mu.Unlock()
	if p, ok := binaries.paths[name]; ok {
		return p
	}
	if binaries.dir == "" {
		dir, err := os.MkdirTemp("", "nd-e2e-bin-")
		if err != nil {
			t.Fatal(err)
		}
		binaries.dir = dir
		binaries.paths = map[string]string{}
	}
	path := filepath.Join(binaries.dir, name)
	ctx, cancel := context.WithTimeout(context.Background(), buildNDDTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", path, "github.com/nd-dispatcher/nd/cmd/"+name)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, out)
	}
	binaries.paths[name] = path
	return path
}

// nddBinary builds cmd/ndd (once) and returns the binary's path.
func nddBinary(t *testing.T) string { return goBinary(t, "ndd") }

// apiClient is a client of the ndd API on socket, closed when the test
// ends.
func apiClient(t *testing.T, socket string) *api.Client {
	t.Helper()
	c, err := api.NewClient(socket, "", api.WithTimeout(apiTimeout))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// startInNS starts cmd inside ns. The process is forked from a thread that
// has entered ns, so it inherits that network namespace and nothing else.
func startInNS(ns *netns.NS, cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}

// runInNS runs a one-shot program inside ns and returns its output and exit
// code; err is set only when it could not run to an exit.
func runInNS(ns *netns.NS, name string, args ...string) (stdout, stderr string, code int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), nddRunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := startInNS(ns, cmd); err != nil {
		return "", "", -1, fmt.Errorf("start %s: %w", name, err)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return o.String(), e.String(), 0, nil
	case errors.As(err, &exit) && exit.Exited():
		return o.String(), e.String(), exit.ExitCode(), nil
	}
	return o.String(), e.String(), -1, fmt.Errorf("run %s %s: %w\nstderr: %s", name, strings.Join(args, " "), err, e.String())
}

// nddConfig is the configuration file a test gives ndd: the dispatcher's
// eth0, a pin path and a socket of the test's own, the static manager, and
// the ports of VIP4.
type nddConfig struct {
	PinPath    string
	Socket     string
	Interfaces []string
	Listen     string // api.listen; with Token
	Token      string
	Dashboard  bool   // api.dashboard
	Metrics    string // metrics.listen
	// Manager is the manager section's body (indented two spaces);
	// "" keeps weights as configured (policy static).
	Manager string
	// Advisors and Agents are whole sections, or "".
	Advisors, Agents string
	// IdleTimeout is data_plane.idle_timeout; 0 leaves the default.
	IdleTimeout time.Duration
	Ports       []portConfig
}

type portConfig struct {
	Port      uint16
	Advisor   string
	Scheduler string // "" for the default
	Servers   []serverConfig
}

type serverConfig struct {
	Addr    netip.Addr
	Weight  uint32
	Quiesce bool
}

// yaml writes the configuration, one server a line.
func (c nddConfig) yaml() string {
	var b strings.Builder
	fmt.Fprintf(&b, "interfaces: [%s]\n", strings.Join(c.Interfaces, ", "))
	fmt.Fprintf(&b, "data_plane:\n  max_flows: 65536\n  pin_path: %s\n", c.PinPath)
	if c.IdleTimeout != 0 {
		fmt.Fprintf(&b, "  idle_timeout: %s\n", c.IdleTimeout)
	}
	fmt.Fprintf(&b, "api:\n  socket: %s\n", c.Socket)
	if c.Listen != "" {
		fmt.Fprintf(&b, "  listen: %q\n  token: %q\n", c.Listen, c.Token)
	}
	if c.Dashboard {
		b.WriteString("  dashboard: true\n")
	}
	if c.Metrics != "" {
		fmt.Fprintf(&b, "metrics:\n  listen: %q\n", c.Metrics)
	}
	if c.Manager == "" {
		fmt.Fprintf(&b, "manager:\n  policy: static\n")
	} else {
		fmt.Fprintf(&b, "manager:\n%s", c.Manager)
	}
	b.WriteString(c.Advisors)
	b.WriteString(c.Agents)
	fmt.Fprintf(&b, "clusters:\n  - vip: %s\n    ports:\n", lab.VIP4)
	for _, p := range c.Ports {
		fmt.Fprintf(&b, "      - port: %d\n", p.Port)
		if p.Advisor != "" {
			fmt.Fprintf(&b, "        advisor: %s\n", p.Advisor)
		}
		if p.Scheduler != "" {
			fmt.Fprintf(&b, "        scheduler: %s\n", p.Scheduler)
		}
		b.WriteString("        servers:")
		if len(p.Servers) == 0 {
			b.WriteString(" []")
		}
		b.WriteString("\n")
		for _, s := range p.Servers {
			fmt.Fprintf(&b, "          - {address: %s, weight: %d", s.Addr, s.Weight)
			if s.Quiesce {
				b.WriteString(", quiesce: true")
			}
			b.WriteString("}\n")
		}
	}
	return b.String()
}

// clone copies the configuration deeply enough to edit its ports.
func (c nddConfig) clone() nddConfig {
	out := c
	out.Interfaces = append([]string(nil), c.Interfaces...)
	out.Ports = nil
	for _, p := range c.Ports {
		p.Servers = append([]serverConfig(nil), p.Servers...)
		out.Ports = append(out.Ports, p)
	}
	return out
}

// vipAdvisor gives c's first port a fast tcp advisor probing the servers
// through the VIP: every 200ms, one failure takes a server out and one
// success brings it back.
func vipAdvisor(c *nddConfig) {
	c.Advisors = "advisors:\n  - {name: alive, kind: tcp, target: vip, interval: 200ms, timeout: 150ms, rise: 1, fall: 1}\n"
	c.Ports[0].Advisor = "alive"
}

// advisorsUp returns ndd's advisor targets and how many of them are known
// to be up; what names the request in a failure.
func advisorsUp(t *testing.T, what string, c *api.Client) ([]advisor.Status, int) {
	t.Helper()
	sts, err := c.Advisors()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	up := 0
	for _, s := range sts {
		if s.Known && s.Up {
			up++
		}
	}
	return sts, up
}

// nddLab is a lab whose dispatcher runs ndd as a process, controlled over
// its unix socket. The embedded fixture holds the lab and the reply
// servers (it has no executor of its own: ndd owns the data plane).
type nddLab struct {
	*fixture
	dir     string // the test's directory: configuration, socket, logs
	cfg     nddConfig
	cfgPath string
	api     *api.Client
	nddRuns
	addrOf map[string]netip.Addr // server name -> its IPv4 address
	nameOf map[netip.Addr]string
	// binary, when set, is run instead of the ndd built for the tests
	// (a wrapper that confines it, say).
	binary string
	// host is where ndd runs; nil for the lab's dispatcher.
	host *lab.Host
}

// pinPrefix starts the pin path of every ndd the tests run; the process's
// id follows, so that sweepStalePins can tell whose a pin is.
const pinPrefix = "/sys/fs/bpf/nde2e-"

var pinSeq atomic.Int64

// newPinPath is a pin path of this process's own, not used before.
func newPinPath() string {
	return fmt.Sprintf("%s%d-%d", pinPrefix, os.Getpid(), pinSeq.Add(1))
}

// sweepStalePins removes the pinned data planes left by test processes that
// died before their cleanup ran.
func sweepStalePins(t *testing.T) {
	t.Helper()
	dirs, _ := filepath.Glob(pinPrefix + "*")
	for _, dir := range dirs {
		pid, _, ok := strings.Cut(strings.TrimPrefix(dir, pinPrefix), "-")
		n, err := strconv.Atoi(pid)
		if !ok || err != nil || n == os.Getpid() {
			continue
		}
		if err := syscall.Kill(n, 0); errors.Is(err, syscall.ESRCH) {
			t.Logf("removing stale pinned data plane %s", dir)
			if err := os.RemoveAll(dir); err != nil {
				t.Logf("remove %s: %v", dir, err)
			}
		}
	}
}

// newNDDLab builds a lab of len(weights) servers, checks it, starts a reply
// server on VIP4:80 in each, and starts ndd with VIP4:80 over the servers
// whose weight is given (weights[i] < 0 leaves server i out). edit, when
// not nil, adjusts the configuration first. Everything is undone by
// t.Cleanup: ndd gets SIGTERM, `ndd --destroy` removes the pinned data
// plane, the lab is closed.
func newNDDLab(t *testing.T, weights []int, edit func(*nddConfig)) *nddLab {
	t.Helper()
	return newNDDLabWith(t, lab.Options{}, weights, edit)
}

// newNDDLabWith is newNDDLab over a lab built with opts (its Servers set
// from weights).
func newNDDLabWith(t *testing.T, opts lab.Options, weights []int, edit func(*nddConfig)) *nddLab {
	t.Helper()
	sweepStalePins(t)
	nddBinary(t) // build before the lab exists: a failed build leaves nothing behind
	opts.Servers = len(weights)
	l := newCheckedLab(t, opts)

	n := &nddLab{
		fixture: &fixture{lab: l, byAddr: map[netip.Addr]*replyServer{}},
		dir:     t.TempDir(),
		addrOf:  map[string]netip.Addr{},
		nameOf:  map[netip.Addr]string{},
	}
	port := portConfig{Port: servicePort}
	for i, b := range l.Backends() {
		s := n.addReplyServer(t, i, b, l.VIP4)
		n.addrOf[s.name], n.nameOf[b.Addr4] = b.Addr4, s.name
		w := max(weights[i], 0)
		n.weights = append(n.weights, uint32(w))
		if weights[i] >= 0 {
			port.Servers = append(port.Servers, serverConfig{Addr: b.Addr4, Weight: uint32(w)})
		}
	}
	n.cfg = nddConfig{
		PinPath:    newPinPath(),
		Socket:     filepath.Join(n.dir, "ndd.sock"),
		Interfaces: []string{l.Dispatcher.Ifname},
		Ports:      []portConfig{port},
	}
	if edit != nil {
		edit(&n.cfg)
	}
	n.cfgPath = filepath.Join(n.dir, "nd.yaml")
	n.writeConfig(t, n.cfg)

	n.api = apiClient(t, n.cfg.Socket)
	t.Cleanup(func() { n.teardown(t) })
	n.start(t)
	return n
}

func (n *nddLab) writeConfig(t *testing.T, c nddConfig) {
	t.Helper()
	if err := os.WriteFile(n.cfgPath, []byte(c.yaml()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs ndd over the configuration file and waits until its API
// answers and every configured server is in the data plane.
func (n *nddLab) start(t *testing.T) {
	t.Helper()
	bin := n.binary
	if bin == "" {
		bin = nddBinary(t)
	}
	host := n.host
	if host == nil {
		host = &n.lab.Dispatcher
	}
	n.run(t, "", host, bin, n.cfgPath, n.dir, n.api.Health)
	n.waitReady(t)
}

// waitReady waits until Status shows every server of the configuration
// resolved and installed: up, or quiesced when configured so or weighted 0.
func (n *nddLab) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(nddReadyTimeout)
	for {
		st, err := n.api.Status()
		if err == nil {
			if why := notReady(st); why == "" {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("ndd not ready after %v: %s", nddReadyTimeout, why)
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("ndd status: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func notReady(st nd.Status) string {
	for _, p := range st.Ports {
		for _, s := range p.Servers {
			want := nd.StateUp
			if s.Quiesced || s.ConfigWeight == 0 {
				want = nd.StateQuiesced
			}
			if s.State != want {
				return fmt.Sprintf("%s:%d server %s is %s (%s), want %s", p.VIP, p.Port, s.Address, s.State, s.Reason, want)
			}
		}
	}
	return ""
}

// teardown stops ndd, removes the pinned data plane with `ndd --destroy`
// and checks that the pin directory is gone. On failure it shows ndd's logs.
func (n *nddLab) teardown(t *testing.T) {
	n.end(t, "", syscall.SIGTERM)
	if _, err := os.Stat(n.cfg.PinPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin path %s left behind after ndd --destroy (%v)", n.cfg.PinPath, err)
		os.RemoveAll(n.cfg.PinPath)
	}
	n.showLogs(t, "")
}

// portStatus returns VIP4:port's status.
func (n *nddLab) portStatus(t *testing.T, port uint16) nd.PortStatus {
	t.Helper()
	st, err := n.api.Status()
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	for _, p := range st.Ports {
		if p.VIP == lab.VIP4.String() && p.Port == port && p.Protocol == "tcp" {
			return p
		}
	}
	t.Fatalf("status has no port %s:%d/tcp", lab.VIP4, port)
	return nd.PortStatus{}
}

// newFlows returns the data plane's new-flow counters of VIP4:80 by
// server name.
func (n *nddLab) newFlows(t *testing.T) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, s := range n.portStatus(t, servicePort).Servers {
		out[n.nameOf[netip.MustParseAddr(s.Address)]] = s.NewFlows
	}
	return out
}

// vip4 is VIP4:80.
func (n *nddLab) vip4() netip.AddrPort { return netip.AddrPortFrom(n.lab.VIP4, servicePort) }

// longConns are long-lived connections from the client to a VIP, each
// with the server that answered it first.
type longConns struct {
	sessions []*session
	names    []string
}

// openLong opens count connections to addr, a few at a time, and makes a
// first request on each. Any failure fails the test.
func openLong(ctx context.Context, t *testing.T, ns *netns.NS, addr netip.AddrPort, count int) *longConns {
	t.Helper()
	lc := &longConns{sessions: make([]*session, count), names: make([]string, count)}
	t.Cleanup(lc.close)
	errs := make([]error, count)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range count {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			s, err := dial(ctx, ns, addr, dialTimeout)
			if err != nil {
				errs[i] = err
				return
			}
			lc.sessions[i] = s
			lc.names[i], errs[i] = s.get(256)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("open %d long-lived connections to %s: %v", count, addr, err)
	}
	return lc
}

// exchange makes one request of size bytes on every connection that skip
// does not exclude, all at once, each bounded by ioTimeout. It returns the
// number of connections tried and the failures, by connection index; a
// connection answered by another server than before is a failure too.
func (lc *longConns) exchange(size int, skip func(i int) bool) (tried int, failed map[int]error) {
	failed = map[int]error{}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for i, s := range lc.sessions {
		if s == nil || (skip != nil && skip(i)) {
			continue
		}
		tried++
		wg.Go(func() {
			name, err := s.get(size)
			if err == nil && name != lc.names[i] {
				err = fmt.Errorf("answered by %s, first by %s", name, lc.names[i])
			}
			if err != nil {
				mu.Lock()
				failed[i] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return tried, failed
}

// perServer counts the connections by the server that answered them.
func (lc *longConns) perServer() map[string]int {
	m := map[string]int{}
	for _, n := range lc.names {
		m[n]++
	}
	return m
}

func (lc *longConns) close() {
	for _, s := range lc.sessions {
		if s != nil {
			s.close()
		}
	}
}

// checkExchange exchanges data on the long-lived connections and fails the
// test for each that broke, naming when.
func checkExchange(t *testing.T, lc *longConns, when string, skip func(i int) bool) {
	t.Helper()
	tried, failed := lc.exchange(4096, skip)
	for i, err := range failed {
		t.Errorf("%s: connection %d (to %s): %v", when, i, lc.names[i], err)
	}
	t.Logf("%s: %d of %d long-lived connections exchanged data", when, tried-len(failed), tried)
}

// checkAllComplete fails the test unless every connection of a load run
// completed, and returns how many each server answered.
func checkAllComplete(t *testing.T, res loadResult, count int, what string) map[string]int {
	t.Helper()
	for i, err := range res.errs {
		if i == 5 {
			t.Errorf("%s: ... %d errors in all", what, len(res.errs))
			break
		}
		t.Errorf("%s: %v", what, err)
	}
	if got := res.completed(); got != count {
		t.Errorf("%s: %d of %d connections completed", what, got, count)
	}
	return res.perServer
}
