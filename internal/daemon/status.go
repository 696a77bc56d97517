package daemon

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// rateSampler keeps the last two counter readings to derive rates.
type rateSampler struct {
	at   time.Time
	prev executor.Stats
	rate map[executor.ServiceKey]map[netip.Addr][2]float64 // new flows/s, packets/s
	// pressure is the connection table's pressure at the last sample.
	pressure bool
}

func (d *Daemon) sample(now time.Time) {
	st, err := d.x.Stats()
	if err != nil {
		d.log.Error("read data-plane counters", "err", err)
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	r := &d.rates
	if p := st.Global.TablePressure; p != r.pressure {
		r.pressure = p
		msg := "relieved"
		if p {
			msg = fmt.Sprintf("under pressure: %d half-open flows displaced, %d new flows and %d strays unrecorded so far",
				st.Global.HalfOpenEvicted, st.Global.OpenersUnrecorded, st.Global.StraysUnrecorded)
		}
		d.emit(nd.Event{Type: nd.EventTablePressure, Message: msg})
	}
	if !r.at.IsZero() {
		dt := now.Sub(r.at).Seconds()
		r.rate = map[executor.ServiceKey]map[netip.Addr][2]float64{}
		for key, ss := range st.Services {
			m := map[netip.Addr][2]float64{}
			for addr, s := range ss.Servers {
				p := r.prev.Services[key].Servers[addr]
				if s.NewFlows < p.NewFlows || s.Packets < p.Packets {
					continue // counters reset: the server was re-added
				}
				m[addr] = [2]float64{float64(s.NewFlows-p.NewFlows) / dt, float64(s.Packets-p.Packets) / dt}
			}
			r.rate[key] = m
		}
	}
	r.at, r.prev = now, st
	_ = d.updateBGP() // logged
}

// Status reads the counters and describes every port and server.
func (d *Daemon) Status() (nd.Status, error) {
	st, err := d.x.Stats()
	if err != nil {
		return nd.Status{}, err
	}
	installed := map[executor.ServiceKey]executor.Service{}
	for _, s := range d.x.Services() {
		installed[s.Key] = s
	}
	reasons := map[netip.Addr]string{}
	for _, ev := range d.nbr.Status() {
		if ev.Err != nil {
			reasons[ev.Entry.Addr] = ev.Err.Error()
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	out := nd.Status{Time: time.Now(), Global: st.Global}
	for name := range d.attached {
		out.Interfaces = append(out.Interfaces, name)
	}
	sort.Strings(out.Interfaces)
	for _, p := range d.cfg.Ports() {
		ss := st.Services[p.Key]
		ps := nd.PortStatus{
			VIP: p.Key.VIP.String(), Port: p.Key.Port, Protocol: p.Key.Proto.String(),
			StickyTime: p.StickyTime.String(), Packets: ss.Packets, Bytes: ss.Bytes, NoServer: ss.NoServer,
		}
		inst := installed[p.Key]
		for _, srv := range p.Servers {
			ps.Servers = append(ps.Servers, d.serverStatus(p, srv, inst, ss, reasons))
		}
		out.Ports = append(out.Ports, ps)
	}
	for vip, vs := range st.VIPs {
		out.VIPs = append(out.VIPs, nd.VIPStatus{VIP: vip.String(), VIPStats: vs})
	}
	slices.SortFunc(out.VIPs, func(a, b nd.VIPStatus) int {
		return netip.MustParseAddr(a.VIP).Compare(netip.MustParseAddr(b.VIP))
	})
	return out, nil
}

func (d *Daemon) serverStatus(p config.Port, srv config.Server, inst executor.Service, ss executor.ServiceStats, reasons map[netip.Addr]string) nd.ServerStatus {
	out := nd.ServerStatus{Address: srv.Address.String(), ConfigWeight: srv.Weight, Quiesced: srv.Quiesce}
	i := slices.IndexFunc(inst.Servers, func(s executor.Server) bool { return s.Addr == srv.Address })
	switch {
	case i < 0 || inst.Servers[i].Held:
		out.State = nd.StateUnresolved
		out.Reason = reasons[srv.Address]
	case srv.Local:
		out.State = nd.StateLocal
		out.Weight = inst.Servers[i].Weight
	default:
		es := inst.Servers[i]
		out.Weight, out.MAC = es.Weight, es.MAC.String()
		if e, ok := d.nbr.Lookup(srv.Address); ok {
			out.Interface = e.Ifname
		}
		out.State = nd.StateUp
		if es.Weight == 0 {
			out.State = nd.StateQuiesced
		}
	}
	if c, ok := ss.Servers[srv.Address]; ok {
		out.NewFlows, out.ActiveFlows, out.Packets, out.Bytes = c.NewFlows, c.Active(), c.Packets, c.Bytes
		out.HalfOpenFlows = c.HalfOpen
	}
	if r, ok := d.rates.rate[p.Key][srv.Address]; ok {
		out.NewFlowsRate, out.PacketsRate = r[0], r[1]
	}
	return out
}
