// Package nd holds the words every part of nd shares: the names of
// services and flows, protocols, schedulers, the data plane's view of a
// service and its counters. It imports nothing of nd, so that any package
// may import it (configuration, manager, API, CLI) without the data plane.
package nd

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// ErrInvalid marks a value or a request rejected as malformed.
var ErrInvalid = errors.New("invalid")

// Proto is an IP protocol number nd dispatches.
type Proto uint8

const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProto accepts "tcp" and "udp".
func ParseProto(s string) (Proto, error) {
	switch s {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("%w: protocol %q (want tcp or udp)", ErrInvalid, s)
}

// Scheduler is how a service picks the server of a new flow.
type Scheduler uint8

const (
	// SchedulerMaglev sends a new flow where the service's weighted Maglev
	// table says: shares follow the weights exactly, whatever the servers
	// hold at the moment. The default.
	SchedulerMaglev Scheduler = iota
	// SchedulerP2C is weighted power of two choices: the Maglev table
	// names two candidates by two independent hashes of the flow, and the
	// one with fewer open flows for its weight wins. The weights (the
	// manager's) still set the long-run shares, while the data plane
	// steers away from a server that holds more than its share within a
	// flow's time. It costs a second hash and two counter reads per new
	// flow, and an atomic add per new and per closed flow. A flow's server
	// is then no longer a function of its hash alone: a packet that finds
	// no entry (on a standby that did not learn the flow) may go to the
	// other candidate, so high availability needs FlowEvents.
	SchedulerP2C
	// SchedulerDelay is least expected delay: every server of the service
	// that may take new flows is scored (active + 1) x its cost, the
	// expected delay per flow it holds (Server.Delay over its weight), and
	// the lowest takes the flow. Among servers as fast as their peers it is
	// least connections per unit of weight; a server the manager finds
	// slower takes new flows only while its peers are busier by its delay
	// factor. It reads one counter per server per new flow and keeps the
	// open-flow counts as p2c does; a service with more than MaxMembers
	// servers taking new flows is scheduled as p2c. High availability
	// needs FlowEvents, as for p2c.
	SchedulerDelay
)

// CountsActive says whether the data plane keeps the service's open-flow
// counts (server_active): its scheduler compares them.
func (s Scheduler) CountsActive() bool { return s == SchedulerP2C || s == SchedulerDelay }

func (s Scheduler) String() string {
	switch s {
	case SchedulerMaglev:
		return "maglev"
	case SchedulerP2C:
		return "p2c"
	case SchedulerDelay:
		return "delay"
	}
	return fmt.Sprintf("scheduler(%d)", uint8(s))
}

// ParseScheduler accepts "maglev", "p2c", "delay", and "" for the zero
// value, maglev (the configuration's default is its own, delay).
func ParseScheduler(s string) (Scheduler, error) {
	switch s {
	case "", "maglev":
		return SchedulerMaglev, nil
	case "p2c":
		return SchedulerP2C, nil
	case "delay":
		return SchedulerDelay, nil
	}
	return 0, fmt.Errorf("%w: scheduler %q (want maglev, p2c or delay)", ErrInvalid, s)
}

// MarshalText writes the scheduler's name.
func (s Scheduler) MarshalText() ([]byte, error) {
	if s > SchedulerDelay {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, s)
	}
	return []byte(s.String()), nil
}

// UnmarshalText reads what ParseScheduler accepts.
func (s *Scheduler) UnmarshalText(b []byte) error {
	v, err := ParseScheduler(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// ServiceKey names a service: a VIP, a port and a protocol.
type ServiceKey struct {
	VIP   netip.Addr
	Port  uint16
	Proto Proto
}

func (k ServiceKey) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.VIP, k.Port), k.Proto)
}

