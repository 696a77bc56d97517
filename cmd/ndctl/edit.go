package main

import (
	"context"
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
	vip, rest, err := s.parseVIPArgs(fs, args, 1, -1)
	if err != nil {
		return err
	}
	var ports []api.PortRequest
	for _, a := range rest {
		p, err := pf.request(fs, a)
		if err != nil {
			return err
		}
		ports = append(ports, p)
	}
	return s.change(func(c Client) (string, error) { return c.AddCluster(vip, ports...) })
}

func clusterRemove(ctx context.Context, s *session, args []string) error {
	vip, _, err := s.parseVIPArgs(s.newFlags(), args, 1, 1)
	if err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.RemoveCluster(vip) })
}

func portAdd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	pf := addPortFlags(fs)
	vip, rest, err := s.parseVIPArgs(fs, args, 2, 2)
	if err != nil {
		return err
	}
	p, err := pf.request(fs, rest[0])
	if err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.AddPort(vip, p) })
}

func portRemove(ctx context.Context, s *session, args []string) error {
	r, err := s.parseRef(s.newFlags(), args, false)
	if err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.RemovePort(r.vip, r.port, r.proto) })
}

// ref is what a port or server command names: VIP PORT[/PROTO] and, for a
// server, its ADDRESS.
type ref struct {
	vip   string
	port  uint16
	proto string
	addr  string
}

// parseRef adds --protocol to fs's flags, parses the command line and reads
// VIP PORT[/PROTO], then ADDRESS if server.
func (s *session) parseRef(fs *flag.FlagSet, args []string, server bool) (ref, error) {
	proto := fs.String("protocol", "tcp", "`tcp|udp`: the protocol, if PORT has no /PROTO")
	n := 2
	if server {
		n = 3
	}
	var r ref
	vip, rest, err := s.parseVIPArgs(fs, args, n, n)
	if err != nil {
		return ref{}, err
	}
	r.vip = vip
	if r.port, r.proto, err = portAndProto(rest[0], *proto, isSet(fs, "protocol")); err != nil {
		return ref{}, err
	}
	if server {
		if r.addr, err = parseServerAddr(rest[1]); err != nil {
			return ref{}, err
		}
	}
	return r, nil
}

// parseVIPArgs parses the command line, between min and max positional
// arguments (-1: any number), of which the first is a VIP; rest are the
// others.
func (s *session) parseVIPArgs(fs *flag.FlagSet, args []string, min, max int) (vip string, rest []string, err error) {
	if args, err = s.parse(fs, args, min, max); err != nil {
		return "", nil, err
	}
	if vip, err = parseVIP(args[0]); err != nil {
		return "", nil, err
	}
	return vip, args[1:], nil
}

func serverAdd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	weight := fs.Uint("weight", 0, "share of new flows, `N` from 0 to the port's weight bound (default half the bound)")
	quiesce := fs.Bool("quiesce", false, "add it quiesced: no new flows until 'server set --unquiesce'")
	local := fs.Bool("local", false, "the server is the dispatcher itself (co-location)")
	r, err := s.parseRef(fs, args, true)
	if err != nil {
		return err
	}
	req := api.ServerRequest{Address: r.addr, Quiesce: *quiesce, Local: *local}
	if req.Weight, err = weightFlag(fs, *weight); err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.AddServer(r.vip, r.port, r.proto, req) })
}

// weightFlag is --weight's value, nil when it was not given.
func weightFlag(fs *flag.FlagSet, w uint) (*uint32, error) {
	if !isSet(fs, "weight") {
		return nil, nil
	}
	v, err := weightValue(w)
	if err != nil {
		return nil, err
	}
	return &v, nil
}

func weightValue(w uint) (uint32, error) {
	if w > config.MaxWeightBound {
		return 0, usagef("--weight %d: weights run from 0 to the port's weight bound, at most %d", w, config.MaxWeightBound)
	}
	return uint32(w), nil
}

func serverRemove(ctx context.Context, s *session, args []string) error {
	r, err := s.parseRef(s.newFlags(), args, true)
	if err != nil {
		return err
	}
	return s.change(func(c Client) (string, error) { return c.RemoveServer(r.vip, r.port, r.proto, r.addr) })
}

func serverSet(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	weight := fs.Uint("weight", 0, "new weight, `N` from 0 to the port's weight bound")
	quiesce := fs.Bool("quiesce", false, "stop new flows to the server; established ones continue")
	unquiesce := fs.Bool("unquiesce", false, "send the server new flows again")
	fixed := fs.Bool("fixed", false, "keep the weight whatever the load: the manager leaves it")
	managed := fs.Bool("managed", false, "let the manager adjust the weight again")
	r, err := s.parseRef(fs, args, true)
	if err != nil {
		return err
	}
	var patch api.ServerPatch
	if patch.Weight, err = weightFlag(fs, *weight); err != nil {
		return err
	}
	if patch.Quiesce, err = onOff("quiesce", *quiesce, "unquiesce", *unquiesce); err != nil {
		return err
	}
	if patch.Fixed, err = onOff("fixed", *fixed, "managed", *managed); err != nil {
		return err
	}
	if patch.Weight == nil && patch.Quiesce == nil && patch.Fixed == nil {
		return usagef("nothing to change: give --weight, --quiesce, --unquiesce, --fixed or --managed")
	}
	return s.change(func(c Client) (string, error) { return c.SetServer(r.vip, r.port, r.proto, r.addr, patch) })
}

// onOff reads a pair of opposite flags: true for --on, false for --off,
// nil for neither; both is a usage error.
func onOff(onName string, on bool, offName string, off bool) (*bool, error) {
	switch {
	case on && off:
		return nil, usagef("--%s and --%s together", onName, offName)
	case on:
		return new(true), nil
	case off:
		return new(false), nil
	}
	return nil, nil
}
