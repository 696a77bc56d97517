package daemon

import (
	"fmt"

	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// Flows returns at most limit entries of the connection table that match
// f, in the table's order, and whether more matched. The table is read
// while packets flow: an entry written meanwhile may be missed or seen.
func (d *Daemon) Flows(f nd.FlowFilter, limit int) (flows []executor.Flow, more bool, err error) {
	if limit < 1 || limit > nd.MaxFlowsListed {
		return nil, false, fmt.Errorf("%w: flow limit %d: want 1 to %d", executor.ErrInvalid, limit, nd.MaxFlowsListed)
	}
	err = d.x.Flows(func(fl executor.Flow) bool {
		if !f.Match(fl) {
			return true
		}
		if len(flows) == limit {
			more = true
			return false
		}
		flows = append(flows, fl)
		return true
	})
	if err != nil {
		return nil, false, fmt.Errorf("read the connection table: %w", err)
	}
	return flows, more, nil
}