// Server is one real server of a service (a port server instance).
type Server struct {
	Addr netip.Addr
	// MAC is the server's hardware address; Ifindex the interface that
	// reaches it. Both are ignored when Local is set.
	MAC     net.HardwareAddr
	Ifindex int
	// Local marks the dispatcher host itself (co-location): its packets go
	// to the local stack untouched.
	Local bool
	// Weight is the server's share of new flows; 0 quiesces it: no new
	// flows, existing ones keep going.
	Weight uint32
	// Delay is the manager's delay factor for the delay scheduler: the
	// expected delay of one more flow there, relative to a typical server
	// of the service. 0 reads as 1; other schedulers ignore it.
	Delay float64
	// Held: the server cannot be reached now (its neighbour entry
	// failed). It keeps its slot, so that its flows keep their server for
	// when it is back, but takes no new flow (Weight must be 0) and the
	// packets of its flows are dropped meanwhile, as IPVS drops those of
	// a destination it cannot use.
	Held bool
}

// Service is the whole state of one VIP:port as the data plane sees it.
type Service struct {
	Key ServiceKey
	// StickyTime is the client affinity window (the IBM product's
	// stickytime); 0 disables affinity. Whole seconds.
	StickyTime time.Duration
	// Scheduler picks new flows' servers (after affinity, which wins
	// first). The zero value is SchedulerMaglev.
	Scheduler Scheduler
	// FlowTime is how long a typical flow of the service lasts, from the
	// manager. The delay scheduler charges a server whose recent new flows,
	// lasting that long, would hold several times the flows it does hold
	// with that figure instead (a server failing every flow at once must
	// not look idle). 0 turns the charge off.
	FlowTime time.Duration
	Servers  []Server
}

// FlowKey identifies a client-to-VIP flow.
type FlowKey struct {
	Client netip.AddrPort
	VIP    netip.AddrPort
	Proto  Proto
}

func (k FlowKey) Service() ServiceKey {
	return ServiceKey{VIP: k.VIP.Addr(), Port: k.VIP.Port(), Proto: k.Proto}
}

func (k FlowKey) String() string {
	return fmt.Sprintf("%s->%s/%s", k.Client, k.VIP, k.Proto)
}

// Flow is a connection table entry, named by server address rather than any
// slot number, so that it means the same on another dispatcher.
type Flow struct {
	Key    FlowKey
	Server netip.Addr
	// Idle is how long ago the flow last carried a packet (to about a
	// second: the data plane refreshes its timestamp once a second).
	Idle time.Duration
	// Closing is set once the client sent FIN or RST.
	Closing bool
	// HalfOpen is set while the flow has only sent a SYN (or one stray
	// packet): it is not counted open, and times out after the half-open
	// timeout. The handshake's ACK makes it established.
	HalfOpen bool
	// Once is set while a UDP flow has sent a single datagram: counted
	// open, but not yet reported, refreshed or snapshotted to HA peers (a
	// spoofed datagram never sends a second).
	Once bool
}

// ServerStats are the data plane's counters for one server of one service:
// the raw material of the manager's input metrics. All only grow, except
// when a server is removed and added again.
//
// NewFlows counts established flows: a TCP flow when its handshake's ACK
// arrives, a UDP flow with its first packet. A flood of SYNs therefore moves
// neither NewFlows nor Active; the half-open flows are counted apart.
type ServerStats struct {
	NewFlows uint64
	Packets  uint64
	Bytes    uint64
	Closed   uint64 // established flows seen closing by client FIN or RST
	Expired  uint64 // established flows found idle past the idle timeout
	// HalfOpenOpened counts half-open flows recorded (SYNs, and stray
	// packets of unknown flows).
	HalfOpenOpened uint64
	// HalfOpen is a gauge, not a counter: the server's half-open flows
	// now, as the data plane counts them (flows that time out unseen
	// leave it at the next ReconcileActive).
	HalfOpen uint64
}

// Active estimates the server's open flows: opened minus closed or expired.
func (s ServerStats) Active() uint64 {
	gone := s.Closed + s.Expired
	if gone > s.NewFlows {
		return 0
	}
	return s.NewFlows - gone
}

// ServiceStats are the counters of one VIP:port.
type ServiceStats struct {
	Packets  uint64
	Bytes    uint64
	NoServer uint64 // dropped: no server had a positive weight
	Servers  map[netip.Addr]ServerStats
}

