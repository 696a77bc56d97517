// Package api is nd's control API: HTTP with JSON bodies, served by ndd on a
// unix socket (and optionally on TCP with a bearer token), and the Go client
// that ndctl uses. The daemon is a library; this package is one of its
// clients, talking to it through the Controller interface, which
// *daemon.Daemon satisfies (the package imports no daemon: ndctl links no
// data plane).
//
// Every change goes through Controller.Update (or Apply, for a whole
// configuration), so that the daemon diffs and applies it like any other:
// the API holds no state of its own. docs/API.md describes the routes.
package api

import (
	"context"
	"errors"
	"net/netip"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/agent"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/manager"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// Controller is what the API needs of the daemon; *daemon.Daemon is the real
// one.
type Controller interface {
	// Config returns a copy of the running configuration.
	Config() *config.Config
	// Apply makes cfg the running configuration.
	Apply(cfg *config.Config) (config.Changes, error)
	// Update edits a copy of the running configuration and applies it.
	Update(fn func(*config.Config) error) (config.Changes, error)
	// Reload re-reads the configuration file.
	Reload() (config.Changes, error)
	// Status describes the dispatcher.
	Status() (nd.Status, error)
	// Events subscribes to the daemon's events, starting with the recent
	// ones; the function ends the subscription and closes the channel.
	Events() (<-chan nd.Event, func())
	// ManagerReport is the manager's last computation per port.
	ManagerReport() []manager.PortReport
	// AdvisorStatus is every advisor target's state.
	AdvisorStatus() []advisor.Status
	// AgentStatus is every polled agent's state.
	AgentStatus() map[netip.AddrPort]agent.Status
	// HAStatus is this node's view of its high-availability group;
	// nd.ErrNoHA without one.
	HAStatus() (ha.Status, error)
	// HATakeover makes this node the active one, in an orderly handover.
	HATakeover(ctx context.Context) error
	// BGPStatus describes the BGP speaker; nd.ErrNoBGP without one.
	BGPStatus(ctx context.Context) (nd.BGPStatus, error)
	// BGPDrain withdraws every VIP (true) or announces the servable ones
	// again (false); nd.ErrNoBGP without a speaker.
	BGPDrain(ctx context.Context, drain bool) (nd.BGPStatus, error)
	// Flows lists at most limit connection table entries that match f, and
	// whether more matched.
	Flows(f nd.FlowFilter, limit int) ([]nd.Flow, bool, error)
}

var (
	// ErrNotFound is wrapped by an edit that names a cluster, port or
	// server that the configuration lacks (HTTP 404).
	ErrNotFound = errors.New("not found")
	// ErrExists is wrapped by an edit that adds a cluster, port or server
	// that the configuration already has (HTTP 400).
	ErrExists = errors.New("already exists")
	// ErrBadRequest is wrapped by a request that cannot be read: malformed
	// JSON, an unknown field, a bad address (HTTP 400).
	ErrBadRequest = errors.New("bad request")
)

// Route parameters and bodies.

// ClusterRequest is the body of POST /v1/clusters: a VIP and, optionally, its
// first ports (a cluster needs at least one port to be valid).
type ClusterRequest struct {
	VIP   string        `json:"vip"`
	Ports []PortRequest `json:"ports,omitempty"`
}

// PortRequest is the body of POST /v1/clusters/{vip}/ports, and one port of a
// ClusterRequest.
type PortRequest struct {
	// Port is the port number, 1 to 65535. Required.
	Port uint16 `json:"port"`
	// Protocol is tcp or udp; "" means tcp.
	Protocol string `json:"protocol,omitempty"`
	// StickyTime is a Go duration in whole seconds ("30s"); "" means 0s,
	// no affinity.
	StickyTime string `json:"sticky_time,omitempty"`
	// WeightBound is the largest weight of the port's servers, 1 to 1000;
	// 0 means the default, 100.
	WeightBound uint32 `json:"weight_bound,omitempty"`
	// Servers are the port's first servers. Optional.
	Servers []ServerRequest `json:"servers,omitempty"`
}

// ServerRequest is the body of POST .../servers: one server to add.
type ServerRequest struct {
	// Address is the server's IP address, of the VIP's family. Required.
	Address string `json:"address"`
	// Weight is the server's weight, 0 to the port's weight bound; nil
	// means half the bound (config.DefaultWeight).
	Weight *uint32 `json:"weight,omitempty"`
	// Quiesce adds the server without sending it new flows.
	Quiesce bool `json:"quiesce,omitempty"`
	// Local marks a server co-located on the dispatcher.
	Local bool `json:"local,omitempty"`
}

// ServerPatch is the body of PATCH .../servers/{address}: the settings to
// change; a nil field stays as it is. Fixed keeps the weight whatever the
// load (the manager leaves it).
type ServerPatch struct {
	Weight  *uint32 `json:"weight,omitempty"`
	Quiesce *bool   `json:"quiesce,omitempty"`
	Fixed   *bool   `json:"fixed,omitempty"`
}

// ChangesResponse answers every request that changes the configuration: what
// the daemon did, as config.Changes.String() writes it ("no changes" when
// nothing differed).
type ChangesResponse struct {
	Changes string `json:"changes"`
}

// ErrorResponse is the body of every error response.
type ErrorResponse struct {
	Error string `json:"error"`
}

// HealthResponse answers GET /v1/health.
type HealthResponse struct {
	OK bool `json:"ok"`
}

// Error is an error response of the server, as the Client returns it.
type Error struct {
	// Status is the HTTP status code.
	Status int
	// Message is the server's one-line explanation.
	Message string
}

// Error returns the server's message.
func (e *Error) Error() string { return e.Message }
