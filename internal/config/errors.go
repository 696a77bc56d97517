package config

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

var (
	// ErrInvalid is wrapped by every Error: errors.Is(err, ErrInvalid)
	// tells a configuration that was read but rejected from one that could
	// not be read.
	ErrInvalid = errors.New("invalid configuration")
	// ErrRestartRequired is wrapped by the error of Changes.Err: the new
	// configuration changes settings that only a restart applies.
	ErrRestartRequired = errors.New("restart required")
)

// Error is one problem in a configuration, located in its file when it was
// read from one.
type Error struct {
	// File is the name given to Parse or Load; "" for a Config built in
	// code.
	File string
	// Line and Column, from 1, locate the problem in File; 0 when unknown
	// (a Config built in code). A YAML syntax error has a Line and a Column
	// of 0 when the YAML library did not say more.
	Line, Column int
	// Path names the setting, e.g. "clusters[0].ports[1].servers[2].weight";
	// "" for the document as a whole.
	Path string
	// Msg says what is wrong.
	Msg string
}

// Error formats the problem as file:line:col: path: message, leaving out what
// is unknown.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
	}
	if e.Line > 0 {
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteByte(':')
		if e.Column > 0 {
			b.WriteString(strconv.Itoa(e.Column))
			b.WriteByte(':')
		}
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns ErrInvalid.
func (e *Error) Unwrap() error { return ErrInvalid }

// Errors is every problem found in a configuration, in the order of the file.
// Parse, Load, Validate and CheckInterfaces return it; find it with errors.As.
type Errors []*Error

// Error lists the problems one a line.
func (l Errors) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap returns the problems, so that errors.Is and errors.As see each.
func (l Errors) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// maxErrors bounds a report: past it the file is surely not what was meant.
const maxErrors = 1000

// pos is a place in a file.
type pos struct{ line, col int }

// source is where a parsed Config came from: its file name and where each
// setting was read, by path.
type source struct {
	file string
	at   map[string]pos
	// ifaces are the interface names as read, so that CheckInterfaces can
	// tell whether Interfaces still match the recorded positions.
	ifaces []string
	// vips are the clusters' VIPs as read, for CheckVIPs likewise.
	vips []netip.Addr
}

// lookup finds the position of path, or of its nearest ancestor with one.
func (s *source) lookup(path string) (pos, bool) {
	if s == nil {
		return pos{}, false
	}
	for {
		if p, ok := s.at[path]; ok {
			return p, true
		}
		if path == "" {
			return pos{}, false
		}
		path = parentPath(path)
	}
}

// parentPath strips the last element of a path: "a.b[1]" -> "a.b" -> "a" -> "".
func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// reporter collects located errors.
type reporter struct {
	src  *source
	errs Errors
	// bad marks paths whose value could not be read, so that validation
	// does not report them a second time.
	bad map[string]bool
}

// errorf reports a problem with the setting at path, located at the place
// recorded for it, unless that setting or one containing it could not be read.
func (r *reporter) errorf(path, format string, args ...any) {
	for p := path; ; p = parentPath(p) {
		if r.bad[p] {
			return
		}
		if p == "" {
			break
		}
	}
	e := &Error{Path: path, Msg: fmt.Sprintf(format, args...)}
	if r.src != nil {
		e.File = r.src.file
		if p, ok := r.src.lookup(path); ok {
			e.Line, e.Column = p.line, p.col
		}
	}
	r.add(e)
}

func (r *reporter) add(e *Error) {
	if len(r.errs) > maxErrors {
		return
	}
	r.errs = append(r.errs, e)
}

// firstAt describes where an earlier occurrence of something was, for
// messages about duplicates: " (first at line 8)", or "" when unknown.
func (r *reporter) firstAt(path string) string {
	if p, ok := r.src.lookup(path); ok {
		return fmt.Sprintf(" (first at line %d)", p.line)
	}
	return ""
}

// err returns the errors found, sorted by position (problems without one
// last), or nil.
func (r *reporter) err() error {
	if len(r.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(r.errs, func(a, b *Error) int {
		if (a.Line == 0) != (b.Line == 0) {
			return cmp.Compare(b.Line, a.Line) // the unlocated one goes last
		}
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
	if len(r.errs) > maxErrors {
		last := r.errs[maxErrors-1]
		r.errs = append(r.errs[:maxErrors], &Error{File: last.File, Line: last.Line, Column: last.Column,
			Msg: fmt.Sprintf("too many errors: stopped after %d", maxErrors)})
	}
	return r.errs
}