// VIPStats are counters of packets to a VIP that no service took.
type VIPStats struct {
	Filtered      uint64 `json:"filtered"`       // port or protocol not defined: dropped
	Fragments     uint64 `json:"fragments"`      // IP fragments: dropped
	ICMPLocal     uint64 `json:"icmp_local"`     // ICMP handed to the dispatcher's own stack
	ICMPForwarded uint64 `json:"icmp_forwarded"` // PMTU errors sent to the server owning the flow
}

// GlobalStats count what was not for any VIP.
type GlobalStats struct {
	Passed    uint64 `json:"passed"`    // IP packets not for a VIP: passed untouched
	Malformed uint64 `json:"malformed"` // IP packets that could not be parsed
	NotIP     uint64 `json:"not_ip"`    // neither IPv4 nor IPv6: passed untouched
	// FlowsEvicted counts live flows pushed out of a full connection table
	// bucket (they continue by the ring): the table is too small.
	FlowsEvicted uint64 `json:"flows_evicted"`
	// FlowsUnrecorded counts new flows not recorded because two CPUs
	// raced for the same table entry (they continue by the ring).
	FlowsUnrecorded uint64 `json:"flows_unrecorded"`
	// FlowEventsLost counts flow events not reported because the
	// subscriber fell behind and the ring (or the Fake's queue) was full.
	FlowEventsLost uint64 `json:"flow_events_lost"`
	// OtherHost counts frames for a VIP addressed to another host's MAC
	// (flooded, or seen in promiscuous mode): passed to the stack, which
	// drops them, instead of forwarded as a copy.
	OtherHost uint64 `json:"other_host"`
	// HalfOpenEvicted counts live half-open flows displaced by new ones
	// (their SYN's choice is forgotten; their ACK goes by the ring).
	HalfOpenEvicted uint64 `json:"halfopen_evicted"`
	// OpenersUnrecorded counts SYNs (and first UDP packets) forwarded but
	// not recorded: every way of their bucket held a live established or
	// closing flow, which no packet displaces.
	OpenersUnrecorded uint64 `json:"openers_unrecorded"`
	// StraysUnrecorded counts packets of unknown flows (ACK, data)
	// forwarded but not recorded: they take only a free way.
	StraysUnrecorded uint64 `json:"strays_unrecorded"`
	// TablePressure is set while the connection table is under pressure:
	// within the half-open timeout a new flow displaced a live half-open
	// flow or found no way it may take.
	TablePressure bool `json:"table_pressure"`
}

// FlowEventKind says what happened to a flow.
type FlowEventKind uint8

const (
	// FlowOpened: the data plane recorded a new flow. Its Flow is
	// Closing when the flow's first packet was already a FIN or RST.
	FlowOpened FlowEventKind = 1
	// FlowClosed: the client sent its first FIN or RST of a recorded
	// flow. The entry stays in the table, marked Closing.
	FlowClosed FlowEventKind = 2
)

func (k FlowEventKind) String() string {
	switch k {
	case FlowOpened:
		return "opened"
	case FlowClosed:
		return "closed"
	}
	return fmt.Sprintf("flow-event(%d)", uint8(k))
}

// FlowEvent is one report of the data plane, for a standby dispatcher to
// mirror: its Flow, given to UpsertFlows, recreates the entry as it stands
// on the active (Idle is how long ago the packet passed, as of reading).
type FlowEvent struct {
	Kind FlowEventKind
	Flow Flow
}

// Stats is one reading of every counter.
type Stats struct {
	Services map[ServiceKey]ServiceStats
	VIPs     map[netip.Addr]VIPStats
	Global   GlobalStats
}

// The data plane's default sizes and timeouts: the configuration documents
// them, the executor applies them.
const (
	DefaultMaxFlows        = 1 << 20
	DefaultMaxServers      = 4096
	DefaultMaxServices     = 1024
	DefaultMaxVIPs         = 1024
	DefaultMaxAffinity     = 1 << 16
	DefaultIdleTimeout     = 300 * time.Second
	DefaultHalfOpenTimeout = 10 * time.Second
)
