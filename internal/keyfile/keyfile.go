// Package keyfile reads the shared keys that authenticate nd's agents and
// high-availability peers.
package keyfile

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// MaxSize bounds a key file.
const MaxSize = 4096

// Load reads a shared key. The key is the file's bytes, less one trailing
// newline; it must be at least min bytes. The file must not be accessible
// to other users: a key anyone can read authenticates anyone.
func Load(path string, min int) ([]byte, error) {
	// Refuse a FIFO or device before opening it: opening a FIFO blocks.
	if st, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s: not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o007 != 0 {
		return nil, fmt.Errorf("key file %s: mode %04o gives other users access; chmod o-rwx (e.g. 0600 or 0640)", path, perm)
	}
	key, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if len(key) > MaxSize {
		return nil, fmt.Errorf("key file %s: longer than %d bytes", path, MaxSize)
	}
	switch {
	case len(key) >= 2 && key[len(key)-2] == '\r' && key[len(key)-1] == '\n':
		key = key[:len(key)-2]
	case len(key) >= 1 && key[len(key)-1] == '\n':
		key = key[:len(key)-1]
	}
	if len(key) < min {
		return nil, fmt.Errorf("key file %s: key is %d bytes, want at least %d", path, len(key), min)
	}
	return key, nil
}

// Token reads a bearer token from a file: its content, surrounding white
// space trimmed. The file must be a regular file of at most MaxSize bytes,
// and the token non-empty, printable ASCII without spaces.
func Token(path string) (string, error) {
	if st, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("token file: %w", err)
	} else if !st.Mode().IsRegular() {
		return "", fmt.Errorf("token file %s: not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	if len(b) > MaxSize {
		return "", fmt.Errorf("token file %s: longer than %d bytes", path, MaxSize)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	for _, c := range t {
		if c <= ' ' || c > '~' {
			return "", fmt.Errorf("token file %s: the token must be printable ASCII without spaces", path)
		}
	}
	return t, nil
}
