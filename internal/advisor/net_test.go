package advisor

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// lab is a network namespace standing in for the servers: services listen
// on its 127.0.0.1 and on a VIP held on its loopback, as with direct server
// return. Probes reach it through dial functions that open their sockets
// inside it.
type lab struct {
	ns  *netns.NS
	vip netip.Addr
}

func newLab(t *testing.T) *lab {
	t.Helper()
	ns := testutil.NewNS(t, "ndadv")
	h, lo := testutil.Link(t, ns, "lo")
	vip := netip.MustParseAddr("198.51.100.100")
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatalf("add VIP to lo: %v", err)
	}
	// A veth whose peer has no address answers nothing, not even ARP: a
	// connection to 203.0.113.2 is never answered, like a vanished server.
	void := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "void0"}, PeerName: "void1"}
	if err := h.LinkAdd(void); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	if err := h.AddrAdd(void, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(203, 0, 113, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"void0", "void1"} {
		link, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	return &lab{ns: ns, vip: vip}
}

func (l *lab) listen(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := l.ns.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func port(ln net.Listener) uint16 { return uint16(ln.Addr().(*net.TCPAddr).Port) }

// serve runs an HTTP server on ln until the test ends.
func serve(t *testing.T, ln net.Listener, h http.Handler, tlsConf *tls.Config) {
	srv := &http.Server{Handler: h, TLSConfig: tlsConf, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0)} // failed handshakes are expected
	go func() {
		if tlsConf != nil {
			srv.ServeTLS(ln, "", "")
		} else {
			srv.Serve(ln)
		}
	}()
	t.Cleanup(func() { srv.Close() })
}

// selfSigned makes a certificate for name that is its own root.
func selfSigned(t *testing.T, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

// recorder keeps the distinct strings it is given.
type recorder struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[string]bool{}
	}
	r.seen[s] = true
}

func (r *recorder) has(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[s]
}

func (r *recorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for s := range r.seen {
		out = append(out, s)
	}
	return out
}

const slowDelay = 150 * time.Millisecond

