package daemon

import (
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
)

// ExecutorConfig is the executor configuration a file's data_plane section
// describes. The caller adds what the file does not hold (a logger).
func ExecutorConfig(d config.DataPlane) executor.Config {
	return executor.Config{
		PinPath:     d.PinPath,
		MaxFlows:    d.MaxFlows,
		MaxServers:  d.MaxServers,
		MaxServices: d.MaxServices,
		MaxVIPs:     d.MaxVIPs,
		MaxAffinity: d.MaxAffinity,
		RingSize:    d.RingSize,
		IdleTimeout: d.IdleTimeout,
		HashSeed:    d.HashSeed,

		HalfOpenTimeout: min(d.HalfOpenTimeout, d.IdleTimeout),

		ExpireNodestConn: d.ExpireNodestConn,
		// The flow-event ring feeds high availability; its default size
		// holds seconds of new flows at line rate.
		FlowEventsRing: executor.DefaultConfig().FlowEventsRing,
	}
}
