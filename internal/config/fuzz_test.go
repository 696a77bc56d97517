package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error it returns is
// Errors whose items are located in the named file, and that what it accepts
// survives a Marshal round trip.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../../examples/*.yaml")
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(diffBase))
	f.Add([]byte(head + "clusters:\n  - &m {vip: 198.51.100.1, ports: [*m]}\n"))
	f.Add([]byte(head + "clusters: [{vip: 198.51.100.1, ports: [{port: 80, servers: [{address: 198.51.100.2, weight: 99999}]}]}]\n"))
	f.Add([]byte("interfaces: [eth0\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "f.yaml")
		if err != nil {
			if c != nil {
				t.Fatal("a Config with an error")
			}
			var list Errors
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error %v (%T) is not a non-empty Errors", err, err)
			}
			for _, e := range list {
				if e.File != "f.yaml" || e.Msg == "" {
					t.Fatalf("error %+v is not in f.yaml or says nothing", e)
				}
				// Only the YAML library's own syntax errors may lack a
				// position, and only a column when they name a line.
				if e.Line < 1 || e.Column < 1 {
					if !strings.HasPrefix(e.Msg, "yaml: ") {
						t.Fatalf("error %q is not located", e)
					}
				}
			}
			return
		}
		back, err := Parse(mustMarshal(t, c), "saved.yaml")
		if err != nil {
			t.Fatalf("Parse(Marshal(c)): %v", err)
		}
		if !sameContent(back, c) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", *c, *back)
		}
	})
}

func mustMarshal(t *testing.T, c *Config) []byte {
	t.Helper()
	data, err := Marshal(c)
	if err != nil {
		t.Fatalf("Marshal of a parsed config: %v", err)
	}
	return data
}
