package main

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// labDispatcher is one dispatcher of the lab and its ndd's API.
type labDispatcher struct {
	name, addr string
	c          *api.Client
}

// labStatus reads every dispatcher's status. It returns the statuses read
// (nil where the read failed), their sum (mergeStatus) and the errors, one
// line each.
func labStatus(ds []labDispatcher) (sts []*nd.Status, sum nd.Status, ok bool, errs []string) {
	var read []nd.Status
	for _, d := range ds {
		st, err := d.c.Status()
		if err != nil {
			sts = append(sts, nil)
			errs = append(errs, fmt.Sprintf("%s's ndd status: %s", d.name, oneLine(err.Error())))
			continue
		}
		sts = append(sts, &st)
		read = append(read, st)
	}
	if len(read) == 0 {
		return sts, nd.Status{}, false, errs
	}
	return sts, mergeStatus(read), true, errs
}

// mergeStatus sums the counters of the dispatchers' statuses (ports by
// VIP, port and protocol, servers by address) into a copy of the first:
// the group's view. States and weights are the first's: the group's
// dispatchers share their configuration.
func mergeStatus(sts []nd.Status) nd.Status {
	out := sts[0]
	out.Ports = slices.Clone(out.Ports)
	for i := range out.Ports {
		out.Ports[i].Servers = slices.Clone(out.Ports[i].Servers)
	}
	for _, st := range sts[1:] {
		for _, p := range st.Ports {
			i := slices.IndexFunc(out.Ports, func(o nd.PortStatus) bool {
				return o.VIP == p.VIP && o.Port == p.Port && o.Protocol == p.Protocol
			})
			if i < 0 {
				continue
			}
			op := &out.Ports[i]
			op.Packets += p.Packets
			op.Bytes += p.Bytes
			op.NoServer += p.NoServer
			for _, sv := range p.Servers {
				j := slices.IndexFunc(op.Servers, func(o nd.ServerStatus) bool { return o.Address == sv.Address })
				if j < 0 {
					continue
				}
				ts := &op.Servers[j]
				ts.NewFlows += sv.NewFlows
				ts.ActiveFlows += sv.ActiveFlows
				ts.HalfOpenFlows += sv.HalfOpenFlows
				ts.Packets += sv.Packets
				ts.Bytes += sv.Bytes
				ts.NewFlowsRate += sv.NewFlowsRate
				ts.PacketsRate += sv.PacketsRate
			}
		}
	}
	return out
}

// labCount is what one dispatcher forwarded: packets (its ports'
// counters) and new flows (its servers').
type labCount struct {
	packets, newFlows uint64
}

func countOf(st nd.Status) labCount {
	var c labCount
	for _, p := range st.Ports {
		c.packets += p.Packets
		for _, sv := range p.Servers {
			c.newFlows += sv.NewFlows
		}
	}
	return c
}

// labShares follows each dispatcher's counts from frame to frame, for its
// share of the group's packets and new flows over the last interval and
// since the first frame.
type labShares struct {
	ds               []labDispatcher
	first, prev, cur []labCount
	known            []bool // read at least once
	readNow          []bool // read in the last frame
	firstAt          time.Time
	prevAt, curAt    time.Time
}

func newLabShares(ds []labDispatcher) *labShares {
	n := len(ds)
	return &labShares{ds: ds, first: make([]labCount, n), prev: make([]labCount, n), cur: make([]labCount, n),
		known: make([]bool, n), readNow: make([]bool, n)}
}

// observe takes a frame's statuses (nil: not read) taken at now.
func (s *labShares) observe(sts []*nd.Status, now time.Time) {
	copy(s.prev, s.cur)
	s.prevAt = s.curAt
	s.curAt = now
	for i, st := range sts {
		s.readNow[i] = st != nil
		if st == nil {
			continue
		}
		c := countOf(*st)
		if !s.known[i] {
			s.first[i], s.prev[i], s.known[i] = c, c, true
		}
		s.cur[i] = c
	}
	if s.firstAt.IsZero() {
		s.firstAt = now
	}
}

// share is part of whole as a percentage, "-" when whole is 0.
func share(part, whole uint64) string {
	if whole == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(part)/float64(whole))
}

// write prints a line per dispatcher: its packets and new flows a second
// over the last interval, and its share of the group's over the last
// interval and since the start.
func (s *labShares) write(w io.Writer) {
	var last, all labCount
	for i := range s.ds {
		last.packets += s.cur[i].packets - s.prev[i].packets
		last.newFlows += s.cur[i].newFlows - s.prev[i].newFlows
		all.packets += s.cur[i].packets - s.first[i].packets
		all.newFlows += s.cur[i].newFlows - s.first[i].newFlows
	}
	secs := 0.0
	if !s.prevAt.IsZero() {
		secs = s.curAt.Sub(s.prevAt).Seconds()
	}
	fmt.Fprintf(w, "\ndispatchers: rates over the last %.1fs; shares of the group's over it, and (ALL) since the start %v ago\n",
		secs, s.curAt.Sub(s.firstAt).Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  DISPATCHER\tADDRESS\tPACKETS/S\tNEW FLOWS/S\tPACKETS\tNEW FLOWS\tALL PACKETS\tALL NEW FLOWS\n")
	for i, d := range s.ds {
		dp := s.cur[i].packets - s.prev[i].packets
		dn := s.cur[i].newFlows - s.prev[i].newFlows
		rp, rn := "-", "-"
		if secs > 0 && s.readNow[i] {
			rp, rn = fmt.Sprintf("%.1f", float64(dp)/secs), fmt.Sprintf("%.1f", float64(dn)/secs)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.name, d.addr, rp, rn,
			share(dp, last.packets), share(dn, last.newFlows),
			share(s.cur[i].packets-s.first[i].packets, all.packets), share(s.cur[i].newFlows-s.first[i].newFlows, all.newFlows))
	}
	tw.Flush()
}
