// Package netns creates named network namespaces and runs work inside them.
//
// A namespace made here is bind-mounted at /run/netns/<name>, the place
// iproute2 uses, so subprocesses can join it with `ip netns exec <name>` and
// people can inspect it with `ip -n <name> ...`. Go code runs inside it with
// Do, which switches a locked OS thread into the namespace and back. Sockets
// keep the namespace they were created in, so a listener or connection made
// inside Do can be used from any goroutine afterwards.
//
// Namespaces outlive the process that made them: whoever calls New owns the
// result and must Close it on every exit path (defer, t.Cleanup, or a
// signal-aware context in long-running programs). List and Remove let a
// later run sweep up after a process that was killed.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where named namespaces are bind-mounted, as iproute2 does.
const RunDir = "/run/netns"

// Errors returned by this package.
var (
	ErrClosed    = errors.New("network namespace closed")
	ErrExists    = errors.New("network namespace already exists")
	ErrBadName   = errors.New("invalid network namespace name")
	ErrNotExists = errors.New("network namespace does not exist")
)

// MaxNameLen bounds namespace names so that the names stay readable in
// `ip netns list` and fit comfortably in paths.
const MaxNameLen = 64

// NS is a named network namespace. Its methods are safe for concurrent use.
type NS struct {
	name string
	path string

	mu     sync.RWMutex
	file   *os.File // open handle on the namespace, used by setns
	handle *netlink.Handle
	closed bool
}

// New creates the network namespace name, bind-mounted at /run/netns/name,
// with its loopback interface up. It fails with ErrExists if the name is
// taken. The caller must Close the result.
func New(name string) (*NS, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if err := prepareRunDir(); err != nil {
		return nil, err
	}
	path := filepath.Join(RunDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("create netns %s: %w", name, ErrExists)
		}
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	f.Close()

	if err := onFreshThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount to %s: %w", path, err)
		}
		return nil
	}); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}

	ns, err := open(name, path)
	if err != nil {
		unmountAndRemove(path)
		return nil, err
	}
	if err := ns.Do(func() error { return setUp("lo") }); err != nil {
		ns.Close()
		return nil, fmt.Errorf("create netns %s: bring up lo: %w", name, err)
	}
	return ns, nil
}

// Open returns a handle on an existing named namespace, for example one
// made by `ip netns add`. Closing the result deletes the namespace.
func Open(name string) (*NS, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	return open(name, filepath.Join(RunDir, name))
}

func open(name, path string) (*NS, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("open netns %s: %w", name, ErrNotExists)
		}
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	if !isNetNS(f) {
		f.Close()
		return nil, fmt.Errorf("open netns %s: %s is not a network namespace", name, path)
	}
	return &NS{name: name, path: path, file: f}, nil
}

// Name returns the namespace's name, as `ip netns` knows it.
func (ns *NS) Name() string { return ns.name }

// Path returns the namespace's bind mount, e.g. /run/netns/NAME.
func (ns *NS) Path() string { return ns.path }

// String returns the name.
func (ns *NS) String() string { return ns.name }

// Close deletes the namespace: it releases the handles held here and removes
// the bind mount. The kernel frees the namespace, and destroys its
// interfaces, once no process, socket or open handle refers to it any more.
// Close is idempotent.
func (ns *NS) Close() error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.closed {
		return nil
	}
	ns.closed = true
	if ns.handle != nil {
		ns.handle.Close()
		ns.handle = nil
	}
	ns.file.Close()
	if err := unmountAndRemove(ns.path); err != nil {
		return fmt.Errorf("delete netns %s: %w", ns.name, err)
	}
	return nil
}

// Do runs fn on an OS thread switched into the namespace and returns fn's
// error. fn runs on a fresh goroutine with its thread locked, and Do waits
// for it; a panic in fn is re-raised in the caller. Goroutines that fn
// starts do not inherit the namespace. fn must not call t.FailNow and
// friends, since it is not on the test's goroutine.
//
// If the thread cannot be switched back, it stays locked and the runtime
// discards it when the goroutine ends, so no thread is ever left in the
// wrong namespace.
func (ns *NS) Do(fn func() error) error {
	ns.mu.RLock()
	if ns.closed {
		ns.mu.RUnlock()
		return fmt.Errorf("netns %s: %w", ns.name, ErrClosed)
	}
	// Hold the lock only until the thread has entered the namespace; the
	// thread's own reference keeps the namespace alive after that, so a
	// long-running fn does not block Close.
	var once sync.Once
	release := func() { once.Do(ns.mu.RUnlock) }
	defer release()

	return onFreshThread(func() error {
		err := unix.Setns(int(ns.file.Fd()), unix.CLONE_NEWNET)
		release()
		if err != nil {
			return fmt.Errorf("enter netns %s: %w", ns.name, err)
		}
		return fn()
	})
}

// onFreshThread runs fn on a new goroutine locked to its OS thread and
// returns its error. The thread's network namespace is saved before fn and
// restored after it. If the restore fails the thread stays locked, so the
// runtime terminates it when the goroutine exits. A panic in fn is re-raised
// in the caller.
func onFreshThread(fn func() error) error {
	type result struct {
		err      error
		panicked bool
		value    any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("open current netns: %w", err)}
			return
		}
		defer orig.Close()

		var res result
		func() {
			defer func() {
				if v := recover(); v != nil {
					res = result{panicked: true, value: v}
				}
			}()
			res.err = fn()
		}()

		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			if !res.panicked {
				res.err = errors.Join(res.err, fmt.Errorf("restore netns: %w", err))
			}
			done <- res
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panicked {
		panic(res.value)
	}
	return res.err
}

