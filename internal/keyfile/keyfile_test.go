package keyfile

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nd-dispatcher/nd/internal/testutil"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte, mode os.FileMode) string {
		return testutil.WriteFile(t, dir, name, data, mode)
	}
	k, err := Load(write("ok", []byte("0123456789abcdef\n"), 0o600), 16)
	if err != nil || string(k) != "0123456789abcdef" {
		t.Errorf("ok: %q, %v", k, err)
	}
	k, err = Load(write("crlf", []byte("0123456789abcdef\r\n"), 0o640), 16)
	if err != nil || string(k) != "0123456789abcdef" {
		t.Errorf("crlf: %q, %v", k, err)
	}
	for name, c := range map[string]struct {
		data []byte
		mode os.FileMode
		want string
	}{
		"world readable": {[]byte("0123456789abcdef"), 0o644, "other users"},
		"world writable": {[]byte("0123456789abcdef"), 0o602, "other users"},
		"short":          {[]byte("0123456789abcde\n"), 0o600, "at least 16"},
		"huge":           {make([]byte, MaxSize+1), 0o600, "longer than"},
	} {
		if _, err := Load(write(name, c.data, c.mode), 16); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", name, err, c.want)
		}
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(fifo, 16); err == nil || !strings.Contains(err.Error(), "regular") {
		t.Errorf("FIFO: %v", err)
	}
	if _, err := Load(dir, 16); err == nil {
		t.Error("a directory was accepted as a key file")
	}
}
