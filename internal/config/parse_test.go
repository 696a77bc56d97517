package config

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// errorLines parses src as nd.yaml and returns its errors, one string each.
func errorLines(t *testing.T, src string) []string {
	t.Helper()
	c, err := Parse([]byte(src), "nd.yaml")
	if err == nil {
		t.Fatalf("Parse accepted:\n%s", src)
	}
	if c != nil {
		t.Errorf("Parse returned a Config with an error")
	}
	var list Errors
	if !errors.As(err, &list) {
		t.Fatalf("error %v (%T) is not Errors", err, err)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error does not wrap ErrInvalid")
	}
	var out []string
	for _, e := range list {
		out = append(out, e.Error())
	}
	if strings.Join(out, "\n") != err.Error() {
		t.Errorf("Errors.Error() = %q, want its items joined", err.Error())
	}
	return out
}

// head is a valid start for tests that add clusters.
const head = "interfaces: [eth0]\n"

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		// Structure.
		{"unknown top-level field", head + "frobnicate: 1\n",
			[]string{"nd.yaml:2:1: frobnicate: unknown field (known: interfaces, data_plane, api, metrics, manager, advisors, agents, ha, bgp, clusters)"}},
		{"unknown field with a suggestion", head + "data_plane:\n  max_flow: 10\n",
			[]string{"nd.yaml:3:3: data_plane.max_flow: unknown field (did you mean max_flows?)"}},
		{"unknown server field", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        servers:\n          - {address: 198.51.100.11, wieght: 3}\n",
			[]string{"nd.yaml:7:38: clusters[0].ports[0].servers[0].wieght: unknown field (did you mean weight?)"}},
		{"field given twice", head + "interfaces: [eth1]\n",
			[]string{"nd.yaml:2:1: interfaces: field given twice (first at line 1)"}},
		{"root is not a mapping", "- eth0\n",
			[]string{"nd.yaml:1:1: want a mapping of interfaces, data_plane, api, metrics, manager, advisors, agents, ha, bgp, clusters, got a list"}},
		{"section is not a mapping", head + "api: /run/nd.sock\n",
			[]string{`nd.yaml:2:6: api: want a mapping of socket, listen, token, token_file, tls_cert, tls_key, dashboard, got "/run/nd.sock"`}},
		{"list wanted", "interfaces: eth0\n",
			[]string{`nd.yaml:1:13: interfaces: want a list, got "eth0"`}},
		{"second document", head + "---\ninterfaces: [eth1]\n",
			[]string{"nd.yaml:2:1: a second YAML document: the configuration is one document"}},
		{"yaml syntax", "interfaces: [eth0\n",
			[]string{"nd.yaml:1: yaml: did not find expected ',' or ']'"}},
		{"unknown anchor", "interfaces: *nope\n",
			[]string{"nd.yaml:1:13: yaml: unknown anchor 'nope' referenced"}},
		{"alias to the wrong kind", head + "clusters: &c [*c]\n",
			[]string{"nd.yaml:2:15: clusters[0]: want a mapping of vip, ports, got a list"}},
		{"alias that contains itself", head + "clusters:\n  - &m {vip: 198.51.100.1, ports: [*m]}\n",
			[]string{"nd.yaml:3:36: clusters[0].ports[0]: alias *m refers to a mapping that contains it"}},

		// Interfaces.
		{"no interfaces", "clusters: []\n",
			[]string{"nd.yaml:1:1: interfaces: at least one interface is required"}},
		{"empty file", "",
			[]string{"nd.yaml:1:1: interfaces: at least one interface is required"}},
		{"empty interface list", "interfaces: []\n",
			[]string{"nd.yaml:1:13: interfaces: at least one interface is required"}},
		{"empty interface name", `interfaces: [eth0, ""]` + "\n",
			[]string{"nd.yaml:1:20: interfaces[1]: empty interface name"}},
		{"interface name too long", "interfaces: [eth0, averyveryverylongname]\n",
			[]string{`nd.yaml:1:20: interfaces[1]: "averyveryverylongname" is not an interface name: longer than 15 characters`}},
		{"interface name with a slash", "interfaces:\n  - eth0/1\n",
			[]string{`nd.yaml:2:5: interfaces[0]: "eth0/1" is not an interface name: it contains '/', ':' or white space`}},
		{"interface is a mapping", "interfaces:\n  - {name: eth0}\n",
			[]string{"nd.yaml:2:5: interfaces[0]: want a string, got a mapping"}},
		{"duplicate interface", "interfaces: [eth0, eth1, eth0]\n",
			[]string{"nd.yaml:1:26: interfaces[2]: duplicate interface eth0 (first at line 1)"}},

		// Data plane.
		{"ring size not prime", head + "data_plane:\n  ring_size: 65536\n",
			[]string{"nd.yaml:3:14: data_plane.ring_size: 65536 is not a prime between 3 and 16777216 (the next prime is 65537)"}},
		{"ring size too small", head + "data_plane: {ring_size: 2}\n",
			[]string{"nd.yaml:2:25: data_plane.ring_size: 2 is not a prime between 3 and 16777216"}},
		{"size zero", head + "data_plane:\n  max_flows: 0\n",
			[]string{"nd.yaml:3:14: data_plane.max_flows: 0 is out of range 1..4294967295"}},
		{"size negative", head + "data_plane:\n  max_vips: -1\n",
			[]string{"nd.yaml:3:13: data_plane.max_vips: -1 is out of range 1..4294967295"}},
		{"size past uint32", head + "data_plane:\n  max_servers: 4294967296\n",
			[]string{"nd.yaml:3:16: data_plane.max_servers: 4294967296 is out of range 1..4294967295"}},
		{"size not an integer", head + "data_plane:\n  max_affinity: 1.5\n",
			[]string{`nd.yaml:3:17: data_plane.max_affinity: want an integer, got "1.5"`}},
		{"size as a string", head + "data_plane:\n  max_services: \"10\"\n",
			[]string{`nd.yaml:3:17: data_plane.max_services: want an integer, got "10"`}},
		{"idle timeout not a duration", head + "data_plane:\n  idle_timeout: 5 minutes\n",
			[]string{`nd.yaml:3:17: data_plane.idle_timeout: "5 minutes" is not a duration such as "30s" or "1m30s"`}},
		{"idle timeout without unit", head + "data_plane:\n  idle_timeout: 300\n",
			[]string{`nd.yaml:3:17: data_plane.idle_timeout: 300 has no unit: write a duration such as "300s"`}},
		{"idle timeout too short", head + "data_plane:\n  idle_timeout: 500ms\n",
			[]string{"nd.yaml:3:17: data_plane.idle_timeout: 500ms is under the minimum of 1s"}},
		{"pin path relative", head + "data_plane:\n  pin_path: bpf/nd\n",
			[]string{`nd.yaml:3:13: data_plane.pin_path: "bpf/nd" is not an absolute path (write "" to pin nothing)`}},

		// API and metrics.
		{"listen without token", head + "api:\n  listen: 127.0.0.1:8080\n",
			[]string{"nd.yaml:3:11: api.listen: a TCP listener requires token or token_file"}},
		{"listen not addr:port", head + "api:\n  listen: localhost\n  token_file: /etc/nd/token\n",
			[]string{`nd.yaml:3:11: api.listen: "localhost" is not addr:port`}},
		{"listen port not a number", head + "api:\n  listen: \"[2001:db8::1]:http\"\n  token_file: /etc/nd/token\n",
			[]string{`nd.yaml:3:11: api.listen: "[2001:db8::1]:http": port "http" is not a number 1..65535`}},
		{"listen host invalid", head + "api:\n  listen: \"bad_host:80\"\n  token_file: /etc/nd/token\n",
			[]string{`nd.yaml:3:11: api.listen: "bad_host:80": "bad_host" is neither an IP address nor a host name`}},
		{"token and token file", head + "api:\n  listen: :8080\n  token: 0123456789abcdef0123\n  token_file: /etc/nd/token\n",
			[]string{"nd.yaml:5:15: api.token_file: set token or token_file, not both"}},
		{"token too short", head + "api:\n  listen: :8080\n  token: secret\n",
			[]string{"nd.yaml:4:10: api.token: too short: a token has at least 16 characters"}},
		{"token with a space", head + "api:\n  listen: :8080\n  token: \"0123456789 abcdef\"\n",
			[]string{"nd.yaml:4:10: api.token: a token is printable ASCII without spaces"}},
		{"merge key", head + "clusters:\n  - <<: {vip: 198.51.100.1}\n    ports: [{port: 80}]\n",
			[]string{"nd.yaml:3:5: clusters[0].<<: merge keys are not supported: repeat the fields, or alias a whole value",
				"nd.yaml:3:5: clusters[0].vip: required: the virtual IP address"}},
		{"token file relative", head + "api:\n  listen: :8080\n  token_file: token\n",
			[]string{`nd.yaml:4:15: api.token_file: "token" is not an absolute path`}},
		{"tls cert without key", head + "api:\n  listen: :8443\n  token_file: /etc/nd/token\n  tls_cert: /etc/nd/c.pem\n",
			[]string{"nd.yaml:5:13: api.tls_cert: tls_key is required with tls_cert"}},
		{"tls key without cert", head + "api:\n  listen: :8443\n  token_file: /etc/nd/token\n  tls_key: /etc/nd/k.pem\n",
			[]string{"nd.yaml:5:12: api.tls_key: tls_cert is required with tls_key"}},
		{"tls without listen", head + "api:\n  tls_cert: /etc/nd/c.pem\n  tls_key: /etc/nd/k.pem\n",
			[]string{"nd.yaml:3:13: api.tls_cert: TLS applies to the TCP listener: set listen too"}},
		{"dashboard without listen", head + "api:\n  dashboard: true\n",
			[]string{"nd.yaml:3:14: api.dashboard: the dashboard is served on the TCP listener: set api.listen (and a token) too"}},
		{"socket empty", head + "api:\n  socket: \"\"\n",
			[]string{"nd.yaml:3:11: api.socket: empty: the API needs a unix socket (default /run/nd/ndd.sock)"}},
		{"socket relative", head + "api:\n  socket: ndd.sock\n",
			[]string{`nd.yaml:3:11: api.socket: "ndd.sock" is not an absolute path`}},
		{"metrics on the api listener", head + "api: {listen: \":9100\", token_file: /etc/nd/token}\nmetrics: {listen: \":9100\"}\n",
			[]string{`nd.yaml:3:19: metrics.listen: ":9100" is also api.listen: give the metrics their own port`}},
		{"metrics listen bad", head + "metrics:\n  listen: 9100\n",
			[]string{`nd.yaml:3:11: metrics.listen: "9100" is not addr:port`}},

		// Manager.
		{"interval too short", head + "manager:\n  interval: 10ms\n",
			[]string{"nd.yaml:3:13: manager.interval: 10ms is out of range 100ms..1h"}},
		{"sensitivity as percent", head + "manager:\n  sensitivity: 5\n",
			[]string{"nd.yaml:3:16: manager.sensitivity: 5 is out of range 0..1 (a fraction: 0.05 is 5%)"}},
		{"sensitivity not a number", head + "manager:\n  sensitivity: 5%\n",
			[]string{`nd.yaml:3:16: manager.sensitivity: want a number, got "5%"`}},
		{"sensitivity infinite", head + "manager:\n  sensitivity: .inf\n",
			[]string{`nd.yaml:3:16: manager.sensitivity: want a finite number, got ".inf"`}},
		{"smoothing under one", head + "manager:\n  smoothing: 0.5\n",
			[]string{"nd.yaml:3:14: manager.smoothing: 0.5 is out of range 1..10"}},
		{"unknown policy", head + "manager:\n  policy: fastest\n",
			[]string{`nd.yaml:3:11: manager.policy: "fastest" is not a policy: want default, best or static`}},
		{"proportions do not sum to 100", head + "manager:\n  proportions: {active: 40, new: 50}\n",
			[]string{"nd.yaml:3:16: manager.proportions: active 40 + new 50 + advisor 0 + host 0 = 90, want 100"}},
		{"proportion over 100", head + "manager:\n  proportions: {active: 101, new: 0}\n",
			[]string{"nd.yaml:3:16: manager.proportions: active 0 + new 0 + advisor 0 + host 0 = 0, want 100",
				"nd.yaml:3:25: manager.proportions.active: 101 is out of range 0..100"}},

		// Clusters.
		{"vip missing", head + "clusters:\n  - ports: [{port: 80}]\n",
			[]string{"nd.yaml:3:5: clusters[0].vip: required: the virtual IP address"}},
		{"vip null", head + "clusters:\n  - vip:\n    ports: [{port: 80}]\n",
			[]string{"nd.yaml:3:5: clusters[0].vip: required: the virtual IP address"}},
		{"vip not an address", head + "clusters:\n  - vip: 198.51.100.300\n    ports: [{port: 80}]\n",
			[]string{`nd.yaml:3:10: clusters[0].vip: "198.51.100.300" is not an IP address`}},
		{"vip unspecified", head + "clusters:\n  - vip: 0.0.0.0\n    ports: [{port: 80}]\n",
			[]string{"nd.yaml:3:10: clusters[0].vip: 0.0.0.0 is unspecified: not usable as a VIP"}},
		{"vip multicast", head + "clusters:\n  - vip: ff02::1\n    ports: [{port: 80}]\n",
			[]string{"nd.yaml:3:10: clusters[0].vip: ff02::1 is multicast: not usable as a VIP"}},
		{"vip loopback", head + "clusters:\n  - vip: 127.0.0.1\n    ports: [{port: 80}]\n",
			[]string{"nd.yaml:3:10: clusters[0].vip: 127.0.0.1 is loopback: not usable as a VIP"}},
		{"vip ipv4-mapped", head + "clusters:\n  - vip: \"::ffff:198.51.100.1\"\n    ports: [{port: 80}]\n",
			[]string{"nd.yaml:3:10: clusters[0].vip: ::ffff:198.51.100.1 is an IPv4-mapped IPv6 address: write the IPv4 address 198.51.100.1"}},
		{"vip with zone", head + "clusters:\n  - vip: fe80::1%eth0\n    ports: [{port: 80}]\n",
			[]string{"nd.yaml:3:10: clusters[0].vip: fe80::1%eth0 has a zone: a VIP has none"}},
		{"duplicate vip", head + "clusters:\n  - vip: 198.51.100.100\n    ports: [{port: 80}]\n  - vip: 198.51.100.100\n    ports: [{port: 443}]\n",
			[]string{"nd.yaml:5:10: clusters[1].vip: duplicate VIP 198.51.100.100 (first at line 3): list each VIP once, with all its ports"}},
		{"no ports", head + "clusters:\n  - vip: 198.51.100.100\n",
			[]string{"nd.yaml:3:5: clusters[0].ports: no ports: a VIP needs at least one"}},
		{"empty ports", head + "clusters:\n  - vip: 198.51.100.100\n    ports: []\n",
			[]string{"nd.yaml:4:12: clusters[0].ports: no ports: a VIP needs at least one"}},

		// Ports.
		{"duplicate port", head + `clusters:
  - vip: 198.51.100.100
    ports:
      - port: 443
        protocol: udp
      - port: 80
        protocol: tcp
      - port: 443
        protocol: udp
`, []string{"nd.yaml:9:9: clusters[0].ports[2]: duplicate port 443/udp on VIP 198.51.100.100 (first at line 5)"}},
		{"duplicate port, protocol by default", head + `clusters:
  - vip: 198.51.100.100
    ports:
      - port: 80
      - port: 80
        protocol: TCP
`, []string{"nd.yaml:6:9: clusters[0].ports[1]: duplicate port 80/tcp on VIP 198.51.100.100 (first at line 5)"}},
		{"port missing", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - protocol: tcp\n",
			[]string{"nd.yaml:5:9: clusters[0].ports[0].port: required: a port number 1..65535"}},
		{"port zero", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 0\n",
			[]string{"nd.yaml:5:15: clusters[0].ports[0].port: 0 is out of range 1..65535"}},
		{"port too large", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 65536\n",
			[]string{"nd.yaml:5:15: clusters[0].ports[0].port: 65536 is out of range 1..65535"}},
		{"port is a name", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: http\n",
			[]string{`nd.yaml:5:15: clusters[0].ports[0].port: want an integer, got "http"`}},
		{"protocol unknown", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        protocol: sctp\n",
			[]string{`nd.yaml:6:19: clusters[0].ports[0].protocol: "sctp" is not a protocol: want tcp or udp`}},
		{"sticky time fractional", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        sticky_time: 1.5s\n",
			[]string{"nd.yaml:6:22: clusters[0].ports[0].sticky_time: 1.5s is not a whole number of seconds"}},
		{"sticky time too long", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        sticky_time: 25h\n",
			[]string{"nd.yaml:6:22: clusters[0].ports[0].sticky_time: 25h0m0s is out of range 0s..24h"}},
		{"sticky time negative", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        sticky_time: -1s\n",
			[]string{"nd.yaml:6:22: clusters[0].ports[0].sticky_time: -1s is out of range 0s..24h"}},
		{"sticky time without unit", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        sticky_time: 60\n",
			[]string{`nd.yaml:6:22: clusters[0].ports[0].sticky_time: 60 has no unit: write a duration such as "60s"`}},
		{"weight bound zero", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        weight_bound: 0\n",
			[]string{"nd.yaml:6:23: clusters[0].ports[0].weight_bound: 0 is out of range 1..1000"}},
		{"weight bound too large", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        weight_bound: 1001\n",
			[]string{"nd.yaml:6:23: clusters[0].ports[0].weight_bound: 1001 is out of range 1..1000"}},

		// Servers.
		{"server address missing", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        servers:\n          - weight: 5\n",
			[]string{"nd.yaml:7:13: clusters[0].ports[0].servers[0].address: required: the server's IP address"}},
		{"server address bad", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        servers:\n          - address: server1.example\n",
			[]string{`nd.yaml:7:22: clusters[0].ports[0].servers[0].address: "server1.example" is not an IP address`}},
		{"server of the other family", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        servers:\n          - address: 2001:db8::11\n",
			[]string{"nd.yaml:7:22: clusters[0].ports[0].servers[0].address: 2001:db8::11 is IPv6 but VIP 198.51.100.100 is IPv4: a server has the VIP's family"}},
		{"server multicast", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        servers:\n          - address: 224.0.0.5\n",
			[]string{"nd.yaml:7:22: clusters[0].ports[0].servers[0].address: 224.0.0.5 is multicast: not usable as a server address"}},
		{"server is the vip", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        servers:\n          - address: 198.51.100.100\n",
			[]string{"nd.yaml:7:22: clusters[0].ports[0].servers[0].address: 198.51.100.100 is the VIP itself: only a local server may have it"}},
		{"duplicate server", head + `clusters:
  - vip: 198.51.100.100
    ports:
      - port: 80
        servers:
          - {address: 198.51.100.11, weight: 1}
          - {address: 198.51.100.12, weight: 1}
          - {address: 198.51.100.11, weight: 2}
`, []string{"nd.yaml:9:13: clusters[0].ports[0].servers[2]: duplicate server 198.51.100.11 (first at line 7)"}},
		{"weight over the default bound", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        servers:\n          - {address: 198.51.100.11, weight: 101}\n",
			[]string{"nd.yaml:7:46: clusters[0].ports[0].servers[0].weight: 101 is out of range 0..100 (the port's weight_bound)"}},
		{"weight over a set bound", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        weight_bound: 20\n        servers:\n          - {address: 198.51.100.11, weight: 21}\n",
			[]string{"nd.yaml:8:46: clusters[0].ports[0].servers[0].weight: 21 is out of range 0..20 (the port's weight_bound)"}},
		{"weight negative", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        servers:\n          - {address: 198.51.100.11, weight: -1}\n",
			[]string{"nd.yaml:7:46: clusters[0].ports[0].servers[0].weight: -1 is out of range 0..4294967295"}},
		{"quiesce yes", head + "clusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        servers:\n          - {address: 198.51.100.11, quiesce: yes}\n",
			[]string{`nd.yaml:7:47: clusters[0].ports[0].servers[0].quiesce: want true or false, got "yes"`}},

		// Totals against the data plane's sizes.
		{"more VIPs than max_vips", head + "data_plane: {max_vips: 1}\nclusters:\n  - {vip: 198.51.100.100, ports: [{port: 80}]}\n  - {vip: 198.51.100.101, ports: [{port: 80}]}\n",
			[]string{"nd.yaml:4:3: clusters: 2 VIPs exceed data_plane.max_vips (1)"}},
		{"more ports than max_services", head + "data_plane: {max_services: 1}\nclusters:\n  - {vip: 198.51.100.100, ports: [{port: 80}, {port: 443}]}\n",
			[]string{"nd.yaml:4:3: clusters: 2 ports exceed data_plane.max_services (1)"}},
		{"more servers than max_servers", head + "data_plane: {max_servers: 1}\nclusters:\n  - {vip: 198.51.100.100, ports: [{port: 80, servers: [{address: 198.51.100.1}, {address: 198.51.100.2}]}]}\n",
			[]string{"nd.yaml:4:3: clusters: 2 servers over all ports exceed data_plane.max_servers (1)"}},
		{"more servers than ring slots", head + "data_plane: {ring_size: 3}\nclusters:\n  - vip: 198.51.100.100\n    ports:\n      - port: 80\n        servers: [{address: 198.51.100.1}, {address: 198.51.100.2}, {address: 198.51.100.3}, {address: 198.51.100.4}]\n",
			[]string{"nd.yaml:7:18: clusters[0].ports[0].servers: 4 servers exceed data_plane.ring_size (3)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := errorLines(t, tt.src)
			if !slices.Equal(got, tt.want) {
				t.Errorf("errors:\n got: %q\nwant: %q", got, tt.want)
			}
		})
	}
}

