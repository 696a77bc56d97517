package config

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/yamlwalk"
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
	w := yamlwalk.New()
	d := &decoder{Walker: w}
	c := Default()
	root, ok := w.Document(data, "a second YAML document: the configuration is one document")
	if root != nil {
		d.config(c, root)
	}
	r := &reporter{src: &source{file: name, at: map[string]pos{}}, bad: w.Bad}
	for path, p := range w.At {
		r.src.at[path] = pos{p.Line, p.Column}
	}
	for _, p := range w.Problems {
		r.add(&Error{File: name, Line: p.Line, Column: p.Column, Path: p.Path, Msg: p.Msg})
	}
	c.src = r.src
	// Validation skips the settings that could not be read. A document
	// that could not be parsed, or that aliases blew up, is not worth it.
	if ok && !w.Exhausted {
		c.src.ifaces = slices.Clone(c.Interfaces)
		for _, cl := range c.Clusters {
			c.src.vips = append(c.src.vips, cl.VIP)
		}
		validate(c, r)
	}
	if err := r.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// decoder turns a YAML node tree into a Config with yamlwalk's readers,
// which report what they cannot read.
type decoder struct {
	*yamlwalk.Walker
}

func (d *decoder) proto(path string, n *yaml.Node) (nd.Proto, bool) {
	return yamlwalk.Parse(d.Walker, path, n, "tcp or udp", func(s string) (nd.Proto, error) {
		return nd.ParseProto(strings.ToLower(s))
	}, "%q is not a protocol: want tcp or udp")
}

