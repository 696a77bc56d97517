package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

const withBGP = `interfaces: [eth0]
bgp:
  asn: 64513
  router_id: 198.51.100.3
  shutdown_grace: 2s
  communities: ["64513:100", no-export]
  med: 10
  peers:
    - address: 198.51.100.1
      asn: 64512
      hold_time: 9s
      password: s3cret
    - {address: 2001:db8::1, asn: 64512, multihop: 2, local_address: "2001:db8::3"}
  vips:
    - vip: 198.51.100.101
      med: 20
      communities: []
      next_hop: 198.51.100.4
    - {vip: 198.51.100.102, announce: false}
clusters:
  - vip: 198.51.100.100
    ports: [{port: 80}]
  - vip: 198.51.100.101
    ports: [{port: 80}]
  - vip: 198.51.100.102
    ports: [{port: 80}]
`

func TestBGPSection(t *testing.T) {
	c, err := Parse([]byte(withBGP), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b := c.BGP
	if b.ASN != 64513 || b.RouterID != netip.MustParseAddr("198.51.100.3") || b.ShutdownGrace != 2*time.Second || b.MED != 10 {
		t.Errorf("bgp %+v", b)
	}
	p0, p1 := b.Peers[0], b.Peers[1]
	if p0.Port != 179 || p0.HoldTime != 9*time.Second || p0.Password != "s3cret" || p1.HoldTime != DefaultBGPHoldTime || p1.Multihop != 2 || !p1.LocalAddress.IsValid() {
		t.Errorf("peers %+v", b.Peers)
	}
	rs := c.Routes()
	if len(rs) != 2 {
		t.Fatalf("routes %+v, want two (the third is not announced)", rs)
	}
	if r := rs[0]; r.VIP != netip.MustParseAddr("198.51.100.100") || r.MED != 10 || len(r.Communities) != 2 ||
		r.Communities[0] != 64513<<16|100 || r.Communities[1] != 0xFFFFFF01 || r.NextHop.IsValid() {
		t.Errorf("route 0 %+v", r)
	}
	if r := rs[1]; r.MED != 20 || len(r.Communities) != 0 || r.NextHop != netip.MustParseAddr("198.51.100.4") {
		t.Errorf("route 1 %+v", r)
	}

	roundTrip(t, c)

	// bgp is a live setting; a password change shows, masked.
	for _, tc := range []struct{ from, to, path string }{
		{"med: 20", "med: 30", "bgp"},
		{"password: s3cret", "password: other", "bgp.peers.password"},
		{"    - {address: 2001:db8::1, asn: 64512, multihop: 2, local_address: \"2001:db8::3\"}\n", "", "bgp"},
	} {
		c2, err := Parse([]byte(strings.Replace(withBGP, tc.from, tc.to, 1)), "nd.yaml")
		if err != nil {
			t.Fatal(err)
		}
		ch := Diff(c, c2)
		if ch.Err() != nil || len(ch.Settings) != 1 || ch.Settings[0].Path != tc.path {
			t.Errorf("%s -> %s: %+v", tc.from, tc.to, ch)
		}
		if strings.Contains(ch.String(), "other") || strings.Contains(ch.String(), "s3cret") {
			t.Errorf("a password shows in the changes: %s", ch)
		}
	}
}

func TestBGPErrorsLocated(t *testing.T) {
	for _, tc := range []struct{ from, to, want string }{
		{"asn: 64513", "asn: 0", "nd.yaml:3:8: bgp.asn: 0 is not a usable AS number"},
		{"router_id: 198.51.100.3", "router_id: 2001:db8::3", "nd.yaml:4:14: bgp.router_id: 2001:db8::3 is not a router id"},
		{"  router_id: 198.51.100.3\n", "", "nd.yaml:3:3: bgp.router_id: required"},
		{"hold_time: 9s", "hold_time: 2s", "nd.yaml:11:18: bgp.peers[0].hold_time: 2s is not a hold time"},
		{"shutdown_grace: 2s\n", "shutdown_grace: 2s\n  graceful_restart: 1500ms\n", "nd.yaml:6:21: bgp.graceful_restart: 1.5s is not a restart time"},
		{"shutdown_grace: 2s\n", "shutdown_grace: 2s\n  graceful_restart: 4096s\n", "nd.yaml:6:21: bgp.graceful_restart: 1h8m16s is not a restart time"},
		{"hold_time: 9s", "hold_tme: 9s", "nd.yaml:11:7: bgp.peers[0].hold_tme: unknown field (did you mean hold_time?)"},
		{"address: 198.51.100.1", "address: 2001:db8::1", "nd.yaml:13:17: bgp.peers[1].address: 2001:db8::1 is listed twice"},
		{`"64513:100"`, `"64513:100000"`, `nd.yaml:6:17: bgp.communities[0]: "64513:100000" is not a community`},
		{"vip: 198.51.100.101", "vip: 198.51.100.109", "nd.yaml:15:12: bgp.vips[0].vip: 198.51.100.109 is no cluster's VIP"},
		{"next_hop: 198.51.100.4", "next_hop: 2001:db8::4", "nd.yaml:18:17: bgp.vips[0].next_hop: 2001:db8::4 is not of the VIP's family"},
		{"password: s3cret", "password: " + strings.Repeat("x", 81), "bgp.peers[0].password: 81 bytes"},
		{"multihop: 2", "multihop: 256", "bgp.peers[1].multihop: 256 is out of range 0..255"},
	} {
		src := strings.Replace(withBGP, tc.from, tc.to, 1)
		if src == withBGP {
			t.Fatalf("%q not in the test configuration", tc.from)
		}
		_, err := Parse([]byte(src), "nd.yaml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s -> %s: error %v, want one containing %q", tc.from, tc.to, err, tc.want)
		}
	}
}
