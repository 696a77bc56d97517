// Package config is nd's configuration file: its schema, defaults and
// validation, the data view the daemon turns into executor calls, the
// difference between two configurations that a live reload applies, and the
// writer that saves a configuration back as YAML.
//
// The file is YAML and strict: an unknown field is an error. Parse and Load
// report every problem they find at once, each located as file:line:col (see
// Errors). Every setting is documented on the Go type that holds it, under its
// YAML name, with its default; docs/CONFIG.md is the operator's copy.
//
// A parsed Config is fully explicit: every default has been applied, so code
// that reads it never needs to know a default.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/nd-dispatcher/nd/internal/keyfile"
	"github.com/nd-dispatcher/nd/internal/maglev"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// Defaults of the settings that have one. The data-plane sizes default to
// nd's (nd.DefaultMaxFlows and the others), which the executor applies.
const (
	DefaultPinPath     = "/sys/fs/bpf/nd"
	DefaultSocket      = "/run/nd/ndd.sock"
	DefaultInterval    = time.Second
	DefaultSensitivity = 0.05
	DefaultSmoothing   = 1.5
	DefaultPolicy      = PolicyDefault
	DefaultWeightBound = 100
	DefaultProtocol    = nd.TCP

	// MaxWeightBound is the largest weight_bound accepted.
	MaxWeightBound = 1000
	// MaxStickyTime is the longest sticky_time accepted (the executor's limit).
	MaxStickyTime = 24 * time.Hour
)

// Manager policies.
const (
	// PolicyDefault is the IBM Network Dispatcher weight function: weights
	// follow the proportions of active flows, new flows, advisor and host
	// metrics, smoothed, committed when they move by more than sensitivity.
	PolicyDefault = "default"
	// PolicyBest sends every new flow to the least-loaded server (the
	// paper's "best server" policy): good at low load.
	PolicyBest = "best"
	// PolicyStatic keeps the configured weights: servers keep them until an
	// operator changes them; the manager still takes servers that are down
	// or disabled out, and brings them back.
	PolicyStatic = "static"
)

// Schedulers: how the data plane picks a server for a new flow.
const (
	// SchedulerMaglev follows the weights through the port's weighted
	// Maglev table.
	SchedulerMaglev = "maglev"
	// SchedulerP2C draws two servers from the Maglev table and takes the
	// one with fewer active flows for its weight (power of two choices).
	SchedulerP2C = "p2c"
	// SchedulerDelay scores every server of the port by its expected delay,
	// (active + 1) x delay factor / weight, and takes the lowest: least
	// connections among servers as fast as their peers, steering around
	// slow ones by the manager's delay factors. The default.
	SchedulerDelay = "delay"
	// DefaultScheduler is a port's scheduler when it names none.
	DefaultScheduler = SchedulerDelay
)

// Advisor kinds and targets.
const (
	AdvisorTCP    = "tcp"
	AdvisorHTTP   = "http"
	AdvisorHTTPS  = "https"
	AdvisorCustom = "custom"

	// TargetServer probes the server's own address; TargetVIP probes the
	// VIP:port on the server, steered to it (what clients reach under
	// direct server return).
	TargetServer = "server"
	TargetVIP    = "vip"
)

// Defaults of advisors and agents.
const (
	DefaultAdvisorInterval = 5 * time.Second
	DefaultAdvisorTimeout  = 3 * time.Second
	DefaultRise            = 2
	DefaultFall            = 2
	DefaultAgentPort       = 7431
	DefaultAgentInterval   = 2 * time.Second
	DefaultAgentTimeout    = time.Second
	DefaultDisabledAfter   = 10 * time.Second
	DefaultOverload        = 3.0
	DefaultHostMetric      = "cpu"
)

