package nd

import (
	"errors"
	"net/netip"
	"time"
)

// What the daemon shows of itself: its status, its events and its
// connection table, as the API serves them and ndctl prints them.

// Server states, as `ndctl status` shows them.
const (
	StateUp         = "up"         // resolved, weight > 0
	StateQuiesced   = "quiesced"   // weight 0: no new flows, old ones continue
	StateUnresolved = "unresolved" // no MAC: not in the data plane
	StateLocal      = "local"      // co-located on the dispatcher
)

// Status is a snapshot of the dispatcher for `ndctl status` and the metrics.
type Status struct {
	Time       time.Time    `json:"time"`
	Interfaces []string     `json:"interfaces"`
	Ports      []PortStatus `json:"ports"`
	VIPs       []VIPStatus  `json:"vips"`
	Global     GlobalStats  `json:"global"`
}

// PortStatus is one VIP:port.
type PortStatus struct {
	VIP        string         `json:"vip"`
	Port       uint16         `json:"port"`
	Protocol   string         `json:"protocol"`
	StickyTime string         `json:"sticky_time"`
	Packets    uint64         `json:"packets"`
	Bytes      uint64         `json:"bytes"`
	NoServer   uint64         `json:"no_server"`
	Servers    []ServerStatus `json:"servers"`
}

// ServerStatus is one server of a port.
type ServerStatus struct {
	Address   string `json:"address"`
	State     string `json:"state"`
	Reason    string `json:"reason,omitempty"` // why unresolved
	MAC       string `json:"mac,omitempty"`
	Interface string `json:"interface,omitempty"`
	// Weight is what the data plane uses; ConfigWeight what the
	// configuration says.
	Weight       uint32 `json:"weight"`
	ConfigWeight uint32 `json:"config_weight"`
	Quiesced     bool   `json:"quiesced"`
	NewFlows     uint64 `json:"new_flows"`
	ActiveFlows  uint64 `json:"active_flows"`
	// HalfOpenFlows are flows that sent a SYN and no ACK yet: not counted
	// in ActiveFlows (a flood of SYNs shows here only).
	HalfOpenFlows uint64  `json:"halfopen_flows"`
	Packets       uint64  `json:"packets"`
	Bytes         uint64  `json:"bytes"`
	NewFlowsRate  float64 `json:"new_flows_per_sec"`
	PacketsRate   float64 `json:"packets_per_sec"`
}

// VIPStatus counts what a VIP dropped or handed to the local stack.
type VIPStatus struct {
	VIP string `json:"vip"`
	VIPStats
}

// Event types: what an operator following `ndctl events --follow` sees.
const (
	EventConfigApplied     = "config_applied"
	EventError             = "error"
	EventAttached          = "attached"
	EventDetached          = "detached"
	EventServerResolved    = "server_resolved"
	EventServerChanged     = "server_changed"
	EventServerUnreachable = "server_unreachable"
	EventServerQuiesced    = "server_quiesced"
	EventWeightsCommitted  = "weights_committed"
	EventServerDown        = "server_down" // an advisor found it down
	EventServerUp          = "server_up"
	EventHAState           = "ha_state" // this node became active or standby
	// EventTablePressure: the connection table came under pressure (new
	// flows displace half-open ones or find no way: a SYN flood, or a
	// table too small), or, with Message "relieved", left it.
	EventTablePressure = "flow_table_pressure"
	// EventLost: this subscriber fell behind and lost the number of
	// events its Message says, just before this one.
	EventLost = "events_lost"
)

// Event is one thing that happened to the dispatcher.
type Event struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Service string    `json:"service,omitempty"` // VIP:port/protocol
	Server  string    `json:"server,omitempty"`
	Message string    `json:"message"`
}

// MaxFlowsListed bounds one listing of the connection table: a table holds
// a million flows, and a listing is for looking at, not for copying it
// out (high availability has its own stream for that).
const MaxFlowsListed = 100_000

// FlowFilter selects connection table entries, as `ipvsadm -Lnc` piped to
// grep would; a zero field matches every entry.
type FlowFilter struct {
	VIP    netip.Addr
	Port   uint16
	Proto  Proto
	Client netip.Addr
	Server netip.Addr
}

// Match tells whether the filter selects the entry.
func (f FlowFilter) Match(fl Flow) bool {
	return (!f.VIP.IsValid() || fl.Key.VIP.Addr() == f.VIP) &&
		(f.Port == 0 || fl.Key.VIP.Port() == f.Port) &&
		(f.Proto == 0 || fl.Key.Proto == f.Proto) &&
		(!f.Client.IsValid() || fl.Key.Client.Addr() == f.Client) &&
		(!f.Server.IsValid() || fl.Server == f.Server)
}

// ErrRejected wraps every reason a configuration is refused.
var ErrRejected = errors.New("configuration rejected")

// ErrNoHA is returned by HA calls on a dispatcher without an ha section.
var ErrNoHA = errors.New("high availability is not configured")
