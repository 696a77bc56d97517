package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/config"
)

// change runs one change against ndd and prints what ndd did.
func (s *session) change(fn func(c Client) (string, error)) error {
	get := func(c Client) (api.ChangesResponse, error) {
		changes, err := fn(c)
		return api.ChangesResponse{Changes: changes}, err
	}
	return fetch(s, get, func(w io.Writer, r api.ChangesResponse) error {
		fmt.Fprintln(w, r.Changes)
		return nil
	})
}

func writeJSON(w interface{ Write([]byte) (int, error) }, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// portFlags are the settings of a port being added.
type portFlags struct {
	proto       *string
	stickyTime  *time.Duration
	weightBound *uint
}

func addPortFlags(fs *flag.FlagSet) portFlags {
	return portFlags{
		proto:       fs.String("protocol", "tcp", "`tcp|udp`: the protocol of ports given without /PROTO"),
		stickyTime:  fs.Duration("sticky-time", 0, "client affinity: a client returning within this `duration` goes to the same server (whole seconds; 0 = none)"),
		weightBound: fs.Uint("weight-bound", 0, "largest weight of the port's servers, `N` from 1 to 1000 (default 100)"),
	}
}

func (pf portFlags) request(fs *flag.FlagSet, arg string) (api.PortRequest, error) {
	port, proto, err := portAndProto(arg, *pf.proto, isSet(fs, "protocol"))
	if err != nil {
		return api.PortRequest{}, err
	}
	if *pf.weightBound > config.MaxWeightBound {
		return api.PortRequest{}, usagef("--weight-bound %d: want 1 to %d", *pf.weightBound, config.MaxWeightBound)
	}
	if isSet(fs, "weight-bound") && *pf.weightBound == 0 {
		return api.PortRequest{}, usagef("--weight-bound 0: want 1 to %d", config.MaxWeightBound)
	}
	r := api.PortRequest{Port: port, Protocol: proto, WeightBound: uint32(*pf.weightBound)}
	if st := *pf.stickyTime; st != 0 {
		if st < 0 || st%time.Second != 0 {
			return api.PortRequest{}, usagef("--sticky-time %v: want whole seconds, 0 or more", st)
		}
		r.StickyTime = st.String()
	}
	return r, nil
}

func clusterAdd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	pf := addPortFlags(fs)
	args, err := s.parse(fs, args, 1, -1)
	if err != nil {
		return err
	}
	vip, err := parseVIP(args[0])
	if err != nil {
		return err
	}
	var ports []api.PortRequest
	for _, a := range args[1:] {
		p, err := pf.request(fs, a)
		if err != nil {
			return err
		}
		ports = append(ports, p)
	}
	return s.change(func(c Client) (string, error) { return c.AddCluster(vip, ports...) })
}

func clusterRemove(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	args, err := s.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	vip, err := parseVIP(args[0])
	if err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.RemoveCluster(vip) })
}

func portAdd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	pf := addPortFlags(fs)
	args, err := s.parse(fs, args, 2, 2)
	if err != nil {
		return err
	}
	vip, err := parseVIP(args[0])
	if err != nil {
		return err
	}
	p, err := pf.request(fs, args[1])
	if err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.AddPort(vip, p) })
}

func portRemove(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	proto := fs.String("protocol", "tcp", "`tcp|udp`: the protocol, if PORT has no /PROTO")
	args, err := s.parse(fs, args, 2, 2)
	if err != nil {
		return err
	}
	vip, port, p, err := vipPort(fs, args, *proto)
	if err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.RemovePort(vip, port, p) })
}

// vipPort reads the VIP PORT[/PROTO] arguments.
func vipPort(fs *flag.FlagSet, args []string, flagProto string) (vip string, port uint16, proto string, err error) {
	if vip, err = parseVIP(args[0]); err != nil {
		return
	}
	port, proto, err = portAndProto(args[1], flagProto, isSet(fs, "protocol"))
	return
}

// serverArgs reads the VIP PORT[/PROTO] ADDRESS arguments.
func serverArgs(fs *flag.FlagSet, args []string, flagProto string) (vip string, port uint16, proto, addr string, err error) {
	if vip, port, proto, err = vipPort(fs, args, flagProto); err != nil {
		return
	}
	addr, err = parseServerAddr(args[2])
	return
}

func serverAdd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	proto := fs.String("protocol", "tcp", "`tcp|udp`: the protocol, if PORT has no /PROTO")
	weight := fs.Uint("weight", 0, "share of new flows, `N` from 0 to the port's weight bound (default half the bound)")
	quiesce := fs.Bool("quiesce", false, "add it quiesced: no new flows until 'server set --unquiesce'")
	local := fs.Bool("local", false, "the server is the dispatcher itself (co-location)")
	args, err := s.parse(fs, args, 3, 3)
	if err != nil {
		return err
	}
	vip, port, p, addr, err := serverArgs(fs, args, *proto)
	if err != nil {
		return err
	}
	req := api.ServerRequest{Address: addr, Quiesce: *quiesce, Local: *local}
	if isSet(fs, "weight") {
		w, err := weightValue(*weight)
		if err != nil {
			return err
		}
		req.Weight = &w
	}
	return s.change(func(c Client) (string, error) { return c.AddServer(vip, port, p, req) })
}

func weightValue(w uint) (uint32, error) {
	if w > config.MaxWeightBound {
		return 0, usagef("--weight %d: weights run from 0 to the port's weight bound, at most %d", w, config.MaxWeightBound)
	}
	return uint32(w), nil
}

func serverRemove(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	proto := fs.String("protocol", "tcp", "`tcp|udp`: the protocol, if PORT has no /PROTO")
	args, err := s.parse(fs, args, 3, 3)
	if err != nil {
		return err
	}
	vip, port, p, addr, err := serverArgs(fs, args, *proto)
	if err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.RemoveServer(vip, port, p, addr) })
}

func serverSet(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	proto := fs.String("protocol", "tcp", "`tcp|udp`: the protocol, if PORT has no /PROTO")
	weight := fs.Uint("weight", 0, "new weight, `N` from 0 to the port's weight bound")
	quiesce := fs.Bool("quiesce", false, "stop new flows to the server; established ones continue")
	unquiesce := fs.Bool("unquiesce", false, "send the server new flows again")
	fixed := fs.Bool("fixed", false, "keep the weight whatever the load: the manager leaves it")
	managed := fs.Bool("managed", false, "let the manager adjust the weight again")
	args, err := s.parse(fs, args, 3, 3)
	if err != nil {
		return err
	}
	vip, port, p, addr, err := serverArgs(fs, args, *proto)
	if err != nil {
		return err
	}
	var patch api.ServerPatch
	if isSet(fs, "weight") {
		w, err := weightValue(*weight)
		if err != nil {
			return err
		}
		patch.Weight = &w
	}
	switch {
	case *quiesce && *unquiesce:
		return usagef("--quiesce and --unquiesce together")
	case *quiesce:
		patch.Quiesce = new(true)
	case *unquiesce:
		patch.Quiesce = new(false)
	}
	switch {
	case *fixed && *managed:
		return usagef("--fixed and --managed together")
	case *fixed:
		patch.Fixed = new(true)
	case *managed:
		patch.Fixed = new(false)
	}
	if patch.Weight == nil && patch.Quiesce == nil && patch.Fixed == nil {
		return usagef("nothing to change: give --weight, --quiesce, --unquiesce, --fixed or --managed")
	}
	return s.change(func(c Client) (string, error) { return c.SetServer(vip, port, p, addr, patch) })
}
