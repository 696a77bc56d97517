// Package testutil holds helpers shared by nd's tests.
package testutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RequirePrivilegedEnv names the variable that turns a privileged test's
// skip into a failure. CI sets it to 1 so such tests never vanish silently.
const RequirePrivilegedEnv = "ND_REQUIRE_PRIVILEGED"

// RequirePrivileged skips tb, with the reason, unless the process can do
// what nd's privileged tests do: run as root, create network namespaces and
// use BPF. When ND_REQUIRE_PRIVILEGED=1 it fails tb instead of skipping.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	requirePrivileged(tb, privilegeProblem(), os.Getenv(RequirePrivilegedEnv) == "1")
}

func requirePrivileged(tb testing.TB, problem error, require bool) {
	tb.Helper()
	if problem == nil {
		return
	}
	if require {
		tb.Fatalf("privileged test cannot run (%s=1): %v", RequirePrivilegedEnv, problem)
		return
	}
	tb.Skipf("skipping privileged test: %v (set %s=1 to fail instead)", problem, RequirePrivilegedEnv)
}

// RequireCommands skips tb, saying how to install them (install), unless
// every named program is on the PATH. When ND_REQUIRE_PRIVILEGED=1 it fails
// tb instead of skipping.
func RequireCommands(tb testing.TB, install string, names ...string) {
	tb.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			requirePrivileged(tb, fmt.Errorf("%s is not installed (%s): %w", name, install, err), os.Getenv(RequirePrivilegedEnv) == "1")
			return
		}
	}
}

var (
	probeOnce   sync.Once
	probeResult error
)

// privilegeProblem says why privileged tests cannot run here, or nil.
// The probe runs once per process.
func privilegeProblem() error {
	probeOnce.Do(func() { probeResult = probePrivileges() })
	return probeResult
}

// Capabilities the privileged tests need.
const (
	capNetAdmin = 12
	capSysAdmin = 21
	capBPF      = 39
)

func probePrivileges() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not running as root (euid %d)", os.Geteuid())
	}
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if !has(capNetAdmin) {
		return errors.New("missing CAP_NET_ADMIN")
	}
	if !has(capSysAdmin) && !has(capBPF) {
		return errors.New("missing CAP_BPF (and CAP_SYS_ADMIN)")
	}
	if !has(capSysAdmin) {
		return errors.New("missing CAP_SYS_ADMIN (needed to mount named network namespaces)")
	}
	if err := probeNetNS(); err != nil {
		return fmt.Errorf("cannot create a network namespace: %w", err)
	}
	if err := probeBPF(); err != nil {
		return fmt.Errorf("cannot use BPF: %w", err)
	}
	return nil
}

// probeBPF creates, and closes, a one-element BPF array map with the raw
// bpf(2) call: only internal/executor imports cilium/ebpf.
func probeBPF() error {
	attr := struct {
		mapType, keySize, valueSize, maxEntries, flags uint32
	}{mapType: 2 /* BPF_MAP_TYPE_ARRAY */, keySize: 4, valueSize: 4, maxEntries: 1}
	const bpfMapCreate = 0
	fd, _, errno := unix.Syscall(unix.SYS_BPF, bpfMapCreate, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return fmt.Errorf("bpf(BPF_MAP_CREATE): %w", errno)
	}
	unix.Close(int(fd))
	return nil
}

// probeNetNS creates a throwaway network namespace on a thread that is
// never unlocked, so the runtime discards the thread, and its namespace,
// when the probing goroutine ends.
func probeNetNS() error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: this thread must not run other goroutines.
		errc <- unix.Unshare(unix.CLONE_NEWNET)
	}()
	return <-errc
}