// Config is one nd configuration file.
type Config struct {
	// Interfaces (YAML interfaces) are the network interfaces the
	// dispatcher attaches its XDP program to: where VIP traffic arrives.
	// Required, at least one; names must be unique. Whether they exist is
	// checked by the daemon (CheckInterfaces).
	Interfaces []string

	// DataPlane (YAML data_plane) sizes the data plane's tables.
	DataPlane DataPlane

	// API (YAML api) is the control API that ndctl talks to.
	API API

	// Metrics (YAML metrics) is the Prometheus exporter.
	Metrics Metrics

	// Manager (YAML manager) tunes the feedback loop that sets weights.
	Manager Manager

	// Advisors (YAML advisors) probe the servers: the manager's forward
	// metrics and health. A port uses one by naming it. Optional.
	Advisors []Advisor

	// Agents (YAML agents) poll the host-metric agent (ndagent) on every
	// server. Optional: nil when the file has no agents section.
	Agents *Agents

	// HA (YAML ha) makes this dispatcher one node of a high-availability
	// group. Optional: nil when the file has no ha section. Per node: a
	// standby follows the active's clusters, manager, advisors and agents,
	// never its ha section.
	HA *HA

	// BGP (YAML bgp) announces the VIPs this dispatcher can serve to BGP
	// peers. Optional: nil when the file has no bgp section.
	BGP *BGP

	// Clusters (YAML clusters) are the virtual IP addresses nd serves, each
	// with its ports and their servers. Optional: a dispatcher may start
	// empty and be given clusters through the API.
	Clusters []Cluster

	// src remembers where each setting was read, for located errors. Nil
	// for a Config built in code.
	src *source
}

// DataPlane sizes the data plane. None of these can change while the daemon
// runs: the tables are created (and pinned) with these sizes.
type DataPlane struct {
	// MaxFlows (max_flows) sizes the connection table, an LRU: the most
	// flows tracked at once. Default 1048576.
	MaxFlows uint32
	// MaxServers (max_servers) bounds server entries over all ports (a
	// server in two ports counts twice). Default 4096.
	MaxServers uint32
	// MaxServices (max_services) bounds ports over all VIPs. Default 1024.
	MaxServices uint32
	// MaxVIPs (max_vips) bounds distinct VIP addresses. Default 1024.
	MaxVIPs uint32
	// MaxAffinity (max_affinity) sizes the client affinity table (LRU)
	// used by ports with a sticky_time. Default 65536.
	MaxAffinity uint32
	// RingSize (ring_size) is the size of each port's Maglev lookup table;
	// it must be a prime between 3 and 16777216, and at least the number of
	// servers of any port. Larger tables split traffic more exactly and
	// cost memory: 2 bytes a slot per port. Default 65537.
	RingSize uint32
	// IdleTimeout (idle_timeout) forgets a flow that carried no packet for
	// this long (the IBM product's idle flow timeout). At least 1s.
	// Default 300s.
	IdleTimeout time.Duration
	// HalfOpenTimeout (halfopen_timeout) forgets a half-open flow (a SYN
	// without its handshake's ACK yet) or a closing one this long after its
	// last packet, as IPVS keeps per-state timeouts. At least 1s; one
	// longer than the idle timeout is cut to it. Default 10s.
	HalfOpenTimeout time.Duration
	// ExpireNodestConn (expire_nodest_conn), as IPVS's: an established
	// flow whose server has weight 0 (taken out by an advisor or an agent,
	// or quiesced) is dispatched anew on its next packet, so its client
	// meets a live server's RST at once instead of timeouts. It also ends
	// a quiesced server's flows. Default false.
	ExpireNodestConn bool
	// HashSeed (hash_seed) seeds the flow hash. Dispatchers that back each
	// other up must share it. Default 0.
	HashSeed uint32
	// PinPath (pin_path) is a directory on a bpffs where the data plane is
	// pinned, so that it keeps forwarding while the daemon restarts and a
	// new daemon takes over every established flow. An absolute path, or ""
	// (written explicitly) to pin nothing: the data plane then stops with
	// the daemon. Default /sys/fs/bpf/nd.
	PinPath string
}

