package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/nd"
)

const labHelp = `
Shows nd working, on this machine, without touching its network: it builds a
client, a dispatcher and N servers, each in its own network namespace joined
by a bridge, using only the documentation ranges 198.51.100.0/24 and
2001:db8::/64. It starts ndd in the dispatcher's namespace with a generated
configuration (the VIPs 198.51.100.100 and 2001:db8::100, port 80, the servers
weighted 1, 1, 2, 4, ...), an HTTP server in each server's namespace answering
with its name, and a load generator in the client's namespace opening a new
TCP connection per request, split evenly between the two VIPs. Every second it
shows, per VIP, each server's state and weight from ndd, the flow rates ndd
counts, and the replies each server sent.

ndd serves its dashboard for the lab (api.dashboard) on its API listener,
127.0.0.1:8080 inside the dispatcher's namespace, with a token made for the
run; the lab relays --dashboard (default 127.0.0.1:8480, on this machine's
loopback) to it and prints the address and the token at the start. Open the
address in a browser on this machine and sign in with the token.

On exit, at the end of --duration or on Ctrl-C, it stops the traffic and ndd,
removes ndd's data plane and deletes the namespaces, then prints a summary:
each server's expected share (by weight) against what it got. It exits 1 if
any request failed. Run it as root; namespaces left by a killed lab are swept
at the next start.

With --dispatchers 2 or 3 the client sits behind a router (its own network,
203.0.113.0/24 and 2001:db8:2::/64) running BIRD 2, and ndd runs in every
dispatcher, each announcing the VIPs over BGP (IPv4 and IPv6 sessions with
the router). BIRD merges their routes into one ECMP route per VIP, and the
router spreads the flows over the dispatchers by their five-tuple. The view
sums the dispatchers' counts (the replies are the client's) and shows, for
each dispatcher, the packets and new flows it forwarded a second and its
share of the group's, over the last second and since the start.`

// labEnv is what `ndctl lab` takes from the machine, so that tests can
// check its refusals without root.
type labEnv struct {
	geteuid    func() int
	executable func() (string, error)
	lookPath   func(string) (string, error)
}

type labOptions struct {
	servers     int
	dispatchers int
	rate        float64
	duration    time.Duration
	ndd         string
	dashboard   string // loopback address of the dashboard's forwarder; "off": none
}

// labWeight is server i's weight: 1, 1, 2, 4 in turn, unequal so that the
// spread shows the weights at work.
func labWeight(i int) uint32 {
	weights := [...]uint32{1, 1, 2, 4}
	return weights[i%len(weights)]
}

const (
	labPort        = 80
	labNDDStart    = 15 * time.Second // for ndd's API to answer
	labResolveWait = 10 * time.Second // for ndd to resolve every server
	labNDDStop     = 5 * time.Second  // between SIGTERM and SIGKILL
	labBGPWait     = 20 * time.Second // for the router's ECMP routes
	// labDashboard is where the lab's dashboard is reached by default;
	// ndd's API listens on labAPIListen inside the dispatcher's namespace.
	labDashboard   = "127.0.0.1:8480"
	labAPIListen   = "127.0.0.1:8080"
	maxLabDuration = 24 * time.Hour
)

