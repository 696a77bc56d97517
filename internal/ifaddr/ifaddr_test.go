package ifaddr

import (
	"net"
	"net/netip"
	"slices"
	"testing"
)

func TestPrefixes(t *testing.T) {
	addrs := []net.Addr{
		&net.IPNet{IP: net.ParseIP("203.0.113.7"), Mask: net.CIDRMask(120, 128)}, // 16-byte form of a /24
		&net.IPNet{IP: net.ParseIP("203.0.113.8").To4(), Mask: net.CIDRMask(25, 32)},
		&net.IPNet{IP: net.ParseIP("2001:db8::1"), Mask: net.CIDRMask(64, 128)},
		&net.IPAddr{IP: net.ParseIP("198.51.100.1")},
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("203.0.113.7/24"),
		netip.MustParsePrefix("203.0.113.8/25"),
		netip.MustParsePrefix("2001:db8::1/64"),
	}
	if got := Prefixes(addrs); !slices.Equal(got, want) {
		t.Errorf("Prefixes = %v, want %v", got, want)
	}
}