// API configures the control API. It is always served on a unix socket; a TCP
// listener is optional and requires a bearer token.
type API struct {
	// Socket (socket) is the unix socket of the API, created mode 0600 and
	// owned by root. An absolute path. Default /run/nd/ndd.sock.
	Socket string
	// Listen (listen) is an optional TCP listener, "addr:port" (e.g.
	// "127.0.0.1:8080"; ":8080" for every address). Requires Token or
	// TokenFile. Default "" (none).
	Listen string
	// Token (token) is the bearer token that TCP clients must present: at
	// least 16 characters, printable ASCII without spaces. Prefer TokenFile, which keeps the secret out of
	// this file. Default "".
	Token string
	// TokenFile (token_file) is an absolute path to a file whose content
	// (trimmed of surrounding white space) is the token. Exclusive with
	// Token. Default "".
	TokenFile string
	// TLSCert and TLSKey (tls_cert, tls_key) are absolute paths to a PEM
	// certificate and key; when set, the TCP listener speaks TLS. Both or
	// neither, and only with Listen. Default "".
	TLSCert string
	TLSKey  string
	// Dashboard (dashboard) serves the live dashboard at /dashboard/ on
	// the TCP listener: its files without a token, its data with the
	// listener's token, like every API call. Requires Listen. Applied live
	// by a reload. Default false.
	Dashboard bool
}

// ReadToken is the bearer token of the API's TCP listener: Token, or the
// content of TokenFile read now (keyfile.Token); "" without a listener.
// The daemon checks it before accepting a configuration and the API server
// reads it when it applies one, so that rewriting the file and reloading
// replaces the token.
func (a API) ReadToken() (string, error) {
	switch {
	case a.Listen == "":
		return "", nil
	case a.Token != "":
		return a.Token, nil
	case a.TokenFile == "":
		return "", errors.New("api: a TCP listener requires token or token_file")
	}
	t, err := keyfile.Token(a.TokenFile)
	if err != nil {
		return "", fmt.Errorf("api.token_file: %w", err)
	}
	return t, nil
}

// Metrics configures the Prometheus exporter.
type Metrics struct {
	// Listen (listen) is an optional TCP listener, "addr:port" (e.g.
	// "127.0.0.1:9100"), serving /metrics without authentication. Default
	// "" (no listener).
	Listen string
}

// Manager tunes the manager: the feedback loop that turns metrics into
// weights. Its defaults are the IBM product's.
type Manager struct {
	// Interval (interval) is how often the manager recomputes weights,
	// 100ms to 1h. Default 2s.
	Interval time.Duration
	// Sensitivity (sensitivity) is the smallest total weight change, as a
	// fraction of the total, that the manager commits: 0.05 means a change
	// of 5% is not committed and 6% is. 0 to 1 (0 commits every change).
	// Default 0.05.
	Sensitivity float64
	// Smoothing (smoothing) is the smoothing index: how slowly weights
	// follow the metrics. 1 follows at once; 1.5 is "fairly dynamic", 4 to
	// 5 "more stable". 1 to 10. Default 1.5.
	Smoothing float64
	// Policy (policy) is the weight function: "default", "best" or
	// "static" (see PolicyDefault, PolicyBest, PolicyStatic). Default
	// "default".
	Policy string
	// Proportions (proportions) weigh the inputs of the weight function.
	// Each 0 to 100, summing to 100. Default 50/50/0/0. A port may set its
	// own.
	Proportions Proportions
	// Overload (overload) is the Load Metric Index past which a server is
	// taken out to cool down (weight 0 until its load recovers): its load
	// this many times its peers'. Above 1, or 0 to never cool servers
	// down. Default 3.
	Overload float64
	// CoolDown (cool_down) is how long an overloaded server sits out before
	// it is tried again; doubled each time it is found overloaded again
	// soon after. 0 means three intervals. Default 0s.
	CoolDown time.Duration
	// HostMetric (host_metric) is the agent metric that the host proportion
	// weighs: cpu, memory, load1, tcp_established, processes, or the name
	// of a command in the agents' configuration. Default "cpu".
	HostMetric string
}

// Advisor is one probe definition (the paper's forward metrics).
type Advisor struct {
	// Name (name) identifies the advisor: ports name it. Letters, digits,
	// '-' and '_'. Required, unique.
	Name string
	// Kind (kind) is tcp (connect), http, https or custom (a command run on
	// the dispatcher). Required.
	Kind string
	// Target (target) is "server" (probe the server's own address) or "vip"
	// (probe the VIP:port on the server, steered to it: the socket clients
	// reach under direct server return). Default "server".
	Target string
	// Port (port) is the port probed; 0 means the port of the cluster port
	// that uses the advisor. Default 0.
	Port uint16
	// Interval (interval) between probes of a server, 100ms to 1h. Default
	// 5s. Timeout (timeout) of one probe, less than the interval. Default
	// 3s (or the interval's half when that is shorter).
	Interval, Timeout time.Duration
	// Retries (retries) are extra attempts within one probe round before
	// it counts as failed. 0 to 10. Default 0.
	Retries uint32
	// Rise (rise) successes in a row bring a down server up; Fall (fall)
	// failures in a row take it down. 1 to 100. Defaults 2 and 2.
	Rise, Fall uint32
	// HTTP (http) configures http and https probes.
	HTTP HTTPCheck
	// Command (command) is the program and arguments of a custom probe (no
	// shell). It gets ND_SERVER, ND_PORT and ND_VIP in its environment;
	// exit status 0 is up; a number on stdout is the load.
	Command []string
}

