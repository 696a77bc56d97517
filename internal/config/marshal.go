package config

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

const marshalHeader = `nd configuration (see docs/CONFIG.md). Every setting is written out,
defaults included; empty optional settings are left out.`

// Marshal writes c as YAML that Parse reads back to the same configuration:
// Parse(Marshal(c)) has c's content. It writes every setting that has a
// value, defaults included, so that the file means the same whatever later
// defaults become; it writes api.token in clear when set. c must be valid: a
// Config that Validate refuses is not written.
func Marshal(c *Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	root := &yaml.Node{Kind: yaml.MappingNode, HeadComment: marshalHeader}

	ifaces := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
	for _, n := range c.Interfaces {
		ifaces.Content = append(ifaces.Content, str(n))
	}
	put(root, "interfaces", ifaces)

	dp := c.DataPlane
	put(root, "data_plane", mapping(
		"max_flows", uintNode(dp.MaxFlows),
		"max_servers", uintNode(dp.MaxServers),
		"max_services", uintNode(dp.MaxServices),
		"max_vips", uintNode(dp.MaxVIPs),
		"max_affinity", uintNode(dp.MaxAffinity),
		"ring_size", uintNode(dp.RingSize),
		"idle_timeout", durationNode(dp.IdleTimeout),
		"halfopen_timeout", durationNode(dp.HalfOpenTimeout),
		"expire_nodest_conn", boolNode(dp.ExpireNodestConn),
		"hash_seed", uintNode(dp.HashSeed),
		"pin_path", str(dp.PinPath),
	))

	a := c.API
	api := mapping("socket", str(a.Socket))
	putOptional(api, "listen", a.Listen)
	putOptional(api, "token", a.Token)
	putOptional(api, "token_file", a.TokenFile)
	putOptional(api, "tls_cert", a.TLSCert)
	putOptional(api, "tls_key", a.TLSKey)
	if a.Dashboard {
		put(api, "dashboard", boolNode(true))
	}
	put(root, "api", api)

	if c.Metrics.Listen != "" {
		put(root, "metrics", mapping("listen", str(c.Metrics.Listen)))
	}

	m := c.Manager
	put(root, "manager", mapping(
		"interval", durationNode(m.Interval),
		"sensitivity", floatNode(m.Sensitivity),
		"smoothing", floatNode(m.Smoothing),
		"policy", str(m.Policy),
		"proportions", proportionsNode(m.Proportions),
		"overload", floatNode(m.Overload),
		"cool_down", durationNode(m.CoolDown),
		"host_metric", str(m.HostMetric),
	))

	if len(c.Advisors) > 0 {
		advisors := &yaml.Node{Kind: yaml.SequenceNode}
		for _, a := range c.Advisors {
			an := mapping("name", str(a.Name), "kind", str(a.Kind), "target", str(a.Target))
			if a.Port != 0 {
				put(an, "port", uintNode(uint32(a.Port)))
			}
			put(an, "interval", durationNode(a.Interval))
			put(an, "timeout", durationNode(a.Timeout))
			put(an, "retries", uintNode(a.Retries))
			put(an, "rise", uintNode(a.Rise))
			put(an, "fall", uintNode(a.Fall))
			if a.Kind == AdvisorHTTP || a.Kind == AdvisorHTTPS {
				h := a.HTTP
				hn := mapping("method", str(h.Method), "path", str(h.Path))
				putOptional(hn, "host", h.Host)
				put(hn, "status", uintNode(h.Status))
				putOptional(hn, "body", h.Body)
				if h.Insecure {
					put(hn, "insecure", boolNode(true))
				}
				put(an, "http", hn)
			}
			if len(a.Command) > 0 {
				cmd := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
				for _, arg := range a.Command {
					cmd.Content = append(cmd.Content, str(arg))
				}
				put(an, "command", cmd)
			}
			advisors.Content = append(advisors.Content, an)
		}
		put(root, "advisors", advisors)
	}

	if a := c.Agents; a != nil {
		an := mapping("port", uintNode(uint32(a.Port)))
		putOptional(an, "key_file", a.KeyFile)
		putOptional(an, "tls_cert", a.TLSCert)
		putOptional(an, "tls_key", a.TLSKey)
		putOptional(an, "tls_ca", a.TLSCA)
		put(an, "interval", durationNode(a.Interval))
		put(an, "timeout", durationNode(a.Timeout))
		put(an, "disabled_after", durationNode(a.DisabledAfter))
		put(root, "agents", an)
	}

	if h := c.HA; h != nil {
		peers := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		for _, p := range h.Peers {
			peers.Content = append(peers.Content, str(p.String()))
		}
		put(root, "ha", mapping(
			"group", str(h.Group),
			"interface", str(h.Interface),
			"self", str(h.Self.String()),
			"peers", peers,
			"priority", uintNode(h.Priority),
			"preempt", boolNode(h.Preempt),
			"interval", durationNode(h.Interval),
			"dead_after", durationNode(h.DeadAfter),
			"key_file", str(h.KeyFile),
			"refresh", durationNode(h.Refresh),
			"mode", str(h.Mode),
		))
	}

	if b := c.BGP; b != nil {
		put(root, "bgp", bgpNode(b))
	}

	clusters := &yaml.Node{Kind: yaml.SequenceNode}
	for _, cl := range c.Clusters {
		ports := &yaml.Node{Kind: yaml.SequenceNode}
		for _, p := range cl.Ports {
			servers := &yaml.Node{Kind: yaml.SequenceNode}
			for _, s := range p.Servers {
				sn := mapping("address", str(s.Address.String()), "weight", uintNode(s.Weight))
				sn.Style = yaml.FlowStyle
				if s.Quiesce {
					put(sn, "quiesce", boolNode(true))
				}
				if s.Local {
					put(sn, "local", boolNode(true))
				}
				if s.Fixed {
					put(sn, "fixed", boolNode(true))
				}
				servers.Content = append(servers.Content, sn)
			}
			pn := mapping(
				"port", uintNode(uint32(p.Port)),
				"protocol", str(p.Protocol.String()),
				"sticky_time", durationNode(p.StickyTime),
				"weight_bound", uintNode(p.WeightBound),
			)
			sched := p.Scheduler
			if sched == "" {
				sched = DefaultScheduler
			}
			put(pn, "scheduler", str(sched))
			putOptional(pn, "advisor", p.Advisor)
			if p.Proportions != nil {
				put(pn, "proportions", proportionsNode(*p.Proportions))
			}
			put(pn, "servers", servers)
			ports.Content = append(ports.Content, pn)
		}
		clusters.Content = append(clusters.Content, mapping("vip", str(cl.VIP.String()), "ports", ports))
	}
	put(root, "clusters", clusters)

	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{root}}); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	return buf.Bytes(), nil
}

