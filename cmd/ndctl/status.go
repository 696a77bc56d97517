package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

func statusCmd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	watch := fs.Bool("watch", false, "redraw every second until interrupted")
	c, err := s.readClient(fs, args)
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Status()
	if err != nil {
		return err
	}
	if !*watch {
		return s.printStatus(s.stdout, st)
	}
	s.live(ctx, nil, func(w io.Writer, first bool) error {
		if !first {
			if st, err = c.Status(); err != nil {
				fmt.Fprintf(w, "%s  %s\n", time.Now().Format(time.TimeOnly), oneLine(s.explain(err)))
				return nil
			}
		}
		return s.printStatus(w, st)
	})
	return nil
}

func (s *session) printStatus(w io.Writer, st nd.Status) error {
	if s.json {
		b, err := json.Marshal(st)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	writeStatus(w, st)
	return nil
}

// live calls draw every tick until ctx ends or done is closed, redrawing
// in place on a terminal and appending otherwise. It returns the number of
// lines of the last frame.
func (s *session) live(ctx context.Context, done <-chan struct{}, draw func(w io.Writer, first bool) error) int {
	t := time.NewTicker(s.tick)
	defer t.Stop()
	lines := 0
	for first := true; ; first = false {
		var buf bytes.Buffer
		draw(&buf, first)
		if s.terminal {
			s.erase(lines)
			lines = bytes.Count(buf.Bytes(), []byte("\n"))
		} else if !first && !s.json {
			fmt.Fprintln(s.stdout)
		}
		s.stdout.Write(buf.Bytes())
		select {
		case <-ctx.Done():
			return lines
		case <-done:
			return lines
		case <-t.C:
		}
	}
}

// erase moves a terminal's cursor up over the last lines printed and clears
// from there to the end of the screen; elsewhere it prints a blank line.
func (s *session) erase(lines int) {
	switch {
	case !s.terminal:
		fmt.Fprintln(s.stdout)
	case lines > 0:
		fmt.Fprintf(s.stdout, "\x1b[%dA\r\x1b[J", lines)
	}
}

// writeStatus prints a table per VIP:port.
func writeStatus(w io.Writer, st nd.Status) {
	ifaces := strings.Join(st.Interfaces, ", ")
	if ifaces == "" {
		ifaces = "none"
	}
	fmt.Fprintf(w, "ndd at %s: attached to %s; %d ports\n", st.Time.Format(time.DateTime), ifaces, len(st.Ports))
	g := st.Global
	table := "flow table: ok"
	if g.TablePressure {
		table = "flow table: UNDER PRESSURE"
	}
	fmt.Fprintf(w, "%s  (half-open displaced %d, established evicted %d, not recorded: %d SYNs, %d strays)\n",
		table, g.HalfOpenEvicted, g.FlowsEvicted, g.OpenersUnrecorded, g.StraysUnrecorded)
	for _, p := range st.Ports {
		fmt.Fprintf(w, "\n%s  sticky %s  %d packets", service(p), p.StickyTime, p.Packets)
		if p.NoServer > 0 {
			fmt.Fprintf(w, "  %d dropped for want of a server", p.NoServer)
		}
		fmt.Fprintln(w)
		if len(p.Servers) == 0 {
			fmt.Fprintln(w, "  no servers")
			continue
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  SERVER\tSTATE\tWEIGHT\tNEW FLOWS/S\tACTIVE FLOWS\tHALF-OPEN\tPACKETS/S\n")
		for _, sv := range p.Servers {
			state := sv.State
			if sv.Reason != "" {
				state += " (" + sv.Reason + ")"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%.1f\t%d\t%d\t%.1f\n", sv.Address, state, sv.Weight, sv.NewFlowsRate, sv.ActiveFlows, sv.HalfOpenFlows, sv.PacketsRate)
		}
		tw.Flush()
	}
}

// service names a port as VIP:port/proto, with IPv6 VIPs in brackets.
func service(p nd.PortStatus) string {
	if a, err := netip.ParseAddr(p.VIP); err == nil {
		return fmt.Sprintf("%s/%s", netip.AddrPortFrom(a, p.Port), p.Protocol)
	}
	return fmt.Sprintf("%s:%d/%s", p.VIP, p.Port, p.Protocol)
}

// clusterView is one line of `cluster list`.
type clusterView struct {
	VIP   string     `json:"vip"`
	Ports []portView `json:"ports"`
}

type portView struct {
	Port       uint16 `json:"port"`
	Protocol   string `json:"protocol"`
	StickyTime string `json:"sticky_time"`
	Servers    int    `json:"servers"`
	Up         int    `json:"up"`
}

// clusterViews groups ndd's ports by VIP, never nil so that --json prints [].
func clusterViews(c Client) ([]clusterView, error) {
	st, err := c.Status()
	if err != nil {
		return nil, err
	}
	views := []clusterView{}
	for _, p := range st.Ports { // sorted by VIP, then port
		if len(views) == 0 || views[len(views)-1].VIP != p.VIP {
			views = append(views, clusterView{VIP: p.VIP})
		}
		pv := portView{Port: p.Port, Protocol: p.Protocol, StickyTime: p.StickyTime, Servers: len(p.Servers)}
		for _, sv := range p.Servers {
			if sv.State == nd.StateUp || sv.State == nd.StateLocal {
				pv.Up++
			}
		}
		v := &views[len(views)-1]
		v.Ports = append(v.Ports, pv)
	}
	return views, nil
}

func writeClusters(w io.Writer, views []clusterView) error {
	return writeTable(w, "no clusters", "VIP\tPORTS", views, func(tw io.Writer, v clusterView) {
		var ports []string
		for _, p := range v.Ports {
			desc := fmt.Sprintf("%d/%s (%d of %d servers up", p.Port, p.Protocol, p.Up, p.Servers)
			if p.StickyTime != "" && p.StickyTime != "0s" {
				desc += ", sticky " + p.StickyTime
			}
			ports = append(ports, desc+")")
		}
		fmt.Fprintf(tw, "%s\t%s\n", v.VIP, strings.Join(ports, ", "))
	})
}

func eventsCmd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	follow := fs.Bool("follow", false, "keep printing new events until interrupted")
	c, err := s.readClient(fs, args)
	if err != nil {
		return err
	}
	defer c.Close()
	enc := json.NewEncoder(s.stdout)
	err = c.Events(ctx, *follow, func(ev nd.Event) error {
		if s.json {
			return enc.Encode(ev)
		}
		_, err := fmt.Fprintln(s.stdout, formatEvent(ev))
		return err
	})
	if err != nil && ctx.Err() != nil {
		return nil // interrupted: the normal end of --follow
	}
	return err
}

func formatEvent(ev nd.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %-18s", ev.Time.Local().Format("2006-01-02 15:04:05.000"), ev.Type)
	if ev.Service != "" {
		fmt.Fprintf(&b, "  %s", ev.Service)
	}
	if ev.Server != "" {
		fmt.Fprintf(&b, "  server %s", ev.Server)
	}
	if ev.Message != "" {
		fmt.Fprintf(&b, "  %s", strings.ReplaceAll(ev.Message, "\n", "; "))
	}
	return b.String()
}