func labCmd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	var o labOptions
	fs.IntVar(&o.servers, "servers", lab.DefaultServers, fmt.Sprintf("number of real servers, `N` from 1 to %d", lab.MaxServers))
	fs.Float64Var(&o.rate, "rate", 200, "new connections a second, `R`, split between the two VIPs")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "how long to send traffic, `D`; 0 runs until interrupted")
	fs.StringVar(&o.ndd, "ndd", "", "the ndd binary, `PATH` (default: ndd beside ndctl, else in $PATH)")
	fs.IntVar(&o.dispatchers, "dispatchers", 1, fmt.Sprintf("number of dispatchers, `N` from 1 to %d; more than 1 puts them behind a BGP router (BIRD 2) that spreads the flows over them by ECMP", lab.MaxDispatchers))
	fs.StringVar(&o.dashboard, "dashboard", labDashboard, "serve ndd's dashboard on this loopback `ADDR:PORT` of the machine (relayed into the dispatcher's namespace); off for none")
	if _, err := s.parse(fs, args, 0, 0); err != nil {
		return err
	}
	switch {
	case o.servers < 1 || o.servers > lab.MaxServers:
		return usagef("--servers %d: want 1 to %d", o.servers, lab.MaxServers)
	case math.IsNaN(o.rate) || o.rate <= 0 || o.rate > lab.MaxTrafficRate:
		return usagef("--rate %v: want more than 0 and at most %d", o.rate, lab.MaxTrafficRate)
	case o.duration < 0 || o.duration > maxLabDuration:
		return usagef("--duration %v: want 0 (until interrupted) to %v", o.duration, maxLabDuration)
	case o.dispatchers < 1 || o.dispatchers > lab.MaxDispatchers:
		return usagef("--dispatchers %d: want 1 to %d", o.dispatchers, lab.MaxDispatchers)
	case o.dashboard != "off" && !isLoopback(o.dashboard):
		return usagef("--dashboard %q: want a loopback ADDR:PORT such as %s, or off", o.dashboard, labDashboard)
	}
	if euid := s.lab.geteuid(); euid != 0 {
		return fmt.Errorf("must run as root (euid is %d): the lab creates network namespaces and loads XDP programs", euid)
	}
	nddPath, err := s.findNDD(o.ndd)
	if err != nil {
		return err
	}
	if o.dispatchers > 1 {
		if _, err := s.lab.lookPath("bird"); err != nil {
			return errors.New("--dispatchers: BIRD 2 is not installed (apt-get install bird2; scripts/setup does)")
		}
	}
	err = s.runLab(ctx, o, nddPath)
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return err
}

// findNDD returns the ndd binary to run: --ndd, else the one beside this
// executable, else the one in $PATH.
func (s *session) findNDD(flagPath string) (string, error) {
	if flagPath != "" {
		if err := isExecutable(flagPath); err != nil {
			return "", fmt.Errorf("--ndd %s: %w", flagPath, err)
		}
		return filepath.Abs(flagPath)
	}
	if self, err := s.lab.executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "ndd")
		if isExecutable(p) == nil {
			return p, nil
		}
	}
	p, err := s.lab.lookPath("ndd")
	if err != nil {
		return "", errors.New("no ndd binary beside ndctl or in $PATH: build it (go build -o DIR/ ./cmd/ndd ./cmd/ndctl) or give --ndd PATH")
	}
	return filepath.Abs(p)
}

// isLoopback says whether addr is "ip:port" with a loopback ip.
func isLoopback(addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	return err == nil && ap.Addr().IsLoopback()
}

func isExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

