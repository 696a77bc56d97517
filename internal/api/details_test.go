package api

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/daemon"
)

// TestRefusesDuplicateKeysAndUnknownParameters: a JSON body with a key
// given twice, at any depth, and a /v1/flows query with a parameter it
// does not know or a parameter given twice get a 400 that names it, and
// change nothing.
func TestRefusesDuplicateKeysAndUnknownParameters(t *testing.T) {
	f := newFake(t)
	s := handlerServer(f)
	before := f.yaml(t)
	for _, tc := range []struct{ method, path, body, msg string }{
		{"PATCH", serverURL, `{"weight":10,"weight":90}`, `duplicate JSON key "weight"`},
		{"PATCH", serverURL, `{"weight":10,"quiesce":false,"weight":10}`, `duplicate JSON key "weight"`},
		{"POST", serversURL, `{"address":"198.51.100.13","address":"198.51.100.14"}`, `duplicate JSON key "address"`},
		{"POST", "/v1/clusters", `{"vip":"203.0.113.1","ports":[{"port":1},{"port":2,"port":3}]}`, `duplicate JSON key "port" in ports[1]`},
		{"POST", "/v1/clusters", `{"vip":"203.0.113.1","ports":[{"port":1,"servers":[{"address":"203.0.113.2","weight":1,"weight":2}]}]}`,
			`duplicate JSON key "weight" in ports[0].servers[0]`},
		{"GET", "/v1/flows?vip=198.51.100.100&bogus=1", "", `unknown query parameter "bogus"`},
		{"GET", "/v1/flows?VIP=198.51.100.100", "", `unknown query parameter "VIP"`},
		{"GET", "/v1/flows?port=80&port=81", "", `"port" given 2 times`},
	} {
		rec := do(s, tc.method, tc.path, tc.body)
		wantBadRequest(t, tc.method+" "+tc.path+" "+tc.body, rec, tc.msg)
	}
	if got := f.yaml(t); got != before {
		t.Fatalf("the configuration changed:\n%s", got)
	}
	// The same keys in different objects are not duplicates.
	if rec := do(s, "POST", "/v1/clusters", `{"vip":"203.0.113.1","ports":[{"port":1,"servers":[{"address":"203.0.113.2"},{"address":"203.0.113.3"}]},{"port":2}]}`); rec.Code != 201 {
		t.Errorf("distinct objects with the same keys: status %d: %s", rec.Code, rec.Body)
	}
}

// TestRefusesUnusableVIPs: through the API, a VIP in 169.254.0.0/16, or
// the broadcast address of a network the dispatcher is connected to, is
// refused with a 400 that says why, as the configuration file refuses it.
func TestRefusesUnusableVIPs(t *testing.T) {
	cfg, err := config.Parse([]byte(fakeYAML), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	connected := func() ([]netip.Prefix, error) {
		return []netip.Prefix{netip.MustParsePrefix("203.0.113.7/24"), netip.MustParsePrefix("198.51.100.1/31")}, nil
	}
	d, _ := runDaemon(t, cfg, daemon.Options{Networks: connected})
	s := handlerServer(d)
	for _, tc := range []struct{ vip, msg string }{
		{"169.254.10.1", "link-local"},
		{"203.0.113.255", "broadcast address of the connected network 203.0.113.0/24"},
	} {
		rec := do(s, "POST", "/v1/clusters", `{"vip":"`+tc.vip+`","ports":[{"port":80}]}`)
		wantBadRequest(t, "VIP "+tc.vip, rec, tc.msg)
	}
	// Not a broadcast address: another host of the network, or the last
	// address of a /31, which has none.
	for _, vip := range []string{"203.0.113.254", "198.51.100.1"} {
		if rec := do(s, "POST", "/v1/clusters", `{"vip":"`+vip+`","ports":[{"port":80}]}`); rec.Code != 201 {
			t.Errorf("VIP %s: status %d, want 201: %s", vip, rec.Code, rec.Body)
		}
	}

	// The configuration file: the same VIPs refused, located.
	for _, vip := range []string{"169.254.10.1", "203.0.113.255"} {
		c, err := config.Parse([]byte(strings.Replace(fakeYAML, "vip: 198.51.100.100", "vip: "+vip, 1)), "nd.yaml")
		if err == nil {
			err = daemon.Check(c, func(name string) (*net.Interface, error) { return &net.Interface{Index: 1, Name: name}, nil }, connected)
		}
		if err == nil || !strings.Contains(err.Error(), "nd.yaml:4:") || !strings.Contains(err.Error(), vip) {
			t.Errorf("file with VIP %s: %v, want a located refusal", vip, err)
		}
	}
}
