package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
)

const flowsHelp = `
Lists the data plane's connection table, as ipvsadm -Lnc does: each flow's
protocol, client, VIP:port, the server it was sent to, whether the client has
closed it, and how long since its last packet (to about a second). VIP, PORT
and the flags narrow the list; --limit bounds it (default 1000, at most
100000), and a note says when more flows matched. The table is read while
packets flow, so a flow opened or closed meanwhile may be missing.`

// flowsCmd prints connection table entries.
func flowsCmd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	client := fs.String("client", "", "only flows from this client `address`")
	server := fs.String("server", "", "only flows sent to this server `address`")
	limit := fs.Int("limit", api.DefaultFlowLimit, "list at most `n` flows")
	pos, err := s.parse(fs, args, 0, 2)
	if err != nil {
		return err
	}
	var q api.FlowQuery
	if len(pos) > 0 {
		if q.VIP, err = parseAddr("VIP", pos[0]); err != nil {
			return err
		}
	}
	if len(pos) > 1 {
		if q.Port, q.Protocol, err = parsePort(pos[1]); err != nil {
			return err
		}
	}
	if *client != "" {
		if q.Client, err = parseAddr("--client", *client); err != nil {
			return err
		}
	}
	if *server != "" {
		if q.Server, err = parseAddr("--server", *server); err != nil {
			return err
		}
	}
	if *limit < 1 {
		return usagef("--limit %d: want at least 1", *limit)
	}
	q.Limit = *limit
	return fetch(s, func(c Client) (api.FlowsResponse, error) { return c.Flows(q) }, writeFlows)
}

func writeFlows(w io.Writer, out api.FlowsResponse) error {
	err := writeTable(w, "no flows", "PROTO\tCLIENT\tVIP\tSERVER\tSTATE\tIDLE", out.Flows, func(tw io.Writer, f api.Flow) {
		state := "open"
		if f.Closing {
			state = "closing"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.Protocol, f.Client, f.VIP, f.Server, state, f.Idle().Round(time.Second))
	})
	if err != nil {
		return err
	}
	if len(out.Flows) > 0 && out.More {
		fmt.Fprintf(w, "(more flows match: %d listed; raise --limit)\n", len(out.Flows))
	}
	return nil
}
