package sdnotify

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen plays the service manager: a unixgram socket the notifier writes to.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func receive(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotify(t *testing.T) {
	for _, socket := range []string{
		filepath.Join(t.TempDir(), "notify"),
		"@nd-sdnotify-test-" + strconv.FormatInt(time.Now().UnixNano(), 36), // abstract
	} {
		t.Run(socket, func(t *testing.T) {
			c := listen(t, socket)
			n := New(socket)
			if !n.Enabled() {
				t.Fatal("not enabled")
			}
			if err := n.Notify(Ready, Status("attached to eth0")); err != nil {
				t.Fatal(err)
			}
			if got := receive(t, c); got != "READY=1\nSTATUS=attached to eth0\n" {
				t.Errorf("got %q", got)
			}
			if err := n.BeginReload(); err != nil {
				t.Fatal(err)
			}
			got := receive(t, c)
			lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
			if len(lines) != 2 || lines[0] != Reloading || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
				t.Fatalf("reload sent %q", got)
			}
			if us, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64); err != nil || us == 0 {
				t.Errorf("MONOTONIC_USEC %q: %v", lines[1], err)
			}
			if err := n.Notify(Stopping); err != nil {
				t.Fatal(err)
			}
			if got := receive(t, c); got != "STOPPING=1\n" {
				t.Errorf("got %q", got)
			}
		})
	}
}

func TestDisabled(t *testing.T) {
	var nilNotifier *Notifier
	for _, n := range []*Notifier{New(""), nilNotifier, {}} {
		if n.Enabled() {
			t.Error("enabled without a socket")
		}
		if err := n.Notify(Ready); err != nil {
			t.Error(err)
		}
		if err := n.BeginReload(); err != nil {
			t.Error(err)
		}
	}
}

func TestRefused(t *testing.T) {
	n := New(filepath.Join(t.TempDir(), "nobody"))
	if err := n.Notify(Ready); err == nil {
		t.Error("no error with nobody listening")
	}
	c := listen(t, filepath.Join(t.TempDir(), "notify"))
	n = New(c.LocalAddr().String())
	if err := n.Notify("READY=1\nSTOPPING=1"); err == nil {
		t.Error("a multi-line assignment was sent")
	}
	if err := n.Notify("READY"); err == nil {
		t.Error("an assignment without = was sent")
	}
}
