package daemon

import "github.com/nd-dispatcher/nd/internal/nd"

// The daemon's status, events and flow filter are nd's shared words.
type (
	Status       = nd.Status
	PortStatus   = nd.PortStatus
	ServerStatus = nd.ServerStatus
	VIPStatus    = nd.VIPStatus
	Event        = nd.Event
	FlowFilter   = nd.FlowFilter
)

const (
	StateUp         = nd.StateUp
	StateQuiesced   = nd.StateQuiesced
	StateUnresolved = nd.StateUnresolved
	StateLocal      = nd.StateLocal

	EventConfigApplied     = nd.EventConfigApplied
	EventError             = nd.EventError
	EventAttached          = nd.EventAttached
	EventDetached          = nd.EventDetached
	EventServerResolved    = nd.EventServerResolved
	EventServerChanged     = nd.EventServerChanged
	EventServerUnreachable = nd.EventServerUnreachable
	EventServerQuiesced    = nd.EventServerQuiesced
	EventWeightsCommitted  = nd.EventWeightsCommitted
	EventServerDown        = nd.EventServerDown
	EventServerUp          = nd.EventServerUp
	EventHAState           = nd.EventHAState
	EventTablePressure     = nd.EventTablePressure

	MaxFlowsListed = nd.MaxFlowsListed
)

var (
	ErrRejected = nd.ErrRejected
	ErrNoHA     = nd.ErrNoHA
)
