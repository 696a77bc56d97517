package netns_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// newNS makes a namespace with a name unique to this process and test.
func newNS(t *testing.T, suffix string) *netns.NS {
	t.Helper()
	ns, err := netns.New(fmt.Sprintf("ndt%d-%s", os.Getpid(), suffix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	return ns
}

func TestNewDoClose(t *testing.T) {
	testutil.RequirePrivileged(t)

	before, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	ns := newNS(t, "a")
	if ns.Path() != filepath.Join(netns.RunDir, ns.Name()) {
		t.Errorf("Path() = %s", ns.Path())
	}
	names, err := netns.List()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(names, ns.Name()) {
		t.Fatalf("List() = %v, lacks %s", names, ns.Name())
	}

	// Inside, the thread is in the namespace and lo is up.
	err = ns.Do(func() error {
		cur, err := netns.Current()
		if err != nil {
			return err
		}
		if cur != ns.Name() {
			return fmt.Errorf("Current() inside Do = %q, want %q", cur, ns.Name())
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if lo.Attrs().Flags&net.FlagUp == 0 {
			return errors.New("lo is down")
		}
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		if len(links) != 1 {
			return fmt.Errorf("fresh namespace has %d links, want only lo", len(links))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Outside, every thread is back where it was. Check many goroutines so
	// that several threads are looked at.
	for i := range 20 {
		errc := make(chan error, 1)
		go func() {
			cur, err := netns.Current()
			if err == nil && cur != before {
				err = fmt.Errorf("goroutine %d is in netns %q after Do, want %q", i, cur, before)
			}
			errc <- err
		}()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}

	// fn's error comes back unchanged; panics are re-raised in the caller.
	sentinel := errors.New("sentinel")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do returned %v, want the sentinel", err)
	}
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("recovered %v, want boom", v)
			}
		}()
		ns.Do(func() error { panic("boom") })
	}()

	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ns.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(ns.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat %s after Close: %v, want not exist", ns.Path(), err)
	}
	if err := ns.Do(func() error { return nil }); !errors.Is(err, netns.ErrClosed) {
		t.Errorf("Do after Close = %v, want ErrClosed", err)
	}
}

func TestNewRejects(t *testing.T) {
	testutil.RequirePrivileged(t)

	ns := newNS(t, "dup")
	if _, err := netns.New(ns.Name()); !errors.Is(err, netns.ErrExists) {
		t.Errorf("New(existing) = %v, want ErrExists", err)
	}
	for _, bad := range []string{"", ".", "..", "a/b", strings.Repeat("x", netns.MaxNameLen+1)} {
		if _, err := netns.New(bad); !errors.Is(err, netns.ErrBadName) {
			t.Errorf("New(%q) = %v, want ErrBadName", bad, err)
		}
	}
	if err := netns.Remove(fmt.Sprintf("ndt%d-missing", os.Getpid())); !errors.Is(err, netns.ErrNotExists) {
		t.Errorf("Remove(missing) = %v, want ErrNotExists", err)
	}
}

func TestCommand(t *testing.T) {
	testutil.RequirePrivileged(t)

	ns := newNS(t, "cmd")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "ip", "netns", "identify").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != ns.Name() {
		t.Errorf("ip netns identify inside = %q, want %q", got, ns.Name())
	}
}

func TestSysctl(t *testing.T) {
	testutil.RequirePrivileged(t)

	a := newNS(t, "sa")
	b := newNS(t, "sb")
	const key = "net.ipv4.conf.all.rp_filter"
	if err := a.Sysctl(key, "2"); err != nil {
		t.Fatal(err)
	}
	if err := b.Sysctl(key, "0"); err != nil {
		t.Fatal(err)
	}
	if v, err := a.ReadSysctl(key); err != nil || v != "2" {
		t.Errorf("a: %s = %q, %v; want 2", key, v, err)
	}
	if v, err := b.ReadSysctl(key); err != nil || v != "0" {
		t.Errorf("b: %s = %q, %v; want 0", key, v, err)
	}
}

// TestSockets joins two namespaces with a veth pair made over netlink and
// talks TCP and UDP across it with sockets made inside them.
func TestSockets(t *testing.T) {
	testutil.RequirePrivileged(t)

	a := newNS(t, "ka")
	b := newNS(t, "kb")
	ha, err := a.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	hb, err := b.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "eth0"},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(b.FD()),
	}
	if err := ha.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, side := range []struct {
		h    *netlink.Handle
		addr string
	}{{ha, "198.51.100.1/24"}, {hb, "198.51.100.2/24"}} {
		l, err := side.h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		ip, err := netlink.ParseAddr(side.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := side.h.AddrAdd(l, ip); err != nil {
			t.Fatal(err)
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}

	ln, err := b.Listen("tcp4", "198.51.100.2:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = io.Copy(c, io.LimitReader(c, 5))
		served <- err
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := a.DialContext(ctx, "tcp4", "198.51.100.2:8080")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != "hello" {
		t.Errorf("echo = %q", buf)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}

	// A socket made in a namespace stays there: the same port is free in a.
	pc, err := b.ListenPacket("udp4", "198.51.100.2:9999")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pa, err := a.ListenPacket("udp4", "198.51.100.1:9999")
	if err != nil {
		t.Fatal(err)
	}
	defer pa.Close()
	dst := &net.UDPAddr{IP: net.IPv4(198, 51, 100, 2), Port: 9999}
	if _, err := pa.WriteTo([]byte("ping"), dst); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "ping" || from.(*net.UDPAddr).IP.String() != "198.51.100.1" {
		t.Errorf("got %q from %v", buf[:n], from)
	}
}

func TestOpenRemove(t *testing.T) {
	testutil.RequirePrivileged(t)

	ns, err := netns.New(fmt.Sprintf("ndt%d-rm", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	other, err := netns.Open(ns.Name())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := netns.Remove(ns.Name()); err != nil {
		t.Fatal(err)
	}
	names, err := netns.List()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(names, ns.Name()) {
		t.Errorf("%s still listed after Remove", ns.Name())
	}
	// Closing handles on a removed namespace is fine.
	if err := ns.Close(); err != nil {
		t.Error(err)
	}
}

// TestNetlinkClosedFailsClosed: a caller that closes the handle Netlink
// gave it must not turn later calls toward the host's own namespace: they
// fail instead (the netlink package answers a handle without sockets in
// the calling thread's namespace).
func TestNetlinkClosedFailsClosed(t *testing.T) {
	testutil.RequirePrivileged(t)
	a := newNS(t, "kc")
	h, err := a.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	h2, err := a.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	links, err := h2.LinkList()
	if err == nil {
		names := []string{}
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		// A fresh namespace holds lo only; the host holds more.
		if len(links) != 1 || names[0] != "lo" {
			t.Fatalf("after a Close, a handle of the namespace listed the links %v: the host's", names)
		}
	}
}
