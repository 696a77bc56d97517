package api

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// The edit functions below are handed to Controller.Update: each changes the
// copy of the configuration it is given, or says why it cannot with an error
// wrapping ErrNotFound, ErrExists or ErrBadRequest. Whatever else is wrong
// with the result (a VIP of the wrong family, a weight over the bound, a
// cluster left without ports) is for the configuration's own validation to
// say.

// editFunc is one edit and, optionally, a hint for when the configuration
// refuses its result.
type editFunc struct {
	fn   func(*config.Config) error
	hint string
}

func edit(fn func(*config.Config) error) editFunc { return editFunc{fn: fn} }

func withHint(e editFunc, hint string) editFunc {
	e.hint = hint
	return e
}

// lastPort reports whether id is the only port of its cluster in c.
func lastPort(c *config.Config, id portID) bool {
	i := indexCluster(c, id.vip)
	return i >= 0 && len(c.Clusters[i].Ports) == 1 && indexPort(c.Clusters[i].Ports, id.port, id.proto) == 0
}

// portID names one port of a cluster, as the routes do.
type portID struct {
	vip   netip.Addr
	port  uint16
	proto nd.Proto
}

func (p portID) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(p.vip, p.port), p.proto)
}

// parseAddr reads an IP address given as what ("vip", "address").
func parseAddr(what, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, badRequest("%s: required", what)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, badRequest("%s: %q is not an IP address", what, s)
	}
	return a, nil
}

func parseProto(s string) (nd.Proto, error) {
	if s == "" {
		return config.DefaultProtocol, nil
	}
	p, err := nd.ParseProto(s)
	if err != nil {
		return 0, badRequest("protocol: %q is not a protocol: want tcp or udp", s)
	}
	return p, nil
}

func parsePortNumber(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, badRequest("port: %q is not a port number 1..65535", s)
	}
	return uint16(n), nil
}

// parsePortID reads the {vip}/{port}/{protocol} of a route.
func parsePortID(vip, port, proto string) (portID, error) {
	var id portID
	var err error
	if id.vip, err = parseAddr("vip", vip); err != nil {
		return id, err
	}
	if id.port, err = parsePortNumber(port); err != nil {
		return id, err
	}
	if proto == "" {
		return id, badRequest("protocol: required")
	}
	if id.proto, err = parseProto(proto); err != nil {
		return id, err
	}
	return id, nil
}

// portSpec turns a request into the configuration's port, defaults applied.
func (r PortRequest) portSpec() (config.PortSpec, error) {
	if r.Port == 0 {
		return config.PortSpec{}, badRequest("port: required, a port number 1..65535")
	}
	proto, err := parseProto(r.Protocol)
	if err != nil {
		return config.PortSpec{}, err
	}
	p := config.PortSpec{Port: r.Port, Protocol: proto, WeightBound: r.WeightBound}
	if p.WeightBound == 0 {
		p.WeightBound = config.DefaultWeightBound
	}
	if r.StickyTime != "" {
		d, err := time.ParseDuration(r.StickyTime)
		if err != nil {
			return config.PortSpec{}, badRequest("sticky_time: %q is not a duration such as 30s", r.StickyTime)
		}
		p.StickyTime = d
	}
	for _, sr := range r.Servers {
		s, err := sr.server(p.WeightBound)
		if err != nil {
			return config.PortSpec{}, fmt.Errorf("port %d/%s: %w", p.Port, p.Protocol, err)
		}
		if i := indexServer(p.Servers, s.Address); i >= 0 {
			return config.PortSpec{}, badRequest("port %d/%s: server %s is listed twice", p.Port, p.Protocol, s.Address)
		}
		p.Servers = append(p.Servers, s)
	}
	return p, nil
}

// server turns a request into the configuration's server; bound is the
// port's weight bound, of which the default weight is half.
func (r ServerRequest) server(bound uint32) (config.Server, error) {
	a, err := parseAddr("address", r.Address)
	if err != nil {
		return config.Server{}, err
	}
	s := config.Server{Address: a, Weight: config.DefaultWeight(bound), Quiesce: r.Quiesce, Local: r.Local}
	patchField(&s.Weight, r.Weight)
	return s, nil
}

func indexCluster(c *config.Config, vip netip.Addr) int {
	return slices.IndexFunc(c.Clusters, func(cl config.Cluster) bool { return cl.VIP == vip })
}

func indexPort(ports []config.PortSpec, port uint16, proto nd.Proto) int {
	return slices.IndexFunc(ports, func(p config.PortSpec) bool { return p.Port == port && p.Protocol == proto })
}

func indexServer(servers []config.Server, a netip.Addr) int {
	return slices.IndexFunc(servers, func(s config.Server) bool { return s.Address == a })
}

