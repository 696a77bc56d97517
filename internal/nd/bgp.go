package nd

import (
	"errors"
	"time"
)

// ErrNoBGP is returned by BGP calls on a dispatcher without a bgp section.
var ErrNoBGP = errors.New("bgp is not configured")

// Event types of BGP.
const (
	EventBGPPeer      = "bgp_peer"      // a session changed state
	EventBGPAnnounced = "bgp_announced" // a VIP's route is announced (or its attributes changed)
	EventBGPWithdrawn = "bgp_withdrawn" // a VIP's route is withdrawn, Message says why
	EventBGPDrained   = "bgp_drained"   // the operator drained or undrained the dispatcher
)

// BGPEstablished is the state of a session that exchanges routes.
const BGPEstablished = "established"

// BGPStatus is a dispatcher's BGP speaker, as `ndctl bgp status` shows it.
type BGPStatus struct {
	ASN      uint32 `json:"asn"`
	RouterID string `json:"router_id"`
	// Drained is the operator's drain; Stopping means ndd is stopping.
	Drained  bool      `json:"drained"`
	Stopping bool      `json:"stopping"`
	Peers    []BGPPeer `json:"peers"`
	VIPs     []BGPVIP  `json:"vips"`
}

// BGPPeer is one BGP session.
type BGPPeer struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	// State is the session's BGP state: idle, connect, active, opensent,
	// openconfirm, established.
	State string `json:"state"`
	// Since is when the session was established; zero unless it is.
	Since time.Time `json:"since,omitzero"`
	// HoldTime is the negotiated hold time while established.
	HoldTime time.Duration `json:"hold_time_ns,omitempty"`
	// Advertised and Received count prefixes sent to and accepted from
	// the peer.
	Advertised uint64 `json:"advertised"`
	Received   uint64 `json:"received"`
	// Flaps counts the times the session went down.
	Flaps uint32 `json:"flaps"`
}

// BGPVIP is one VIP's route.
type BGPVIP struct {
	VIP       string `json:"vip"`
	Announced bool   `json:"announced"`
	// Reason says why a route is withdrawn.
	Reason      string   `json:"reason,omitempty"`
	MED         uint32   `json:"med"`
	Communities []string `json:"communities,omitempty"`
	NextHop     string   `json:"next_hop,omitempty"` // "" for self
}
