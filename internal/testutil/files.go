package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// WriteFile writes data to name in dir with exactly mode (the umask does
// not apply) and returns its path. A test of files that must not be readable
// by others needs the mode it asked for.
func WriteFile(tb testing.TB, dir, name string, data []byte, mode os.FileMode) string {
	tb.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		tb.Fatal(err)
	}
	return p
}
