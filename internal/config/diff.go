package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// Changes is what a live reload must do to go from one configuration to
// another. Every list is sorted: interfaces by name, ports by key, servers by
// address.
type Changes struct {
	// Attach and Detach are interfaces to attach the XDP program to and to
	// detach it from.
	Attach, Detach []string
	// Added are ports to install, with their servers; Removed are ports to
	// delete, as they were.
	Added, Removed []Port
	// Changed are ports in both configurations whose sticky_time,
	// weight_bound or servers differ.
	Changed []PortChange
	// Settings are changed settings that a running daemon can apply:
	// api.listen, api.token, api.token_file, api.tls_cert, api.tls_key,
	// api.dashboard,
	// metrics.listen, manager.*, advisors, agents and bgp.
	Settings []Setting
	// Fixed are changed settings that only a restart applies: data_plane.*
	// (the tables are sized and pinned at start), api.socket and ha. A daemon
	// refuses a reload that has any (see Err).
	Fixed []Setting
}

// PortChange is one port whose state changes. Installing New as a whole
// (the executor's UpsertService) applies it; the lists say what differs.
type PortChange struct {
	Old, New Port
	// Added and Removed are servers that join and leave the port.
	Added, Removed []Server
	// Changed are servers whose weight, quiesce or local flag differ.
	Changed []ServerChange
}

// ServerChange is a server of a port before and after.
type ServerChange struct {
	Old, New Server
}

// Setting is one changed setting, named by its path in the file, with its old
// and new values as the file would write them. Secrets are not shown.
type Setting struct {
	Path, Old, New string
}

func (s Setting) String() string {
	return fmt.Sprintf("%s: %s -> %s", s.Path, s.Old, s.New)
}

// Diff compares two configurations. A nil old stands for a daemon with
// nothing attached or installed and the same settings as new, so that
// Diff(nil, c) lists everything c installs; a nil new likewise removes
// everything.
func Diff(old, new *Config) Changes {
	switch {
	case old == nil && new == nil:
		return Changes{}
	case old == nil:
		old = &Config{DataPlane: new.DataPlane, API: new.API, Metrics: new.Metrics, Manager: new.Manager, Advisors: new.Advisors, Agents: new.Agents, HA: new.HA, BGP: new.BGP}
	case new == nil:
		new = &Config{DataPlane: old.DataPlane, API: old.API, Metrics: old.Metrics, Manager: old.Manager, Advisors: old.Advisors, Agents: old.Agents, HA: old.HA, BGP: old.BGP}
	}
	var ch Changes
	ch.Attach, ch.Detach = diffNames(old.Interfaces, new.Interfaces)
	diffPorts(&ch, old.Ports(), new.Ports())
	ch.Fixed = diffFixed(old, new)
	ch.Settings = diffSettings(old, new)
	return ch
}