func TestParseReportsEveryError(t *testing.T) {
	src := `interfaces: [eth0, eth0]
data_plane:
  ring_size: 100
  colour: blue
api:
  listen: ":8080"
clusters:
  - vip: 198.51.100.100
    ports:
      - port: 80
        servers:
          - {address: 198.51.100.11, weight: 500}
          - {address: 2001:db8::12}
      - port: 80
  - vip: 198.51.100.400
    ports: [{port: 22, protocol: icmp}]
`
	want := []string{
		"nd.yaml:1:20: interfaces[1]: duplicate interface eth0 (first at line 1)",
		"nd.yaml:3:14: data_plane.ring_size: 100 is not a prime between 3 and 16777216 (the next prime is 101)",
		"nd.yaml:4:3: data_plane.colour: unknown field (known: max_flows, max_servers, max_services, max_vips, max_affinity, ring_size, idle_timeout, halfopen_timeout, expire_nodest_conn, hash_seed, pin_path)",
		"nd.yaml:6:11: api.listen: a TCP listener requires token or token_file",
		"nd.yaml:12:46: clusters[0].ports[0].servers[0].weight: 500 is out of range 0..100 (the port's weight_bound)",
		"nd.yaml:13:23: clusters[0].ports[0].servers[1].address: 2001:db8::12 is IPv6 but VIP 198.51.100.100 is IPv4: a server has the VIP's family",
		"nd.yaml:14:9: clusters[0].ports[1]: duplicate port 80/tcp on VIP 198.51.100.100 (first at line 10)",
		`nd.yaml:15:10: clusters[1].vip: "198.51.100.400" is not an IP address`,
		`nd.yaml:16:34: clusters[1].ports[0].protocol: "icmp" is not a protocol: want tcp or udp`,
	}
	got := errorLines(t, src)
	if !slices.Equal(got, want) {
		t.Errorf("errors:\n got: %q\nwant: %q", got, want)
	}
	// The structured form carries the same facts.
	_, err := Parse([]byte(src), "nd.yaml")
	var list Errors
	errors.As(err, &list)
	e := list[6]
	if e.File != "nd.yaml" || e.Line != 14 || e.Column != 9 || e.Path != "clusters[0].ports[1]" {
		t.Errorf("structured error = %+v", *e)
	}
}

