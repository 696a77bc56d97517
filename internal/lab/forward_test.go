package lab_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/netns"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

func TestForwardRefusesNonLoopback(t *testing.T) {
	if _, err := lab.Forward("198.51.100.1:0", nil, "127.0.0.1:1"); err == nil {
		t.Fatal("a forwarder listening outside loopback was allowed")
	}
}

// TestForward: a connection to the forwarder's loopback address reaches a
// listener on the loopback of another namespace, both ways, and Close ends
// it.
func TestForward(t *testing.T) {
	testutil.RequirePrivileged(t) // creates a network namespace
	ns, err := netns.New(fmt.Sprintf("ndlab%d-fwd", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	l, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	testutil.ServeConns(l, func(c net.Conn) {
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "echo %s", line)
	})
	f, err := lab.Forward("127.0.0.1:0", ns, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "hello\n")
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "echo hello\n" {
		t.Fatalf("through the forwarder: %q, %v", got, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("tcp", f.Addr().String()); err == nil {
		t.Error("the forwarder still listens after Close")
	}
}
