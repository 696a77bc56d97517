package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	recorded := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/nd-dispatcher/nd", Version: "v0.0.0-20261206072159-e96ef3b1abcd"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "e96ef3b1abcdef0123456789abcdef0123456789"},
			{Key: "vcs.time", Value: "2026-12-06T07:21:59Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	for _, tc := range []struct {
		name               string
		bi                 *debug.BuildInfo
		version, rev, time string
		want               string
	}{
		{"no build info", nil, "", "", "", "(devel)"},
		{"test binary", &debug.BuildInfo{GoVersion: "go1.26.8"}, "", "", "", "(devel) (go1.26.8)"},
		{"from the checkout", recorded, "", "", "",
			"v0.0.0-20261206072159-e96ef3b1abcd (revision e96ef3b1abcd+modified, 2026-12-06T07:21:59Z, go1.26.8)"},
		{"package build", recorded, "0~git20261206.e96ef3b", "e96ef3b1abcdef", "2026-12-06T07:21:59Z",
			"0~git20261206.e96ef3b (revision e96ef3b1abcd, 2026-12-06T07:21:59Z, go1.26.8)"},
		{"package build from a dirty tree", nil, "1.0", "e96ef3b-dirty", "",
			"1.0 (revision e96ef3b+modified)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := get(tc.bi, tc.version, tc.rev, tc.time).String(); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestLine(t *testing.T) {
	l := Line("ndd")
	if !strings.HasPrefix(l, "ndd ") || strings.Contains(l, "\n") {
		t.Errorf("Line(ndd) = %q", l)
	}
}
