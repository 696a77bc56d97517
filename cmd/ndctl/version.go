package main

import (
	"context"
	"fmt"

	"github.com/nd-dispatcher/nd/internal/version"
)

// versionCmd is `ndctl version`: this ndctl's build. It needs no ndd.
func versionCmd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	if _, err := s.parse(fs, args, 0, 0); err != nil {
		return err
	}
	in := version.Get()
	if s.json {
		return writeJSON(s.stdout, in)
	}
	fmt.Fprintf(s.stdout, "ndctl %s\n", in)
	return nil
}
