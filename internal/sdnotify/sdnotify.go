// Package sdnotify tells the service manager how the daemon is doing: the
// sd_notify protocol, which is one datagram of newline-separated KEY=VALUE
// assignments sent to the unix socket named by $NOTIFY_SOCKET (a path, or
// an abstract address written with a leading '@'). systemd starts ndd with
// that variable set under Type=notify and holds dependent units back until
// READY=1 arrives. Outside systemd the variable is unset and every call is
// a no-op, so the daemon needs no mode for it.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"golang.org/x/sys/unix"
)

// Env is the variable the service manager sets.
const Env = "NOTIFY_SOCKET"

// States the daemon sends.
const (
	Ready     = "READY=1"     // startup (or a reload) is complete
	Reloading = "RELOADING=1" // a reload has begun; READY=1 ends it
	Stopping  = "STOPPING=1"  // shutdown has begun
)

// Notifier sends states to one socket; the zero value (and a nil pointer)
// sends nothing.
type Notifier struct {
	addr *net.UnixAddr
}

// New returns a notifier for socket, the value of $NOTIFY_SOCKET; an empty
// socket gives a notifier that sends nothing.
func New(socket string) *Notifier {
	if socket == "" {
		return &Notifier{}
	}
	// A leading '@' means an abstract socket: Go's sockaddr conversion
	// turns it into the NUL byte the kernel expects.
	return &Notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}}
}

// Enabled reports whether a service manager listens.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// Notify sends the assignments in one datagram. It returns nil when no
// service manager listens.
func (n *Notifier) Notify(assignments ...string) error {
	if !n.Enabled() || len(assignments) == 0 {
		return nil
	}
	for _, a := range assignments {
		if !strings.Contains(a, "=") || strings.Contains(a, "\n") {
			return fmt.Errorf("sdnotify: %q is not one KEY=VALUE line", a)
		}
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	msg := strings.Join(assignments, "\n") + "\n"
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("sdnotify: send to %s: %w", n.addr.Name, err)
	}
	return nil
}

// Status is the STATUS= assignment: a line `systemctl status` shows.
func Status(s string) string {
	return "STATUS=" + strings.ReplaceAll(s, "\n", " ")
}

// MonotonicUsec is the MONOTONIC_USEC= assignment for now, which systemd
// wants with RELOADING=1 to tell one reload from the next.
func MonotonicUsec() (string, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return "", errors.Join(errors.New("sdnotify: monotonic clock"), err)
	}
	return fmt.Sprintf("MONOTONIC_USEC=%d", ts.Nano()/1000), nil
}

// BeginReload sends RELOADING=1 with the monotonic time.
func (n *Notifier) BeginReload() error {
	if !n.Enabled() {
		return nil
	}
	mono, err := MonotonicUsec()
	if err != nil {
		return err
	}
	return n.Notify(Reloading, mono)
}
