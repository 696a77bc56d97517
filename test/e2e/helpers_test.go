// Package e2e holds nd's tests across network namespaces: real TCP
// connections from a client namespace, through the XDP dispatcher, to real
// servers in namespaces of their own.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/netns"
)

// Bounds of every network operation, so that a broken data plane fails a
// test instead of hanging it.
const (
	buildTimeout = 60 * time.Second // lab.New
	checkTimeout = 30 * time.Second // lab.Check
	dialTimeout  = 3 * time.Second  // one connection to a VIP that is served
	ioTimeout    = 10 * time.Second // one request and its reply
	idleTimeout  = 60 * time.Second // a server connection waiting for a request
	maxReply     = 1 << 20          // the largest reply a server agrees to send
	servicePort  = 80
)

// fixture is a lab with the executor loaded in its dispatcher, a reply
// server in each server namespace, and one TCP service per VIP family.
type fixture struct {
	lab     *lab.Lab
	x       *executor.BPF
	servers []*replyServer // in the lab's server order
	weights []uint32
	// byAddr names the server behind each address the executor knows
	// (the Backends addresses, both families).
	byAddr map[netip.Addr]*replyServer
}

// newFixture builds the lab, checks it, starts the reply servers, loads
// the executor in the dispatcher's namespace, attaches it to every
// dispatcher interface and installs VIP4:80/tcp and VIP6:80/tcp with the
// given weights, one per server. Everything is undone by t.Cleanup.
func newFixture(t *testing.T, opts lab.Options, weights []uint32) *fixture {
	t.Helper()
	opts.Servers = len(weights)
	// Before the executor is attached: the check's echoes use a VIP port.
	l := newCheckedLab(t, opts)

	f := &fixture{lab: l, weights: weights, byAddr: map[netip.Addr]*replyServer{}}
	backends := l.Backends()
	for i, b := range backends {
		f.addReplyServer(t, i, b, l.VIP4, l.VIP6)
	}

	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	f.do(t, func() error {
		x, err := executor.New(executor.Config{MaxFlows: 1 << 16, Logger: logger})
		if err != nil {
			return fmt.Errorf("load executor: %w", err)
		}
		f.x = x
		return nil
	})
	t.Cleanup(func() {
		if err := f.x.Destroy(); err != nil {
			t.Errorf("destroy executor: %v", err)
		}
	})
	for _, ifc := range l.Dispatcher.Ifaces() {
		f.do(t, func() error { return f.x.Attach(ifc.Ifindex) })
	}
	for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
		svc := executor.Service{Key: f.key(vip)}
		for i, b := range backends {
			addr := b.Addr4
			if vip.Is6() {
				addr = b.Addr6
			}
			svc.Servers = append(svc.Servers, executor.Server{
				Addr: addr, MAC: b.DstMAC, Ifindex: b.Ifindex, Weight: weights[i],
			})
		}
		f.do(t, func() error { return f.x.UpsertService(svc) })
	}
	return f
}

// newCheckedLab is newLab, then a check that the lab works.
func newCheckedLab(t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	l := newLab(t, opts)
	cctx, ccancel := context.WithTimeout(context.Background(), checkTimeout)
	defer ccancel()
	if err := l.Check(cctx); err != nil {
		t.Fatalf("lab does not work, so nothing measured through it would mean anything: %v", err)
	}
	return l
}

