package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// Load reads, checks and completes the configuration file at path. A file
// that cannot be read gives a plain error; a file with problems gives Errors,
// each problem located as path:line:col.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data, path)
}

// Parse reads a configuration from data; name is the file name used in error
// locations. Unknown fields are errors. Absent settings take their defaults,
// then the whole configuration is validated. Every problem found is returned
// at once, as Errors.
func Parse(data []byte, name string) (*Config, error) {
	d := &decoder{
		reporter: reporter{src: &source{file: name, at: map[string]pos{}}, bad: map[string]bool{}},
		active:   map[*yaml.Node]bool{},
	}
	c := Default()
	c.src = d.src
	root, ok := d.document(data)
	if root != nil {
		d.config(c, root)
	}
	// Validation skips the settings that could not be read. A document
	// that could not be parsed, or that aliases blew up, is not worth it.
	if ok && !d.exhausted {
		c.src.ifaces = slices.Clone(c.Interfaces)
		for _, cl := range c.Clusters {
			c.src.vips = append(c.src.vips, cl.VIP)
		}
		validate(c, &d.reporter)
	}
	if err := d.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// decoder turns a YAML node tree into a Config, reporting what it cannot
// read. It walks the tree itself rather than letting the YAML library fill
// structs, so that every problem has a line and a column and every problem is
// reported, not only the first.
type decoder struct {
	reporter
	// active holds the collections being read, to refuse an alias to a
	// node that contains it.
	active map[*yaml.Node]bool
	// visits counts nodes read, budget bounds them: aliases can make a
	// small document expand to billions of nodes.
	visits, budget int
	exhausted      bool
}

// aliasAllowance is how many nodes aliases may add to a document's own.
const aliasAllowance = 100_000

var (
	syntaxLine    = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	unknownAnchor = regexp.MustCompile(`^yaml: unknown anchor '(.*)' referenced$`)
)

// document parses data and returns its root node, nil when the document is
// empty. ok is false when data is not one YAML document.
func (d *decoder) document(data []byte) (root *yaml.Node, ok bool) {
	d.src.at[""] = pos{1, 1}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	defer func() {
		// The YAML library reports some malformed input by panicking with
		// an internal error: a configuration file must not crash ndd.
		if v := recover(); v != nil {
			d.add(&Error{File: d.src.file, Msg: fmt.Sprintf("yaml: cannot parse: %v", v)})
			root, ok = nil, false
		}
	}()
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) {
			d.syntax(data, err)
			return nil, false
		}
		return nil, true
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		d.add(&Error{File: d.src.file, Line: next.Line, Column: next.Column, Msg: "a second YAML document: the configuration is one document"})
		return nil, false
	case !errors.Is(err, io.EOF):
		d.syntax(data, err)
		return nil, false
	}
	if len(doc.Content) != 1 {
		return nil, true
	}
	d.budget = countNodes(&doc) + aliasAllowance
	root = doc.Content[0]
	d.src.at[""] = pos{root.Line, root.Column}
	return root, true
}

// syntax reports an error of the YAML parser, located by the line it names
// or, for an unknown anchor, where the alias first appears.
func (d *decoder) syntax(data []byte, err error) {
	e := &Error{File: d.src.file, Msg: err.Error()}
	if m := syntaxLine.FindStringSubmatch(e.Msg); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = "yaml: " + m[2]
	} else if m := unknownAnchor.FindStringSubmatch(e.Msg); m != nil {
		if i := bytes.Index(data, []byte("*"+m[1])); i >= 0 {
			e.Line = 1 + bytes.Count(data[:i], []byte("\n"))
			e.Column = 1 + utf8.RuneCount(data[bytes.LastIndexByte(data[:i], '\n')+1:i])
		}
	}
	d.add(e)
}

func countNodes(n *yaml.Node) int {
	c := 1
	for _, ch := range n.Content {
		c += countNodes(ch)
	}
	return c
}

// fail reports a problem with the value at path, found in node n, and marks
// path as read badly.
func (d *decoder) fail(path string, n *yaml.Node, format string, args ...any) {
	d.add(&Error{File: d.src.file, Line: n.Line, Column: n.Column, Path: path, Msg: fmt.Sprintf(format, args...)})
	d.bad[path] = true
}

// mark records where the value at path was found.
func (d *decoder) mark(path string, n *yaml.Node) {
	d.src.at[path] = pos{n.Line, n.Column}
}

