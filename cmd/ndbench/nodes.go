package main

// The ndd processes of `ndbench ha` and `ndbench group`: one per
// dispatcher of a lab, in a directory of the bench's own, in front of line
// echo servers on VIP4:80.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/lab"
)

// Bounds of a node's life.
const (
	haPort        = 7000
	haStartWait   = 30 * time.Second // until ndd's API answers
	haSettleWait  = 30 * time.Second // until the nodes see each other synchronised
	haDialTimeout = 3 * time.Second
	haStopWait    = 10 * time.Second // SIGTERM until exit
)

// nddNodes are a bench's lab, its echo servers and its ndd processes.
type nddNodes struct {
	// name is the bench's ("ha", "group"): it names the directory and
	// the pin paths.
	name   string
	logf   func(string, ...any)
	lab    *lab.Lab
	dir    string
	ndd    string // the ndd binary
	key    string // the group's key file
	echoes []*haEcho
	nodes  []*nddNode
}

// nddNode is one dispatcher's ndd.
type nddNode struct {
	host     *lab.Host
	peer     *lab.Host // in a pair, the other dispatcher
	priority int
	cfg      string // configuration file
	socket   string
	api      *api.Client
	proc     *lab.NDD // the latest run
	starts   int
}

// prepare makes the bench's directory and, without ndd (--ndd), builds
// ndd there.
func (b *nddNodes) prepare(ctx context.Context, ndd string) (err error) {
	if b.dir, err = os.MkdirTemp("", "ndbench-"+b.name+"-"); err != nil {
		return err
	}
	b.ndd = ndd
	if b.ndd == "" {
		b.logf("building ndd")
		if b.ndd, err = buildNDD(ctx, b.dir); err != nil {
			return err
		}
	}
	return nil
}

// startEchoes starts a line echo server on VIP4:80 in every server.
func (b *nddNodes) startEchoes() error {
	vip := netip.AddrPortFrom(b.lab.VIP4, servicePort)
	for i := range b.lab.Servers {
		e, err := startHAEcho(&b.lab.Servers[i], vip)
		if err != nil {
			return err
		}
		b.echoes = append(b.echoes, e)
	}
	return nil
}

// writeKey writes the group's shared key file.
func (b *nddNodes) writeKey() error {
	b.key = filepath.Join(b.dir, "ha.key")
	return os.WriteFile(b.key, []byte("ndbench-"+b.name+"-shared-key-0123456789"), 0o600)
}

// addNode adds the node of dispatcher d, with its API client (requests
// bounded by timeout); its configuration is for the caller to write.
func (b *nddNodes) addNode(d *lab.Host, priority int, timeout time.Duration) (*nddNode, error) {
	n := &nddNode{host: d, priority: priority, cfg: filepath.Join(b.dir, d.Name+".yaml"), socket: filepath.Join(b.dir, d.Name+".sock")}
	var err error
	if n.api, err = api.NewClient(n.socket, "", api.WithTimeout(timeout)); err != nil {
		return nil, err
	}
	b.nodes = append(b.nodes, n)
	return n, nil
}

// pinPath is a node's own directory on the host's bpffs, which every
// dispatcher namespace shares.
func (b *nddNodes) pinPath(h *lab.Host) string {
	return fmt.Sprintf("/sys/fs/bpf/ndbench-%s-%d-%s", b.name, os.Getpid(), h.Name)
}

// start runs ndd in the node's namespace and waits for its API.
func (b *nddNodes) start(ctx context.Context, n *nddNode) error {
	n.starts++
	proc, err := lab.StartNDD(n.host, lab.NDDOptions{Binary: b.ndd, Config: n.cfg,
		Log: filepath.Join(b.dir, fmt.Sprintf("%s-%d.log", n.host.Name, n.starts))})
	if err != nil {
		return err
	}
	n.proc = proc
	err = proc.WaitReady(ctx, haStartWait, n.api.Health)
	if errors.Is(err, lab.ErrNDDExited) {
		return fmt.Errorf("%s: %w: %s", n.host.Name, err, proc.LogTail(10))
	}
	if err != nil {
		return fmt.Errorf("%s: %w", n.host.Name, err)
	}
	return nil
}

func (n *nddNode) running() bool { return n.proc != nil && !n.proc.Exited() }

