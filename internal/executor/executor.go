// Package executor is nd's data plane: the paper's Executor. It owns the XDP
// program and its maps, and it is the only package that talks to the kernel's
// BPF interfaces. Everything above it (daemon, manager, high availability)
// speaks the Executor interface, which has a kernel implementation (BPF) and an
// in-memory one (Fake) for tests.
package executor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// The shared vocabulary lives in package nd (which imports nothing of nd);
// the executor speaks it under the same names.
type (
	Proto         = nd.Proto
	Scheduler     = nd.Scheduler
	ServiceKey    = nd.ServiceKey
	Server        = nd.Server
	Service       = nd.Service
	FlowKey       = nd.FlowKey
	Flow          = nd.Flow
	ServerStats   = nd.ServerStats
	ServiceStats  = nd.ServiceStats
	VIPStats      = nd.VIPStats
	GlobalStats   = nd.GlobalStats
	Stats         = nd.Stats
	FlowEventKind = nd.FlowEventKind
	FlowEvent     = nd.FlowEvent
)

const (
	TCP             = nd.TCP
	UDP             = nd.UDP
	SchedulerMaglev = nd.SchedulerMaglev
	SchedulerP2C    = nd.SchedulerP2C
	SchedulerDelay  = nd.SchedulerDelay
	FlowOpened      = nd.FlowOpened
	FlowClosed      = nd.FlowClosed
)

// ParseProto and ParseScheduler read protocol and scheduler names.
var (
	ParseProto     = nd.ParseProto
	ParseScheduler = nd.ParseScheduler
)

// MaxMembers is how many servers of a delay service the data plane scores
// for each new flow (MEMBERS_MAX).
const MaxMembers = 16

// Executor is what the rest of nd sees of the data plane. Implementations are
// safe for concurrent use.
type Executor interface {
	// Attach starts dispatching packets that arrive on the interface.
	Attach(ifindex int) error
	// Detach stops it.
	Detach(ifindex int) error

	// UpsertService installs a service or replaces its whole state
	// (servers, weights, affinity) at once: no packet sees half of it.
	// Established flows to servers that remain keep their server.
	UpsertService(Service) error
	// DeleteService removes a service; its VIP stops being served when no
	// other service uses it.
	DeleteService(ServiceKey) error
	// SetWeights changes the weights of some servers of a service at once.
	// Weight 0 quiesces; a held server stays at 0. Unknown servers are an
	// error and nothing changes.
	SetWeights(ServiceKey, map[netip.Addr]uint32) error
	// Services lists the installed services, sorted.
	Services() []Service

	// Stats reads every counter.
	Stats() (Stats, error)
	// ActiveFlows counts, from the connection table itself, the open flows
	// (not closing, not idle past the timeout) per service and server: the
	// reconciliation of the counters' active-flow estimate.
	ActiveFlows() (map[ServiceKey]map[netip.Addr]int, error)

	// ActiveCounts reads the live open-flow counts that the p2c scheduler
	// compares, for the servers of p2c services (negative counts read as
	// 0). Between reconciliations they may drift from ActiveFlows: flows
	// that go idle are noticed only when a packet or an eviction finds
	// them.
	ActiveCounts() (map[ServiceKey]map[netip.Addr]int, error)
	// ReconcileActive corrects those counts from the connection table
	// (what ActiveFlows reads). The table is scanned while packets flow,
	// and a flow opened or closed during the scan may be missed or
	// counted twice; so a count moves only by the part of its difference
	// that its server's opens and closes during the scan cannot explain:
	// all of it for a quiet server, none for scan noise. Call it
	// periodically: UDP flows, and TCP flows that end without a FIN or RST
	// from the client, leave the counts only when found idle.
	ReconcileActive() error

	// Flows calls fn for every connection table entry until fn returns false.
	Flows(fn func(Flow) bool) error
	// RecentFlows calls fn, until it returns false, for every entry that
	// carried a packet within the last within (closing entries: within
	// closingWithin), as Flows would; a negative duration selects no entry
	// of its kind, and half-open entries are never selected. The entries
	// are chosen on their stamps before they are decoded, so that a scan
	// that selects few costs little more than reading the table: what an
	// HA refresh round needs.
	RecentFlows(within, closingWithin time.Duration, fn func(Flow) bool) error
	// LookupFlow returns one entry.
	LookupFlow(FlowKey) (Flow, bool, error)
	// UpsertFlows writes entries, e.g. learnt from a peer dispatcher. An
	// entry naming a server the service lacks is skipped and reported.
	UpsertFlows([]Flow) error
	// DeleteFlow removes an entry.
	DeleteFlow(FlowKey) error

	// FlowEvents turns on the data plane's reports of new flows and
	// closes, and delivers them in batches, oldest first, until ctx ends
	// (or Close), when reporting stops and the channel is closed. The
	// packets are never held up: what the subscriber does not take in
	// time is dropped and counted (GlobalStats.FlowEventsLost). Entries
	// written through UpsertFlows are not reported. One subscriber at a
	// time: a second gets ErrBusy.
	FlowEvents(ctx context.Context) (<-chan []FlowEvent, error)

	// Drained reads the dispatcher's drain mark (`ndctl bgp drain`), and
	// SetDrained sets it. The kernel implementation keeps it with the
	// pinned tables, so that a restarted ndd, which takes the flows over,
	// keeps the routes withdrawn too; a fresh data plane starts undrained.
	Drained() (bool, error)
	SetDrained(bool) error

	// Close releases the implementation's resources. The kernel
	// implementation leaves a pinned data plane running.
	Close() error
}