// HTTPCheck is what an http or https advisor asks and expects.
type HTTPCheck struct {
	// Method (method). Default GET.
	Method string
	// Path (path), starting with '/'. Default "/".
	Path string
	// Host (host) is the Host header (and TLS server name). Default: the
	// address probed.
	Host string
	// Status (status) expected, 100 to 599. Default 200.
	Status uint32
	// Body (body) is a substring the response body must contain. Default
	// "" (any).
	Body string
	// Insecure (insecure) skips certificate verification (https). Default
	// false.
	Insecure bool
}

// HA is this node's part in a high-availability group (docs/HA.md). The
// VIPs of the group are every cluster's VIP: the active node brings them up
// on Interface and announces them; standbys hold none.
type HA struct {
	// Group (group) names the group; nodes of other groups are ignored.
	// Default "default".
	Group string
	// Interface (interface) is where the active brings the VIPs up and
	// announces them (gratuitous ARP, unsolicited neighbour advertisement).
	// Required; usually one of interfaces.
	Interface string
	// Self (self) is this node's address:port for heartbeats and state
	// sync: its own address on the shared network. Required.
	Self netip.AddrPort
	// Peers (peers) are the other nodes' address:port. At least one.
	Peers []netip.AddrPort
	// Priority (priority) 1 to 255: the highest live node is active.
	// Default 100.
	Priority uint32
	// Preempt (preempt): a returning node of higher priority takes the
	// VIPs back (in an orderly handover). Default false.
	Preempt bool
	// Interval (interval) between heartbeats. Default 500ms. DeadAfter
	// (dead_after) of silence makes a peer gone; at least two intervals.
	// Default 2s.
	Interval, DeadAfter time.Duration
	// KeyFile (key_file) is the absolute path of the group's shared key (at
	// least 16 bytes, not readable by others). Required.
	KeyFile string
	// Refresh (refresh) is how often the active refreshes the standbys'
	// copies of the flows that carried packets since the last round. 0
	// (the default) means a quarter of data_plane.idle_timeout; closing
	// flows are refreshed every quarter of data_plane.halfopen_timeout
	// (or every Refresh if shorter). At most half of idle_timeout. With
	// Mode, the only ha settings that change on reload.
	Refresh time.Duration
	// Mode (mode) is HAModeActiveStandby (the default: one node forwards,
	// the others stand by) or HAModeActiveActive (every node forwards; the
	// elected one leads the configuration and weights; the VIPs are routed
	// to the nodes, docs/SCALEOUT.md). Changes on reload.
	Mode string
}

// The modes of an HA group.
const (
	HAModeActiveStandby = "active-standby"
	HAModeActiveActive  = "active-active"
)

// ActiveActive reports whether the group runs in active-active mode.
func (h *HA) ActiveActive() bool { return h != nil && h.Mode == HAModeActiveActive }

// Refreshes returns the refresh periods of established and closing flows
// that h.Refresh and the data plane's timeouts give.
func (h *HA) Refreshes(dp DataPlane) (established, closing time.Duration) {
	established = h.Refresh
	if established == 0 {
		established = dp.IdleTimeout / 4
	}
	closing = min(established, min(dp.HalfOpenTimeout, dp.IdleTimeout)/4)
	return established, closing
}

// Defaults of the ha section.
const (
	DefaultHAGroup     = "default"
	DefaultHAPriority  = 100
	DefaultHAInterval  = 500 * time.Millisecond
	DefaultHADeadAfter = 2 * time.Second
)

