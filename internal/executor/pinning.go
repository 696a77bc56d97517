package executor

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Pinning must not fail open: a data plane pinned where the pins die with
// the process loses every flow at the next crash, and two processes on one
// pin path take each other's maps and attachments. The checks here decide
// from /proc/self/mountinfo, which a process can always read, and use
// /proc/1/ns/mnt only as a proof when it is readable.

// mountEntry is what the checks need of a line of /proc/self/mountinfo.
type mountEntry struct {
	point  string
	fstype string
	shared bool // propagates to and from a peer group ("shared:N")
	master bool // receives from a peer group ("master:N")
}

// parseMountinfo reads the format of proc(5): ID PARENT MAJ:MIN ROOT POINT
// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS.
func parseMountinfo(r io.Reader) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		e := mountEntry{point: unescapeMount(f[4])}
		i := 6
		for ; i < len(f) && f[i] != "-"; i++ {
			e.shared = e.shared || strings.HasPrefix(f[i], "shared:")
			e.master = e.master || strings.HasPrefix(f[i], "master:")
		}
		if i+1 >= len(f) {
			continue
		}
		e.fstype = f[i+1]
		out = append(out, e)
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountOf is the entry of the mount holding path: the last mounted of the
// longest mount point that is path or a parent of it.
func mountOf(entries []mountEntry, path string) (mountEntry, bool) {
	var best mountEntry
	found := false
	for _, e := range entries {
		if e.point == path || e.point == "/" || strings.HasPrefix(path, strings.TrimSuffix(e.point, "/")+"/") {
			if !found || len(e.point) >= len(best.point) {
				best, found = e, true
			}
		}
	}
	return best, found
}

// mountNS says whether this process shares the host's mount namespace
// (PID 1's), when that can be proved: /proc/1/ns/mnt is not readable
// everywhere (a sandbox, hidepid), and then known is false.
func mountNS() (host, known bool) {
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	init, err2 := os.Readlink("/proc/1/ns/mnt")
	if err1 != nil || err2 != nil {
		return false, false
	}
	return self == init, true
}

// privateNS judges from the mount table alone, which is always readable,
// whether the process runs in a copy of the host's mount namespace: `ip
// netns exec` and `unshare --propagation slave` leave the root mount a
// slave ("master:N") of the host's peer group, and no longer shared.
func privateNS(mounts []mountEntry) bool {
	root, ok := mountOf(mounts, "/")
	return ok && root.master && !root.shared
}

func readMountinfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

// prepareBPFFS makes sure dir exists on a bpffs whose pins outlive the
// process, mounting one on /sys/fs/bpf when the host has none there yet.
// In a mount namespace other than the host's it mounts nothing, and it
// refuses a bpffs mounted privately there: both die with the namespace.
func prepareBPFFS(dir string) error {
	const bpffs = "/sys/fs/bpf"
	mounts, err := readMountinfo()
	if err != nil {
		return err
	}
	host, known := mountNS()
	private := (known && !host) || privateNS(mounts)
	var st unix.Statfs_t
	if err := unix.Statfs(bpffs, &st); err == nil && st.Type != unix.BPF_FS_MAGIC {
		// Mount one only where it provably outlives the process.
		switch {
		case private:
			return fmt.Errorf("%w: no bpffs on %s in this mount namespace, which is not the host's: a bpffs mounted here would vanish with the process, and the data plane's flows with it; run in the host's mount namespace (nsenter --net=/run/netns/NAME, not ip netns exec)", ErrInvalid, bpffs)
		case !known:
			return fmt.Errorf("%w: no bpffs on %s, and this process cannot tell whether its mount namespace is the host's (/proc/1/ns/mnt is unreadable): mount one in the host's mount namespace first (mount -t bpf bpf %s)", ErrInvalid, bpffs, bpffs)
		}
		if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs on %s: %w", bpffs, err)
		}
		if mounts, err = readMountinfo(); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%w: pin path %s is not on a bpf filesystem", ErrInvalid, dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("pin path %s: %w", dir, err)
	}
	// A bpffs mounted privately in a namespace that is not the host's
	// (by hand, under ip netns exec) dies with that namespace.
	if m, ok := mountOf(mounts, abs); ok && private && !m.shared && !m.master {
		return fmt.Errorf("%w: pin path %s is on a bpffs mounted privately (on %s) in a mount namespace that is not the host's: its pins would vanish with the namespace; run in the host's mount namespace", ErrInvalid, dir, m.point)
	}
	return nil
}

// lockPinPath takes the pin directory for this process: a second data
// plane on the same pins would take the first's maps and its XDP
// attachments from under it. The lock (flock on the directory) goes with
// the process, however it ends.
func lockPinPath(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pin path %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: pin path %s is held by another process (another ndd?): two data planes on one pin path would take each other's maps and attachments", ErrBusy, dir)
		}
		return nil, fmt.Errorf("lock pin path %s: %w", dir, err)
	}
	return f, nil
}
