package advisor

import (
	"context"
	"errors"
	"net"
	"time"
)

// TCP measures how long a TCP connection takes to open. The connection is
// closed at once; a refusal or a timeout means down.
type TCP struct{}

// Name returns "tcp".
func (TCP) Name() string { return KindTCP }

// Probe connects to t.Addr with t's dial function.
func (TCP) Probe(ctx context.Context, t Target) Result {
	start := time.Now()
	c, err := t.dialer()(ctx, "tcp", t.Addr.String())
	if err != nil {
		// A net.OpError would repeat the address.
		var oerr *net.OpError
		if errors.As(err, &oerr) {
			err = oerr.Err
		}
		return down("tcp connect %s: %v", t.Addr, err)
	}
	took := time.Since(start)
	c.Close()
	return up(took)
}
