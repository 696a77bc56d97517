package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/maglev"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/yamlwalk"
)

// Limits checked by validation beyond those declared with the types.
const (
	minTokenLen    = 16
	minInterval    = 100 * time.Millisecond
	maxInterval    = time.Hour
	minSmoothing   = 1
	maxSmoothing   = 10
	minIdleTimeout = time.Second
	maxIfaceName   = 15 // IFNAMSIZ - 1
)

const (
	rangeMsg    = "%d is out of range %d..%d"
	weightRange = "%d is out of range 0..%d (the port's weight_bound)"
)

// Validate checks a Config built or changed in code, as Parse checks a file.
// Its Errors name the settings by path; they carry no file positions.
func (c *Config) Validate() error {
	var r reporter
	validate(c, &r)
	return r.err()
}

// CheckInterfaces calls lookup for every interface (typically a netlink lookup
// by name) and reports, located where the file names the interface, each that
// lookup refuses.
func (c *Config) CheckInterfaces(lookup func(name string) error) error {
	var r reporter
	if c.src != nil && slices.Equal(c.src.ifaces, c.Interfaces) {
		r.src = c.src
	}
	for i, name := range c.Interfaces {
		if err := lookup(name); err != nil {
			r.errorf(yamlwalk.Index("interfaces", i), "interface %s: %v", name, err)
		}
	}
	return r.err()
}

// CheckVIPs reports, located where the file names it, each VIP that is
// the broadcast address of one of the networks the dispatcher is connected
// to (its interfaces' IPv4 prefixes, shorter than /31): a VIP there would
// take every host's broadcasts.
func (c *Config) CheckVIPs(connected []netip.Prefix) error {
	var r reporter
	if c.src != nil && slices.EqualFunc(c.src.vips, c.Clusters, func(a netip.Addr, cl Cluster) bool { return a == cl.VIP }) {
		r.src = c.src
	}
	for i, cl := range c.Clusters {
		for _, p := range connected {
			if b, ok := broadcast(p); ok && b == cl.VIP {
				r.errorf(yamlwalk.Index("clusters", i)+".vip", "%s is the broadcast address of the connected network %s: not usable as a VIP", cl.VIP, p.Masked())
				break
			}
		}
	}
	return r.err()
}

