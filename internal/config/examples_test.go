package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestExamples loads every file in examples/: each must be valid, use only
// documentation addresses, and survive a Marshal round trip.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("found %d examples, want at least 4", len(files))
	}
	doc := []netip.Prefix{
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.0/24"),
		netip.MustParsePrefix("2001:db8::/32"),
	}
	documentation := func(a netip.Addr) bool {
		for _, p := range doc {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := Load(f)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Ports()) == 0 {
				t.Errorf("no ports")
			}
			for _, p := range c.Ports() {
				if !documentation(p.Key.VIP) {
					t.Errorf("VIP %s is not a documentation address", p.Key.VIP)
				}
				for _, s := range p.Servers {
					if !documentation(s.Address) {
						t.Errorf("server %s is not a documentation address", s.Address)
					}
				}
			}
			roundTrip(t, c)
		})
	}
}

// TestDocumentedShape parses the first YAML block of docs/CONFIG.md, which
// shows every setting with its default: it must be valid and equal the
// defaults for everything it does not set otherwise.
func TestDocumentedShape(t *testing.T) {
	doc, err := os.ReadFile("../../docs/CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("no yaml block in docs/CONFIG.md")
	}
	c, err := Parse([]byte(block), "CONFIG.md")
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if !reflect.DeepEqual(c.DataPlane, d.DataPlane) || c.API != d.API || c.Metrics != d.Metrics || !reflect.DeepEqual(c.Manager, d.Manager) {
		t.Errorf("documented settings differ from the defaults:\n%+v\n%+v", c, d)
	}
}