// deref follows aliases to the node they name. It returns nil, having
// reported why, when the document is too large once aliases are expanded.
func (d *decoder) deref(path string, n *yaml.Node) *yaml.Node {
	if d.exhausted {
		return nil
	}
	d.visits++
	if d.visits > d.budget {
		d.exhausted = true
		d.fail(path, n, "the document expands to more than %d nodes through aliases", d.budget)
		return nil
	}
	for n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			d.fail(path, n, "alias *%s names no anchor", n.Value)
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

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func index(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// fields reads the mapping n at path, whose keys must be among names. It
// returns the value node of each key present with a non-null value; a null
// value counts as absent. Unknown and repeated keys are reported. ok is false
// when n is not a mapping at all.
func (d *decoder) fields(path string, n *yaml.Node, names ...string) (map[string]*yaml.Node, func(), bool) {
	d.mark(path, n)
	done := func() {}
	m := d.deref(path, n)
	if m == nil {
		return nil, done, false
	}
	if isNull(m) {
		return map[string]*yaml.Node{}, done, true
	}
	if m.Kind != yaml.MappingNode {
		d.fail(path, n, "want a mapping of %s, got %s", strings.Join(names, ", "), kindName(m))
		return nil, done, false
	}
	if d.active[m] {
		d.fail(path, n, "alias *%s refers to a mapping that contains it", n.Value)
		return nil, done, false
	}
	d.active[m] = true
	done = func() { delete(d.active, m) }
	out := make(map[string]*yaml.Node, len(m.Content)/2)
	seen := make(map[string]int, len(m.Content)/2)
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		kd := d.deref(path, k)
		if kd == nil {
			continue
		}
		if kd.Kind != yaml.ScalarNode {
			d.fail(path, k, "a key must be a field name, got %s", kindName(kd))
			continue
		}
		name, fp := kd.Value, join(path, kd.Value)
		if name == "<<" && kd.ShortTag() == "!!merge" {
			d.fail(fp, k, "merge keys are not supported: repeat the fields, or alias a whole value")
			continue
		}
		if !slices.Contains(names, name) {
			d.fail(fp, k, "unknown field%s", suggest(name, names))
			continue
		}
		if line, dup := seen[name]; dup {
			d.fail(fp, k, "field given twice (first at line %d)", line)
			continue
		}
		seen[name] = k.Line
		if isNull(v) {
			d.mark(fp, k)
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

// list reads the sequence n at path and returns its items.
func (d *decoder) list(path string, n *yaml.Node) ([]*yaml.Node, func(), bool) {
	d.mark(path, n)
	done := func() {}
	s := d.deref(path, n)
	if s == nil {
		return nil, done, false
	}
	if isNull(s) {
		return nil, done, true
	}
	if s.Kind != yaml.SequenceNode {
		d.fail(path, n, "want a list, got %s", kindName(s))
		return nil, done, false
	}
	if d.active[s] {
		d.fail(path, n, "alias *%s refers to a list that contains it", n.Value)
		return nil, done, false
	}
	d.active[s] = true
	return s.Content, func() { delete(d.active, s) }, true
}

// listOf reads the list n at path, each item with item (given the item's
// path).
func listOf[T any](d *decoder, path string, n *yaml.Node, item func(path string, n *yaml.Node) T) []T {
	items, done, _ := d.list(path, n)
	defer done()
	var out []T
	for i, it := range items {
		out = append(out, item(index(path, i), it))
	}
	return out
}

// scalar reads the scalar n at path; what describes the value wanted.
func (d *decoder) scalar(path string, n *yaml.Node, what string) (*yaml.Node, bool) {
	d.mark(path, n)
	s := d.deref(path, n)
	if s == nil {
		return nil, false
	}
	if s.Kind != yaml.ScalarNode {
		d.fail(path, n, "want %s, got %s", what, kindName(s))
		return nil, false
	}
	return s, true
}

func (d *decoder) str(path string, n *yaml.Node) (string, bool) {
	s, ok := d.scalar(path, n, "a string")
	if !ok {
		return "", false
	}
	return s.Value, true
}

// uint reads an integer in [lo, hi].
func (d *decoder) uint(path string, n *yaml.Node, lo, hi uint64) (uint64, bool) {
	s, ok := d.scalar(path, n, "an integer")
	if !ok {
		return 0, false
	}
	if s.ShortTag() != "!!int" {
		d.fail(path, n, "want an integer, got %s", kindName(s))
		return 0, false
	}
	var v any
	if err := s.Decode(&v); err != nil {
		d.fail(path, n, "%s: %v", s.Value, err)
		return 0, false
	}
	var u uint64
	switch v := v.(type) {
	case int:
		if v < 0 {
			d.fail(path, n, "%s is out of range %d..%d", s.Value, lo, hi)
			return 0, false
		}
		u = uint64(v)
	case int64:
		if v < 0 {
			d.fail(path, n, "%s is out of range %d..%d", s.Value, lo, hi)
			return 0, false
		}
		u = uint64(v)
	case uint64:
		u = v
	default:
		d.fail(path, n, "want an integer, got %s", kindName(s))
		return 0, false
	}
	if u < lo || u > hi {
		d.fail(path, n, "%s is out of range %d..%d", s.Value, lo, hi)
		return 0, false
	}
	return u, true
}

func (d *decoder) float(path string, n *yaml.Node) (float64, bool) {
	s, ok := d.scalar(path, n, "a number")
	if !ok {
		return 0, false
	}
	if t := s.ShortTag(); t != "!!float" && t != "!!int" {
		d.fail(path, n, "want a number, got %s", kindName(s))
		return 0, false
	}
	var f float64
	if err := s.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		d.fail(path, n, "want a finite number, got %s", kindName(s))
		return 0, false
	}
	return f, true
}

func (d *decoder) bool(path string, n *yaml.Node) (bool, bool) {
	s, ok := d.scalar(path, n, "true or false")
	if !ok {
		return false, false
	}
	var b bool
	if s.ShortTag() != "!!bool" || s.Decode(&b) != nil {
		d.fail(path, n, "want true or false, got %s", kindName(s))
		return false, false
	}
	return b, true
}

// duration reads a Go duration such as "300s" or "1m30s"; a bare 0 is
// accepted, other bare numbers are refused for want of a unit.
func (d *decoder) duration(path string, n *yaml.Node) (time.Duration, bool) {
	s, ok := d.scalar(path, n, `a duration such as "30s"`)
	if !ok {
		return 0, false
	}
	switch s.ShortTag() {
	case "!!int", "!!float":
		if f, err := strconv.ParseFloat(s.Value, 64); err == nil && f == 0 {
			return 0, true
		}
		d.fail(path, n, "%s has no unit: write a duration such as \"%ss\"", s.Value, s.Value)
		return 0, false
	}
	v, err := time.ParseDuration(s.Value)
	if err != nil {
		d.fail(path, n, "%q is not a duration such as \"30s\" or \"1m30s\"", s.Value)
		return 0, false
	}
	return v, true
}

func (d *decoder) addr(path string, n *yaml.Node) (netip.Addr, bool) {
	s, ok := d.scalar(path, n, "an IP address")
	if !ok {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(s.Value)
	if err != nil {
		d.fail(path, n, "%q is not an IP address", s.Value)
		return netip.Addr{}, false
	}
	return a, true
}

func (d *decoder) proto(path string, n *yaml.Node) (nd.Proto, bool) {
	s, ok := d.scalar(path, n, "tcp or udp")
	if !ok {
		return 0, false
	}
	p, err := nd.ParseProto(strings.ToLower(s.Value))
	if err != nil {
		d.fail(path, n, "%q is not a protocol: want tcp or udp", s.Value)
		return 0, false
	}
	return p, true
}

// u32 reads an integer into *dst when n is present.
func (d *decoder) u32(f map[string]*yaml.Node, path, name string, lo, hi uint64, dst *uint32) {
	if n := f[name]; n != nil {
		if v, ok := d.uint(join(path, name), n, lo, hi); ok {
			*dst = uint32(v)
		}
	}
}

func (d *decoder) strField(f map[string]*yaml.Node, path, name string, dst *string) {
	if n := f[name]; n != nil {
		if v, ok := d.str(join(path, name), n); ok {
			*dst = v
		}
	}
}

func (d *decoder) durField(f map[string]*yaml.Node, path, name string, dst *time.Duration) {
	if n := f[name]; n != nil {
		if v, ok := d.duration(join(path, name), n); ok {
			*dst = v
		}
	}
}

func (d *decoder) floatField(f map[string]*yaml.Node, path, name string, dst *float64) {
	if n := f[name]; n != nil {
		if v, ok := d.float(join(path, name), n); ok {
			*dst = v
		}
	}
}

func (d *decoder) boolField(f map[string]*yaml.Node, path, name string, dst *bool) {
	if n := f[name]; n != nil {
		if v, ok := d.bool(join(path, name), n); ok {
			*dst = v
		}
	}
}

// config reads the document's root mapping into c, which holds the defaults.
func (d *decoder) config(c *Config, root *yaml.Node) {
	f, done, ok := d.fields("", root, "interfaces", "data_plane", "api", "metrics", "manager", "advisors", "agents", "ha", "bgp", "clusters")
	defer done()
	if !ok {
		return
	}
	if n := f["interfaces"]; n != nil {
		c.Interfaces = listOf(d, "interfaces", n, func(p string, it *yaml.Node) string {
			s, _ := d.str(p, it)
			return s
		})
	}
	if n := f["data_plane"]; n != nil {
		d.dataPlane(&c.DataPlane, n)
	}
	if n := f["api"]; n != nil {
		d.api(&c.API, n)
	}
	if n := f["metrics"]; n != nil {
		f, done, _ := d.fields("metrics", n, "listen")
		d.strField(f, "metrics", "listen", &c.Metrics.Listen)
		done()
	}
	if n := f["manager"]; n != nil {
		d.manager(&c.Manager, n)
	}
	if n := f["advisors"]; n != nil {
		c.Advisors = listOf(d, "advisors", n, d.advisor)
	}
	if n := f["agents"]; n != nil {
		c.Agents = d.agents(n)
	}
	if n := f["ha"]; n != nil {
		c.HA = d.ha(n)
	}
	if n := f["bgp"]; n != nil {
		c.BGP = d.bgp(n)
	}
	if n := f["clusters"]; n != nil {
		c.Clusters = listOf(d, "clusters", n, d.cluster)
	}
}

func (d *decoder) bgp(n *yaml.Node) *BGP {
	const p = "bgp"
	b := &BGP{ShutdownGrace: DefaultBGPShutdownGrace}
	f, done, _ := d.fields(p, n, "asn", "router_id", "shutdown_grace", "communities", "med", "peers", "vips")
	defer done()
	d.u32(f, p, "asn", 0, math.MaxUint32, &b.ASN)
	if n := f["router_id"]; n != nil {
		b.RouterID, _ = d.addr(join(p, "router_id"), n)
	}
	d.durField(f, p, "shutdown_grace", &b.ShutdownGrace)
	if n := f["communities"]; n != nil {
		b.Communities = d.strings(join(p, "communities"), n)
	}
	d.u32(f, p, "med", 0, math.MaxUint32, &b.MED)
	if n := f["peers"]; n != nil {
		b.Peers = listOf(d, join(p, "peers"), n, d.bgpPeer)
	}
	if n := f["vips"]; n != nil {
		b.VIPs = listOf(d, join(p, "vips"), n, d.bgpVIP)
	}
	return b
}

func (d *decoder) bgpPeer(p string, n *yaml.Node) BGPPeer {
	pr := BGPPeer{Port: DefaultBGPPort, HoldTime: DefaultBGPHoldTime}
	f, done, ok := d.fields(p, n, "address", "asn", "port", "hold_time", "password", "multihop", "local_address")
	defer done()
	if !ok {
		return pr
	}
	if n := f["address"]; n != nil {
		pr.Address, _ = d.addr(join(p, "address"), n)
	}
	d.u32(f, p, "asn", 0, math.MaxUint32, &pr.ASN)
	if n := f["port"]; n != nil {
		if v, ok := d.uint(join(p, "port"), n, 1, math.MaxUint16); ok {
			pr.Port = uint16(v)
		}
	}
	d.durField(f, p, "hold_time", &pr.HoldTime)
	d.strField(f, p, "password", &pr.Password)
	d.u32(f, p, "multihop", 0, 255, &pr.Multihop)
	if n := f["local_address"]; n != nil {
		pr.LocalAddress, _ = d.addr(join(p, "local_address"), n)
	}
	return pr
}

func (d *decoder) bgpVIP(p string, n *yaml.Node) BGPVIP {
	v := BGPVIP{Announce: true}
	f, done, ok := d.fields(p, n, "vip", "announce", "communities", "med", "next_hop")
	defer done()
	if !ok {
		return v
	}
	if n := f["vip"]; n != nil {
		v.VIP, _ = d.addr(join(p, "vip"), n)
	}
	d.boolField(f, p, "announce", &v.Announce)
	if n := f["communities"]; n != nil {
		v.Communities = d.strings(join(p, "communities"), n)
		if v.Communities == nil {
			v.Communities = []string{} // given, empty: no communities
		}
	}
	if n := f["med"]; n != nil {
		var m uint32
		d.u32(f, p, "med", 0, math.MaxUint32, &m)
		v.MED = &m
	}
	if n := f["next_hop"]; n != nil {
		v.NextHop, _ = d.addr(join(p, "next_hop"), n)
	}
	return v
}

// strings reads a list of strings.
func (d *decoder) strings(path string, n *yaml.Node) []string {
	return listOf(d, path, n, func(p string, it *yaml.Node) string {
		s, _ := d.str(p, it)
		return s
	})
}

func (d *decoder) dataPlane(dp *DataPlane, n *yaml.Node) {
	const p = "data_plane"
	f, done, _ := d.fields(p, n, "max_flows", "max_servers", "max_services", "max_vips", "max_affinity",
		"ring_size", "idle_timeout", "halfopen_timeout", "expire_nodest_conn", "hash_seed", "pin_path")
	defer done()
	d.u32(f, p, "max_flows", 1, math.MaxUint32, &dp.MaxFlows)
	d.u32(f, p, "max_servers", 1, math.MaxUint32, &dp.MaxServers)
	d.u32(f, p, "max_services", 1, math.MaxUint32, &dp.MaxServices)
	d.u32(f, p, "max_vips", 1, math.MaxUint32, &dp.MaxVIPs)
	d.u32(f, p, "max_affinity", 1, math.MaxUint32, &dp.MaxAffinity)
	d.u32(f, p, "ring_size", 0, math.MaxUint32, &dp.RingSize)
	d.durField(f, p, "idle_timeout", &dp.IdleTimeout)
	d.durField(f, p, "halfopen_timeout", &dp.HalfOpenTimeout)
	d.boolField(f, p, "expire_nodest_conn", &dp.ExpireNodestConn)
	d.u32(f, p, "hash_seed", 0, math.MaxUint32, &dp.HashSeed)
	d.strField(f, p, "pin_path", &dp.PinPath)
}

func (d *decoder) api(a *API, n *yaml.Node) {
	const p = "api"
	f, done, _ := d.fields(p, n, "socket", "listen", "token", "token_file", "tls_cert", "tls_key", "dashboard")
	defer done()
	d.strField(f, p, "socket", &a.Socket)
	d.strField(f, p, "listen", &a.Listen)
	d.strField(f, p, "token", &a.Token)
	d.strField(f, p, "token_file", &a.TokenFile)
	d.strField(f, p, "tls_cert", &a.TLSCert)
	d.strField(f, p, "tls_key", &a.TLSKey)
	d.boolField(f, p, "dashboard", &a.Dashboard)
}

func (d *decoder) manager(m *Manager, n *yaml.Node) {
	const p = "manager"
	f, done, _ := d.fields(p, n, "interval", "sensitivity", "smoothing", "policy", "proportions",
		"overload", "cool_down", "host_metric")
	defer done()
	d.durField(f, p, "interval", &m.Interval)
	d.floatField(f, p, "sensitivity", &m.Sensitivity)
	d.floatField(f, p, "smoothing", &m.Smoothing)
	d.strField(f, p, "policy", &m.Policy)
	d.floatField(f, p, "overload", &m.Overload)
	d.durField(f, p, "cool_down", &m.CoolDown)
	d.strField(f, p, "host_metric", &m.HostMetric)
	if n := f["proportions"]; n != nil {
		m.Proportions = d.proportions("manager.proportions", n)
	}
}

// proportions reads a proportions mapping; absent fields are 0.
func (d *decoder) proportions(p string, n *yaml.Node) Proportions {
	var pr Proportions
	f, done, _ := d.fields(p, n, "active", "new", "advisor", "host", "custom")
	defer done()
	d.u32(f, p, "active", 0, 100, &pr.Active)
	d.u32(f, p, "new", 0, 100, &pr.New)
	d.u32(f, p, "advisor", 0, 100, &pr.Advisor)
	d.u32(f, p, "host", 0, 100, &pr.Host)
	if n := f["custom"]; n != nil {
		pr.Custom = listOf(d, join(p, "custom"), n, func(ip string, it *yaml.Node) CustomMetric {
			var c CustomMetric
			f, done, _ := d.fields(ip, it, "name", "agent", "advisor", "proportion")
			defer done()
			d.strField(f, ip, "name", &c.Name)
			d.strField(f, ip, "agent", &c.Agent)
			d.strField(f, ip, "advisor", &c.Advisor)
			d.u32(f, ip, "proportion", 0, 100, &c.Proportion)
			return c
		})
	}
	return pr
}

func (d *decoder) advisor(p string, n *yaml.Node) Advisor {
	a := Advisor{Target: TargetServer, Interval: DefaultAdvisorInterval, Rise: DefaultRise, Fall: DefaultFall,
		HTTP: HTTPCheck{Method: "GET", Path: "/", Status: 200}}
	f, done, ok := d.fields(p, n, "name", "kind", "target", "port", "interval", "timeout", "retries", "rise", "fall", "http", "command")
	defer done()
	if !ok {
		return a
	}
	d.strField(f, p, "name", &a.Name)
	d.strField(f, p, "kind", &a.Kind)
	d.strField(f, p, "target", &a.Target)
	if n := f["port"]; n != nil {
		if v, ok := d.uint(join(p, "port"), n, 0, math.MaxUint16); ok {
			a.Port = uint16(v)
		}
	}
	d.durField(f, p, "interval", &a.Interval)
	a.Timeout = min(DefaultAdvisorTimeout, a.Interval/2)
	d.durField(f, p, "timeout", &a.Timeout)
	d.u32(f, p, "retries", 0, 10, &a.Retries)
	d.u32(f, p, "rise", 1, 100, &a.Rise)
	d.u32(f, p, "fall", 1, 100, &a.Fall)
	if n := f["http"]; n != nil {
		hp := join(p, "http")
		f, done, _ := d.fields(hp, n, "method", "path", "host", "status", "body", "insecure")
		d.strField(f, hp, "method", &a.HTTP.Method)
		d.strField(f, hp, "path", &a.HTTP.Path)
		d.strField(f, hp, "host", &a.HTTP.Host)
		d.u32(f, hp, "status", 100, 599, &a.HTTP.Status)
		d.strField(f, hp, "body", &a.HTTP.Body)
		d.boolField(f, hp, "insecure", &a.HTTP.Insecure)
		done()
	}
	if n := f["command"]; n != nil {
		a.Command = listOf(d, join(p, "command"), n, func(p string, it *yaml.Node) string {
			v, _ := d.str(p, it)
			return v
		})
	}
	return a
}

func (d *decoder) ha(n *yaml.Node) *HA {
	const p = "ha"
	h := &HA{Group: DefaultHAGroup, Priority: DefaultHAPriority, Interval: DefaultHAInterval, DeadAfter: DefaultHADeadAfter, Mode: HAModeActiveStandby}
	f, done, _ := d.fields(p, n, "group", "interface", "self", "peers", "priority", "preempt", "interval", "dead_after", "key_file", "refresh", "mode")
	defer done()
	d.strField(f, p, "group", &h.Group)
	d.strField(f, p, "interface", &h.Interface)
	if n := f["self"]; n != nil {
		h.Self, _ = d.addrPort(join(p, "self"), n)
	}
	if n := f["peers"]; n != nil {
		h.Peers = listOf(d, join(p, "peers"), n, func(p string, it *yaml.Node) netip.AddrPort {
			a, _ := d.addrPort(p, it)
			return a
		})
	}
	d.u32(f, p, "priority", 1, 255, &h.Priority)
	d.boolField(f, p, "preempt", &h.Preempt)
	d.durField(f, p, "interval", &h.Interval)
	d.durField(f, p, "dead_after", &h.DeadAfter)
	d.strField(f, p, "key_file", &h.KeyFile)
	d.durField(f, p, "refresh", &h.Refresh)
	d.strField(f, p, "mode", &h.Mode)
	return h
}

func (d *decoder) addrPort(path string, n *yaml.Node) (netip.AddrPort, bool) {
	s, ok := d.scalar(path, n, "an address:port")
	if !ok {
		return netip.AddrPort{}, false
	}
	a, err := netip.ParseAddrPort(s.Value)
	if err != nil || a.Port() == 0 {
		d.fail(path, n, "%q is not address:port (e.g. 198.51.100.3:7000 or [2001:db8::3]:7000)", s.Value)
		return netip.AddrPort{}, false
	}
	return a, true
}

func (d *decoder) agents(n *yaml.Node) *Agents {
	const p = "agents"
	a := &Agents{Port: DefaultAgentPort, Interval: DefaultAgentInterval, Timeout: DefaultAgentTimeout, DisabledAfter: DefaultDisabledAfter}
	f, done, _ := d.fields(p, n, "port", "key_file", "tls_cert", "tls_key", "tls_ca", "interval", "timeout", "disabled_after")
	defer done()
	if n := f["port"]; n != nil {
		if v, ok := d.uint(join(p, "port"), n, 1, math.MaxUint16); ok {
			a.Port = uint16(v)
		}
	}
	d.strField(f, p, "key_file", &a.KeyFile)
	d.strField(f, p, "tls_cert", &a.TLSCert)
	d.strField(f, p, "tls_key", &a.TLSKey)
	d.strField(f, p, "tls_ca", &a.TLSCA)
	d.durField(f, p, "interval", &a.Interval)
	d.durField(f, p, "timeout", &a.Timeout)
	d.durField(f, p, "disabled_after", &a.DisabledAfter)
	return a
}

func (d *decoder) cluster(path string, n *yaml.Node) Cluster {
	var c Cluster
	f, done, ok := d.fields(path, n, "vip", "ports")
	defer done()
	if !ok {
		return c
	}
	if n := f["vip"]; n != nil {
		c.VIP, _ = d.addr(join(path, "vip"), n)
	}
	if n := f["ports"]; n != nil {
		c.Ports = listOf(d, join(path, "ports"), n, d.port)
	}
	return c
}

func (d *decoder) port(path string, n *yaml.Node) PortSpec {
	p := PortSpec{Protocol: DefaultProtocol, WeightBound: DefaultWeightBound, Scheduler: DefaultScheduler}
	f, done, ok := d.fields(path, n, "port", "protocol", "sticky_time", "weight_bound", "scheduler", "advisor", "proportions", "servers")
	defer done()
	if !ok {
		return p
	}
	if n := f["port"]; n != nil {
		if v, ok := d.uint(join(path, "port"), n, 1, math.MaxUint16); ok {
			p.Port = uint16(v)
		}
	}
	if n := f["protocol"]; n != nil {
		if v, ok := d.proto(join(path, "protocol"), n); ok {
			p.Protocol = v
		}
	}
	d.durField(f, path, "sticky_time", &p.StickyTime)
	d.u32(f, path, "weight_bound", 1, MaxWeightBound, &p.WeightBound)
	d.strField(f, path, "scheduler", &p.Scheduler)
	d.strField(f, path, "advisor", &p.Advisor)
	if n := f["proportions"]; n != nil {
		pr := d.proportions(join(path, "proportions"), n)
		p.Proportions = &pr
	}
	if n := f["servers"]; n != nil {
		p.Servers = listOf(d, join(path, "servers"), n, func(sp string, it *yaml.Node) Server {
			return d.server(sp, it, p.WeightBound)
		})
	}
	return p
}

func (d *decoder) server(path string, n *yaml.Node, bound uint32) Server {
	s := Server{Weight: DefaultWeight(bound)}
	f, done, ok := d.fields(path, n, "address", "weight", "quiesce", "local", "fixed")
	defer done()
	if !ok {
		return s
	}
	if n := f["address"]; n != nil {
		s.Address, _ = d.addr(join(path, "address"), n)
	}
	if n := f["weight"]; n != nil {
		wp := join(path, "weight")
		if v, ok := d.uint(wp, n, 0, math.MaxUint32); ok {
			if v > uint64(bound) {
				d.fail(wp, n, weightRange, v, bound)
			} else {
				s.Weight = uint32(v)
			}
		}
	}
	d.boolField(f, path, "quiesce", &s.Quiesce)
	d.boolField(f, path, "local", &s.Local)
	d.boolField(f, path, "fixed", &s.Fixed)
	return s
}