// broadcast is the broadcast address of an IPv4 prefix shorter than /31.
func broadcast(p netip.Prefix) (netip.Addr, bool) {
	a := p.Addr().Unmap()
	if !a.Is4() || p.Bits() < 0 || p.Bits() >= 31 {
		return netip.Addr{}, false
	}
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

func validate(c *Config, r *reporter) {
	validateInterfaces(c.Interfaces, r)
	validateDataPlane(&c.DataPlane, r)
	validateAPI(&c.API, &c.Metrics, r)
	validateManager(&c.Manager, r)
	advisors := validateAdvisors(c.Advisors, r)
	validateProportions(c.Manager.Proportions, "manager.proportions", advisors, r)
	validateAgents(c.Agents, r)
	validateHA(c.HA, r)
	if c.HA != nil {
		if len(c.Clusters) == 0 {
			r.errorf("ha", "no clusters: the group's VIPs are the clusters' VIPs")
		}
		if rf := c.HA.Refresh; rf != 0 && (rf < 100*time.Millisecond || rf > c.DataPlane.IdleTimeout/2) {
			r.errorf("ha.refresh", "%v is out of range: 0 (a quarter of data_plane.idle_timeout), or 100ms to half of idle_timeout (%v)", rf, c.DataPlane.IdleTimeout/2)
		}
		if c.DataPlane.PinPath == "" {
			r.errorf("data_plane.pin_path", `"" with ha: a dispatcher that dies must leave its data plane forwarding until a standby takes the VIPs, or every connection breaks`)
		}
	}
	validateClusters(c, advisors, r)
	validateBGP(c, r)
}

func validateHA(h *HA, r *reporter) {
	if h == nil {
		return
	}
	if !validName(h.Group) {
		r.errorf("ha.group", "%q is not a group name: letters, digits, '-', '_' and '.'", h.Group)
	}
	if why := badIfaceName(h.Interface); why != "" {
		r.errorf("ha.interface", "%s", why)
	}
	if !h.Self.IsValid() {
		r.errorf("ha.self", "required: this node's address:port on the shared network")
	} else if why := badAddr(h.Self.Addr(), "node address"); why != "" {
		r.errorf("ha.self", "%s", why)
	}
	if len(h.Peers) == 0 {
		r.errorf("ha.peers", "at least one peer is required")
	}
	seen := map[netip.AddrPort]bool{h.Self: true}
	for i, p := range h.Peers {
		switch {
		case !p.IsValid():
			continue // reported by the decoder
		case seen[p]:
			r.errorf(yamlwalk.Index("ha.peers", i), "%s is listed twice, or is this node itself", p)
		case h.Self.IsValid() && p.Addr().Is4() != h.Self.Addr().Is4():
			r.errorf(yamlwalk.Index("ha.peers", i), "%s is not of self's family", p)
		}
		seen[p] = true
	}
	if h.Priority < 1 || h.Priority > 255 {
		r.errorf("ha.priority", rangeMsg, h.Priority, 1, 255)
	}
	if h.Interval < 10*time.Millisecond || h.Interval > time.Minute {
		r.errorf("ha.interval", "%v is out of range 10ms..1m", h.Interval)
	}
	if h.DeadAfter < 2*h.Interval || h.DeadAfter > 10*time.Minute {
		r.errorf("ha.dead_after", "%v is out of range: at least two intervals (%v), at most 10m", h.DeadAfter, 2*h.Interval)
	}
	if h.Mode != HAModeActiveStandby && h.Mode != HAModeActiveActive {
		r.errorf("ha.mode", "%q is not a mode: %s or %s", h.Mode, HAModeActiveStandby, HAModeActiveActive)
	}
	if h.KeyFile == "" {
		r.errorf("ha.key_file", "required: the group's shared key")
	} else if !filepath.IsAbs(h.KeyFile) {
		r.errorf("ha.key_file", "%q is not an absolute path", h.KeyFile)
	}
}

func validateInterfaces(names []string, r *reporter) {
	if len(names) == 0 {
		r.errorf("interfaces", "at least one interface is required")
		return
	}
	first := make(map[string]string, len(names))
	for i, name := range names {
		p := yamlwalk.Index("interfaces", i)
		if why := badIfaceName(name); why != "" {
			r.errorf(p, "%s", why)
			continue
		}
		if f, dup := first[name]; dup {
			r.errorf(p, "duplicate interface %s%s", name, r.firstAt(f))
			continue
		}
		first[name] = p
	}
}

// badIfaceName says why the kernel would refuse name, or "".
func badIfaceName(name string) string {
	switch {
	case name == "":
		return "empty interface name"
	case len(name) > maxIfaceName:
		return fmt.Sprintf("%q is not an interface name: longer than %d characters", name, maxIfaceName)
	case name == "." || name == "..":
		return fmt.Sprintf("%q is not an interface name", name)
	case strings.ContainsAny(name, "/: \t\n\r\v\f\x00"):
		return fmt.Sprintf("%q is not an interface name: it contains '/', ':' or white space", name)
	}
	return ""
}

func validateDataPlane(dp *DataPlane, r *reporter) {
	const p = "data_plane."
	for _, s := range []struct {
		name string
		v    uint32
	}{
		{"max_flows", dp.MaxFlows},
		{"max_servers", dp.MaxServers},
		{"max_services", dp.MaxServices},
		{"max_vips", dp.MaxVIPs},
		{"max_affinity", dp.MaxAffinity},
	} {
		if s.v == 0 {
			r.errorf(p+s.name, rangeMsg, s.v, 1, uint32(math.MaxUint32))
		}
	}
	if !validRingSize(dp.RingSize) {
		r.errorf(p+"ring_size", "%d is not a prime between %d and %d%s", dp.RingSize, maglev.MinSize, maglev.MaxSize, nextPrimeHint(dp.RingSize))
	}
	if dp.IdleTimeout < minIdleTimeout {
		r.errorf(p+"idle_timeout", "%v is under the minimum of %v", dp.IdleTimeout, minIdleTimeout)
	}
	if dp.HalfOpenTimeout < minIdleTimeout {
		r.errorf(p+"halfopen_timeout", "%v is under the minimum of %v", dp.HalfOpenTimeout, minIdleTimeout)
	}
	if dp.PinPath != "" && !filepath.IsAbs(dp.PinPath) {
		r.errorf(p+"pin_path", "%q is not an absolute path (write \"\" to pin nothing)", dp.PinPath)
	}
}

// nextPrimeHint suggests a usable ring size near a refused one.
func nextPrimeHint(n uint32) string {
	if n < maglev.MinSize || n >= maglev.MaxSize {
		return ""
	}
	for m := n + 1; m <= maglev.MaxSize; m++ {
		if maglev.IsPrime(m) {
			return fmt.Sprintf(" (the next prime is %d)", m)
		}
	}
	return ""
}

func validateAPI(a *API, m *Metrics, r *reporter) {
	switch {
	case a.Socket == "":
		r.errorf("api.socket", "empty: the API needs a unix socket (default %s)", DefaultSocket)
	case !filepath.IsAbs(a.Socket):
		r.errorf("api.socket", "%q is not an absolute path", a.Socket)
	}
	for _, f := range []struct{ name, v string }{
		{"token_file", a.TokenFile}, {"tls_cert", a.TLSCert}, {"tls_key", a.TLSKey},
	} {
		if f.v != "" && !filepath.IsAbs(f.v) {
			r.errorf("api."+f.name, "%q is not an absolute path", f.v)
		}
	}
	if a.Listen != "" {
		if why := badListen(a.Listen); why != "" {
			r.errorf("api.listen", "%s", why)
		}
		if a.Token == "" && a.TokenFile == "" {
			r.errorf("api.listen", "a TCP listener requires token or token_file")
		}
	}
	if a.Dashboard && a.Listen == "" {
		r.errorf("api.dashboard", "the dashboard is served on the TCP listener: set api.listen (and a token) too")
	}
	if a.Token != "" && a.TokenFile != "" {
		r.errorf("api.token_file", "set token or token_file, not both")
	}
	switch {
	case a.Token == "":
	case len(a.Token) < minTokenLen:
		r.errorf("api.token", "too short: a token has at least %d characters", minTokenLen)
	case strings.ContainsFunc(a.Token, func(c rune) bool { return c <= ' ' || c > '~' }):
		r.errorf("api.token", "a token is printable ASCII without spaces")
	}
	switch {
	case a.TLSCert != "" && a.TLSKey == "":
		r.errorf("api.tls_cert", "tls_key is required with tls_cert")
	case a.TLSKey != "" && a.TLSCert == "":
		r.errorf("api.tls_key", "tls_cert is required with tls_key")
	}
	if a.Listen == "" {
		if a.TLSCert != "" {
			r.errorf("api.tls_cert", "TLS applies to the TCP listener: set listen too")
		} else if a.TLSKey != "" {
			r.errorf("api.tls_key", "TLS applies to the TCP listener: set listen too")
		}
	}
	if m.Listen != "" {
		if why := badListen(m.Listen); why != "" {
			r.errorf("metrics.listen", "%s", why)
		} else if m.Listen == a.Listen {
			r.errorf("metrics.listen", "%q is also api.listen: give the metrics their own port", m.Listen)
		}
	}
}

// badListen says why s is not a TCP listen address "addr:port", or "".
func badListen(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Sprintf("%q is not addr:port", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Sprintf("%q: port %q is not a number 1..65535", s, port)
	}
	if _, err := netip.ParseAddr(host); err != nil && host != "" && !validHostname(host) {
		return fmt.Sprintf("%q: %q is neither an IP address nor a host name", s, host)
	}
	return ""
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

func validateManager(m *Manager, r *reporter) {
	if m.Interval < minInterval || m.Interval > maxInterval {
		r.errorf("manager.interval", "%v is out of range %v..%v", m.Interval, minInterval, formatDuration(maxInterval))
	}
	if !(m.Sensitivity >= 0 && m.Sensitivity <= 1) {
		r.errorf("manager.sensitivity", "%v is out of range 0..1 (a fraction: 0.05 is 5%%)", m.Sensitivity)
	}
	if !(m.Smoothing >= minSmoothing && m.Smoothing <= maxSmoothing) {
		r.errorf("manager.smoothing", "%v is out of range %v..%v", m.Smoothing, minSmoothing, maxSmoothing)
	}
	if m.Policy != PolicyDefault && m.Policy != PolicyBest && m.Policy != PolicyStatic {
		r.errorf("manager.policy", "%q is not a policy: want %s, %s or %s", m.Policy, PolicyDefault, PolicyBest, PolicyStatic)
	}
	if m.Overload != 0 && !(m.Overload > 1 && m.Overload <= 1000) {
		r.errorf("manager.overload", "%v is out of range: above 1 and at most 1000 (a server's load that many times its peers'), or 0 for never", m.Overload)
	}
	if m.CoolDown < 0 || m.CoolDown > maxInterval {
		r.errorf("manager.cool_down", "%v is out of range 0s..%v", m.CoolDown, formatDuration(maxInterval))
	}
	if !validName(m.HostMetric) {
		r.errorf("manager.host_metric", "%q is not a metric name: letters, digits, '-', '_' and '.'", m.HostMetric)
	}
}

// validateProportions checks one set of proportions at path p.
func validateProportions(pr Proportions, p string, advisors map[string]bool, r *reporter) {
	for _, f := range []struct {
		name string
		v    uint32
	}{{"active", pr.Active}, {"new", pr.New}, {"advisor", pr.Advisor}, {"host", pr.Host}} {
		if f.v > 100 {
			r.errorf(p+"."+f.name, rangeMsg, f.v, 0, 100)
		}
	}
	names := map[string]bool{"active": true, "new": true, "advisor": true, "host": true}
	for i, c := range pr.Custom {
		cp := yamlwalk.Index(p+".custom", i)
		switch {
		case !validName(c.Name):
			r.errorf(cp+".name", "%q is not a metric name: letters, digits, '-', '_' and '.'", c.Name)
		case names[c.Name]:
			r.errorf(cp+".name", "%q is already a metric of these proportions", c.Name)
		}
		names[c.Name] = true
		if (c.Agent == "") == (c.Advisor == "") {
			r.errorf(cp, "name one source: agent (an agent metric) or advisor (an advisor's latency)")
		}
		if c.Agent != "" && !validName(c.Agent) {
			r.errorf(cp+".agent", "%q is not a metric name", c.Agent)
		}
		if c.Advisor != "" && !advisors[c.Advisor] {
			r.errorf(cp+".advisor", "no advisor named %q", c.Advisor)
		}
		if c.Proportion > 100 {
			r.errorf(cp+".proportion", rangeMsg, c.Proportion, 0, 100)
		}
	}
	if sum := pr.Sum(); sum != 100 {
		var parts []string
		parts = append(parts, fmt.Sprintf("active %d + new %d + advisor %d + host %d", pr.Active, pr.New, pr.Advisor, pr.Host))
		for _, c := range pr.Custom {
			parts = append(parts, fmt.Sprintf("%s %d", c.Name, c.Proportion))
		}
		r.errorf(p, "%s = %d, want 100", strings.Join(parts, " + "), sum)
	}
}

// validName accepts metric and advisor names: short, no spaces.
func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

var httpMethods = []string{"GET", "HEAD", "POST", "PUT", "OPTIONS"}

func validateAdvisors(as []Advisor, r *reporter) map[string]bool {
	names := map[string]bool{}
	first := map[string]string{}
	for i, a := range as {
		p := yamlwalk.Index("advisors", i)
		switch {
		case !validName(a.Name):
			r.errorf(p+".name", "%q is not an advisor name: letters, digits, '-', '_' and '.'", a.Name)
		case first[a.Name] != "":
			r.errorf(p+".name", "duplicate advisor %q%s", a.Name, r.firstAt(first[a.Name]))
		default:
			first[a.Name] = p + ".name"
		}
		names[a.Name] = true
		switch a.Kind {
		case AdvisorTCP, AdvisorHTTP, AdvisorHTTPS, AdvisorCustom:
		case "":
			r.errorf(p+".kind", "required: tcp, http, https or custom")
		default:
			r.errorf(p+".kind", "%q is not an advisor kind: want tcp, http, https or custom", a.Kind)
		}
		if a.Target != TargetServer && a.Target != TargetVIP {
			r.errorf(p+".target", "%q is not a target: want server or vip", a.Target)
		}
		if a.Interval < minInterval || a.Interval > maxInterval {
			r.errorf(p+".interval", "%v is out of range %v..%v", a.Interval, minInterval, formatDuration(maxInterval))
		}
		if a.Timeout <= 0 || a.Timeout >= a.Interval {
			r.errorf(p+".timeout", "%v must be positive and shorter than the interval (%v)", a.Timeout, a.Interval)
		}
		if a.Kind == AdvisorHTTP || a.Kind == AdvisorHTTPS {
			if !slices.Contains(httpMethods, a.HTTP.Method) {
				r.errorf(p+".http.method", "%q is not a method: want %s", a.HTTP.Method, strings.Join(httpMethods, ", "))
			}
			if !strings.HasPrefix(a.HTTP.Path, "/") || strings.ContainsAny(a.HTTP.Path, " \r\n") {
				r.errorf(p+".http.path", "%q is not a path: it starts with '/' and has no white space", a.HTTP.Path)
			}
			if strings.ContainsAny(a.HTTP.Host, " \r\n/") {
				r.errorf(p+".http.host", "%q is not a host name", a.HTTP.Host)
			}
		}
		if a.Kind == AdvisorCustom {
			if len(a.Command) == 0 || a.Command[0] == "" {
				r.errorf(p+".command", "required for a custom advisor: the program and its arguments")
			} else if !filepath.IsAbs(a.Command[0]) {
				r.errorf(p+".command", "%q is not an absolute path: name the program by its full path", a.Command[0])
			}
		} else if len(a.Command) > 0 {
			r.errorf(p+".command", "only a custom advisor runs a command")
		}
	}
	return names
}

func validateAgents(a *Agents, r *reporter) {
	if a == nil {
		return
	}
	tls := a.TLSCert != "" || a.TLSKey != "" || a.TLSCA != ""
	switch {
	case a.KeyFile == "" && !tls:
		r.errorf("agents", "set key_file (a shared key) or tls_cert, tls_key and tls_ca (mutual TLS)")
	case a.KeyFile != "" && tls:
		r.errorf("agents", "key_file and TLS are exclusive: choose one")
	case tls && (a.TLSCert == "" || a.TLSKey == "" || a.TLSCA == ""):
		r.errorf("agents", "mutual TLS needs tls_cert, tls_key and tls_ca")
	}
	for _, f := range []struct{ name, v string }{{"key_file", a.KeyFile}, {"tls_cert", a.TLSCert}, {"tls_key", a.TLSKey}, {"tls_ca", a.TLSCA}} {
		if f.v != "" && !filepath.IsAbs(f.v) {
			r.errorf("agents."+f.name, "%q is not an absolute path", f.v)
		}
	}
	if a.Interval < minInterval || a.Interval > maxInterval {
		r.errorf("agents.interval", "%v is out of range %v..%v", a.Interval, minInterval, formatDuration(maxInterval))
	}
	if a.Timeout <= 0 || a.Timeout >= a.Interval {
		r.errorf("agents.timeout", "%v must be positive and shorter than the interval (%v)", a.Timeout, a.Interval)
	}
	if a.DisabledAfter < a.Interval || a.DisabledAfter > maxInterval {
		r.errorf("agents.disabled_after", "%v is out of range: at least the interval (%v), at most %v", a.DisabledAfter, a.Interval, formatDuration(maxInterval))
	}
}

// badAddr says why a is not usable as a VIP or server address, or "".
func badAddr(a netip.Addr, what string) string {
	var is string
	switch {
	case a.Zone() != "":
		return fmt.Sprintf("%s has a zone: a %s has none", a, what)
	case a.IsUnspecified():
		is = "unspecified"
	case a.IsMulticast():
		is = "multicast"
	case a.IsLoopback():
		is = "loopback"
	case a.Is4In6():
		return fmt.Sprintf("%s is an IPv4-mapped IPv6 address: write the IPv4 address %s", a, a.Unmap())
	case a.Is4() && a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		is = "broadcast"
	case a.Is4() && a.IsLinkLocalUnicast():
		is = "link-local (169.254.0.0/16)"
	default:
		return ""
	}
	return fmt.Sprintf("%s is %s: not usable as a %s", a, is, what)
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func validateClusters(c *Config, advisors map[string]bool, r *reporter) {
	vips := make(map[netip.Addr]string)
	var nports, nservers int
	for i, cl := range c.Clusters {
		cp := yamlwalk.Index("clusters", i)
		vipOK := false
		switch {
		case !cl.VIP.IsValid():
			r.errorf(cp+".vip", "required: the virtual IP address")
		default:
			if why := badAddr(cl.VIP, "VIP"); why != "" {
				r.errorf(cp+".vip", "%s", why)
			} else if f, dup := vips[cl.VIP]; dup {
				r.errorf(cp+".vip", "duplicate VIP %s%s: list each VIP once, with all its ports", cl.VIP, r.firstAt(f))
			} else {
				vips[cl.VIP] = cp
				vipOK = true
			}
		}
		if len(cl.Ports) == 0 {
			r.errorf(cp+".ports", "no ports: a VIP needs at least one")
		}
		seen := make(map[nd.ServiceKey]string)
		for j, p := range cl.Ports {
			pp := yamlwalk.Index(cp+".ports", j)
			nports++
			nservers += len(p.Servers)
			validatePort(c, cl.VIP, vipOK, p, pp, advisors, r)
			if !vipOK || p.Port == 0 || (p.Protocol != nd.TCP && p.Protocol != nd.UDP) {
				continue
			}
			k := nd.ServiceKey{VIP: cl.VIP, Port: p.Port, Proto: p.Protocol}
			if f, dup := seen[k]; dup {
				r.errorf(pp, "duplicate port %d/%s on VIP %s%s", p.Port, p.Protocol, cl.VIP, r.firstAt(f))
				continue
			}
			seen[k] = pp
		}
	}
	dp := c.DataPlane
	if dp.MaxVIPs > 0 && len(vips) > int(dp.MaxVIPs) {
		r.errorf("clusters", "%d VIPs exceed data_plane.max_vips (%d)", len(vips), dp.MaxVIPs)
	}
	if dp.MaxServices > 0 && nports > int(dp.MaxServices) {
		r.errorf("clusters", "%d ports exceed data_plane.max_services (%d)", nports, dp.MaxServices)
	}
	if dp.MaxServers > 0 && nservers > int(dp.MaxServers) {
		r.errorf("clusters", "%d servers over all ports exceed data_plane.max_servers (%d)", nservers, dp.MaxServers)
	}
}

func validatePort(c *Config, vip netip.Addr, vipOK bool, p PortSpec, pp string, advisors map[string]bool, r *reporter) {
	if p.Scheduler != "" && p.Scheduler != SchedulerMaglev && p.Scheduler != SchedulerP2C && p.Scheduler != SchedulerDelay {
		r.errorf(pp+".scheduler", "%q is not a scheduler: want %s, %s or %s", p.Scheduler, SchedulerDelay, SchedulerMaglev, SchedulerP2C)
	}
	if p.Advisor != "" && !advisors[p.Advisor] {
		r.errorf(pp+".advisor", "no advisor named %q", p.Advisor)
	}
	if p.Proportions != nil {
		validateProportions(*p.Proportions, pp+".proportions", advisors, r)
	}
	if p.Port == 0 {
		r.errorf(pp+".port", "required: a port number 1..65535")
	}
	if p.Protocol != nd.TCP && p.Protocol != nd.UDP {
		r.errorf(pp+".protocol", "%v is not a protocol: want tcp or udp", p.Protocol)
	}
	switch {
	case p.StickyTime < 0 || p.StickyTime > MaxStickyTime:
		r.errorf(pp+".sticky_time", "%v is out of range 0s..%v", p.StickyTime, formatDuration(MaxStickyTime))
	case p.StickyTime%time.Second != 0:
		r.errorf(pp+".sticky_time", "%v is not a whole number of seconds", p.StickyTime)
	}
	boundOK := p.WeightBound >= 1 && p.WeightBound <= MaxWeightBound
	if !boundOK {
		r.errorf(pp+".weight_bound", rangeMsg, p.WeightBound, 1, MaxWeightBound)
	}
	if validRingSize(c.DataPlane.RingSize) && len(p.Servers) > int(c.DataPlane.RingSize) {
		r.errorf(pp+".servers", "%d servers exceed data_plane.ring_size (%d)", len(p.Servers), c.DataPlane.RingSize)
	}
	seen := make(map[netip.Addr]string)
	for k, s := range p.Servers {
		sp := yamlwalk.Index(pp+".servers", k)
		if boundOK && s.Weight > p.WeightBound && !r.bad[pp+".weight_bound"] {
			r.errorf(sp+".weight", weightRange, s.Weight, p.WeightBound)
		}
		a := s.Address
		if !a.IsValid() {
			r.errorf(sp+".address", "required: the server's IP address")
			continue
		}
		if why := badAddr(a, "server address"); why != "" {
			r.errorf(sp+".address", "%s", why)
			continue
		}
		if vipOK && a.Is4() != vip.Is4() {
			r.errorf(sp+".address", "%s is %s but VIP %s is %s: a server has the VIP's family", a, family(a), vip, family(vip))
			continue
		}
		if vipOK && a == vip && !s.Local {
			r.errorf(sp+".address", "%s is the VIP itself: only a local server may have it", a)
			continue
		}
		if f, dup := seen[a]; dup {
			r.errorf(sp, "duplicate server %s%s", a, r.firstAt(f))
			continue
		}
		seen[a] = sp
	}
}

// formatDuration writes d as a Go duration without trailing zero units: 24h
// rather than 24h0m0s, 5m rather than 5m0s.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
