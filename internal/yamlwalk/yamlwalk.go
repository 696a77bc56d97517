// Package yamlwalk reads a YAML document by walking its node tree, the one
// way nd reads its YAML files (ndd's configuration, ndagent's). The caller
// walks its schema with the readers here (Fields, List, Str, Uint, Duration,
// ...) rather than letting the YAML library fill structs, so that every
// problem has a line and a column, unknown and repeated keys are refused, and
// every problem is reported, not only the first. Aliases are followed within
// a budget, so that a small document cannot expand to billions of nodes.
//
// It imports nothing of nd.
package yamlwalk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Kind sorts problems, so that a caller may word them its own way.
type Kind uint8

const (
	// Invalid is a value of the right kind that is not acceptable: out of
	// range, not an address, a key given twice, an alias that loops.
	Invalid Kind = iota
	// Syntax is input that is not one YAML document.
	Syntax
	// UnknownField is a key that names no field; Problem.Key holds it,
	// and Msg is "unknown field" followed by a suggestion: " (did you
	// mean port?)" or " (known: ...)".
	UnknownField
	// WrongType is a value of another kind than wanted: a mapping where a
	// list is wanted, a word where a number is.
	WrongType
	// NoUnit is a bare number where a duration is wanted.
	NoUnit
)

// Problem is one thing wrong in a document.
type Problem struct {
	// Line and Column, from 1, locate it; 0 when the YAML library did not
	// say.
	Line, Column int
	// Path names the setting, e.g. "clusters[0].ports[1].weight"; "" for
	// the document as a whole.
	Path string
	// Key is the key of an UnknownField problem.
	Key  string
	Msg  string
	Kind Kind
}

// Pos is a place in a document.
type Pos struct{ Line, Column int }

// maxProblems bounds a report: past it the file is surely not what was meant.
const maxProblems = 1000

// aliasAllowance is how many nodes aliases may add to a document's own.
const aliasAllowance = 100_000

// Walker reads one document. Its readers take the path of the value they
// read (for the problems they report) and its node; a reader that cannot read
// a value reports why, marks the path bad and returns false.
type Walker struct {
	// Problems lists what was found wrong, in the order the walk found it.
	Problems []Problem
	// At records where each value read was found, by path ("" is the
	// document), so that later checks can locate their problems.
	At map[string]Pos
	// Bad marks the paths whose value could not be read, so that later
	// checks do not report them a second time.
	Bad map[string]bool
	// Exhausted is set when aliases expanded the document past its budget;
	// the walk read nothing more after that.
	Exhausted bool

	// active holds the collections being read, to refuse an alias to a
	// node that contains it.
	active map[*yaml.Node]bool
	// visits counts nodes read, budget bounds them.
	visits, budget int
}

// New returns a Walker for one document.
func New() *Walker {
	return &Walker{At: map[string]Pos{}, Bad: map[string]bool{}, active: map[*yaml.Node]bool{}}
}

func (w *Walker) add(p Problem) {
	if len(w.Problems) > maxProblems {
		return
	}
	w.Problems = append(w.Problems, p)
}

var (
	syntaxLine    = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	unknownAnchor = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)
)

// Document parses data and returns its root node, nil when the document is
// empty. ok is false when data is not one YAML document (what is wrong is
// among the Problems, of kind Syntax); second is the message for a second
// document.
func (w *Walker) Document(data []byte, second string) (root *yaml.Node, ok bool) {
	w.At[""] = Pos{1, 1}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	defer func() {
		// The YAML library reports some malformed input by panicking with
		// an internal error: a file must not crash the program reading it.
		if v := recover(); v != nil {
			w.add(Problem{Msg: fmt.Sprintf("yaml: cannot parse: %v", v), Kind: Syntax})
			root, ok = nil, false
		}
	}()
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) {
			w.syntax(data, err)
			return nil, false
		}
		return nil, true
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		w.add(Problem{Line: next.Line, Column: next.Column, Msg: second, Kind: Syntax})
		return nil, false
	case !errors.Is(err, io.EOF):
		w.syntax(data, err)
		return nil, false
	}
	if len(doc.Content) != 1 {
		return nil, true
	}
	w.budget = countNodes(&doc) + aliasAllowance
	root = doc.Content[0]
	w.At[""] = Pos{root.Line, root.Column}
	return root, true
}