// config reads the document's root mapping into c, which holds the defaults.
func (d *decoder) config(c *Config, root *yaml.Node) {
	f, done, ok := d.Fields("", root, "interfaces", "data_plane", "api", "metrics", "manager", "advisors", "agents", "ha", "bgp", "clusters")
	defer done()
	if !ok {
		return
	}
	if n := f["interfaces"]; n != nil {
		c.Interfaces = yamlwalk.ListOf(d.Walker, "interfaces", n, func(p string, it *yaml.Node) string {
			s, _ := d.Str(p, it)
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
		f, done, _ := d.Fields("metrics", n, "listen")
		d.StrField(f, "metrics", "listen", &c.Metrics.Listen)
		done()
	}
	if n := f["manager"]; n != nil {
		d.manager(&c.Manager, n)
	}
	if n := f["advisors"]; n != nil {
		c.Advisors = yamlwalk.ListOf(d.Walker, "advisors", n, d.advisor)
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
		c.Clusters = yamlwalk.ListOf(d.Walker, "clusters", n, d.cluster)
	}
}

func (d *decoder) bgp(n *yaml.Node) *BGP {
	const p = "bgp"
	b := &BGP{ShutdownGrace: DefaultBGPShutdownGrace}
	f, done, _ := d.Fields(p, n, "asn", "router_id", "shutdown_grace", "graceful_restart", "communities", "med", "peers", "vips")
	defer done()
	yamlwalk.Integer(d.Walker, f, p, "asn", 0, math.MaxUint32, &b.ASN)
	if n := f["router_id"]; n != nil {
		b.RouterID, _ = d.Addr(yamlwalk.Join(p, "router_id"), n)
	}
	d.DurField(f, p, "shutdown_grace", &b.ShutdownGrace)
	d.DurField(f, p, "graceful_restart", &b.GracefulRestart)
	if n := f["communities"]; n != nil {
		b.Communities = d.Strings(yamlwalk.Join(p, "communities"), n)
	}
	yamlwalk.Integer(d.Walker, f, p, "med", 0, math.MaxUint32, &b.MED)
	if n := f["peers"]; n != nil {
		b.Peers = yamlwalk.ListOf(d.Walker, yamlwalk.Join(p, "peers"), n, d.bgpPeer)
	}
	if n := f["vips"]; n != nil {
		b.VIPs = yamlwalk.ListOf(d.Walker, yamlwalk.Join(p, "vips"), n, d.bgpVIP)
	}
	return b
}

func (d *decoder) bgpPeer(p string, n *yaml.Node) BGPPeer {
	pr := BGPPeer{Port: DefaultBGPPort, HoldTime: DefaultBGPHoldTime}
	f, done, ok := d.Fields(p, n, "address", "asn", "port", "hold_time", "password", "multihop", "local_address")
	defer done()
	if !ok {
		return pr
	}
	if n := f["address"]; n != nil {
		pr.Address, _ = d.Addr(yamlwalk.Join(p, "address"), n)
	}
	yamlwalk.Integer(d.Walker, f, p, "asn", 0, math.MaxUint32, &pr.ASN)
	yamlwalk.Integer(d.Walker, f, p, "port", 1, math.MaxUint16, &pr.Port)
	d.DurField(f, p, "hold_time", &pr.HoldTime)
	d.StrField(f, p, "password", &pr.Password)
	yamlwalk.Integer(d.Walker, f, p, "multihop", 0, 255, &pr.Multihop)
	if n := f["local_address"]; n != nil {
		pr.LocalAddress, _ = d.Addr(yamlwalk.Join(p, "local_address"), n)
	}
	return pr
}

func (d *decoder) bgpVIP(p string, n *yaml.Node) BGPVIP {
	v := BGPVIP{Announce: true}
	f, done, ok := d.Fields(p, n, "vip", "announce", "communities", "med", "next_hop")
	defer done()
	if !ok {
		return v
	}
	if n := f["vip"]; n != nil {
		v.VIP, _ = d.Addr(yamlwalk.Join(p, "vip"), n)
	}
	d.BoolField(f, p, "announce", &v.Announce)
	if n := f["communities"]; n != nil {
		v.Communities = d.Strings(yamlwalk.Join(p, "communities"), n)
		if v.Communities == nil {
			v.Communities = []string{} // given, empty: no communities
		}
	}
	if n := f["med"]; n != nil {
		var m uint32
		yamlwalk.Integer(d.Walker, f, p, "med", 0, math.MaxUint32, &m)
		v.MED = &m
	}
	if n := f["next_hop"]; n != nil {
		v.NextHop, _ = d.Addr(yamlwalk.Join(p, "next_hop"), n)
	}
	return v
}

func (d *decoder) dataPlane(dp *DataPlane, n *yaml.Node) {
	const p = "data_plane"
	f, done, _ := d.Fields(p, n, "max_flows", "max_servers", "max_services", "max_vips", "max_affinity",
		"ring_size", "idle_timeout", "halfopen_timeout", "expire_nodest_conn", "hash_seed", "pin_path")
	defer done()
	yamlwalk.Integer(d.Walker, f, p, "max_flows", 1, math.MaxUint32, &dp.MaxFlows)
	yamlwalk.Integer(d.Walker, f, p, "max_servers", 1, math.MaxUint32, &dp.MaxServers)
	yamlwalk.Integer(d.Walker, f, p, "max_services", 1, math.MaxUint32, &dp.MaxServices)
	yamlwalk.Integer(d.Walker, f, p, "max_vips", 1, math.MaxUint32, &dp.MaxVIPs)
	yamlwalk.Integer(d.Walker, f, p, "max_affinity", 1, math.MaxUint32, &dp.MaxAffinity)
	yamlwalk.Integer(d.Walker, f, p, "ring_size", 0, math.MaxUint32, &dp.RingSize)
	d.DurField(f, p, "idle_timeout", &dp.IdleTimeout)
	d.DurField(f, p, "halfopen_timeout", &dp.HalfOpenTimeout)
	d.BoolField(f, p, "expire_nodest_conn", &dp.ExpireNodestConn)
	yamlwalk.Integer(d.Walker, f, p, "hash_seed", 0, math.MaxUint32, &dp.HashSeed)
	d.StrField(f, p, "pin_path", &dp.PinPath)
}

func (d *decoder) api(a *API, n *yaml.Node) {
	const p = "api"
	f, done, _ := d.Fields(p, n, "socket", "listen", "token", "token_file", "tls_cert", "tls_key", "dashboard")
	defer done()
	d.StrField(f, p, "socket", &a.Socket)
	d.StrField(f, p, "listen", &a.Listen)
	d.StrField(f, p, "token", &a.Token)
	d.StrField(f, p, "token_file", &a.TokenFile)
	d.StrField(f, p, "tls_cert", &a.TLSCert)
	d.StrField(f, p, "tls_key", &a.TLSKey)
	d.BoolField(f, p, "dashboard", &a.Dashboard)
}

func (d *decoder) manager(m *Manager, n *yaml.Node) {
	const p = "manager"
	f, done, _ := d.Fields(p, n, "interval", "sensitivity", "smoothing", "policy", "proportions",
		"overload", "cool_down", "host_metric")
	defer done()
	d.DurField(f, p, "interval", &m.Interval)
	d.FloatField(f, p, "sensitivity", &m.Sensitivity)
	d.FloatField(f, p, "smoothing", &m.Smoothing)
	d.StrField(f, p, "policy", &m.Policy)
	d.FloatField(f, p, "overload", &m.Overload)
	d.DurField(f, p, "cool_down", &m.CoolDown)
	d.StrField(f, p, "host_metric", &m.HostMetric)
	if n := f["proportions"]; n != nil {
		m.Proportions = d.proportions("manager.proportions", n)
	}
}

// proportions reads a proportions mapping; absent fields are 0.
func (d *decoder) proportions(p string, n *yaml.Node) Proportions {
	var pr Proportions
	f, done, _ := d.Fields(p, n, "active", "new", "advisor", "host", "custom")
	defer done()
	yamlwalk.Integer(d.Walker, f, p, "active", 0, 100, &pr.Active)
	yamlwalk.Integer(d.Walker, f, p, "new", 0, 100, &pr.New)
	yamlwalk.Integer(d.Walker, f, p, "advisor", 0, 100, &pr.Advisor)
	yamlwalk.Integer(d.Walker, f, p, "host", 0, 100, &pr.Host)
	if n := f["custom"]; n != nil {
		pr.Custom = yamlwalk.ListOf(d.Walker, yamlwalk.Join(p, "custom"), n, func(ip string, it *yaml.Node) CustomMetric {
			var c CustomMetric
			f, done, _ := d.Fields(ip, it, "name", "agent", "advisor", "proportion")
			defer done()
			d.StrField(f, ip, "name", &c.Name)
			d.StrField(f, ip, "agent", &c.Agent)
			d.StrField(f, ip, "advisor", &c.Advisor)
			yamlwalk.Integer(d.Walker, f, ip, "proportion", 0, 100, &c.Proportion)
			return c
		})
	}
	return pr
}

func (d *decoder) advisor(p string, n *yaml.Node) Advisor {
	a := Advisor{Target: TargetServer, Interval: DefaultAdvisorInterval, Rise: DefaultRise, Fall: DefaultFall,
		HTTP: HTTPCheck{Method: "GET", Path: "/", Status: 200}}
	f, done, ok := d.Fields(p, n, "name", "kind", "target", "port", "interval", "timeout", "retries", "rise", "fall", "http", "command")
	defer done()
	if !ok {
		return a
	}
	d.StrField(f, p, "name", &a.Name)
	d.StrField(f, p, "kind", &a.Kind)
	d.StrField(f, p, "target", &a.Target)
	yamlwalk.Integer(d.Walker, f, p, "port", 0, math.MaxUint16, &a.Port)
	d.DurField(f, p, "interval", &a.Interval)
	a.Timeout = min(DefaultAdvisorTimeout, a.Interval/2)
	d.DurField(f, p, "timeout", &a.Timeout)
	yamlwalk.Integer(d.Walker, f, p, "retries", 0, 10, &a.Retries)
	yamlwalk.Integer(d.Walker, f, p, "rise", 1, 100, &a.Rise)
	yamlwalk.Integer(d.Walker, f, p, "fall", 1, 100, &a.Fall)
	if n := f["http"]; n != nil {
		hp := yamlwalk.Join(p, "http")
		f, done, _ := d.Fields(hp, n, "method", "path", "host", "status", "body", "insecure")
		d.StrField(f, hp, "method", &a.HTTP.Method)
		d.StrField(f, hp, "path", &a.HTTP.Path)
		d.StrField(f, hp, "host", &a.HTTP.Host)
		yamlwalk.Integer(d.Walker, f, hp, "status", 100, 599, &a.HTTP.Status)
		d.StrField(f, hp, "body", &a.HTTP.Body)
		d.BoolField(f, hp, "insecure", &a.HTTP.Insecure)
		done()
	}
	if n := f["command"]; n != nil {
		a.Command = yamlwalk.ListOf(d.Walker, yamlwalk.Join(p, "command"), n, func(p string, it *yaml.Node) string {
			v, _ := d.Str(p, it)
			return v
		})
	}
	return a
}

func (d *decoder) ha(n *yaml.Node) *HA {
	const p = "ha"
	h := &HA{Group: DefaultHAGroup, Priority: DefaultHAPriority, Interval: DefaultHAInterval, DeadAfter: DefaultHADeadAfter, Mode: HAModeActiveStandby}
	f, done, _ := d.Fields(p, n, "group", "interface", "self", "peers", "priority", "preempt", "interval", "dead_after", "key_file", "refresh", "mode")
	defer done()
	d.StrField(f, p, "group", &h.Group)
	d.StrField(f, p, "interface", &h.Interface)
	if n := f["self"]; n != nil {
		h.Self, _ = d.AddrPort(yamlwalk.Join(p, "self"), n)
	}
	if n := f["peers"]; n != nil {
		h.Peers = yamlwalk.ListOf(d.Walker, yamlwalk.Join(p, "peers"), n, func(p string, it *yaml.Node) netip.AddrPort {
			a, _ := d.AddrPort(p, it)
			return a
		})
	}
	yamlwalk.Integer(d.Walker, f, p, "priority", 1, 255, &h.Priority)
	d.BoolField(f, p, "preempt", &h.Preempt)
	d.DurField(f, p, "interval", &h.Interval)
	d.DurField(f, p, "dead_after", &h.DeadAfter)
	d.StrField(f, p, "key_file", &h.KeyFile)
	d.DurField(f, p, "refresh", &h.Refresh)
	d.StrField(f, p, "mode", &h.Mode)
	return h
}

func (d *decoder) agents(n *yaml.Node) *Agents {
	const p = "agents"
	a := &Agents{Port: DefaultAgentPort, Interval: DefaultAgentInterval, Timeout: DefaultAgentTimeout, DisabledAfter: DefaultDisabledAfter}
	f, done, _ := d.Fields(p, n, "port", "key_file", "tls_cert", "tls_key", "tls_ca", "interval", "timeout", "disabled_after")
	defer done()
	yamlwalk.Integer(d.Walker, f, p, "port", 1, math.MaxUint16, &a.Port)
	d.StrField(f, p, "key_file", &a.KeyFile)
	d.StrField(f, p, "tls_cert", &a.TLSCert)
	d.StrField(f, p, "tls_key", &a.TLSKey)
	d.StrField(f, p, "tls_ca", &a.TLSCA)
	d.DurField(f, p, "interval", &a.Interval)
	d.DurField(f, p, "timeout", &a.Timeout)
	d.DurField(f, p, "disabled_after", &a.DisabledAfter)
	return a
}

func (d *decoder) cluster(path string, n *yaml.Node) Cluster {
	var c Cluster
	f, done, ok := d.Fields(path, n, "vip", "ports")
	defer done()
	if !ok {
		return c
	}
	if n := f["vip"]; n != nil {
		c.VIP, _ = d.Addr(yamlwalk.Join(path, "vip"), n)
	}
	if n := f["ports"]; n != nil {
		c.Ports = yamlwalk.ListOf(d.Walker, yamlwalk.Join(path, "ports"), n, d.port)
	}
	return c
}

func (d *decoder) port(path string, n *yaml.Node) PortSpec {
	p := PortSpec{Protocol: DefaultProtocol, WeightBound: DefaultWeightBound, Scheduler: DefaultScheduler}
	f, done, ok := d.Fields(path, n, "port", "protocol", "sticky_time", "weight_bound", "scheduler", "advisor", "proportions", "servers")
	defer done()
	if !ok {
		return p
	}
	yamlwalk.Integer(d.Walker, f, path, "port", 1, math.MaxUint16, &p.Port)
	if n := f["protocol"]; n != nil {
		if v, ok := d.proto(yamlwalk.Join(path, "protocol"), n); ok {
			p.Protocol = v
		}
	}
	d.DurField(f, path, "sticky_time", &p.StickyTime)
	yamlwalk.Integer(d.Walker, f, path, "weight_bound", 1, MaxWeightBound, &p.WeightBound)
	d.StrField(f, path, "scheduler", &p.Scheduler)
	d.StrField(f, path, "advisor", &p.Advisor)
	if n := f["proportions"]; n != nil {
		pr := d.proportions(yamlwalk.Join(path, "proportions"), n)
		p.Proportions = &pr
	}
	if n := f["servers"]; n != nil {
		p.Servers = yamlwalk.ListOf(d.Walker, yamlwalk.Join(path, "servers"), n, func(sp string, it *yaml.Node) Server {
			return d.server(sp, it, p.WeightBound)
		})
	}
	return p
}

func (d *decoder) server(path string, n *yaml.Node, bound uint32) Server {
	s := Server{Weight: DefaultWeight(bound)}
	f, done, ok := d.Fields(path, n, "address", "weight", "quiesce", "local", "fixed")
	defer done()
	if !ok {
		return s
	}
	if n := f["address"]; n != nil {
		s.Address, _ = d.Addr(yamlwalk.Join(path, "address"), n)
	}
	if n := f["weight"]; n != nil {
		wp := yamlwalk.Join(path, "weight")
		if v, ok := d.Uint(wp, n, 0, math.MaxUint32); ok {
			if v > uint64(bound) {
				d.Fail(wp, n, weightRange, v, bound)
			} else {
				s.Weight = uint32(v)
			}
		}
	}
	d.BoolField(f, path, "quiesce", &s.Quiesce)
	d.BoolField(f, path, "local", &s.Local)
	d.BoolField(f, path, "fixed", &s.Fixed)
	return s
}
