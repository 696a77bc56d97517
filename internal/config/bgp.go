package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/yamlwalk"
)

// BGP makes ndd a BGP speaker that announces each VIP it can serve as a host
// route (/32 or /128) to its peers, typically the routers in front of a group
// of dispatchers that spread the VIPs' traffic over them by ECMP
// (docs/SCALEOUT.md). A VIP is announced while at least one of its servers
// can take new flows and the data plane is attached; it is withdrawn when
// none can, when the operator drains the dispatcher (ndctl bgp drain) and
// when ndd stops.
type BGP struct {
	// ASN (asn) is this dispatcher's autonomous system number, 1 to
	// 4294967295 (not 23456, AS_TRANS). Required.
	ASN uint32
	// RouterID (router_id) is the BGP identifier, an IPv4 address unique
	// among the speakers the peers hear. Required.
	RouterID netip.Addr
	// ShutdownGrace (shutdown_grace) is how long ndd keeps running, its
	// routes withdrawn and its data plane forwarding, after SIGTERM before
	// it closes its sessions and exits: time for the routers to move new
	// flows elsewhere while the dispatcher still serves the packets in
	// flight. 0 to 10m. Default 5s.
	ShutdownGrace time.Duration
	// GracefulRestart (graceful_restart) turns on BGP graceful restart
	// (RFC 4724) with this restart time, whole seconds from 1s to 4095s;
	// 0 (the default) leaves it off. The peers then keep this dispatcher's
	// routes for that long when its sessions drop without a withdrawal,
	// while its pinned data plane forwards on, and ndd, started again over
	// that data plane, says so (the restart flag): a crash or an upgrade
	// of a lone dispatcher costs no traffic. On SIGTERM ndd then keeps its
	// routes and only closes its sessions (drain it first to take it out
	// of service). Leave it off in a group behind ECMP: a dispatcher that
	// dies with its data plane would keep its share of the traffic for
	// the restart time, where the group covers for it at once.
	GracefulRestart time.Duration
	// Communities (communities) are attached to every VIP's route unless
	// the VIP sets its own: "ASN:VALUE" (each 0..65535) or a well-known
	// name (no-export, no-advertise, no-export-subconfed, blackhole,
	// graceful-shutdown). Default none.
	Communities []string
	// MED (med) is the MULTI_EXIT_DISC of every VIP's route unless the VIP
	// sets its own. Default 0.
	MED uint32
	// Peers (peers) are the BGP neighbours. At least one.
	Peers []BGPPeer
	// VIPs (vips) override the announcement of single VIPs, each a
	// cluster's VIP. Every cluster's VIP is announced whether listed or not.
	VIPs []BGPVIP
}

// BGPPeer is one BGP neighbour.
type BGPPeer struct {
	// Address (address) is the neighbour's IP address; each once.
	// Required. A peer is sent the VIPs of its address's family.
	Address netip.Addr
	// ASN (asn) is the neighbour's AS: the same as bgp.asn for internal
	// BGP, another for external BGP. Required.
	ASN uint32
	// Port (port) is the neighbour's TCP port. Default 179.
	Port uint16
	// HoldTime (hold_time) is the hold time ndd proposes: a session silent
	// this long is down and its routes gone (the peer's own may be
	// shorter; the lower wins). Whole seconds, 0 (no keepalives) or 3s to
	// 65535s. Default 90s. Keepalives go every third of it.
	HoldTime time.Duration
	// Password (password) is the TCP MD5 signature key (RFC 2385) shared
	// with the neighbour, at most 80 bytes. Default "" (none).
	Password string
	// Multihop (multihop) is the TTL of the session's packets for an
	// external peer that is not directly connected (eBGP multihop), 1 to
	// 255; 0 keeps the default of a directly connected peer. Default 0.
	Multihop uint32
	// LocalAddress (local_address) is the address ndd connects from.
	// Default: the one the kernel picks.
	LocalAddress netip.Addr
}

// BGPVIP overrides the route of one VIP. Fields left out take the bgp
// section's.
type BGPVIP struct {
	// VIP (vip) is a cluster's VIP. Required.
	VIP netip.Addr
	// Announce (announce): false never announces this VIP. Default true.
	Announce bool
	// Communities (communities) replace bgp.communities for this VIP; nil
	// when left out.
	Communities []string
	// MED (med) replaces bgp.med for this VIP; nil when left out.
	MED *uint32
	// NextHop (next_hop) is the next hop announced, of the VIP's family
	// (another dispatcher, a firewall in front of it). Default: the address
	// of the session (next hop self).
	NextHop netip.Addr
}