// Netlink returns a netlink handle bound to the namespace. The handle is
// owned by ns and closed by Close; callers must not close it.
func (ns *NS) Netlink() (*netlink.Handle, error) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.closed {
		return nil, fmt.Errorf("netns %s: %w", ns.name, ErrClosed)
	}
	if ns.handle == nil {
		h, err := netlink.NewHandleAt(vns.NsHandle(ns.file.Fd()))
		if err != nil {
			return nil, fmt.Errorf("netlink handle in netns %s: %w", ns.name, err)
		}
		ns.handle = h
	}
	// A copy: a caller that closes it closes the shared sockets, and every
	// later call through any copy then fails. Handing out the handle
	// itself, Close would empty its socket set, and the netlink package
	// answers a handle without sockets in the calling thread's own
	// namespace: a lab's link change would silently land on the host.
	h := *ns.handle
	return &h, nil
}

// FD returns the namespace's file descriptor, e.g. for netlink.NsFd when
// moving a link into the namespace. It stays valid until Close.
func (ns *NS) FD() int {
	return int(ns.file.Fd())
}

// Command returns a command that runs the program name inside the
// namespace, through nsenter, which enters the network namespace only.
// (`ip netns exec` also makes a mount namespace with its own /sys, so a
// daemon run that way would pin its data plane in a private bpffs that
// vanishes with it.) As with exec.CommandContext, the process is killed
// when ctx is done.
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + ns.path, "--", name}, args...)...)
}

// Sysctl sets a sysctl of the namespace, e.g.
// Sysctl("net.ipv4.conf.all.rp_filter", "0"). Keys are dotted; a dotted
// interface name cannot be addressed this way.
func (ns *NS) Sysctl(key, value string) error {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return ns.Do(func() error {
		// /proc/sys/net resolves to the opening thread's namespace.
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("netns %s: sysctl %s=%s: %w", ns.name, key, value, err)
		}
		return nil
	})
}

// ReadSysctl reads a sysctl of the namespace, with surrounding space trimmed.
func (ns *NS) ReadSysctl(key string) (string, error) {
	p := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return in(ns, func() (string, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("netns %s: read sysctl %s: %w", ns.name, key, err)
		}
		return strings.TrimSpace(string(b)), nil
	})
}

// Listen is net.Listen inside the namespace.
func (ns *NS) Listen(network, address string) (net.Listener, error) {
	return in(ns, func() (net.Listener, error) { return net.Listen(network, address) })
}

// ListenPacket is net.ListenPacket inside the namespace.
func (ns *NS) ListenPacket(network, address string) (net.PacketConn, error) {
	return in(ns, func() (net.PacketConn, error) { return net.ListenPacket(network, address) })
}

// DialContext is net.Dialer.DialContext inside the namespace. Use IP
// literals: a host name would be resolved with the namespace's view of the
// network.
func (ns *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return in(ns, func() (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	})
}

// in is Do for a function that returns a value.
func in[T any](ns *NS, fn func() (T, error)) (T, error) {
	var v T
	err := ns.Do(func() (err error) {
		v, err = fn()
		return err
	})
	return v, err
}

// Current returns the name of the named namespace (under RunDir) that the
// calling thread is in, or "" if it is in none, as in the root namespace.
// A program started with `ip netns exec NAME` gets NAME, so a tool can refuse
// to run outside the namespace it was meant for. A goroutine that has not
// locked its thread should only trust the answer when the whole process is in
// one namespace, which is the case for such programs.
func Current() (string, error) {
	var self unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &self); err != nil {
		return "", fmt.Errorf("stat current netns: %w", err)
	}
	names, err := List()
	if err != nil {
		return "", err
	}
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(RunDir, n), &st); err != nil {
			continue // removed meanwhile, or a stale file
		}
		if st.Dev == self.Dev && st.Ino == self.Ino {
			return n, nil
		}
	}
	return "", nil
}

// List returns the names of the namespaces bind-mounted under RunDir, in
// directory order. A missing RunDir means none.
func List() ([]string, error) {
	ents, err := os.ReadDir(RunDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list %s: %w", RunDir, err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// Remove deletes the named namespace, like `ip netns delete`. It is meant
// for sweeping up namespaces left behind by a process that died; a live
// owner should Close its NS instead.
func Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	path := filepath.Join(RunDir, name)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, ErrNotExists)
	}
	if err := unmountAndRemove(path); err != nil {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > MaxNameLen ||
		strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%w: %q", ErrBadName, name)
	}
	return nil
}

// prepareRunDir makes RunDir a shared mount point, as iproute2 does, so that
// namespaces mounted there are seen from other mount namespaces such as
// the ones `ip netns exec` makes.
func prepareRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) {
		// Not a mount point yet: bind it onto itself, then share it.
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s: %w", RunDir, err)
		}
		err = unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", RunDir, err)
	}
	return nil
}

func unmountAndRemove(path string) error {
	var errs []error
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// isNetNS reports whether f is a network namespace handle.
func isNetNS(f *os.File) bool {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// setUp brings the named interface of the current thread's namespace up.
func setUp(ifname string) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}