// runLab builds the lab, runs ndd, the servers and the traffic in it, shows
// them, and takes everything down again on every path.
func (s *session) runLab(ctx context.Context, o labOptions, nddPath string) (err error) {
	say := func(format string, args ...any) { fmt.Fprintf(s.stdout, format+"\n", args...) }
	warn := func(format string, args ...any) { fmt.Fprintf(s.stderr, "ndctl lab: "+format+"\n", args...) }

	if swept, err := lab.SweepStale(nil); err != nil {
		warn("sweeping stale labs: %v", err)
	} else if len(swept) > 0 {
		say("removed %d namespaces left behind by an earlier lab", len(swept))
	}
	sweepStaleDirs(os.TempDir())

	routed := o.dispatchers > 1
	if routed {
		say("building the lab: a client behind a router, %d dispatchers and %d servers, each in a network namespace", o.dispatchers, o.servers)
	} else {
		say("building the lab: a client, a dispatcher and %d servers, each in a network namespace", o.servers)
	}
	l, err := lab.New(ctx, lab.Options{Servers: o.servers, Dispatchers: o.dispatchers, Router: routed})
	if err != nil {
		return fmt.Errorf("build the lab: %w", err)
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("remove the lab: %w", cerr))
			return
		}
		say("removed the lab's namespaces %s-*", l.Prefix)
	}()
	if routed {
		// Check's probes are those of the client beside the dispatcher:
		// here the BGP routes are the check, awaited below.
		say("lab %s: client %s behind router %s, dispatchers %s, servers %s to %s",
			l.Prefix, l.Client.Addr4, l.Router.Addr4, dispatcherAddrs(l), l.Servers[0].Addr4, l.Servers[len(l.Servers)-1].Addr4)
	} else {
		if err := l.Check(ctx); err != nil {
			return fmt.Errorf("check the lab: %w", err)
		}
		say("lab %s: client %s, dispatcher %s (VIPs %s, %s), servers %s to %s; ARP and NDP checked",
			l.Prefix, l.Client.Addr4, l.Dispatcher.Addr4, l.VIP4, l.VIP6, l.Servers[0].Addr4, l.Servers[len(l.Servers)-1].Addr4)
	}

	// Named after the lab, so that a later lab can sweep it up if this
	// process is killed.
	dir, err := os.MkdirTemp("", l.Prefix+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	token := rand.Text()
	for i := range l.Servers {
		srv := &l.Servers[i]
		stop, err := lab.ServeHTTP(ctx, srv, netip.AddrPortFrom(l.VIP4, labPort), netip.AddrPortFrom(l.VIP6, labPort))
		if err != nil {
			return err
		}
		defer stop()
	}

	if routed {
		var peers []lab.BIRDPeer
		for i, d := range l.Dispatchers() {
			peers = append(peers,
				lab.BIRDPeer{Name: fmt.Sprintf("d%dv4", i+1), Addr: d.Addr4, ASN: lab.DispatcherASN},
				lab.BIRDPeer{Name: fmt.Sprintf("d%dv6", i+1), Addr: d.Addr6, ASN: lab.DispatcherASN})
		}
		say("starting BIRD 2 in the router's namespace (as %d), peering with every dispatcher", lab.RouterASN)
		bird, err := l.StartBIRD(ctx, lab.BIRDOptions{Dir: dir, Peers: peers, HoldTime: 3})
		if err != nil {
			return err
		}
		defer bird.Stop()
	}

	var ds []labDispatcher
	began := time.Now()
	for _, d := range l.Dispatchers() {
		// Not :=, so that the deferred stop sees runLab's err.
		var dc *api.Client
		var stop func(error) error
		dc, stop, err = s.startLabNDD(ctx, l, d, dir, nddPath, token, o.dashboard != "off", routed)
		if stop != nil {
			defer func() { err = errors.Join(err, stop(err)) }()
		}
		if err != nil {
			return err
		}
		defer dc.Close()
		ds = append(ds, labDispatcher{name: d.Name, addr: d.Addr4.String(), c: dc})
	}
	st, err := waitResolved(ctx, ds[0].c, labResolveWait)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		warn("%v; sending traffic anyway", err)
	}
	say("ndd is up after %.1fs: attached to %s, %s", time.Since(began).Seconds(), strings.Join(st.Interfaces, ", "), resolvedSummary(st))
	if routed {
		if err := waitECMP(ctx, l, say); err != nil {
			return err
		}
	}
	if o.dashboard != "off" {
		f, err := lab.Forward(o.dashboard, l.Dispatcher.NS, labAPIListen)
		if err != nil {
			return fmt.Errorf("--dashboard %s: %w (give another port, or --dashboard off)", o.dashboard, err)
		}
		defer f.Close()
		say("dashboard: http://%s/dashboard/  token: %s", f.Addr(), token)
		say("  (the token is the lab's own, made for this run; the page keeps it in the tab only)")
	}
	if o.duration > 0 {
		say("sending %g new connections a second for %v; Ctrl-C stops early", o.rate, o.duration)
	} else {
		say("sending %g new connections a second until Ctrl-C", o.rate)
	}
	say("")

	res := s.labTraffic(ctx, l, ds, o)
	s.labSummary(res)
	return res.err()
}

// The files a lab keeps in its temporary directory: the first
// dispatcher's; another's are named ndd-NAME.* (nd-NAME.yaml), BIRD's
// bird.*.
const (
	labConfigFile = "nd.yaml"
	labLogFile    = "ndd.log"
	labSocketFile = "ndd.sock"
)