// Defaults of the bgp section.
const (
	DefaultBGPPort          = 179
	DefaultBGPHoldTime      = 90 * time.Second
	DefaultBGPShutdownGrace = 5 * time.Second
	// MaxBGPPassword is the longest TCP MD5 key (TCP_MD5SIG_MAXKEYLEN).
	MaxBGPPassword = 80
)

// BGPRoute is what bgp says to announce for one VIP while it can be served.
type BGPRoute struct {
	VIP         netip.Addr
	Communities []uint32
	MED         uint32
	NextHop     netip.Addr // invalid: next hop self
}

// Routes returns the route of every cluster's VIP that is to be announced,
// sorted by VIP, with the section's defaults applied; nil without a bgp
// section. The configuration must be valid.
func (c *Config) Routes() []BGPRoute {
	b := c.BGP
	if b == nil {
		return nil
	}
	var out []BGPRoute
	for _, cl := range c.Clusters {
		r := BGPRoute{VIP: cl.VIP, MED: b.MED}
		comms := b.Communities
		announce := true
		if i := slices.IndexFunc(b.VIPs, func(v BGPVIP) bool { return v.VIP == cl.VIP }); i >= 0 {
			v := b.VIPs[i]
			announce = v.Announce
			if v.Communities != nil {
				comms = v.Communities
			}
			if v.MED != nil {
				r.MED = *v.MED
			}
			r.NextHop = v.NextHop
		}
		if !announce {
			continue
		}
		for _, s := range comms {
			if v, err := ParseCommunity(s); err == nil {
				r.Communities = append(r.Communities, v)
			}
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b BGPRoute) int { return a.VIP.Compare(b.VIP) })
	return out
}

// wellKnownCommunities are the community names ParseCommunity accepts.
var wellKnownCommunities = map[string]uint32{
	"graceful-shutdown":   0xFFFF0000, // RFC 8326
	"blackhole":           0xFFFF029A, // RFC 7999
	"no-export":           0xFFFFFF01,
	"no-advertise":        0xFFFFFF02,
	"no-export-subconfed": 0xFFFFFF03,
}

// ParseCommunity reads a BGP community: "ASN:VALUE", each 0..65535, or a
// well-known name.
func ParseCommunity(s string) (uint32, error) {
	if v, ok := wellKnownCommunities[s]; ok {
		return v, nil
	}
	hi, lo, ok := strings.Cut(s, ":")
	if ok {
		a, errA := strconv.ParseUint(hi, 10, 16)
		b, errB := strconv.ParseUint(lo, 10, 16)
		if errA == nil && errB == nil {
			return uint32(a)<<16 | uint32(b), nil
		}
	}
	return 0, fmt.Errorf("%q is not a community: ASN:VALUE (each 0..65535) or one of graceful-shutdown, blackhole, no-export, no-advertise, no-export-subconfed", s)
}