// newLab removes labs left by earlier runs, builds a lab with opts
// (logging to t) and has t.Cleanup close it.
func newLab(t *testing.T, opts lab.Options) *lab.Lab {
	t.Helper()
	if _, err := lab.SweepStale(t.Logf); err != nil {
		t.Logf("sweep stale labs: %v", err)
	}
	opts.Logf = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	l, err := lab.New(ctx, opts)
	if err != nil {
		t.Fatalf("build lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	return l
}

// addReplyServer starts a reply server on vips in the lab's server i,
// which the dispatcher reaches as b, and adds it to the fixture's servers.
func (f *fixture) addReplyServer(t *testing.T, i int, b lab.Backend, vips ...netip.Addr) *replyServer {
	t.Helper()
	s := startReplyServer(t, &f.lab.Servers[i], vips...)
	s.addr4, s.addr6 = b.Addr4, b.Addr6
	f.servers = append(f.servers, s)
	f.byAddr[b.Addr4] = s
	f.byAddr[b.Addr6] = s
	return s
}

// do runs fn in the dispatcher's namespace, where the executor must be
// used, and fails the test on error.
func (f *fixture) do(t testing.TB, fn func() error) {
	t.Helper()
	if err := f.lab.Dispatcher.NS.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) key(vip netip.Addr) executor.ServiceKey {
	return executor.ServiceKey{VIP: vip, Port: servicePort, Proto: executor.TCP}
}

func (f *fixture) stats(t testing.TB) executor.Stats {
	t.Helper()
	var st executor.Stats
	f.do(t, func() (err error) {
		st, err = f.x.Stats()
		return err
	})
	return st
}

// serviceCounters are the data plane's counters of VIP:80: the frames and
// bytes it forwarded, and the new flows it counted per server name.
type serviceCounters struct {
	packets, bytes uint64
	newFlows       map[string]uint64
}

func (f *fixture) service(st executor.Stats, vip netip.Addr) serviceCounters {
	ss := st.Services[f.key(vip)]
	c := serviceCounters{packets: ss.Packets, bytes: ss.Bytes, newFlows: map[string]uint64{}}
	for addr, s := range ss.Servers {
		c.newFlows[f.byAddr[addr].name] += s.NewFlows
	}
	return c
}

func (a serviceCounters) sub(b serviceCounters) serviceCounters {
	c := serviceCounters{packets: a.packets - b.packets, bytes: a.bytes - b.bytes, newFlows: map[string]uint64{}}
	for name, n := range a.newFlows {
		c.newFlows[name] = n - b.newFlows[name]
	}
	return c
}

// checkNewFlows asserts that the data plane counted, per server, exactly
// the connections the client saw that server answer.
func (f *fixture) checkNewFlows(t *testing.T, delta serviceCounters, res loadResult) {
	t.Helper()
	for _, s := range f.servers {
		if got, want := delta.newFlows[s.name], uint64(res.perServer[s.name]); got != want {
			t.Errorf("%s: the data plane counted %d new flows, the client saw %d connections answered", s.name, got, want)
		}
	}
}

// sent sums the reply bytes every server wrote.
func (f *fixture) sent() int64 {
	var n int64
	for _, s := range f.servers {
		n += s.sent.Load()
	}
	return n
}

// settle waits, for at most a few seconds, until no server has a
// connection open, so that every reply is in the servers' counters: a
// client may have read a reply before the server's Write returned.
func (f *fixture) settle(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		open := 0
		for _, s := range f.servers {
			open += s.Open()
		}
		if open == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("servers still hold %d connections after the clients closed theirs", open)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// accepted sums the connections every server accepted.
func (f *fixture) accepted() int64 {
	var n int64
	for _, s := range f.servers {
		n += s.Accepted()
	}
	return n
}

// linkStats reads an interface's counters over netlink. (Reading
// /sys/class/net from inside NS.Do would not do: sysfs shows the namespace
// of whoever mounted it, not the calling thread's.)
type linkStats struct{ rxBytes, txBytes, rxPackets, txPackets uint64 }

func readLinkStats(t *testing.T, ns *netns.NS, ifindex int) linkStats {
	t.Helper()
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByIndex(ifindex)
	if err != nil {
		t.Fatalf("link %d in %s: %v", ifindex, ns, err)
	}
	s := l.Attrs().Statistics
	if s == nil {
		t.Fatalf("link %s in %s has no statistics", l.Attrs().Name, ns)
	}
	return linkStats{rxBytes: s.RxBytes, txBytes: s.TxBytes, rxPackets: s.RxPackets, txPackets: s.TxPackets}
}

func (a linkStats) sub(b linkStats) linkStats {
	return linkStats{a.rxBytes - b.rxBytes, a.txBytes - b.txBytes, a.rxPackets - b.rxPackets, a.txPackets - b.txPackets}
}

// replyServer is a server's application: on the VIPs' port it answers each
// request line "GET n" with the line "<name> n" and n bytes of payload, as
// many times as the client asks on one connection.
type replyServer struct {
	name         string
	addr4, addr6 netip.Addr // the server's own addresses, as the executor knows them
	sent         atomic.Int64
	lab.Listeners
}

// startReplyServer listens on VIP:80 of both families in h's namespace,
// where the VIPs sit on lo. t.Cleanup stops it.
func startReplyServer(t *testing.T, h *lab.Host, vips ...netip.Addr) *replyServer {
	t.Helper()
	s := &replyServer{name: h.Name}
	t.Cleanup(s.Stop)
	for _, vip := range vips {
		ln, err := h.NS.Listen("tcp", netip.AddrPortFrom(vip, servicePort).String())
		if err != nil {
			t.Fatalf("%s: listen: %v", h.Name, err)
		}
		s.Serve(ln, s.serve)
	}
	return s
}

func (s *replyServer) serve(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		c.SetDeadline(time.Now().Add(idleTimeout))
		line, err := r.ReadString('\n')
		if err != nil {
			return // the client is done
		}
		n, ok := parseRequest(line)
		if !ok {
			fmt.Fprintf(c, "ERR bad request %q\n", line)
			return
		}
		w, err := fmt.Fprintf(c, "%s %d\n", s.name, n)
		s.sent.Add(int64(w))
		if err != nil {
			return
		}
		w, err = c.Write(payload[:n])
		s.sent.Add(int64(w))
		if err != nil {
			return
		}
	}
}

func parseRequest(line string) (int, bool) {
	arg, ok := strings.CutPrefix(strings.TrimSpace(line), "GET ")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(arg)
	if err != nil || n < 0 || n > maxReply {
		return 0, false
	}
	return n, true
}

// payload is what servers send: a pattern the client checks, so that a
// frame damaged on the way would show.
var payload = func() []byte {
	b := make([]byte, maxReply)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}()

// session is a client's connection to a VIP.
type session struct {
	c net.Conn
	r *bufio.Reader
}

// dial connects from ns to addr, giving up after timeout.
func dial(ctx context.Context, ns *netns.NS, addr netip.AddrPort, timeout time.Duration) (*session, error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := ns.DialContext(dctx, "tcp", addr.String())
	if err != nil {
		return nil, err
	}
	return &session{c: c, r: bufio.NewReader(c)}, nil
}

// get asks for size bytes and returns the name of the server that sent
// them, after checking every byte.
func (s *session) get(size int) (string, error) {
	s.c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := fmt.Fprintf(s.c, "GET %d\n", size); err != nil {
		return "", fmt.Errorf("send request: %w", err)
	}
	line, err := s.r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read reply header: %w", err)
	}
	name, n, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok || n != strconv.Itoa(size) {
		return "", fmt.Errorf("reply header %q, want \"<server> %d\"", line, size)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(s.r, buf); err != nil {
		return "", fmt.Errorf("read %d-byte reply from %s: %w", size, name, err)
	}
	if !bytes.Equal(buf, payload[:size]) {
		return "", fmt.Errorf("reply from %s is corrupt", name)
	}
	return name, nil
}

func (s *session) close() { s.c.Close() }

// fetchOnce opens one connection to addr, makes one request and closes it.
func fetchOnce(ctx context.Context, ns *netns.NS, addr netip.AddrPort, size int) (string, error) {
	s, err := dial(ctx, ns, addr, dialTimeout)
	if err != nil {
		return "", fmt.Errorf("dial %s: %w", addr, err)
	}
	defer s.close()
	return s.get(size)
}

// loadResult is what a load run saw from the client.
type loadResult struct {
	perServer map[string]int
	received  int64 // payload bytes the client read
	errs      []error
	elapsed   time.Duration
}

func (r loadResult) completed() int {
	n := 0
	for _, c := range r.perServer {
		n += c
	}
	return n
}

// runLoad opens count connections from the client to addr, workers at a
// time, each asking for size bytes. It stops early when ctx ends, so it is
// bounded in count and in time.
func runLoad(ctx context.Context, ns *netns.NS, addr netip.AddrPort, count, workers, size int) loadResult {
	start := time.Now()
	var (
		mu   sync.Mutex
		res  = loadResult{perServer: map[string]int{}}
		wg   sync.WaitGroup
		next atomic.Int64
	)
	for range workers {
		wg.Go(func() {
			for int(next.Add(1)) <= count && ctx.Err() == nil {
				name, err := fetchOnce(ctx, ns, addr, size)
				mu.Lock()
				if err != nil {
					res.errs = append(res.errs, err)
				} else {
					res.perServer[name]++
					res.received += int64(size)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		res.errs = append(res.errs, fmt.Errorf("load stopped: %w", err))
	}
	res.elapsed = time.Since(start)
	return res
}

// checkLoad asserts that every connection completed and every server
// answered, and returns how far the worst share strayed from its weight's.
func (f *fixture) checkLoad(t *testing.T, res loadResult, count int) float64 {
	t.Helper()
	for i, err := range res.errs {
		if i == 5 {
			t.Errorf("... %d errors in all", len(res.errs))
			break
		}
		t.Errorf("connection failed: %v", err)
	}
	if got := res.completed(); got != count {
		t.Errorf("%d of %d connections completed", got, count)
	}
	var total uint32
	for _, w := range f.weights {
		total += w
	}
	worst := 0.0
	for i, s := range f.servers {
		got := res.perServer[s.name]
		share := float64(got) / float64(count)
		want := float64(f.weights[i]) / float64(total)
		worst = math.Max(worst, math.Abs(share-want))
		t.Logf("%s weight %d: %d connections, share %.1f%% (weight's share %.1f%%)",
			s.name, f.weights[i], got, 100*share, 100*want)
		if f.weights[i] > 0 && got == 0 {
			t.Errorf("%s (weight %d) answered no connection", s.name, f.weights[i])
		}
	}
	return worst
}

// errIsTimeout reports whether err is a dial that timed out, as opposed to
// one that was refused or failed otherwise.
func errIsTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func (a linkStats) add(b linkStats) linkStats {
	return linkStats{a.rxBytes + b.rxBytes, a.txBytes + b.txBytes, a.rxPackets + b.rxPackets, a.txPackets + b.txPackets}
}

// serverLinks sums the counters of every server's eth0, or of every
// server's eth1 when internal is set.
func (f *fixture) serverLinks(t *testing.T, internal bool) linkStats {
	t.Helper()
	var sum linkStats
	for _, s := range f.lab.Servers {
		ifc := &s.Iface
		if internal {
			ifc = s.Int
		}
		sum = sum.add(readLinkStats(t, s.NS, ifc.Ifindex))
	}
	return sum
}

// family names a VIP's address family for subtest names and messages.
func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// percent is 100*part/whole, for messages.
func percent(part, whole uint64) float64 {
	if whole == 0 {
		return math.Inf(1)
	}
	return 100 * float64(part) / float64(whole)
}

// echoOwn listens on addr in the dispatcher's namespace, has the client
// exchange a line with that listener (the dispatcher's own service, not a
// VIP) and returns what went wrong.
func echoOwn(ctx context.Context, t *testing.T, l *lab.Lab, addr netip.AddrPort) error {
	t.Helper()
	ln, err := l.Dispatcher.NS.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("listen on %s in the dispatcher: %v", addr, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		echoOnce(ln)
	}()
	defer func() {
		ln.Close()
		<-done
	}()
	s, err := dial(ctx, l.Client.NS, addr, dialTimeout)
	if err != nil {
		return err
	}
	defer s.close()
	s.c.SetDeadline(time.Now().Add(ioTimeout))
	const msg = "hello dispatcher\n"
	if _, err := io.WriteString(s.c, msg); err != nil {
		return err
	}
	got, err := s.r.ReadString('\n')
	if err == nil && got != msg {
		err = fmt.Errorf("echo %q, want %q", got, msg)
	}
	return err
}

// echoOnce accepts one connection and echoes one line on it.
func echoOnce(ln net.Listener) {
	c, err := ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	fmt.Fprint(c, line)
}