func TestParseDefaults(t *testing.T) {
	src := head + `clusters:
  - vip: 198.51.100.100
    ports:
      - port: 80
        servers:
          - address: 198.51.100.11
      - port: 443
        weight_bound: 21
        servers:
          - address: 198.51.100.12
`
	c, err := Parse([]byte(src), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Interfaces: []string{"eth0"},
		DataPlane: DataPlane{
			MaxFlows: 1 << 20, MaxServers: 4096, MaxServices: 1024, MaxVIPs: 1024, MaxAffinity: 1 << 16,
			RingSize: 65537, IdleTimeout: 300 * time.Second, HalfOpenTimeout: 10 * time.Second, HashSeed: 0, PinPath: "/sys/fs/bpf/nd",
		},
		API: API{Socket: "/run/nd/ndd.sock"},
		Manager: Manager{
			Interval: time.Second, Sensitivity: 0.05, Smoothing: 1.5, Policy: "default",
			Proportions: Proportions{Active: 30, New: 30, Advisor: 40}, Overload: 3, HostMetric: "cpu",
		},
		Clusters: []Cluster{{
			VIP: netip.MustParseAddr("198.51.100.100"),
			Ports: []PortSpec{
				{Port: 80, Protocol: nd.TCP, WeightBound: 100, Scheduler: "delay",
					Servers: []Server{{Address: netip.MustParseAddr("198.51.100.11"), Weight: 50}}},
				{Port: 443, Protocol: nd.TCP, WeightBound: 21, Scheduler: "delay",
					Servers: []Server{{Address: netip.MustParseAddr("198.51.100.12"), Weight: 11}}},
			},
		}},
	}
	if !sameContent(c, want) {
		t.Errorf("Parse =\n%+v\nwant\n%+v", *c, *want)
	}
	// The data-plane defaults are nd's (daemon's TestExecutorConfigDefaults
	// checks that the executor applies the same).
	if d := c.DataPlane; d.MaxFlows != nd.DefaultMaxFlows || d.IdleTimeout != nd.DefaultIdleTimeout || d.PinPath != DefaultPinPath {
		t.Errorf("data-plane defaults: %+v", d)
	}
	if err := Default().Validate(); err == nil || !strings.Contains(err.Error(), "interfaces: at least one interface") {
		t.Errorf("Default().Validate() = %v, want only the missing interfaces", err)
	}
}