func isLabFile(name string) bool {
	return name == labConfigFile || name == labLogFile || name == labSocketFile ||
		strings.HasPrefix(name, "nd-") || strings.HasPrefix(name, "ndd-") || strings.HasPrefix(name, "bird.")
}

// labFiles are the configuration, log and socket of dispatcher d's ndd.
func labFiles(l *lab.Lab, d *lab.Host, dir string) (cfg, log, sock string) {
	if d == &l.Dispatcher {
		return filepath.Join(dir, labConfigFile), filepath.Join(dir, labLogFile), filepath.Join(dir, labSocketFile)
	}
	return filepath.Join(dir, "nd-"+d.Name+".yaml"), filepath.Join(dir, "ndd-"+d.Name+".log"), filepath.Join(dir, "ndd-"+d.Name+".sock")
}

// startLabNDD writes dispatcher d's configuration, starts its ndd and
// waits until its API answers. stop, when not nil, stops ndd and removes
// its data plane (showing ndd's log if the lab failed); the caller runs it
// on every path.
func (s *session) startLabNDD(ctx context.Context, l *lab.Lab, d *lab.Host, dir, nddPath, token string, dashboard, routed bool) (*api.Client, func(error) error, error) {
	say := func(format string, args ...any) { fmt.Fprintf(s.stdout, format+"\n", args...) }
	cfg := labConfig(l, d, dir, token, dashboard && d == &l.Dispatcher, routed)
	y, err := config.Marshal(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ndd's configuration: %w", err)
	}
	cfgPath, logPath, _ := labFiles(l, d, dir)
	if err := os.WriteFile(cfgPath, y, 0o600); err != nil {
		return nil, nil, err
	}
	say("starting %s --config %s in the %s's namespace", nddPath, cfgPath, d.Name)
	// Its own process group keeps the terminal's Ctrl-C from stopping ndd
	// before the traffic.
	p, err := lab.StartNDD(d, lab.NDDOptions{Binary: nddPath, Config: cfgPath, Log: logPath, OwnGroup: true})
	if err != nil {
		return nil, nil, err
	}
	stop := func(err error) error {
		if err != nil && ctx.Err() == nil {
			if tail := p.LogTail(25); tail != "" {
				fmt.Fprintf(s.stderr, "%s's ndd log (last lines):\n%s\n", d.Name, tail)
			}
		}
		serr := p.Stop(syscall.SIGTERM, labNDDStop)
		if serr == nil && p.Err() != nil {
			serr = fmt.Errorf("ndd: %w", p.Err())
		}
		derr := destroyDataPlane(p, cfg.DataPlane.PinPath)
		if serr == nil && derr == nil {
			say("stopped %s's ndd and removed its data plane", d.Name)
		}
		return errors.Join(serr, derr)
	}
	c, err := api.NewClient(cfg.API.Socket, "", api.WithTimeout(5*time.Second))
	if err != nil {
		return nil, stop, err
	}
	if err := p.WaitReady(ctx, labNDDStart, c.Health); err != nil {
		c.Close()
		return nil, stop, err
	}
	return c, stop, nil
}

