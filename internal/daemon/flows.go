package daemon

import (
	"fmt"
	"net/netip"

	"github.com/nd-dispatcher/nd/internal/executor"
)

// MaxFlowsListed bounds one listing of the connection table: a table holds
// a million flows, and a listing is for looking at, not for copying it
// out (high availability has its own stream for that).
const MaxFlowsListed = 100_000

// FlowFilter selects connection table entries, as `ipvsadm -Lnc` piped to
// grep would; a zero field matches every entry.
type FlowFilter struct {
	VIP    netip.Addr
	Port   uint16
	Proto  executor.Proto
	Client netip.Addr
	Server netip.Addr
}

func (f FlowFilter) match(fl executor.Flow) bool {
	return (!f.VIP.IsValid() || fl.Key.VIP.Addr() == f.VIP) &&
		(f.Port == 0 || fl.Key.VIP.Port() == f.Port) &&
		(f.Proto == 0 || fl.Key.Proto == f.Proto) &&
		(!f.Client.IsValid() || fl.Key.Client.Addr() == f.Client) &&
		(!f.Server.IsValid() || fl.Server == f.Server)
}

// Flows returns at most limit entries of the connection table that match
// f, in the table's order, and whether more matched. The table is read
// while packets flow: an entry written meanwhile may be missed or seen.
func (d *Daemon) Flows(f FlowFilter, limit int) (flows []executor.Flow, more bool, err error) {
	if limit < 1 || limit > MaxFlowsListed {
		return nil, false, fmt.Errorf("%w: flow limit %d: want 1 to %d", executor.ErrInvalid, limit, MaxFlowsListed)
	}
	err = d.x.Flows(func(fl executor.Flow) bool {
		if !f.match(fl) {
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
