package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	// --version reads no configuration and loads nothing.
	if code := run([]string{"--version", "--config", "/nonexistent"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "ndd ") {
		t.Errorf("ndd --version: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	if code := run([]string{"--bogus"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--version") {
		t.Errorf("ndd --bogus: exit %d, usage %q", code, errb.String())
	}
}