// syntax reports an error of the YAML parser, located by the line it names
// or, for an unknown anchor, where the alias first appears. The library
// gives its parser's errors only as text, so the line is read from it; all
// that the walk itself finds is located from the nodes.
func (w *Walker) syntax(data []byte, err error) {
	p := Problem{Msg: err.Error(), Kind: Syntax}
	if m := syntaxLine.FindStringSubmatch(p.Msg); m != nil {
		p.Line, _ = strconv.Atoi(m[1])
		p.Msg = "yaml: " + m[2]
	} else if m := unknownAnchor.FindStringSubmatch(p.Msg); m != nil {
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			p.Line = 1 + bytes.Count(data[:i], []byte("\n"))
			p.Column = 1 + utf8.RuneCount(data[bytes.LastIndexByte(data[:i], '\n')+1:i])
		}
	}
	w.add(p)
}

func countNodes(n *yaml.Node) int {
	c := 1
	for _, ch := range n.Content {
		c += countNodes(ch)
	}
	return c
}

// Fail reports a problem with the value at path, found in node n, and marks
// path as read badly.
func (w *Walker) Fail(path string, n *yaml.Node, format string, args ...any) {
	w.fail(Invalid, path, n, format, args...)
}

func (w *Walker) fail(k Kind, path string, n *yaml.Node, format string, args ...any) {
	w.add(Problem{Line: n.Line, Column: n.Column, Path: path, Msg: fmt.Sprintf(format, args...), Kind: k})
	w.Bad[path] = true
}

// mark records where the value at path was found.
func (w *Walker) mark(path string, n *yaml.Node) {
	w.At[path] = Pos{n.Line, n.Column}
}

// deref follows aliases to the node they name. It returns nil, having
// reported why, when the document is too large once aliases are expanded.
func (w *Walker) deref(path string, n *yaml.Node) *yaml.Node {
	if w.Exhausted {
		return nil
	}
	w.visits++
	if w.visits > w.budget {
		w.Exhausted = true
		w.Fail(path, n, "the document expands to more than %d nodes through aliases", w.budget)
		return nil
	}
	for n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			w.Fail(path, n, "alias *%s names no anchor", n.Value)
			return nil
		}
		n = n.Alias
	}
	return n
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "a document"
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// Join is the path of field in the mapping at path.
func Join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// Index is the path of item i in the list at path.
func Index(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// Fields reads the mapping n at path, whose keys must be among names. It
// returns the value node of each key present with a non-null value; a null
// value counts as absent. Unknown and repeated keys are reported. ok is false
// when n is not a mapping at all. The caller calls done once it has read the
// values.
func (w *Walker) Fields(path string, n *yaml.Node, names ...string) (f map[string]*yaml.Node, done func(), ok bool) {
	m, done, ok := w.collection(path, n, yaml.MappingNode, "a mapping of "+strings.Join(names, ", "), "mapping")
	if m == nil {
		if ok {
			f = map[string]*yaml.Node{}
		}
		return f, done, ok
	}
	out := make(map[string]*yaml.Node, len(m.Content)/2)
	seen := make(map[string]int, len(m.Content)/2)
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		kd := w.deref(path, k)
		if kd == nil {
			continue
		}
		if kd.Kind != yaml.ScalarNode {
			w.fail(WrongType, path, k, "a key must be a field name, got %s", kindName(kd))
			continue
		}
		name, fp := kd.Value, Join(path, kd.Value)
		if name == "<<" && kd.ShortTag() == "!!merge" {
			w.Fail(fp, k, "merge keys are not supported: repeat the fields, or alias a whole value")
			continue
		}
		if !slices.Contains(names, name) {
			w.add(Problem{Line: k.Line, Column: k.Column, Path: fp, Key: name, Msg: "unknown field" + suggest(name, names), Kind: UnknownField})
			w.Bad[fp] = true
			continue
		}
		if line, dup := seen[name]; dup {
			w.Fail(fp, k, "field given twice (first at line %d)", line)
			continue
		}
		seen[name] = k.Line
		if isNull(v) {
			w.mark(fp, k)
			continue
		}
		out[name] = v
	}
	return out, done, true
}

