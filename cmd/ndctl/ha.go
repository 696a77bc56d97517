package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nd-dispatcher/nd/internal/ha"
)

// haTakeover makes the node ndctl talks to the active one: the active
// hands its flows over, gives up the VIPs, and this node takes them.
func haTakeover(ctx context.Context, s *session, args []string) error {
	var start time.Time
	takeover := func(c Client) (ha.Status, error) {
		start = time.Now()
		return c.HATakeover()
	}
	return show(s, s.newFlags(), args, takeover, func(w io.Writer, st ha.Status) error {
		fmt.Fprintf(w, "%s is %s (%v)\n", st.Self, st.State, time.Since(start).Round(time.Millisecond))
		return nil
	})
}

// writeHAStatus prints this node's view of its high-availability group.
func writeHAStatus(w io.Writer, st ha.Status) error {
	active := "none"
	if st.Active.IsValid() {
		active = st.Active.String()
	}
	fmt.Fprintf(w, "group %s: this node %s is %s since %s (priority %d, preempt %t); active: %s\n",
		st.Group, st.Self, st.State, st.Since.Format(time.TimeOnly), st.Priority, st.Preempt, active)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tALIVE\tSTATE\tPRIORITY\tLAST HEARD\tSYNCED")
	for _, p := range st.Peers {
		heard := "never"
		if !p.LastHeard.IsZero() {
			heard = time.Since(p.LastHeard).Round(time.Millisecond).String() + " ago"
		}
		state := "-"
		if p.State != 0 {
			state = p.State.String()
		}
		fmt.Fprintf(tw, "%s\t%t\t%s\t%d\t%s\t%t\n", p.Addr, p.Alive, state, p.Priority, heard, p.Synced)
	}
	tw.Flush()
	c := st.Counters
	fmt.Fprintf(w, "heartbeats sent %d received %d; flows sent %d received %d dropped %d; snapshots sent %d received %d; configs sent %d received %d; takeovers %d, step-downs %d\n",
		c.HeartbeatsSent, c.HeartbeatsReceived, c.FlowsSent, c.FlowsReceived, c.FlowsDropped,
		c.SnapshotsSent, c.SnapshotsReceived, c.ConfigsSent, c.ConfigsReceived, c.Takeovers, c.StepDowns)
	refresh := "off"
	if st.Refresh > 0 {
		refresh = fmt.Sprintf("every %s (closing flows every %s)", st.Refresh, st.RefreshClosing)
	}
	fmt.Fprintf(w, "refresh %s: %d rounds, %d flows refreshed; %d bytes sent on sync streams\n",
		refresh, c.RefreshRounds, c.FlowsRefreshed, c.StreamBytesSent)
	if len(c.Rejected) > 0 {
		var parts []string
		for k, v := range c.Rejected {
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
		slices.Sort(parts)
		fmt.Fprintf(w, "rejected messages: %s\n", strings.Join(parts, ", "))
	}
	return nil
}