// findPort returns the port named by id, or an error wrapping ErrNotFound.
func findPort(c *config.Config, id portID) (*config.PortSpec, error) {
	i := indexCluster(c, id.vip)
	if i < 0 {
		return nil, fmt.Errorf("cluster %s: %w", id.vip, ErrNotFound)
	}
	cl := &c.Clusters[i]
	j := indexPort(cl.Ports, id.port, id.proto)
	if j < 0 {
		return nil, fmt.Errorf("port %s: %w", id, ErrNotFound)
	}
	return &cl.Ports[j], nil
}

// findServer returns the index of server a in port id, or an error wrapping
// ErrNotFound.
func findServer(c *config.Config, id portID, a netip.Addr) (*config.PortSpec, int, error) {
	p, err := findPort(c, id)
	if err != nil {
		return nil, 0, err
	}
	k := indexServer(p.Servers, a)
	if k < 0 {
		return nil, 0, fmt.Errorf("server %s of port %s: %w", a, id, ErrNotFound)
	}
	return p, k, nil
}

// addCluster adds a VIP with the ports given.
func addCluster(vip netip.Addr, ports []config.PortSpec) editFunc {
	return edit(func(c *config.Config) error {
		if indexCluster(c, vip) >= 0 {
			return fmt.Errorf("cluster %s: %w", vip, ErrExists)
		}
		c.Clusters = append(c.Clusters, config.Cluster{VIP: vip, Ports: slices.Clone(ports)})
		return nil
	})
}

func removeCluster(vip netip.Addr) editFunc {
	return edit(func(c *config.Config) error {
		i := indexCluster(c, vip)
		if i < 0 {
			return fmt.Errorf("cluster %s: %w", vip, ErrNotFound)
		}
		c.Clusters = slices.Delete(c.Clusters, i, i+1)
		return nil
	})
}

func addPort(vip netip.Addr, p config.PortSpec) editFunc {
	return edit(func(c *config.Config) error {
		i := indexCluster(c, vip)
		if i < 0 {
			return fmt.Errorf("cluster %s: %w", vip, ErrNotFound)
		}
		cl := &c.Clusters[i]
		if indexPort(cl.Ports, p.Port, p.Protocol) >= 0 {
			return fmt.Errorf("port %s: %w", portID{vip, p.Port, p.Protocol}, ErrExists)
		}
		p.Servers = slices.Clone(p.Servers)
		cl.Ports = append(cl.Ports, p)
		return nil
	})
}

func removePort(id portID) editFunc {
	return edit(func(c *config.Config) error {
		i := indexCluster(c, id.vip)
		if i < 0 {
			return fmt.Errorf("cluster %s: %w", id.vip, ErrNotFound)
		}
		cl := &c.Clusters[i]
		j := indexPort(cl.Ports, id.port, id.proto)
		if j < 0 {
			return fmt.Errorf("port %s: %w", id, ErrNotFound)
		}
		cl.Ports = slices.Delete(cl.Ports, j, j+1)
		return nil
	})
}

// addServer adds a server; r.Weight nil gives half the port's bound.
func addServer(id portID, r ServerRequest) editFunc {
	return edit(func(c *config.Config) error {
		p, err := findPort(c, id)
		if err != nil {
			return err
		}
		s, err := r.server(p.WeightBound)
		if err != nil {
			return err
		}
		if indexServer(p.Servers, s.Address) >= 0 {
			return fmt.Errorf("server %s of port %s: %w", s.Address, id, ErrExists)
		}
		p.Servers = append(p.Servers, s)
		return nil
	})
}

func setServer(id portID, a netip.Addr, patch ServerPatch) editFunc {
	return edit(func(c *config.Config) error {
		p, k, err := findServer(c, id, a)
		if err != nil {
			return err
		}
		s := &p.Servers[k]
		patchField(&s.Weight, patch.Weight)
		patchField(&s.Quiesce, patch.Quiesce)
		patchField(&s.Fixed, patch.Fixed)
		return nil
	})
}

// patchField sets *dst to *v when a patch gives v (not nil).
func patchField[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

func removeServer(id portID, a netip.Addr) editFunc {
	return edit(func(c *config.Config) error {
		p, k, err := findServer(c, id, a)
		if err != nil {
			return err
		}
		p.Servers = slices.Delete(p.Servers, k, k+1)
		return nil
	})
}

// requestError is a request that cannot be read; it wraps ErrBadRequest
// without repeating its text.
type requestError struct{ msg string }

func (e *requestError) Error() string { return e.msg }
func (e *requestError) Unwrap() error { return ErrBadRequest }

func badRequest(format string, args ...any) error {
	return &requestError{msg: fmt.Sprintf(format, args...)}
}