var (
	// ErrInvalid marks a request the executor rejects as malformed.
	ErrInvalid = nd.ErrInvalid
	// ErrNotFound marks a request for a service or server that is not there.
	ErrNotFound = errors.New("not found")
	// ErrFull marks a table with no room left.
	ErrFull = errors.New("table full")
	// ErrBusy marks a request for something another caller holds.
	ErrBusy = errors.New("busy")
)

// validateService checks what both implementations require of a Service.
// setWeights gives s's servers the weights named in weights, what
// SetWeights does to the service it reads back: a held server stays at 0.
func setWeights(s *Service, weights map[netip.Addr]uint32) {
	for i := range s.Servers {
		if w, ok := weights[s.Servers[i].Addr]; ok && !s.Servers[i].Held {
			s.Servers[i].Weight = w
		}
	}
}

func validateService(s Service) error {
	k := s.Key
	if !k.VIP.IsValid() || k.VIP.Zone() != "" {
		return fmt.Errorf("%w: service %v: VIP is not a valid address", ErrInvalid, k)
	}
	if k.VIP.IsUnspecified() || k.VIP.IsMulticast() || k.VIP.Is4In6() {
		return fmt.Errorf("%w: service %v: VIP must be a unicast IPv4 or IPv6 address", ErrInvalid, k)
	}
	if k.Proto != TCP && k.Proto != UDP {
		return fmt.Errorf("%w: service %v: protocol must be tcp or udp", ErrInvalid, k)
	}
	if k.Port == 0 {
		return fmt.Errorf("%w: service %v: port 0", ErrInvalid, k)
	}
	if s.Scheduler > SchedulerDelay {
		return fmt.Errorf("%w: service %v: unknown %v", ErrInvalid, k, s.Scheduler)
	}
	if s.FlowTime < 0 {
		return fmt.Errorf("%w: service %v: negative flow time %v", ErrInvalid, k, s.FlowTime)
	}
	if s.StickyTime < 0 || s.StickyTime%time.Second != 0 || s.StickyTime > 24*time.Hour {
		return fmt.Errorf("%w: service %v: sticky time %v must be whole seconds between 0 and 24h", ErrInvalid, k, s.StickyTime)
	}
	seen := make(map[netip.Addr]bool, len(s.Servers))
	for _, sv := range s.Servers {
		if !sv.Addr.IsValid() || sv.Addr.Is4() != k.VIP.Is4() || sv.Addr.Is4In6() {
			return fmt.Errorf("%w: service %v: server %v is not an address of the VIP's family", ErrInvalid, k, sv.Addr)
		}
		if seen[sv.Addr] {
			return fmt.Errorf("%w: service %v: server %v listed twice", ErrInvalid, k, sv.Addr)
		}
		seen[sv.Addr] = true
		if !(sv.Delay >= 0) || math.IsInf(sv.Delay, 0) {
			return fmt.Errorf("%w: service %v: server %v: delay factor %v must be a finite number >= 0", ErrInvalid, k, sv.Addr, sv.Delay)
		}
		if sv.Held && (sv.Weight != 0 || sv.Local) {
			return fmt.Errorf("%w: service %v: server %v: a held server has weight 0 and is not local", ErrInvalid, k, sv.Addr)
		}
		if sv.Local {
			continue
		}
		if len(sv.MAC) != 6 {
			return fmt.Errorf("%w: service %v: server %v: MAC %q is not an Ethernet address", ErrInvalid, k, sv.Addr, sv.MAC)
		}
		if sv.Ifindex <= 0 {
			return fmt.Errorf("%w: service %v: server %v: no egress interface", ErrInvalid, k, sv.Addr)
		}
	}
	return nil
}

func validateFlowKey(k FlowKey) error {
	if !k.Client.IsValid() || !k.VIP.IsValid() || k.Client.Addr().Is4() != k.VIP.Addr().Is4() {
		return fmt.Errorf("%w: flow %v: addresses invalid or of mixed families", ErrInvalid, k)
	}
	if k.Proto != TCP && k.Proto != UDP {
		return fmt.Errorf("%w: flow %v: protocol", ErrInvalid, k)
	}
	return nil
}