func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name  string
		src   string
		check func(*testing.T, *Config)
	}{
		{"null sections take defaults", head + "data_plane:\napi:\nmanager:\nclusters:\n", func(t *testing.T, c *Config) {
			if c.DataPlane.RingSize != 65537 || c.API.Socket != DefaultSocket || len(c.Clusters) != 0 {
				t.Errorf("got %+v", c)
			}
		}},
		{"explicit empty pin path pins nothing", head + "data_plane: {pin_path: \"\"}\n", func(t *testing.T, c *Config) {
			if c.DataPlane.PinPath != "" {
				t.Errorf("PinPath = %q", c.DataPlane.PinPath)
			}
		}},
		{"null pin path takes the default", head + "data_plane: {pin_path: ~}\n", func(t *testing.T, c *Config) {
			if c.DataPlane.PinPath != DefaultPinPath {
				t.Errorf("PinPath = %q", c.DataPlane.PinPath)
			}
		}},
		{"same port on tcp and udp", head + "clusters:\n  - vip: 198.51.100.53\n    ports: [{port: 53, protocol: udp}, {port: 53, protocol: tcp}]\n", func(t *testing.T, c *Config) {
			if n := len(c.Ports()); n != 2 {
				t.Errorf("%d ports", n)
			}
		}},
		{"aliases", head + `clusters:
  - vip: 198.51.100.100
    ports:
      - port: 80
        servers: &pool
          - {address: 198.51.100.11, weight: 7}
      - port: 443
        servers: *pool
`, nil},
		{"integer forms and a sticky time in minutes", head + "data_plane: {max_flows: 0x100000, hash_seed: 1_000}\nclusters:\n  - vip: 2001:db8::1\n    ports: [{port: 443, sticky_time: 30m, servers: [{address: \"2001:db8::11\"}]}]\n", func(t *testing.T, c *Config) {
			if c.DataPlane.MaxFlows != 1<<20 || c.DataPlane.HashSeed != 1000 || c.Clusters[0].Ports[0].StickyTime != 30*time.Minute {
				t.Errorf("got %+v", c)
			}
		}},
		{"local server with the VIP's address", head + "clusters:\n  - vip: 198.51.100.100\n    ports: [{port: 80, servers: [{address: 198.51.100.100, local: true}]}]\n", nil},
		{"host name listener and static policy", head + "api: {listen: \"ndd.example.net:8443\", token: 0123456789abcdef}\nmanager: {policy: static, interval: 1h, sensitivity: 0, smoothing: 10, proportions: {active: 20, new: 20, advisor: 30, host: 30}}\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.src), "nd.yaml")
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestParseAliasExpansionBounded(t *testing.T) {
	// Each level lists n aliases to the level below: n^3 servers from a
	// document of about 3n nodes.
	const n = 300
	var b strings.Builder
	b.WriteString(head + "data_plane: {max_servers: 1}\nclusters:\n  - &c\n    vip: 198.51.100.100\n    ports:\n      - &p\n        port: 80\n        servers:\n          - &s {address: 198.51.100.1}\n")
	for range n {
		b.WriteString("          - *s\n")
	}
	b.WriteString("      " + strings.Repeat("- *p\n      ", n) + "\n")
	b.WriteString("  " + strings.Repeat("- *c\n  ", n) + "\n")
	got := errorLines(t, b.String())
	if !strings.Contains(strings.Join(got, "\n"), "expands to more than") {
		t.Errorf("no expansion limit among %d errors: %.300q", len(got), got)
	}
	if len(got) > maxErrors+1 {
		t.Errorf("%d errors, want at most %d", len(got), maxErrors+1)
	}
}

func TestPortsSorted(t *testing.T) {
	src := head + `clusters:
  - vip: 2001:db8::1
    ports: [{port: 80, servers: [{address: "2001:db8::3"}, {address: "2001:db8::2"}]}]
  - vip: 198.51.100.200
    ports: [{port: 443}, {port: 80, protocol: udp}, {port: 80}]
  - vip: 198.51.100.100
    ports: [{port: 80, sticky_time: 10s, weight_bound: 10, servers: [{address: 198.51.100.12, weight: 3, quiesce: true}, {address: 198.51.100.11, local: true}]}]
`
	c, err := Parse([]byte(src), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, p := range c.Ports() {
		keys = append(keys, p.Key.String())
	}
	want := []string{"198.51.100.100:80/tcp", "198.51.100.200:80/tcp", "198.51.100.200:80/udp", "198.51.100.200:443/tcp", "[2001:db8::1]:80/tcp"}
	if !slices.Equal(keys, want) {
		t.Errorf("keys = %q, want %q", keys, want)
	}
	p := c.Ports()[0]
	wantP := Port{
		Key:         nd.ServiceKey{VIP: netip.MustParseAddr("198.51.100.100"), Port: 80, Proto: nd.TCP},
		StickyTime:  10 * time.Second,
		WeightBound: 10,
		Scheduler:   "delay",
		Proportions: Proportions{Active: 30, New: 30, Advisor: 40},
		Servers: []Server{
			{Address: netip.MustParseAddr("198.51.100.11"), Weight: 5, Local: true},
			{Address: netip.MustParseAddr("198.51.100.12"), Weight: 3, Quiesce: true},
		},
	}
	if !reflect.DeepEqual(p, wantP) {
		t.Errorf("Ports()[0] = %+v, want %+v", p, wantP)
	}
	if w := p.Servers[1].EffectiveWeight(); w != 0 {
		t.Errorf("quiesced EffectiveWeight = %d", w)
	}
	// The view is a copy.
	p.Servers[0].Weight = 99
	if c.Clusters[2].Ports[0].Servers[1].Weight != 5 {
		t.Errorf("Ports shares servers with the Config")
	}
}

func TestCheckInterfaces(t *testing.T) {
	c, err := Parse([]byte("interfaces:\n  - eth0\n  - eth9\n"), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(name string) error {
		if name == "eth9" {
			return errors.New("no such network interface")
		}
		return nil
	}
	err = c.CheckInterfaces(lookup)
	var list Errors
	if !errors.As(err, &list) || len(list) != 1 || list[0].Error() != "nd.yaml:3:5: interfaces[1]: interface eth9: no such network interface" {
		t.Errorf("CheckInterfaces = %v", err)
	}
	if err := c.CheckInterfaces(func(string) error { return nil }); err != nil {
		t.Errorf("CheckInterfaces = %v, want nil", err)
	}
	// Once the list is edited, positions no longer apply.
	c.Interfaces = []string{"eth9"}
	if err := c.CheckInterfaces(lookup); err == nil || err.Error() != "interfaces[0]: interface eth9: no such network interface" {
		t.Errorf("CheckInterfaces after edit = %v", err)
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	c := Default()
	c.Interfaces = []string{"eth0"}
	c.Clusters = []Cluster{{
		VIP: netip.MustParseAddr("198.51.100.100"),
		Ports: []PortSpec{{Port: 80, WeightBound: 10, Servers: []Server{
			{Address: netip.MustParseAddr("198.51.100.11"), Weight: 11},
		}}},
	}}
	want := "clusters[0].ports[0].protocol: proto(0) is not a protocol: want tcp or udp\n" +
		"clusters[0].ports[0].servers[0].weight: 11 is out of range 0..10 (the port's weight_bound)"
	if err := c.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate =\n%v\nwant\n%s", err, want)
	}
	c.Clusters[0].Ports[0].Protocol = nd.UDP
	c.Clusters[0].Ports[0].Servers[0].Weight = 10
	if err := c.Validate(); err != nil {
		t.Errorf("Validate = %v", err)
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load("testdata/does-not-exist.yaml"); err == nil || errors.Is(err, ErrInvalid) {
		t.Errorf("Load of a missing file = %v, want a read error", err)
	}
}

// sameContent compares two configurations, ignoring where they were read.
func sameContent(a, b *Config) bool {
	x, y := *a, *b
	x.src, y.src = nil, nil
	return reflect.DeepEqual(&x, &y)
}