// Agents configures polling of the host-metric agents (cmd/ndagent): every
// server of every port is polled at its own address.
type Agents struct {
	// Port (port) the agents listen on. Default 7431 (ndagent's default).
	Port uint16
	// KeyFile (key_file) is an absolute path to the shared key (at least
	// 16 bytes, not readable by others). Required unless TLS is set.
	KeyFile string
	// TLSCert, TLSKey (tls_cert, tls_key) are the dispatcher's client
	// certificate and key, TLSCA (tls_ca) the CA that signed the agents'
	// certificates: mutual TLS. All three or none; absolute paths.
	TLSCert, TLSKey, TLSCA string
	// Interval (interval) between polls. Default 2s. Timeout (timeout) of a
	// poll. Default 1s.
	Interval, Timeout time.Duration
	// DisabledAfter (disabled_after) without a valid report makes a
	// server's host metrics "disabled": the manager takes it out. Default
	// 10s.
	DisabledAfter time.Duration
}

// Proportions are the relative importance, in percent, of the manager's
// inputs. Keeping Active and New at 20 or more each is advised.
type Proportions struct {
	// Active (active) weighs each server's active flows. Default 50.
	Active uint32
	// New (new) weighs each server's new flows per interval. Default 50.
	New uint32
	// Advisor (advisor) weighs the advisors' response times. Default 0.
	Advisor uint32
	// Host (host) weighs the host agents' load reports. Default 0.
	Host uint32
	// Custom (custom) are operator-defined metrics, each with its own
	// proportion. Default none.
	Custom []CustomMetric
}

// CustomMetric is an operator-defined manager input: a metric an agent
// reports (one of its configured commands) or another advisor's latency.
type CustomMetric struct {
	// Name (name) labels the metric in reports. Required.
	Name string
	// Agent (agent) names the agent metric; Advisor (advisor) names an
	// advisor. Exactly one.
	Agent, Advisor string
	// Proportion (proportion), 0 to 100.
	Proportion uint32
}

// Sum is the total of the proportions.
func (p Proportions) Sum() uint64 {
	s := uint64(p.Active) + uint64(p.New) + uint64(p.Advisor) + uint64(p.Host)
	for _, c := range p.Custom {
		s += uint64(c.Proportion)
	}
	return s
}

// Cluster is one virtual IP address and the ports served on it.
type Cluster struct {
	// VIP (vip) is the virtual IP address clients connect to, IPv4 or
	// IPv6; not unspecified, multicast, loopback or IPv4-mapped, and with no
	// zone. Each VIP appears in one cluster only. Required.
	VIP netip.Addr
	// Ports (ports) are the ports served on the VIP. At least one.
	Ports []PortSpec
}

// PortSpec is one port of a cluster as the file states it: a port number and
// protocol, its affinity, and its servers.
type PortSpec struct {
	// Port (port) is the port number, 1 to 65535. Required.
	Port uint16
	// Protocol (protocol) is tcp or udp. A port number may be listed once
	// per protocol. Default tcp.
	Protocol nd.Proto
	// StickyTime (sticky_time) is client affinity: a client that comes back
	// within this time of its last flow goes to the same server (the IBM
	// product's stickytime). Whole seconds, 0 to 24h; 0 disables affinity.
	// Default 0s.
	StickyTime time.Duration
	// WeightBound (weight_bound) is the largest weight a server of this
	// port may have, configured or set by the manager: weights run from 0
	// to the bound. 1 to 1000. Default 100.
	WeightBound uint32
	// Scheduler (scheduler) is how the data plane picks a server for a
	// new flow: maglev (the weights) or p2c (two candidates from the
	// weights, the one with fewer active flows for its weight). Default
	// maglev.
	Scheduler string
	// Advisor (advisor) names the advisor that probes this port's servers:
	// its latency feeds the advisor proportion, and a server it finds down
	// gets weight 0. Default "" (none).
	Advisor string
	// Proportions (proportions) override manager.proportions for this
	// port. Default: the manager's.
	Proportions *Proportions
	// Servers (servers) are the real servers. May be empty. Each address
	// once.
	Servers []Server
}