// dial opens a TCP connection from the client to VIP4:80.
func (b *nddNodes) dial(ctx context.Context) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, haDialTimeout)
	defer cancel()
	return b.lab.Client.NS.DialContext(dctx, "tcp", netip.AddrPortFrom(b.lab.VIP4, servicePort).String())
}

// close stops the ndd processes and removes their data planes, then runs
// stop (what else runs in the lab), stops the echo servers and removes
// the lab and the directory.
func (b *nddNodes) close(stop ...func() error) error {
	var errs []error
	for _, n := range b.nodes {
		// Exiting between the check and the signal is no failure.
		if n.running() {
			if err := n.proc.Stop(syscall.SIGTERM, haStopWait); err != nil && !errors.Is(err, lab.ErrNDDExited) {
				errs = append(errs, fmt.Errorf("%s: %w", n.host.Name, err))
			}
		}
		n.api.Close()
		if n.proc != nil {
			if err := n.proc.Destroy(); err != nil {
				errs = append(errs, err)
			}
		}
		os.RemoveAll(b.pinPath(n.host))
	}
	for _, s := range stop {
		if err := s(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range b.echoes {
		e.Stop()
	}
	if b.lab != nil {
		if err := b.lab.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
	return errors.Join(errs...)
}

// haEcho is a server's line echo on the VIP: long-lived connections send
// lines and get them back.
type haEcho struct{ listeners }

func startHAEcho(h *lab.Host, a netip.AddrPort) (*haEcho, error) {
	e := &haEcho{}
	if err := e.listen(h, 1, echoLines, a); err != nil {
		return nil, err
	}
	return e, nil
}

// echoLines sends every line read from c back, until c fails or stays
// silent for a minute.
func echoLines(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		c.SetDeadline(time.Now().Add(time.Minute))
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := c.Write([]byte(line)); err != nil {
			return
		}
	}
}

// pings are long-lived connections from the client to VIP4:80, each
// sending a line every period and timing the echoes.
type pings struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	replies [][]time.Time // per connection
	failed  []bool
	once    sync.Once
}

// startPings opens n connections, or none, and starts them; a connection
// whose echo takes longer than window has failed.
func (b *nddNodes) startPings(ctx context.Context, n int, period, window time.Duration) (*pings, error) {
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := b.dial(ctx)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return nil, fmt.Errorf("connection %d to the VIP: %w", i, err)
		}
		conns[i] = c
	}
	pctx, cancel := context.WithCancel(ctx)
	pg := &pings{cancel: cancel, replies: make([][]time.Time, n), failed: make([]bool, n)}
	for i, c := range conns {
		pg.wg.Go(func() {
			defer c.Close()
			// Closing the connection is what ends a blocked read.
			stop := context.AfterFunc(pctx, func() { c.Close() })
			defer stop()
			r := bufio.NewReader(c)
			time.Sleep(time.Duration(i) * period / time.Duration(n))
			next := time.Now()
			for seq := 0; pctx.Err() == nil; seq++ {
				line := strconv.Itoa(seq) + "\n"
				c.SetDeadline(time.Now().Add(window))
				_, err := c.Write([]byte(line))
				var got string
				if err == nil {
					got, err = r.ReadString('\n')
				}
				if pctx.Err() != nil {
					return
				}
				pg.mu.Lock()
				if err != nil || got != line {
					pg.failed[i] = true
					pg.mu.Unlock()
					return
				}
				pg.replies[i] = append(pg.replies[i], time.Now())
				pg.mu.Unlock()
				next = next.Add(period)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				} else {
					next = time.Now()
				}
			}
		})
	}
	return pg, nil
}

func (pg *pings) stop() {
	pg.once.Do(func() {
		pg.cancel()
		pg.wg.Wait()
	})
}

// kept is how many connections have not failed.
func (pg *pings) kept() int {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	n := 0
	for _, f := range pg.failed {
		if !f {
			n++
		}
	}
	return n
}

func (pg *pings) allAnsweredAfter(t time.Time) bool {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	for i, rs := range pg.replies {
		if pg.failed[i] || len(rs) == 0 || rs[len(rs)-1].Before(t) {
			return false
		}
	}
	return true
}