func TestProbesAgainstServers(t *testing.T) {
	l := newLab(t)
	local := netip.MustParseAddr("127.0.0.1")

	var hosts, snis, vipDials, hookCalls recorder
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		hosts.add(r.Host)
		io.WriteString(w, "hello nd\n")
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		// Headers go out at once; the body only after the delay, so a
		// latency that stops at the headers would miss it.
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		time.Sleep(slowDelay)
		io.WriteString(w, "done\n")
	})
	mux.HandleFunc("/busy", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "busy", http.StatusServiceUnavailable)
	})

	web := l.listen(t, "127.0.0.1:0")
	serve(t, web, mux, nil)
	webVIP := l.listen(t, netip.AddrPortFrom(l.vip, 0).String())
	serve(t, webVIP, mux, nil)

	cert, pool := selfSigned(t, "www.example.test")
	tlsLn := l.listen(t, "127.0.0.1:0")
	serve(t, tlsLn, mux, &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		snis.add(hello.ServerName)
		return &cert, nil
	}})

	tcpLn := l.listen(t, "127.0.0.1:0")
	go acceptEach(tcpLn, func(c net.Conn) { c.Close() })
	// Accepts connections and never answers on them.
	silent := l.listen(t, "127.0.0.1:0")
	var held []net.Conn
	var heldMu sync.Mutex
	go acceptEach(silent, func(c net.Conn) {
		heldMu.Lock()
		held = append(held, c)
		heldMu.Unlock()
	})
	t.Cleanup(func() {
		heldMu.Lock()
		defer heldMu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	closed := l.listen(t, "127.0.0.1:0")
	closedPort := port(closed)
	closed.Close()

	at := func(p uint16) []Target { return []Target{{Server: local, Port: p, Dial: l.ns.DialContext}} }
	httpSpec := func(name string, p uint16, h HTTPSpec) Spec {
		return Spec{Name: name, Kind: KindHTTP, Interval: 200 * time.Millisecond, Timeout: 150 * time.Millisecond, HTTP: h, Targets: at(p)}
	}
	tcpSpec := func(name string, targets []Target) Spec {
		return Spec{Name: name, Kind: KindTCP, Interval: 200 * time.Millisecond, Timeout: 150 * time.Millisecond, Targets: targets}
	}
	slow := httpSpec("http-slow", port(web), HTTPSpec{Path: "/slow"})
	slow.Interval, slow.Timeout = 800*time.Millisecond, 700*time.Millisecond
	https := func(name, host string, insecure bool) Spec {
		s := httpSpec(name, port(tlsLn), HTTPSpec{Path: "/ok", Host: host, Insecure: insecure, Body: "hello"})
		s.Kind = KindHTTPS
		return s
	}
	vipTCP := tcpSpec("tcp-vip", []Target{{Server: netip.MustParseAddr("198.51.100.2"), VIP: l.vip, Port: port(webVIP)}})
	vipTCP.Mode = ModeVIP
	vipHTTP := httpSpec("http-vip", 0, HTTPSpec{Path: "/ok"})
	vipHTTP.Mode, vipHTTP.Targets = ModeVIP, vipTCP.Targets

	specs := []Spec{
		tcpSpec("tcp-ok", at(port(tcpLn))),
		tcpSpec("tcp-refused", at(closedPort)),
		tcpSpec("tcp-void", []Target{{Server: netip.MustParseAddr("203.0.113.2"), Port: 80, Dial: l.ns.DialContext}}),
		httpSpec("http-ok", port(web), HTTPSpec{Path: "/ok", Host: "www.example.test", Body: "hello"}),
		slow,
		httpSpec("http-status", port(web), HTTPSpec{Path: "/busy"}),
		httpSpec("http-status-expected", port(web), HTTPSpec{Path: "/busy", Status: 503, Body: "busy"}),
		httpSpec("http-body", port(web), HTTPSpec{Path: "/ok", Body: "goodbye"}),
		httpSpec("http-silent", port(silent), HTTPSpec{Path: "/"}),
		https("https-insecure", "insecure.example.test:443", true),
		https("https-verified", "www.example.test", false),
		https("https-wrong-name", "other.example.test", false),
		vipTCP,
		vipHTTP,
	}
	r := New(Options{
		RootCAs: pool,
		ViaVIP: func(server, vip netip.Addr) (DialFunc, error) {
			hookCalls.add(server.String() + " " + vip.String())
			return func(ctx context.Context, network, address string) (net.Conn, error) {
				vipDials.add(address)
				return l.ns.DialContext(ctx, network, address)
			}, nil
		},
	})
	if err := r.Set(specs); err != nil {
		t.Fatal(err)
	}
	start(t, r)

	get := func(name string) Status {
		t.Helper()
		for _, s := range specs {
			if s.Name == name {
				return waitFor(t, r, name, s.Targets[0].Server, "known", known)
			}
		}
		t.Fatalf("no advisor %s", name)
		return Status{}
	}
	wantUp := func(name string) Status {
		t.Helper()
		s := get(name)
		if !s.Up || s.Err != "" || s.Latency <= 0 || s.Smoothed <= 0 {
			t.Errorf("%s: %+v, want up with a latency", name, s)
		}
		return s
	}
	wantDown := func(name string, errHas ...string) {
		t.Helper()
		s := get(name)
		if s.Up {
			t.Errorf("%s: %+v, want down", name, s)
			return
		}
		for _, e := range errHas {
			if !strings.Contains(s.Err, e) {
				t.Errorf("%s: error %q, want it to mention %q", name, s.Err, e)
			}
		}
	}

	if s := wantUp("tcp-ok"); s.Latency > 100*time.Millisecond {
		t.Errorf("tcp-ok: connect latency %v on loopback", s.Latency)
	}
	wantDown("tcp-refused", "refused")
	wantDown("tcp-void", "203.0.113.2:80", "timeout")
	wantUp("http-ok")
	if !hosts.has("www.example.test") {
		t.Errorf("server saw Host headers %v, want www.example.test", hosts.list())
	}
	if s := wantUp("http-slow"); s.Latency < slowDelay || s.Latency > slowDelay+400*time.Millisecond {
		t.Errorf("http-slow: latency %v, want about the server's %v (measured to the end of the body)", s.Latency, slowDelay)
	}
	wantDown("http-status", "status 503", "want 200-399")
	wantUp("http-status-expected")
	wantDown("http-body", `does not contain "goodbye"`)
	wantDown("http-silent", "deadline exceeded")
	wantUp("https-insecure")
	wantUp("https-verified")
	if !snis.has("insecure.example.test") || !snis.has("www.example.test") {
		t.Errorf("TLS server saw SNI %v, want insecure.example.test (the Host header without its port) and www.example.test", snis.list())
	}
	wantDown("https-wrong-name", "certificate")
	for _, s := range r.Snapshot() {
		t.Logf("%-22s up=%-5v latency=%-12v err=%s", s.Advisor, s.Up, s.Latency, s.Err)
	}
	wantUp("tcp-vip")
	wantUp("http-vip")
	if !hookCalls.has("198.51.100.2 198.51.100.100") {
		t.Errorf("ViaVIP called for %v, want server 198.51.100.2 via 198.51.100.100", hookCalls.list())
	}
	if want := netip.AddrPortFrom(l.vip, port(webVIP)).String(); !vipDials.has(want) || len(vipDials.list()) != 1 {
		t.Errorf("steering dialer dialled %v, want only %s", vipDials.list(), want)
	}
}

// A real server that stops listening goes down after Fall rounds and comes
// back after Rise rounds once it listens again.
func TestServerGoesAndComes(t *testing.T) {
	l := newLab(t)
	ln := l.listen(t, "127.0.0.1:0")
	p := port(ln)
	var ev events
	r := New(Options{OnChange: ev.add})
	local := netip.MustParseAddr("127.0.0.1")
	err := r.Set([]Spec{{Name: "tcp", Kind: KindTCP, Interval: 50 * time.Millisecond, Timeout: 40 * time.Millisecond,
		Rise: 2, Fall: 2, Targets: []Target{{Server: local, Port: p, Dial: l.ns.DialContext}}}})
	if err != nil {
		t.Fatal(err)
	}
	start(t, r)
	waitFor(t, r, "tcp", local, "up", func(s Status) bool { return s.Up })
	ln.Close()
	s := waitFor(t, r, "tcp", local, "down", func(s Status) bool { return s.Known && !s.Up })
	if !strings.Contains(s.Err, "refused") {
		t.Errorf("down with %q, want connection refused", s.Err)
	}
	ln = l.listen(t, netip.AddrPortFrom(local, p).String())
	waitFor(t, r, "tcp", local, "up again", func(s Status) bool { return s.Up })
	got := ev.list()
	if len(got) != 3 || !got[0].Up || got[1].Up || !got[2].Up || got[1].Failures != 2 {
		t.Errorf("events %+v, want up, down after 2 failures, up", got)
	}
}

// acceptEach hands each connection l accepts to fn, until l is closed.
func acceptEach(l net.Listener, fn func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		fn(c)
	}
}
