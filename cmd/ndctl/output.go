package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
)

// show is the whole of a read command: its flags, no positional arguments,
// then fetch.
func show[T any](s *session, fs *flag.FlagSet, args []string, get func(Client) (T, error), text func(io.Writer, T) error) error {
	if _, err := s.parse(fs, args, 0, 0); err != nil {
		return err
	}
	return fetch(s, get, text)
}

// reader makes a read command with no flags of its own: it fetches with
// get and prints with text.
func reader[T any](get func(Client) (T, error), text func(io.Writer, T) error) func(context.Context, *session, []string) error {
	return func(ctx context.Context, s *session, args []string) error {
		return show(s, s.newFlags(), args, get, text)
	}
}

// fetch connects to ndd, asks it with get and prints the answer: as JSON
// under --json, else with text.
func fetch[T any](s *session, get func(Client) (T, error), text func(io.Writer, T) error) error {
	c, err := s.client()
	if err != nil {
		return err
	}
	defer c.Close()
	v, err := get(c)
	if err != nil {
		return err
	}
	if s.json {
		return writeJSON(s.stdout, v)
	}
	return text(s.stdout, v)
}

// writeJSON prints v as indented JSON.
func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// writeTable prints one line per row under header, in columns, or the line
// empty when there are no rows.
func writeTable[T any](w io.Writer, empty, header string, rows []T, row func(tw io.Writer, v T)) error {
	if len(rows) == 0 {
		fmt.Fprintln(w, empty)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, v := range rows {
		row(tw, v)
	}
	return tw.Flush()
}