func proportionsNode(pr Proportions) *yaml.Node {
	props := mapping("active", uintNode(pr.Active), "new", uintNode(pr.New),
		"advisor", uintNode(pr.Advisor), "host", uintNode(pr.Host))
	props.Style = yaml.FlowStyle
	if len(pr.Custom) > 0 {
		props.Style = 0
		custom := &yaml.Node{Kind: yaml.SequenceNode}
		for _, c := range pr.Custom {
			cn := mapping("name", str(c.Name))
			putOptional(cn, "agent", c.Agent)
			putOptional(cn, "advisor", c.Advisor)
			put(cn, "proportion", uintNode(c.Proportion))
			cn.Style = yaml.FlowStyle
			custom.Content = append(custom.Content, cn)
		}
		put(props, "custom", custom)
	}
	return props
}

func str(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

func uintNode(v uint32) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatUint(uint64(v), 10)}
}

func boolNode(b bool) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(b)}
}

func floatNode(f float64) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!float", Value: formatFloat(f)}
}

func durationNode(d time.Duration) *yaml.Node { return str(formatDuration(d)) }

// formatFloat writes f exactly and so that YAML reads it as a float: 1.0,
// not 1.
func formatFloat(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eEn") {
		s += ".0"
	}
	return s
}

func put(m *yaml.Node, key string, v *yaml.Node) {
	m.Content = append(m.Content, str(key), v)
}

func putOptional(m *yaml.Node, key, v string) {
	if v != "" {
		put(m, key, str(v))
	}
}

func mapping(kv ...any) *yaml.Node {
	m := &yaml.Node{Kind: yaml.MappingNode}
	for i := 0; i+1 < len(kv); i += 2 {
		put(m, kv[i].(string), kv[i+1].(*yaml.Node))
	}
	return m
}

func strList(ss []string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
	for _, s := range ss {
		n.Content = append(n.Content, str(s))
	}
	return n
}

func bgpNode(b *BGP) *yaml.Node {
	bn := mapping("asn", uintNode(b.ASN), "router_id", str(b.RouterID.String()),
		"shutdown_grace", durationNode(b.ShutdownGrace), "graceful_restart", durationNode(b.GracefulRestart))
	if len(b.Communities) > 0 {
		put(bn, "communities", strList(b.Communities))
	}
	put(bn, "med", uintNode(b.MED))
	peers := &yaml.Node{Kind: yaml.SequenceNode}
	for _, p := range b.Peers {
		pn := mapping("address", str(p.Address.String()), "asn", uintNode(p.ASN), "port", uintNode(uint32(p.Port)),
			"hold_time", durationNode(p.HoldTime))
		putOptional(pn, "password", p.Password)
		if p.Multihop != 0 {
			put(pn, "multihop", uintNode(p.Multihop))
		}
		if p.LocalAddress.IsValid() {
			put(pn, "local_address", str(p.LocalAddress.String()))
		}
		peers.Content = append(peers.Content, pn)
	}
	put(bn, "peers", peers)
	if len(b.VIPs) > 0 {
		vips := &yaml.Node{Kind: yaml.SequenceNode}
		for _, v := range b.VIPs {
			vn := mapping("vip", str(v.VIP.String()), "announce", boolNode(v.Announce))
			if v.Communities != nil {
				put(vn, "communities", strList(v.Communities))
			}
			if v.MED != nil {
				put(vn, "med", uintNode(*v.MED))
			}
			if v.NextHop.IsValid() {
				put(vn, "next_hop", str(v.NextHop.String()))
			}
			vips.Content = append(vips.Content, vn)
		}
		put(bn, "vips", vips)
	}
	return bn
}