// suggest names the known field closest to an unknown one, or lists them all.
func suggest(name string, names []string) string {
	best, bestDist := "", 3
	for _, n := range names {
		if dist := editDistance(strings.ToLower(name), n); dist < bestDist {
			best, bestDist = n, dist
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %s?)", best)
	}
	return fmt.Sprintf(" (known: %s)", strings.Join(names, ", "))
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	if len(a) > 64 {
		return len(a)
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// List reads the sequence n at path and returns its items; the caller calls
// done once it has read them.
func (w *Walker) List(path string, n *yaml.Node) (items []*yaml.Node, done func(), ok bool) {
	s, done, ok := w.collection(path, n, yaml.SequenceNode, "a list", "list")
	if s == nil {
		return nil, done, ok
	}
	return s.Content, done, true
}

// collection reads the mapping or sequence n at path: it returns the node
// (nil for a null value, with ok true) and done, which the caller calls once
// it has read the node's content. want and noun name the kind in problems.
func (w *Walker) collection(path string, n *yaml.Node, kind yaml.Kind, want, noun string) (c *yaml.Node, done func(), ok bool) {
	w.mark(path, n)
	done = func() {}
	c = w.deref(path, n)
	switch {
	case c == nil:
		return nil, done, false
	case isNull(c):
		return nil, done, true
	case c.Kind != kind:
		w.fail(WrongType, path, n, "want %s, got %s", want, kindName(c))
		return nil, done, false
	case w.active[c]:
		w.Fail(path, n, "alias *%s refers to a %s that contains it", n.Value, noun)
		return nil, done, false
	}
	w.active[c] = true
	return c, func() { delete(w.active, c) }, true
}

// ListOf reads the list n at path, each item with item (given the item's
// path).
func ListOf[T any](w *Walker, path string, n *yaml.Node, item func(path string, n *yaml.Node) T) []T {
	items, done, _ := w.List(path, n)
	defer done()
	var out []T
	for i, it := range items {
		out = append(out, item(Index(path, i), it))
	}
	return out
}

// Strings reads a list of strings.
func (w *Walker) Strings(path string, n *yaml.Node) []string {
	return ListOf(w, path, n, func(p string, it *yaml.Node) string {
		s, _ := w.Str(p, it)
		return s
	})
}

// Scalar reads the scalar n at path; what describes the value wanted.
func (w *Walker) Scalar(path string, n *yaml.Node, what string) (*yaml.Node, bool) {
	w.mark(path, n)
	s := w.deref(path, n)
	if s == nil {
		return nil, false
	}
	if s.Kind != yaml.ScalarNode {
		w.fail(WrongType, path, n, "want %s, got %s", what, kindName(s))
		return nil, false
	}
	return s, true
}

// Str reads any scalar as a string.
func (w *Walker) Str(path string, n *yaml.Node) (string, bool) {
	s, ok := w.Scalar(path, n, "a string")
	if !ok {
		return "", false
	}
	return s.Value, true
}

// Uint reads an integer in [lo, hi].
func (w *Walker) Uint(path string, n *yaml.Node, lo, hi uint64) (uint64, bool) {
	s, ok := w.Scalar(path, n, "an integer")
	if !ok {
		return 0, false
	}
	if s.ShortTag() != "!!int" {
		w.fail(WrongType, path, n, "want an integer, got %s", kindName(s))
		return 0, false
	}
	var v any
	if err := s.Decode(&v); err != nil {
		w.Fail(path, n, "%s: %v", s.Value, err)
		return 0, false
	}
	var u uint64
	switch v := v.(type) {
	case int:
		if v < 0 {
			w.Fail(path, n, "%s is out of range %d..%d", s.Value, lo, hi)
			return 0, false
		}
		u = uint64(v)
	case int64:
		if v < 0 {
			w.Fail(path, n, "%s is out of range %d..%d", s.Value, lo, hi)
			return 0, false
		}
		u = uint64(v)
	case uint64:
		u = v
	default:
		w.fail(WrongType, path, n, "want an integer, got %s", kindName(s))
		return 0, false
	}
	if u < lo || u > hi {
		w.Fail(path, n, "%s is out of range %d..%d", s.Value, lo, hi)
		return 0, false
	}
	return u, true
}

// Float reads a finite number.
func (w *Walker) Float(path string, n *yaml.Node) (float64, bool) {
	s, ok := w.Scalar(path, n, "a number")
	if !ok {
		return 0, false
	}
	if t := s.ShortTag(); t != "!!float" && t != "!!int" {
		w.fail(WrongType, path, n, "want a number, got %s", kindName(s))
		return 0, false
	}
	var f float64
	if err := s.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		w.Fail(path, n, "want a finite number, got %s", kindName(s))
		return 0, false
	}
	return f, true
}

// Bool reads true or false.
func (w *Walker) Bool(path string, n *yaml.Node) (bool, bool) {
	s, ok := w.Scalar(path, n, "true or false")
	if !ok {
		return false, false
	}
	var b bool
	if s.ShortTag() != "!!bool" || s.Decode(&b) != nil {
		w.fail(WrongType, path, n, "want true or false, got %s", kindName(s))
		return false, false
	}
	return b, true
}

// Duration reads a Go duration such as "300s" or "1m30s"; a bare 0 is
// accepted, other bare numbers are refused for want of a unit.
func (w *Walker) Duration(path string, n *yaml.Node) (time.Duration, bool) {
	s, ok := w.Scalar(path, n, `a duration such as "30s"`)
	if !ok {
		return 0, false
	}
	switch s.ShortTag() {
	case "!!int", "!!float":
		if f, err := strconv.ParseFloat(s.Value, 64); err == nil && f == 0 {
			return 0, true
		}
		w.fail(NoUnit, path, n, "%s has no unit: write a duration such as \"%ss\"", s.Value, s.Value)
		return 0, false
	}
	v, err := time.ParseDuration(s.Value)
	if err != nil {
		w.Fail(path, n, "%q is not a duration such as \"30s\" or \"1m30s\"", s.Value)
		return 0, false
	}
	return v, true
}

// Parse reads a scalar with parse; what describes the value wanted, and
// refused is the message, given the value, for one that parse refuses.
func Parse[T any](w *Walker, path string, n *yaml.Node, what string, parse func(string) (T, error), refused string) (T, bool) {
	var zero T
	s, ok := w.Scalar(path, n, what)
	if !ok {
		return zero, false
	}
	v, err := parse(s.Value)
	if err != nil {
		w.Fail(path, n, refused, s.Value)
		return zero, false
	}
	return v, true
}

// Addr reads an IP address.
func (w *Walker) Addr(path string, n *yaml.Node) (netip.Addr, bool) {
	return Parse(w, path, n, "an IP address", netip.ParseAddr, "%q is not an IP address")
}

// AddrPort reads an address and a port other than 0.
func (w *Walker) AddrPort(path string, n *yaml.Node) (netip.AddrPort, bool) {
	return Parse(w, path, n, "an address:port", func(s string) (netip.AddrPort, error) {
		a, err := netip.ParseAddrPort(s)
		if err == nil && a.Port() == 0 {
			err = errors.New("port 0")
		}
		return a, err
	}, "%q is not address:port (e.g. 198.51.100.3:7000 or [2001:db8::3]:7000)")
}

// The readers below read field name of the mapping f (read by Fields at
// path) into *dst when it is present, and leave *dst alone otherwise.

// Integer reads an integer in [lo, hi]. (A function: methods take no type
// parameters.)
func Integer[T ~int | ~uint16 | ~uint32](w *Walker, f map[string]*yaml.Node, path, name string, lo, hi uint64, dst *T) {
	field(w, f, path, name, dst, func(p string, n *yaml.Node) (T, bool) {
		v, ok := w.Uint(p, n, lo, hi)
		return T(v), ok
	})
}

// StrField reads a string.
func (w *Walker) StrField(f map[string]*yaml.Node, path, name string, dst *string) {
	field(w, f, path, name, dst, w.Str)
}

// DurField reads a duration.
func (w *Walker) DurField(f map[string]*yaml.Node, path, name string, dst *time.Duration) {
	field(w, f, path, name, dst, w.Duration)
}

// FloatField reads a number.
func (w *Walker) FloatField(f map[string]*yaml.Node, path, name string, dst *float64) {
	field(w, f, path, name, dst, w.Float)
}

// BoolField reads true or false.
func (w *Walker) BoolField(f map[string]*yaml.Node, path, name string, dst *bool) {
	field(w, f, path, name, dst, w.Bool)
}

func field[T any](w *Walker, f map[string]*yaml.Node, path, name string, dst *T, read func(string, *yaml.Node) (T, bool)) {
	if n := f[name]; n != nil {
		if v, ok := read(Join(path, name), n); ok {
			*dst = v
		}
	}
}