// waitECMP waits until the router has a route to each VIP through every
// dispatcher, and says so.
func waitECMP(ctx context.Context, l *lab.Lab, say func(string, ...any)) error {
	deadline := time.Now().Add(labBGPWait)
	for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
		for {
			hops, err := l.RouterNextHops(vip)
			if err != nil {
				return err
			}
			if len(hops) == len(l.Dispatchers()) {
				say("the router's route to %s: ECMP through %v (learnt by BGP from the dispatchers)", vip, hops)
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the router's route to %s goes through %v, not every dispatcher, after %v", vip, hops, labBGPWait)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// dispatcherAddrs lists the dispatchers' IPv4 addresses.
func dispatcherAddrs(l *lab.Lab) string {
	var a []string
	for _, d := range l.Dispatchers() {
		a = append(a, d.Addr4.String())
	}
	return strings.Join(a, ", ")
}

// sweepStaleDirs removes the temporary directories of labs whose process is
// gone: named ndlab<pid>-..., holding nothing but a lab's files.
func sweepStaleDirs(tmp string) (removed []string) {
	matches, _ := filepath.Glob(filepath.Join(tmp, "ndlab*-*"))
	for _, m := range matches {
		digits, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(m), "ndlab"), "-")
		pid, err := strconv.Atoi(digits)
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		ents, err := os.ReadDir(m)
		if err != nil {
			continue // not a directory, or not ours to read
		}
		ours := true
		for _, e := range ents {
			ours = ours && isLabFile(e.Name())
		}
		if ours && os.RemoveAll(m) == nil {
			removed = append(removed, m)
		}
	}
	return removed
}

func processAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// labConfig is ndd's configuration for dispatcher d of lab l: its eth0,
// its socket in dir, its data plane pinned under the lab's own name, static
// weights, and a cluster per VIP with every server on port 80; with
// dashboard, the API on the dispatcher's loopback with token, serving the
// dashboard; with routed, a bgp section peering with the router over IPv4
// and IPv6.
func labConfig(l *lab.Lab, d *lab.Host, dir, token string, dashboard, routed bool) *config.Config {
	c := config.Default()
	c.Interfaces = []string{d.Ifname}
	c.DataPlane.PinPath = "/sys/fs/bpf/" + l.Prefix
	if d != &l.Dispatcher {
		c.DataPlane.PinPath += "-" + d.Name
	}
	c.DataPlane.MaxFlows = 1 << 16
	c.DataPlane.MaxAffinity = 1 << 12
	_, _, c.API.Socket = labFiles(l, d, dir)
	if dashboard {
		c.API.Listen, c.API.Token, c.API.Dashboard = labAPIListen, token, true
	}
	if routed {
		c.BGP = &config.BGP{ASN: lab.DispatcherASN, RouterID: d.Addr4, ShutdownGrace: time.Second}
		for _, a := range []netip.Addr{l.Router.Addr4, l.Router.Addr6} {
			c.BGP.Peers = append(c.BGP.Peers, config.BGPPeer{Address: a, ASN: lab.RouterASN, Port: config.DefaultBGPPort, HoldTime: 3 * time.Second})
		}
	}
	// The manager would move weights with the load; the lab shows the
	// configured ones at work.
	c.Manager.Policy = config.PolicyStatic
	for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
		p := config.PortSpec{Port: labPort, Protocol: config.DefaultProtocol, WeightBound: config.DefaultWeightBound}
		for i, srv := range l.Servers {
			addr := srv.Addr4
			if vip.Is6() {
				addr = srv.Addr6
			}
			p.Servers = append(p.Servers, config.Server{Address: addr, Weight: labWeight(i)})
		}
		c.Clusters = append(c.Clusters, config.Cluster{VIP: vip, Ports: []config.PortSpec{p}})
	}
	return c
}

// destroyDataPlane runs `ndd --destroy`, then removes the pin directory if
// anything is left of it.
func destroyDataPlane(d *lab.NDD, pinPath string) error {
	if err := d.Destroy(); err != nil {
		return err
	}
	if err := os.RemoveAll(pinPath); err != nil {
		return fmt.Errorf("remove %s: %w", pinPath, err)
	}
	return nil
}

