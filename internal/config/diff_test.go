package config

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

const diffBase = `interfaces: [eth0, eth1]
api:
  listen: 127.0.0.1:8080
  token: 0123456789abcdef
clusters:
  - vip: 198.51.100.100
    ports:
      - port: 80
        servers:
          - {address: 198.51.100.11, weight: 10}
          - {address: 198.51.100.12, weight: 10}
      - port: 443
        sticky_time: 60s
        servers:
          - {address: 198.51.100.11, weight: 10}
  - vip: 2001:db8::100
    ports:
      - port: 53
        protocol: udp
        servers: [{address: "2001:db8::53"}]
`

func mustParse(t *testing.T, src string) *Config {
	t.Helper()
	c, err := Parse([]byte(src), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func key(vip string, port uint16, p nd.Proto) nd.ServiceKey {
	return nd.ServiceKey{VIP: netip.MustParseAddr(vip), Port: port, Proto: p}
}

func TestDiff(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(string) string
		check  func(*testing.T, Changes)
		string string
	}{
		{
			name:   "identical",
			edit:   func(s string) string { return s },
			string: "no changes",
		},
		{
			name: "order and comments do not matter",
			edit: func(s string) string {
				return strings.Replace(strings.Replace(s, "interfaces: [eth0, eth1]", "interfaces: [eth1, eth0] # swapped", 1),
					"          - {address: 198.51.100.11, weight: 10}\n          - {address: 198.51.100.12, weight: 10}",
					"          - {address: 198.51.100.12, weight: 10}\n          - {address: 198.51.100.11, weight: 10}", 1)
			},
			string: "no changes",
		},
		{
			name: "interfaces",
			edit: func(s string) string { return strings.Replace(s, "[eth0, eth1]", "[eth0, eth3, eth2]", 1) },
			check: func(t *testing.T, ch Changes) {
				if !slices.Equal(ch.Attach, []string{"eth2", "eth3"}) || !slices.Equal(ch.Detach, []string{"eth1"}) {
					t.Errorf("attach %q detach %q", ch.Attach, ch.Detach)
				}
			},
			string: "detach eth1\nattach eth2\nattach eth3",
		},
		{
			name: "port added and removed",
			edit: func(s string) string {
				return strings.Replace(s, "      - port: 53\n        protocol: udp", "      - port: 53\n        protocol: tcp", 1)
			},
			check: func(t *testing.T, ch Changes) {
				if len(ch.Added) != 1 || ch.Added[0].Key != key("2001:db8::100", 53, nd.TCP) || len(ch.Added[0].Servers) != 1 {
					t.Errorf("added %+v", ch.Added)
				}
				if len(ch.Removed) != 1 || ch.Removed[0].Key != key("2001:db8::100", 53, nd.UDP) {
					t.Errorf("removed %+v", ch.Removed)
				}
			},
			string: "remove port [2001:db8::100]:53/udp\nadd port [2001:db8::100]:53/tcp: sticky_time 0s, weight_bound 100, server 2001:db8::53 weight 50",
		},
		{
			name: "port settings changed",
			edit: func(s string) string {
				return strings.Replace(s, "sticky_time: 60s", "sticky_time: 120s\n        weight_bound: 20", 1)
			},
			check: func(t *testing.T, ch Changes) {
				if len(ch.Changed) != 1 {
					t.Fatalf("changed %+v", ch.Changed)
				}
				pc := ch.Changed[0]
				if pc.Key() != key("198.51.100.100", 443, nd.TCP) || pc.Old.StickyTime != time.Minute ||
					pc.New.StickyTime != 2*time.Minute || pc.New.WeightBound != 20 || len(pc.Added)+len(pc.Removed)+len(pc.Changed) != 0 {
					t.Errorf("change %+v", pc)
				}
			},
			string: "change port 198.51.100.100:443/tcp: sticky_time 1m -> 2m, weight_bound 100 -> 20",
		},
		{
			name: "servers added, removed and changed",
			edit: func(s string) string {
				return strings.Replace(s,
					"          - {address: 198.51.100.11, weight: 10}\n          - {address: 198.51.100.12, weight: 10}\n",
					"          - {address: 198.51.100.11, weight: 20, quiesce: true}\n          - {address: 198.51.100.13, weight: 10, local: true}\n", 1)
			},
			check: func(t *testing.T, ch Changes) {
				if len(ch.Changed) != 1 {
					t.Fatalf("changed %+v", ch.Changed)
				}
				pc := ch.Changed[0]
				a := netip.MustParseAddr
				if len(pc.Added) != 1 || pc.Added[0] != (Server{Address: a("198.51.100.13"), Weight: 10, Local: true}) {
					t.Errorf("added %+v", pc.Added)
				}
				if len(pc.Removed) != 1 || pc.Removed[0].Address != a("198.51.100.12") {
					t.Errorf("removed %+v", pc.Removed)
				}
				if len(pc.Changed) != 1 || pc.Changed[0].Old.Weight != 10 || pc.Changed[0].New != (Server{Address: a("198.51.100.11"), Weight: 20, Quiesce: true}) {
					t.Errorf("changed %+v", pc.Changed)
				}
				if len(pc.New.Servers) != 2 {
					t.Errorf("new state %+v", pc.New)
				}
			},
			string: "change port 198.51.100.100:80/tcp: remove server 198.51.100.12, add server 198.51.100.13 weight 10 local, server 198.51.100.11 weight 10 -> 20 quiesce false -> true",
		},
		{
			name: "live settings",
			edit: func(s string) string {
				return strings.Replace(s, "  token: 0123456789abcdef\n", "  token: fedcba9876543210\nmanager: {interval: 5s}\nmetrics: {listen: \"127.0.0.1:9100\"}\n", 1)
			},
			check: func(t *testing.T, ch Changes) {
				if ch.Err() != nil || len(ch.Fixed) != 0 {
					t.Errorf("Err = %v", ch.Err())
				}
				want := []Setting{
					{"api.token", "(secret)", "(secret)"},
					{"metrics.listen", `""`, `"127.0.0.1:9100"`},
					{"manager.interval", "1s", "5s"},
				}
				if !slices.Equal(ch.Settings, want) {
					t.Errorf("settings %+v, want %+v", ch.Settings, want)
				}
			},
			string: "set api.token: (secret) -> (secret)\nset metrics.listen: \"\" -> \"127.0.0.1:9100\"\nset manager.interval: 1s -> 5s",
		},
		{
			name: "settings that need a restart",
			edit: func(s string) string {
				return strings.Replace(s, "api:\n", "data_plane: {max_flows: 2097152, pin_path: \"\"}\napi:\n  socket: /run/ndd.sock\n", 1)
			},
			check: func(t *testing.T, ch Changes) {
				want := []Setting{
					{"data_plane.max_flows", "1048576", "2097152"},
					{"data_plane.pin_path", `"/sys/fs/bpf/nd"`, `""`},
					{"api.socket", `"/run/nd/ndd.sock"`, `"/run/ndd.sock"`},
				}
				if !slices.Equal(ch.Fixed, want) {
					t.Errorf("fixed %+v, want %+v", ch.Fixed, want)
				}
				err := ch.Err()
				if !errors.Is(err, ErrRestartRequired) {
					t.Errorf("Err = %v, want ErrRestartRequired", err)
				}
				wantErr := `restart required: these settings cannot change while ndd runs: data_plane.max_flows: 1048576 -> 2097152; data_plane.pin_path: "/sys/fs/bpf/nd" -> ""; api.socket: "/run/nd/ndd.sock" -> "/run/ndd.sock"`
				if err.Error() != wantErr {
					t.Errorf("Err =\n%v\nwant\n%s", err, wantErr)
				}
			},
			string: "cannot change without a restart: data_plane.max_flows: 1048576 -> 2097152\n" +
				"cannot change without a restart: data_plane.pin_path: \"/sys/fs/bpf/nd\" -> \"\"\n" +
				"cannot change without a restart: api.socket: \"/run/nd/ndd.sock\" -> \"/run/ndd.sock\"",
		},
	}
	old := mustParse(t, diffBase)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch := Diff(old, mustParse(t, tt.edit(diffBase)))
			if got := ch.String(); got != tt.string {
				t.Errorf("String() =\n%s\nwant\n%s", got, tt.string)
			}
			if ch.Empty() != (tt.string == "no changes") {
				t.Errorf("Empty() = %t", ch.Empty())
			}
			if tt.check != nil {
				tt.check(t, ch)
			}
		})
	}
}

func TestDiffFromNothing(t *testing.T) {
	c := mustParse(t, diffBase)
	ch := Diff(nil, c)
	if !slices.Equal(ch.Attach, []string{"eth0", "eth1"}) || len(ch.Added) != 3 || len(ch.Removed)+len(ch.Changed) != 0 {
		t.Errorf("Diff(nil, c) = %+v", ch)
	}
	if len(ch.Settings)+len(ch.Fixed) != 0 || ch.Err() != nil {
		t.Errorf("Diff(nil, c) reports settings: %+v %+v", ch.Settings, ch.Fixed)
	}
	if !slices.EqualFunc(ch.Added, c.Ports(), func(a, b Port) bool { return a.Key == b.Key }) {
		t.Errorf("added %+v, want c.Ports()", ch.Added)
	}
	ch = Diff(c, nil)
	if !slices.Equal(ch.Detach, []string{"eth0", "eth1"}) || len(ch.Removed) != 3 || len(ch.Added) != 0 {
		t.Errorf("Diff(c, nil) = %+v", ch)
	}
	if !Diff(nil, nil).Empty() {
		t.Errorf("Diff(nil, nil) not empty")
	}
}
