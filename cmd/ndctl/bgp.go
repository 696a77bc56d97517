package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

func bgpDrain(ctx context.Context, s *session, args []string) error {
	return bgpSetDrain(s, args, true)
}

func bgpUndrain(ctx context.Context, s *session, args []string) error {
	return bgpSetDrain(s, args, false)
}

func bgpSetDrain(s *session, args []string, drain bool) error {
	return show(s, s.newFlags(), args, func(c Client) (nd.BGPStatus, error) { return c.BGPDrain(drain) }, printBGPStatus)
}

// printBGPStatus prints the BGP sessions and every VIP's route.
func printBGPStatus(w io.Writer, st nd.BGPStatus) error {
	writeBGPStatus(w, st, time.Now())
	return nil
}

func writeBGPStatus(w io.Writer, st nd.BGPStatus, now time.Time) {
	state := "announcing the servable VIPs"
	switch {
	case st.Stopping:
		state = "stopping: every VIP withdrawn"
	case st.Drained:
		state = "drained: every VIP withdrawn (ndctl bgp undrain to announce again)"
	}
	fmt.Fprintf(w, "as %d, router id %s: %s\n", st.ASN, st.RouterID, state)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tAS\tSTATE\tUPTIME\tHOLD\tSENT\tRECEIVED\tFLAPS")
	for _, p := range st.Peers {
		up, hold := "-", "-"
		if !p.Since.IsZero() {
			up = now.Sub(p.Since).Round(time.Second).String()
			hold = p.HoldTime.String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%d\t%d\n", p.Address, p.ASN, p.State, up, hold, p.Advertised, p.Received, p.Flaps)
	}
	tw.Flush()
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VIP\tROUTE\tMED\tCOMMUNITIES\tNEXT HOP")
	for _, v := range st.VIPs {
		route := "announced"
		if !v.Announced {
			route = "withdrawn: " + v.Reason
		}
		nh := v.NextHop
		if nh == "" {
			nh = "self"
		}
		comms := strings.Join(v.Communities, " ")
		if comms == "" {
			comms = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", v.VIP, route, v.MED, comms, nh)
	}
	tw.Flush()
}
