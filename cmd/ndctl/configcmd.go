package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"go.yaml.in/yaml/v3"

	"github.com/nd-dispatcher/nd/internal/config"
)

func configShow(ctx context.Context, s *session, args []string) error {
	if _, err := s.parse(s.newFlags(), args, 0, 0); err != nil {
		return err
	}
	y, err := s.runningConfig()
	if err != nil {
		return err
	}
	if !s.json {
		_, err := s.stdout.Write(y)
		return err
	}
	// The same keys as the YAML file, as JSON.
	var doc any
	if err := yaml.Unmarshal(y, &doc); err != nil {
		return fmt.Errorf("read the configuration ndd sent: %w", err)
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("configuration as JSON: %w", err)
	}
	_, err = fmt.Fprintf(s.stdout, "%s\n", b)
	return err
}

func configApply(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	args, err := s.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	name := args[0]
	var data []byte
	if name == "-" {
		name = "stdin"
		data, err = io.ReadAll(io.LimitReader(s.stdin, 16<<20))
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	// Check here first, so that problems are located in the operator's
	// file; ndd checks again against the machine.
	if _, err := config.Parse(data, name); err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.ApplyConfig(data) })
}

func configSave(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	args, err := s.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	y, err := s.runningConfig()
	if err != nil {
		return err
	}
	if err := writeFileAtomic(args[0], y, 0o600); err != nil {
		return err
	}
	if !s.json {
		fmt.Fprintf(s.stdout, "saved the running configuration to %s\n", args[0])
	}
	return nil
}

// runningConfig fetches the YAML of ndd's running configuration.
func (s *session) runningConfig() ([]byte, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Config()
}

// writeFileAtomic writes data to a temporary file beside path and renames it
// over path, so that a reader never sees half a file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save %s: %w", path, err)
	}
	return nil
}

func configReload(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	if _, err := s.parse(fs, args, 0, 0); err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.Reload() })
}