// Server is one real server of a port.
type Server struct {
	// Address (address) is the server's IP address, of the VIP's family.
	// The daemon finds its MAC address and interface in the neighbour table.
	// Required.
	Address netip.Addr
	// Weight (weight) is the server's initial share of new flows, 0 to the
	// port's weight_bound; the manager adjusts it when a policy other than
	// static runs. 0 sends it no new flows. Default half the weight bound
	// (rounded up, so that a bound of 1 gives 1), as in the IBM product; see
	// DefaultWeight.
	Weight uint32
	// Quiesce (quiesce) stops new flows to the server while established
	// ones continue (data-plane weight 0); Weight is kept for when the
	// server is brought back. Default false.
	Quiesce bool
	// Local (local) marks a server co-located on the dispatcher itself: its
	// packets go up the dispatcher's own stack instead of being forwarded.
	// Default false.
	Local bool
	// Fixed (fixed) keeps Weight whatever the load: the manager does not
	// adjust it (it still takes the server out when it is down). Default
	// false.
	Fixed bool
}

// DefaultWeight is a server's weight when the file gives none: half the
// port's weight bound, rounded up.
func DefaultWeight(bound uint32) uint32 {
	return bound/2 + bound%2
}

// EffectiveWeight is the weight the data plane should use: 0 when quiesced.
func (s Server) EffectiveWeight() uint32 {
	if s.Quiesce {
		return 0
	}
	return s.Weight
}

// Port is one service as the daemon installs it: the executor's key, its
// settings and its servers sorted by address. Proportions are the port's
// own or the manager's.
type Port struct {
	Key         nd.ServiceKey
	StickyTime  time.Duration
	WeightBound uint32
	Scheduler   string
	Advisor     string
	Proportions Proportions
	Servers     []Server
}

// Default returns a configuration with every default applied and no
// interfaces or clusters: a start for a Config built in code.
func Default() *Config {
	return &Config{
		DataPlane: DataPlane{
			MaxFlows:    nd.DefaultMaxFlows,
			MaxServers:  nd.DefaultMaxServers,
			MaxServices: nd.DefaultMaxServices,
			MaxVIPs:     nd.DefaultMaxVIPs,
			MaxAffinity: nd.DefaultMaxAffinity,
			RingSize:    maglev.DefaultSize,
			IdleTimeout: nd.DefaultIdleTimeout,
			PinPath:     DefaultPinPath,

			HalfOpenTimeout: nd.DefaultHalfOpenTimeout,
		},
		API: API{Socket: DefaultSocket},
		Manager: Manager{
			Interval:    DefaultInterval,
			Sensitivity: DefaultSensitivity,
			Smoothing:   DefaultSmoothing,
			Policy:      DefaultPolicy,
			Proportions: Proportions{Active: 30, New: 30, Advisor: 40},
			Overload:    DefaultOverload,
			HostMetric:  DefaultHostMetric,
		},
	}
}

// Ports returns every port of every cluster, sorted by VIP (IPv4 first), port
// and protocol, each with its servers sorted by address. The result shares
// nothing with c.
func (c *Config) Ports() []Port {
	var ports []Port
	for _, cl := range c.Clusters {
		for _, p := range cl.Ports {
			props := c.Manager.Proportions
			if p.Proportions != nil {
				props = *p.Proportions
			}
			props.Custom = slices.Clone(props.Custom)
			sched := p.Scheduler
			if sched == "" {
				sched = DefaultScheduler
			}
			ports = append(ports, Port{
				Key:         nd.ServiceKey{VIP: cl.VIP, Port: p.Port, Proto: p.Protocol},
				StickyTime:  p.StickyTime,
				WeightBound: p.WeightBound,
				Scheduler:   sched,
				Advisor:     p.Advisor,
				Proportions: props,
				Servers:     sortedServers(p.Servers),
			})
		}
	}
	slices.SortFunc(ports, func(a, b Port) int { return compareKeys(a.Key, b.Key) })
	return ports
}

func sortedServers(s []Server) []Server {
	out := slices.Clone(s)
	slices.SortFunc(out, func(a, b Server) int { return a.Address.Compare(b.Address) })
	return out
}

func compareKeys(a, b nd.ServiceKey) int {
	return cmp.Or(a.VIP.Compare(b.VIP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
}

// validRingSize reports whether n is usable as a Maglev table size.
func validRingSize(n uint32) bool {
	return n >= maglev.MinSize && n <= maglev.MaxSize && maglev.IsPrime(n)
}
