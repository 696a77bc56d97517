package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// roundTrip checks that c, marshalled and parsed again, is c.
func roundTrip(t *testing.T, c *Config) *Config {
	t.Helper()
	data, err := Marshal(c)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	back, err := Parse(data, "saved.yaml")
	if err != nil {
		t.Fatalf("Parse(Marshal(c)): %v\n%s", err, data)
	}
	if !sameContent(back, c) {
		t.Fatalf("Parse(Marshal(c)) =\n%+v\nwant\n%+v\nfile:\n%s", *back, *c, data)
	}
	if !Diff(c, back).Empty() {
		t.Fatalf("Diff(c, Parse(Marshal(c))) = %s", Diff(c, back))
	}
	return back
}

func TestMarshalRoundTrip(t *testing.T) {
	t.Run("parsed", func(t *testing.T) {
		roundTrip(t, mustParse(t, diffBase))
	})
	t.Run("everything set", func(t *testing.T) {
		roundTrip(t, mustParse(t, `interfaces: [eth0, "123", "true"]
data_plane: {max_flows: 1000, max_servers: 10, max_services: 5, max_vips: 2, max_affinity: 77,
  ring_size: 251, idle_timeout: 90s, hash_seed: 4294967295, pin_path: ""}
api: {socket: /run/x.sock, listen: "[2001:db8::1]:8443", token_file: /etc/nd/t, tls_cert: /etc/c, tls_key: /etc/k, dashboard: true}
metrics: {listen: "127.0.0.1:9100"}
manager: {interval: 1500ms, sensitivity: 0, smoothing: 1, policy: static,
  proportions: {active: 25, new: 25, advisor: 25, host: 25}}
clusters:
  - vip: 2001:db8::100
    ports:
      - {port: 443, protocol: udp, sticky_time: 24h, weight_bound: 1000,
         servers: [{address: "2001:db8::11", weight: 1000, quiesce: true, local: true}, {address: "2001:db8::12", weight: 0}]}
      - {port: 1, weight_bound: 1}
  - vip: 198.51.100.100
    ports: [{port: 65535}]
`))
	})
	t.Run("built in code", func(t *testing.T) {
		c := Default()
		c.Interfaces = []string{"eth0"}
		c.API.Token = `&a-token:#with'quotes"and*yaml!signs`
		c.API.Listen = ":8080"
		c.Manager.Sensitivity = 1e-9
		c.Manager.Smoothing = 2
		c.Clusters = []Cluster{{
			VIP: netip.MustParseAddr("203.0.113.7"),
			Ports: []PortSpec{{Port: 25, Protocol: nd.TCP, StickyTime: 3 * time.Second, WeightBound: 3, Scheduler: SchedulerMaglev,
				Servers: []Server{{Address: netip.MustParseAddr("203.0.113.8"), Weight: 3}}}},
		}}
		back := roundTrip(t, c)
		if back.Manager.Smoothing != 2 {
			t.Errorf("smoothing %v", back.Manager.Smoothing)
		}
	})
}

func TestMarshalWritesReadableYAML(t *testing.T) {
	data, err := Marshal(mustParse(t, head+"clusters:\n  - vip: 198.51.100.100\n    ports: [{port: 80, servers: [{address: 198.51.100.11, weight: 10, quiesce: true}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"interfaces: [eth0]\n",
		"  idle_timeout: 5m\n",
		"  pin_path: /sys/fs/bpf/nd\n",
		"  proportions: {active: 30, new: 30, advisor: 40, host: 0}\n",
		"  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        protocol: tcp\n        sticky_time: 0s\n        weight_bound: 100\n        scheduler: delay\n        servers:\n          - {address: 198.51.100.11, weight: 10, quiesce: true}\n",
	} {
		if !strings.Contains(string(data), want) {
			t.Errorf("output lacks %q:\n%s", want, data)
		}
	}
	if strings.Contains(string(data), "listen") || strings.Contains(string(data), "metrics") {
		t.Errorf("output writes empty optional settings:\n%s", data)
	}
}

func TestMarshalRefusesInvalid(t *testing.T) {
	c := Default() // no interfaces
	if _, err := Marshal(c); err == nil || !strings.Contains(err.Error(), "interfaces") {
		t.Errorf("Marshal of an invalid config = %v", err)
	}
}
