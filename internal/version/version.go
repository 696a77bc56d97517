// Package version says which build of nd is running: the module version,
// the VCS revision and its time that the Go toolchain stamps into every
// binary built from a checkout, and the Go version. A package build may
// override each with the linker:
//
//	go build -ldflags "-X github.com/nd-dispatcher/nd/internal/version.Version=1.2.3" ./cmd/ndd
//
// Nothing here is mutable at run time except through -X.
package version

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Set by -ldflags -X at build time; empty means "read the build info".
var (
	Version  string
	Revision string
	Time     string
)

// Info is one build.
type Info struct {
	Version  string `json:"version"`            // module version, "(devel)" when unknown
	Revision string `json:"revision,omitempty"` // VCS revision, "" when unknown
	Time     string `json:"time,omitempty"`     // VCS commit time (RFC 3339), "" when unknown
	Modified bool   `json:"modified,omitempty"` // built from a checkout with uncommitted changes
	Go       string `json:"go,omitempty"`       // Go toolchain version
}

// Get returns this binary's build: the -X values where given, else what
// the toolchain recorded.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return get(bi, Version, Revision, Time)
}

// get merges the recorded build info (nil when absent) with overrides.
func get(bi *debug.BuildInfo, version, revision, time string) Info {
	in := Info{Version: "(devel)"}
	if bi != nil {
		in.Go = bi.GoVersion
		if v := bi.Main.Version; v != "" {
			in.Version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Revision = s.Value
			case "vcs.time":
				in.Time = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if version != "" {
		in.Version = version
	}
	if revision != "" {
		in.Revision = revision
		in.Modified = strings.HasSuffix(revision, "-dirty")
		in.Revision = strings.TrimSuffix(revision, "-dirty")
	}
	if time != "" {
		in.Time = time
	}
	return in
}

// String is the line that `PROG --version` prints, for example
// "ndd 1.2.3 (revision 0123456789ab, 2026-12-06T07:21:59Z, go1.26.8)".
func (in Info) String() string {
	var parts []string
	if in.Revision != "" {
		rev := in.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if in.Modified {
			rev += "+modified"
		}
		parts = append(parts, "revision "+rev)
	}
	if in.Time != "" {
		parts = append(parts, in.Time)
	}
	if in.Go != "" {
		parts = append(parts, in.Go)
	}
	if len(parts) == 0 {
		return in.Version
	}
	return fmt.Sprintf("%s (%s)", in.Version, strings.Join(parts, ", "))
}

// Line is "prog " followed by the build, for --version.
func Line(prog string) string {
	return prog + " " + Get().String()
}