// waitResolved waits, for at most limit, until ndd has resolved every
// server of every port, and returns the last status read.
func waitResolved(ctx context.Context, c *api.Client, limit time.Duration) (nd.Status, error) {
	deadline := time.Now().Add(limit)
	for {
		st, err := c.Status()
		if err == nil && len(unresolved(st)) == 0 {
			return st, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return st, fmt.Errorf("ndd's status: %w", err)
			}
			return st, fmt.Errorf("ndd has not resolved %s within %v", strings.Join(unresolved(st), ", "), limit)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func unresolved(st nd.Status) []string {
	var out []string
	for _, p := range st.Ports {
		for _, sv := range p.Servers {
			if sv.State == nd.StateUnresolved {
				out = append(out, sv.Address)
			}
		}
	}
	return out
}

func resolvedSummary(st nd.Status) string {
	n, up := 0, 0
	for _, p := range st.Ports {
		for _, sv := range p.Servers {
			n++
			if sv.State != nd.StateUnresolved {
				up++
			}
		}
	}
	return fmt.Sprintf("%d of %d servers resolved over %d ports", up, n, len(st.Ports))
}

// labTally counts the generators' results by VIP and server.
type labTally struct {
	mu    sync.Mutex
	byVIP map[netip.Addr]*vipTally
}

type vipTally struct {
	ok, errs  int
	perServer map[string]int
	errKinds  map[string]int
	firstErr  string
}

func newLabTally(vips ...netip.Addr) *labTally {
	t := &labTally{byVIP: map[netip.Addr]*vipTally{}}
	for _, v := range vips {
		t.byVIP[v] = &vipTally{perServer: map[string]int{}, errKinds: map[string]int{}}
	}
	return t
}

func (t *labTally) add(vip netip.Addr) func(lab.Result) {
	return func(r lab.Result) {
		t.mu.Lock()
		defer t.mu.Unlock()
		v := t.byVIP[vip]
		switch {
		case r.Canceled:
		case r.Err != nil:
			v.errs++
			v.errKinds[lab.ErrorKind(r.Err)]++
			if v.firstErr == "" {
				v.firstErr = r.Err.Error()
			}
		default:
			v.ok++
			v.perServer[r.Server]++
		}
	}
}

// snapshot copies one VIP's counts.
func (t *labTally) snapshot(vip netip.Addr) vipTally {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := *t.byVIP[vip]
	v.perServer = maps.Clone(v.perServer)
	v.errKinds = maps.Clone(v.errKinds)
	return v
}

// labResult is what the traffic did.
type labResult struct {
	sums        []lab.Summary
	errs        []error
	interrupted bool
	last        nd.Status
}

func (r labResult) err() error {
	if e := errors.Join(r.errs...); e != nil {
		return e
	}
	total, failed := 0, 0
	kinds := map[string]int{}
	first := ""
	for _, s := range r.sums {
		total += s.Requests
		failed += s.Errors
		for k, n := range s.ErrorKinds {
			kinds[k] += n
		}
		if first == "" {
			first = s.FirstError
		}
	}
	if total == 0 && !r.interrupted {
		return errors.New("no request was made")
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d requests failed (%s); first: %s", failed, total, formatKinds(kinds), first)
	}
	return nil
}

func formatKinds(kinds map[string]int) string {
	var parts []string
	for k, n := range kinds {
		parts = append(parts, fmt.Sprintf("%d %s", n, k))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

// labTraffic runs one generator per VIP, each at half the rate, and shows
// the dispatchers' status (their counts summed) and the generators' counts
// every tick until they finish or ctx ends; with several dispatchers, each
// one's share of the packets and new flows too.
func (s *session) labTraffic(ctx context.Context, l *lab.Lab, ds []labDispatcher, o labOptions) labResult {
	vips := []netip.Addr{l.VIP4, l.VIP6}
	tally := newLabTally(vips...)
	res := labResult{sums: make([]lab.Summary, len(vips)), errs: make([]error, len(vips))}
	tctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, vip := range vips {
		wg.Go(func() {
			res.sums[i], res.errs[i] = lab.RunTraffic(tctx, &l.Client, netip.AddrPortFrom(vip, labPort), o.rate/float64(len(vips)), o.duration, tally.add(vip))
		})
	}
	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()
	defer func() {
		cancel()
		<-finished
	}()

	start := time.Now()
	names := serverNames(l)
	var last nd.Status
	shares := newLabShares(ds)
	frame := func(w io.Writer, _ bool) error {
		sts, sum, ok, errs := labStatus(ds)
		if ok {
			last = sum
		}
		shares.observe(sts, time.Now())
		elapsed := time.Since(start).Truncate(time.Second)
		if o.duration > 0 {
			fmt.Fprintf(w, "nd lab  %v of %v  %g new connections/s  Ctrl-C stops\n", elapsed, o.duration, o.rate)
		} else {
			fmt.Fprintf(w, "nd lab  %v  %g new connections/s  Ctrl-C stops\n", elapsed, o.rate)
		}
		for _, e := range errs {
			fmt.Fprintln(w, e)
		}
		writeLabTable(w, last, names, tally)
		if len(ds) > 1 {
			shares.write(w)
		}
		return nil
	}
	lines := s.live(ctx, finished, frame)
	res.interrupted = ctx.Err() != nil
	cancel()
	<-finished
	// The final counts, after the last replies, in place of the last frame.
	sts, sum, ok, _ := labStatus(ds)
	if ok {
		last = sum
	}
	shares.observe(sts, time.Now())
	res.last = last
	s.erase(lines)
	fmt.Fprintf(s.stdout, "final, after %v:\n", time.Since(start).Truncate(100*time.Millisecond))
	writeLabTable(s.stdout, last, names, tally)
	if len(ds) > 1 {
		shares.write(s.stdout)
	}
	return res
}

// serverNames maps each server address to its host name.
func serverNames(l *lab.Lab) map[string]string {
	m := map[string]string{}
	for _, s := range l.Servers {
		m[s.Addr4.String()] = s.Name
		m[s.Addr6.String()] = s.Name
	}
	return m
}

// writeLabTable prints, per VIP:port, ndd's view of each server next to the
// replies the generator got from it.
func writeLabTable(w io.Writer, st nd.Status, names map[string]string, tally *labTally) {
	for _, p := range st.Ports {
		vip, err := netip.ParseAddr(p.VIP)
		if err != nil {
			continue
		}
		v := tally.snapshot(vip)
		var total uint32
		for _, sv := range p.Servers {
			if sv.State == nd.StateUp {
				total += sv.Weight
			}
		}
		fmt.Fprintf(w, "\n%s   replies %d, errors %d", service(p), v.ok, v.errs)
		if v.errs > 0 {
			fmt.Fprintf(w, " (%s)", formatKinds(v.errKinds))
		}
		if p.NoServer > 0 {
			fmt.Fprintf(w, ", %d packets without a server", p.NoServer)
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  SERVER\tADDRESS\tSTATE\tWEIGHT\tWANT\tNEW FLOWS/S\tACTIVE\tREPLIES\tGOT\n")
		for _, sv := range p.Servers {
			name := names[sv.Address]
			want := "-"
			if sv.State == nd.StateUp && total > 0 {
				want = fmt.Sprintf("%.1f%%", 100*float64(sv.Weight)/float64(total))
			}
			replies := v.perServer[name]
			got := "-"
			if v.ok > 0 {
				got = fmt.Sprintf("%.1f%%", 100*float64(replies)/float64(v.ok))
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%.1f\t%d\t%d\t%s\n",
				name, sv.Address, sv.State, sv.Weight, want, sv.NewFlowsRate, sv.ActiveFlows, replies, got)
		}
		tw.Flush()
	}
}

// labSummary prints the generators' totals.
func (s *session) labSummary(res labResult) {
	var buf bytes.Buffer
	fmt.Fprintln(&buf)
	for i, sum := range res.sums {
		if res.errs[i] != nil {
			fmt.Fprintf(&buf, "traffic to %s did not run: %v\n", sum.Target, res.errs[i])
			continue
		}
		rate := 0.0
		if sum.Elapsed > 0 {
			rate = float64(sum.Requests) / sum.Elapsed.Seconds()
		}
		fmt.Fprintf(&buf, "traffic to %s: %d requests in %.1fs (%.1f/s), %d answered, %d failed",
			sum.Target, sum.Requests, sum.Elapsed.Seconds(), rate, sum.OK, sum.Errors)
		if sum.Canceled > 0 {
			fmt.Fprintf(&buf, ", %d cut short", sum.Canceled)
		}
		if sum.OK > 0 {
			fmt.Fprintf(&buf, "; latency p50 %v, p99 %v", roundDuration(sum.P50), roundDuration(sum.P99))
		}
		fmt.Fprintln(&buf)
	}
	if res.interrupted {
		fmt.Fprintln(&buf, "interrupted")
	}
	s.stdout.Write(buf.Bytes())
}

func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}