func validateBGP(c *Config, r *reporter) {
	b := c.BGP
	if b == nil {
		return
	}
	badASN := func(path string, asn uint32) {
		if asn == 0 || asn == 23456 {
			r.errorf(path, "%d is not a usable AS number: 1..4294967295, not 23456 (AS_TRANS)", asn)
		}
	}
	badASN("bgp.asn", b.ASN)
	switch {
	case !b.RouterID.IsValid():
		r.errorf("bgp.router_id", "required: an IPv4 address unique among the speakers (this dispatcher's own, usually)")
	case !b.RouterID.Is4() || b.RouterID.IsUnspecified():
		r.errorf("bgp.router_id", "%s is not a router id: an IPv4 address, not 0.0.0.0", b.RouterID)
	}
	if b.ShutdownGrace < 0 || b.ShutdownGrace > 10*time.Minute {
		r.errorf("bgp.shutdown_grace", "%v is out of range 0s..10m", b.ShutdownGrace)
	}
	if g := b.GracefulRestart; g != 0 && (g < time.Second || g > 4095*time.Second || g%time.Second != 0) {
		r.errorf("bgp.graceful_restart", "%v is not a restart time: whole seconds, 1s..4095s, or 0s for none", g)
	}
	validateCommunities("bgp.communities", b.Communities, r)
	if len(b.Peers) == 0 {
		r.errorf("bgp.peers", "at least one peer is required")
	}
	seen := map[netip.Addr]bool{}
	for i, p := range b.Peers {
		pp := yamlwalk.Index("bgp.peers", i)
		switch {
		case !p.Address.IsValid():
			if !r.bad[pp+".address"] {
				r.errorf(pp+".address", "required: the neighbour's IP address")
			}
		case seen[p.Address]:
			r.errorf(pp+".address", "%s is listed twice", p.Address)
		case p.Address.IsUnspecified() || p.Address.IsMulticast() || p.Address.Is4In6() || p.Address.Zone() != "":
			// Loopback is allowed: a routing daemon on the same host.
			r.errorf(pp+".address", "%s is not a neighbour's address: unspecified, multicast, IPv4-mapped or with a zone", p.Address)
		}
		seen[p.Address] = true
		badASN(pp+".asn", p.ASN)
		if p.Port == 0 {
			r.errorf(pp+".port", rangeMsg, 0, 1, 65535)
		}
		if h := p.HoldTime; h != 0 && (h < 3*time.Second || h > 65535*time.Second || h%time.Second != 0) {
			r.errorf(pp+".hold_time", "%v is not a hold time: whole seconds, 0s or 3s..65535s", h)
		}
		if len(p.Password) > MaxBGPPassword {
			r.errorf(pp+".password", "%d bytes: a TCP MD5 key has at most %d", len(p.Password), MaxBGPPassword)
		}
		if p.Multihop > 255 {
			r.errorf(pp+".multihop", rangeMsg, p.Multihop, 0, 255)
		}
		if p.LocalAddress.IsValid() && p.Address.IsValid() && p.LocalAddress.Is4() != p.Address.Is4() {
			r.errorf(pp+".local_address", "%s is not of the neighbour's family", p.LocalAddress)
		}
	}
	vips := map[netip.Addr]bool{}
	for _, cl := range c.Clusters {
		vips[cl.VIP] = true
	}
	listed := map[netip.Addr]bool{}
	for i, v := range b.VIPs {
		vp := yamlwalk.Index("bgp.vips", i)
		switch {
		case !v.VIP.IsValid():
			if !r.bad[vp+".vip"] {
				r.errorf(vp+".vip", "required: a cluster's VIP")
			}
			continue
		case listed[v.VIP]:
			r.errorf(vp+".vip", "%s is listed twice", v.VIP)
		case !vips[v.VIP]:
			r.errorf(vp+".vip", "%s is no cluster's VIP", v.VIP)
		}
		listed[v.VIP] = true
		validateCommunities(vp+".communities", v.Communities, r)
		if v.NextHop.IsValid() {
			if v.NextHop.Is4() != v.VIP.Is4() {
				r.errorf(vp+".next_hop", "%s is not of the VIP's family", v.NextHop)
			} else if why := badAddr(v.NextHop, "next hop"); why != "" {
				r.errorf(vp+".next_hop", "%s", why)
			}
		}
	}
}

func validateCommunities(path string, cs []string, r *reporter) {
	for i, s := range cs {
		if _, err := ParseCommunity(s); err != nil {
			r.errorf(yamlwalk.Index(path, i), "%v", err)
		}
	}
}

func describeBGP(b *BGP) string {
	if b == nil {
		return "none"
	}
	c := *b
	c.Peers = slices.Clone(b.Peers)
	for i := range c.Peers {
		c.Peers[i].Password = maskSecret(c.Peers[i].Password)
	}
	var vips []string
	for _, v := range b.VIPs {
		med := "-"
		if v.MED != nil {
			med = strconv.FormatUint(uint64(*v.MED), 10)
		}
		vips = append(vips, fmt.Sprintf("{%s announce %t communities %v med %s next_hop %v}", v.VIP, v.Announce, v.Communities, med, v.NextHop))
	}
	c.VIPs = nil
	return fmt.Sprintf("%+v vips [%s]", c, strings.Join(vips, " "))
}

// bgpPasswords lists the peers' passwords, for the diff to see a change it
// does not show.
func bgpPasswords(b *BGP) string {
	if b == nil {
		return ""
	}
	var ps []string
	for _, p := range b.Peers {
		if p.Password != "" {
			ps = append(ps, p.Address.String()+"="+p.Password)
		}
	}
	return strings.Join(ps, " ")
}

func cloneBGP(b *BGP) *BGP {
	if b == nil {
		return nil
	}
	out := *b
	out.Communities = slices.Clone(b.Communities)
	out.Peers = slices.Clone(b.Peers)
	out.VIPs = make([]BGPVIP, len(b.VIPs))
	for i, v := range b.VIPs {
		out.VIPs[i] = v
		out.VIPs[i].Communities = slices.Clone(v.Communities)
		if v.MED != nil {
			m := *v.MED
			out.VIPs[i].MED = &m
		}
	}
	if b.VIPs == nil {
		out.VIPs = nil
	}
	return &out
}

// CloneBGP returns a deep copy of b (nil for nil).
func CloneBGP(b *BGP) *BGP { return cloneBGP(b) }