func diffNames(old, new []string) (added, removed []string) {
	for _, n := range new {
		if !slices.Contains(old, n) && !slices.Contains(added, n) {
			added = append(added, n)
		}
	}
	for _, n := range old {
		if !slices.Contains(new, n) && !slices.Contains(removed, n) {
			removed = append(removed, n)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	return added, removed
}

// diffPorts walks two sorted port lists together.
func diffPorts(ch *Changes, old, new []Port) {
	i, j := 0, 0
	for i < len(old) || j < len(new) {
		var c int
		switch {
		case i == len(old):
			c = 1
		case j == len(new):
			c = -1
		default:
			c = compareKeys(old[i].Key, new[j].Key)
		}
		switch {
		case c < 0:
			ch.Removed = append(ch.Removed, old[i])
			i++
		case c > 0:
			ch.Added = append(ch.Added, new[j])
			j++
		default:
			if pc, changed := diffPort(old[i], new[j]); changed {
				ch.Changed = append(ch.Changed, pc)
			}
			i++
			j++
		}
	}
}

func diffPort(old, new Port) (PortChange, bool) {
	pc := PortChange{Old: old, New: new}
	olds := make(map[netip.Addr]Server, len(old.Servers))
	for _, s := range old.Servers {
		olds[s.Address] = s
	}
	news := make(map[netip.Addr]bool, len(new.Servers))
	for _, s := range new.Servers {
		news[s.Address] = true
		o, ok := olds[s.Address]
		switch {
		case !ok:
			pc.Added = append(pc.Added, s)
		case o != s:
			pc.Changed = append(pc.Changed, ServerChange{Old: o, New: s})
		}
	}
	for _, s := range old.Servers {
		if !news[s.Address] {
			pc.Removed = append(pc.Removed, s)
		}
	}
	changed := old.StickyTime != new.StickyTime || old.WeightBound != new.WeightBound ||
		old.Scheduler != new.Scheduler || old.Advisor != new.Advisor ||
		describeProportions(old.Proportions) != describeProportions(new.Proportions) ||
		len(pc.Added)+len(pc.Removed)+len(pc.Changed) > 0
	return pc, changed
}

// settings lists the settings outside clusters and interfaces, each with how
// it is written.
func settings(c *Config) []Setting {
	dp, a, m := &c.DataPlane, &c.API, &c.Manager
	u := func(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
	return []Setting{
		{Path: "data_plane.max_flows", New: u(dp.MaxFlows)},
		{Path: "data_plane.max_servers", New: u(dp.MaxServers)},
		{Path: "data_plane.max_services", New: u(dp.MaxServices)},
		{Path: "data_plane.max_vips", New: u(dp.MaxVIPs)},
		{Path: "data_plane.max_affinity", New: u(dp.MaxAffinity)},
		{Path: "data_plane.ring_size", New: u(dp.RingSize)},
		{Path: "data_plane.idle_timeout", New: formatDuration(dp.IdleTimeout)},
		{Path: "data_plane.halfopen_timeout", New: formatDuration(dp.HalfOpenTimeout)},
		{Path: "data_plane.expire_nodest_conn", New: strconv.FormatBool(dp.ExpireNodestConn)},
		{Path: "data_plane.hash_seed", New: u(dp.HashSeed)},
		{Path: "data_plane.pin_path", New: strconv.Quote(dp.PinPath)},
		{Path: "api.socket", New: strconv.Quote(a.Socket)},
		{Path: "api.listen", New: strconv.Quote(a.Listen)},
		{Path: "api.token", New: a.Token}, // masked by diffSettings
		{Path: "api.token_file", New: strconv.Quote(a.TokenFile)},
		{Path: "api.tls_cert", New: strconv.Quote(a.TLSCert)},
		{Path: "api.tls_key", New: strconv.Quote(a.TLSKey)},
		{Path: "api.dashboard", New: strconv.FormatBool(a.Dashboard)},
		{Path: "metrics.listen", New: strconv.Quote(c.Metrics.Listen)},
		{Path: "manager.interval", New: formatDuration(m.Interval)},
		{Path: "manager.sensitivity", New: formatFloat(m.Sensitivity)},
		{Path: "manager.smoothing", New: formatFloat(m.Smoothing)},
		{Path: "manager.policy", New: m.Policy},
		{Path: "manager.proportions.active", New: u(m.Proportions.Active)},
		{Path: "manager.proportions.new", New: u(m.Proportions.New)},
		{Path: "manager.proportions.advisor", New: u(m.Proportions.Advisor)},
		{Path: "manager.proportions.host", New: u(m.Proportions.Host)},
		{Path: "manager.proportions.custom", New: describeCustom(m.Proportions.Custom)},
		{Path: "manager.overload", New: formatFloat(m.Overload)},
		{Path: "manager.cool_down", New: formatDuration(m.CoolDown)},
		{Path: "manager.host_metric", New: m.HostMetric},
		{Path: "advisors", New: describeAdvisors(c.Advisors)},
		{Path: "agents", New: describeAgents(c.Agents)},
		{Path: "ha", New: describeHA(c.HA)},
		{Path: "ha.group", New: haField(c.HA, func(h *HA) string { return strconv.Quote(h.Group) })},
		{Path: "ha.interface", New: haField(c.HA, func(h *HA) string { return strconv.Quote(h.Interface) })},
		{Path: "ha.self", New: haField(c.HA, func(h *HA) string { return h.Self.String() })},
		{Path: "ha.peers", New: haField(c.HA, func(h *HA) string { return fmt.Sprint(h.Peers) })},
		{Path: "ha.priority", New: haField(c.HA, func(h *HA) string { return u(h.Priority) })},
		{Path: "ha.preempt", New: haField(c.HA, func(h *HA) string { return strconv.FormatBool(h.Preempt) })},
		{Path: "ha.interval", New: haField(c.HA, func(h *HA) string { return formatDuration(h.Interval) })},
		{Path: "ha.dead_after", New: haField(c.HA, func(h *HA) string { return formatDuration(h.DeadAfter) })},
		{Path: "ha.key_file", New: haField(c.HA, func(h *HA) string { return strconv.Quote(h.KeyFile) })},
		{Path: "ha.refresh", New: describeRefresh(c.HA)},
		{Path: "ha.mode", New: describeMode(c.HA)},
		{Path: "bgp", New: describeBGP(c.BGP)},
		{Path: "bgp.peers.password", New: bgpPasswords(c.BGP)}, // masked by diffSettings
	}
}

// describeHA says whether there is an ha section; its settings are
// compared one by one (haField), so that a refused change names each.
func describeHA(h *HA) string {
	if h == nil {
		return "none"
	}
	return "present"
}

// haField is one setting of the ha section, "none" without one (a section
// added or removed is the "ha" line alone: changedSettings).
func haField(h *HA, f func(*HA) string) string {
	if h == nil {
		return "none"
	}
	return f(h)
}

func describeMode(h *HA) string {
	if h == nil {
		return "none"
	}
	return h.Mode
}

func describeRefresh(h *HA) string {
	if h == nil {
		return "none"
	}
	return formatDuration(h.Refresh)
}

func describeCustom(cs []CustomMetric) string {
	var parts []string
	for _, c := range cs {
		src := "agent " + c.Agent
		if c.Advisor != "" {
			src = "advisor " + c.Advisor
		}
		parts = append(parts, fmt.Sprintf("%s (%s) %d", c.Name, src, c.Proportion))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func describeProportions(p Proportions) string {
	return fmt.Sprintf("active %d, new %d, advisor %d, host %d, custom %s", p.Active, p.New, p.Advisor, p.Host, describeCustom(p.Custom))
}

func describeAdvisors(as []Advisor) string {
	var parts []string
	for _, a := range as {
		parts = append(parts, fmt.Sprintf("%+v", a))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func describeAgents(a *Agents) string {
	if a == nil {
		return "none"
	}
	return fmt.Sprintf("%+v", *a)
}

func isFixed(path string) bool {
	switch path {
	case "api.socket", "ha":
		return true
	case "ha.refresh", "ha.mode":
		return false
	}
	return strings.HasPrefix(path, "data_plane.") || strings.HasPrefix(path, "ha.")
}

func changedSettings(old, new *Config) []Setting {
	o, n := settings(old), settings(new)
	var out []Setting
	sectionChanged := (old.HA == nil) != (new.HA == nil)
	for i := range n {
		if o[i].New == n[i].New {
			continue
		}
		if sectionChanged && strings.HasPrefix(n[i].Path, "ha.") && n[i].Path != "ha.refresh" && n[i].Path != "ha.mode" {
			continue // the "ha" line says it
		}
		s := Setting{Path: n[i].Path, Old: o[i].New, New: n[i].New}
		if s.Path == "api.token" || s.Path == "bgp.peers.password" {
			s.Old, s.New = maskSecret(s.Old), maskSecret(s.New)
		}
		out = append(out, s)
	}
	return out
}

func maskSecret(s string) string {
	if s == "" {
		return `""`
	}
	return "(secret)"
}

func diffFixed(old, new *Config) []Setting {
	var out []Setting
	for _, s := range changedSettings(old, new) {
		if isFixed(s.Path) {
			out = append(out, s)
		}
	}
	return out
}

func diffSettings(old, new *Config) []Setting {
	var out []Setting
	for _, s := range changedSettings(old, new) {
		if !isFixed(s.Path) {
			out = append(out, s)
		}
	}
	return out
}

// Empty reports whether there is nothing to do.
func (ch Changes) Empty() bool {
	return len(ch.Attach)+len(ch.Detach)+len(ch.Added)+len(ch.Removed)+len(ch.Changed)+
		len(ch.Settings)+len(ch.Fixed) == 0
}

// Err returns an error wrapping ErrRestartRequired that lists the Fixed
// settings, or nil when there are none.
func (ch Changes) Err() error {
	if len(ch.Fixed) == 0 {
		return nil
	}
	s := make([]string, len(ch.Fixed))
	for i, f := range ch.Fixed {
		s[i] = f.String()
	}
	return fmt.Errorf("%w: these settings cannot change while ndd runs: %s", ErrRestartRequired, strings.Join(s, "; "))
}

// String summarises the changes, one action a line, or "no changes".
func (ch Changes) String() string {
	if ch.Empty() {
		return "no changes"
	}
	var b strings.Builder
	line := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteByte('\n')
	}
	for _, f := range ch.Fixed {
		line("cannot change without a restart: %s", f)
	}
	for _, n := range ch.Detach {
		line("detach %s", n)
	}
	for _, n := range ch.Attach {
		line("attach %s", n)
	}
	for _, p := range ch.Removed {
		line("remove port %s", p.Key)
	}
	for _, p := range ch.Added {
		line("add port %s: %s", p.Key, describePort(p))
	}
	for _, pc := range ch.Changed {
		line("change port %s: %s", pc.New.Key, pc.describe())
	}
	for _, s := range ch.Settings {
		line("set %s", s)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func describePort(p Port) string {
	parts := []string{fmt.Sprintf("sticky_time %s", formatDuration(p.StickyTime)), fmt.Sprintf("weight_bound %d", p.WeightBound)}
	for _, s := range p.Servers {
		parts = append(parts, "server "+describeServer(s))
	}
	return strings.Join(parts, ", ")
}

func describeServer(s Server) string {
	d := fmt.Sprintf("%s weight %d", s.Address, s.Weight)
	if s.Quiesce {
		d += " quiesced"
	}
	if s.Local {
		d += " local"
	}
	if s.Fixed {
		d += " fixed"
	}
	return d
}

func (pc PortChange) describe() string {
	var parts []string
	parts = changed(parts, "sticky_time", "%s", formatDuration(pc.Old.StickyTime), formatDuration(pc.New.StickyTime))
	parts = changed(parts, "weight_bound", "%d", pc.Old.WeightBound, pc.New.WeightBound)
	parts = changed(parts, "scheduler", "%s", pc.Old.Scheduler, pc.New.Scheduler)
	parts = changed(parts, "advisor", "%q", pc.Old.Advisor, pc.New.Advisor)
	parts = changed(parts, "proportions", "%s", describeProportions(pc.Old.Proportions), describeProportions(pc.New.Proportions))
	for _, s := range pc.Removed {
		parts = append(parts, "remove server "+s.Address.String())
	}
	for _, s := range pc.Added {
		parts = append(parts, "add server "+describeServer(s))
	}
	for _, c := range pc.Changed {
		d := changed(nil, "weight", "%d", c.Old.Weight, c.New.Weight)
		d = changed(d, "quiesce", "%t", c.Old.Quiesce, c.New.Quiesce)
		d = changed(d, "local", "%t", c.Old.Local, c.New.Local)
		d = changed(d, "fixed", "%t", c.Old.Fixed, c.New.Fixed)
		parts = append(parts, fmt.Sprintf("server %s %s", c.New.Address, strings.Join(d, " ")))
	}
	return strings.Join(parts, ", ")
}

// changed appends "name old -> new" to parts, each value formatted with
// verb, when old and new differ.
func changed[T comparable](parts []string, name, verb string, old, new T) []string {
	if old == new {
		return parts
	}
	return append(parts, fmt.Sprintf("%s "+verb+" -> "+verb, name, old, new))
}

// Key names the port.
func (pc PortChange) Key() nd.ServiceKey { return pc.New.Key }
