package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// OwnedName returns a fresh name "<prefix><pid>-<random>" that records the
// process owning the namespace, so that SweepStale can tell a dead owner's
// leftovers from a live one's.
func OwnedName(prefix string) string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s%d-%s", prefix, os.Getpid(), hex.EncodeToString(b))
}

// SweepStale deletes the namespaces named "<prefix><pid>-..." whose process
// is gone, such as those of a test binary that was killed before its
// cleanups ran, and returns their names. logf may be nil.
func SweepStale(prefix string, logf func(string, ...any)) ([]string, error) {
	names, err := List()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, n := range names {
		pid, ok := ownerPID(prefix, n)
		if !ok || alive(pid) {
			continue
		}
		if err := Remove(n); err != nil {
			errs = append(errs, err)
			continue
		}
		if logf != nil {
			logf("removed stale netns %s", n)
		}
		removed = append(removed, n)
	}
	return removed, errors.Join(errs...)
}

func ownerPID(prefix, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return 0, false
	}
	digits, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(digits)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

func alive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
