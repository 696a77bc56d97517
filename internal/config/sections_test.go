package config

import (
	"strings"
	"testing"
	"time"
)

// full uses every section and setting added for the manager, advisors,
// agents, schedulers and high availability.
const full = `
interfaces: [eth0]
manager:
  policy: best
  proportions:
    active: 20
    new: 20
    advisor: 30
    host: 10
    custom:
      - {name: queue, agent: queue_len, proportion: 10}
      - {name: db, advisor: db, proportion: 10}
  overload: 4
  cool_down: 10s
  host_metric: load1
advisors:
  - name: web
    kind: https
    target: vip
    interval: 2s
    timeout: 1s
    retries: 1
    rise: 3
    fall: 1
    http: {method: HEAD, path: /healthz, host: www.example, status: 204, body: ok, insecure: true}
  - name: db
    kind: custom
    command: [/usr/local/bin/check-db, --fast]
agents:
  port: 7011
  tls_cert: /etc/nd/agent-client.pem
  tls_key: /etc/nd/agent-client.key
  tls_ca: /etc/nd/agent-ca.pem
  interval: 3s
  timeout: 2s
  disabled_after: 9s
ha:
  group: web
  interface: eth0
  self: 198.51.100.3:7000
  peers: [198.51.100.4:7000]
  priority: 200
  preempt: true
  interval: 200ms
  dead_after: 1s
  key_file: /etc/nd/ha.key
  refresh: 20s
  mode: active-standby
clusters:
  - vip: 198.51.100.100
    ports:
      - port: 443
        scheduler: p2c
        advisor: web
        proportions: {active: 50, new: 50}
        servers:
          - {address: 198.51.100.11, weight: 10, fixed: true}
          - {address: 198.51.100.12}
`

// TestHARefresh: ha.refresh defaults to a quarter of the idle timeout,
// closing flows to a quarter of the half-open timeout, and is refused
// under 100ms or over half the idle timeout.
func TestHARefresh(t *testing.T) {
	c, err := Parse([]byte(strings.Replace(full, "  refresh: 20s\n", "", 1)), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if est, cl := c.HA.Refreshes(c.DataPlane); c.HA.Refresh != 0 || est != 75*time.Second || cl != 2500*time.Millisecond {
		t.Errorf("default refresh %v: periods %v %v, want 75s 2.5s", c.HA.Refresh, est, cl)
	}
	c, err = Parse([]byte(full), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if est, cl := c.HA.Refreshes(c.DataPlane); est != 20*time.Second || cl != 2500*time.Millisecond {
		t.Errorf("refresh 20s: periods %v %v", est, cl)
	}
	c.HA.Refresh = time.Second
	if est, cl := c.HA.Refreshes(c.DataPlane); est != time.Second || cl != time.Second {
		t.Errorf("refresh 1s: periods %v %v", est, cl)
	}
	for _, bad := range []string{"50ms", "151s", "-1s"} {
		_, err := Parse([]byte(strings.Replace(full, "refresh: 20s", "refresh: "+bad, 1)), "nd.yaml")
		if err == nil || !strings.Contains(err.Error(), "ha.refresh") {
			t.Errorf("refresh %s: %v", bad, err)
		}
	}
}

func TestFullSectionsRoundTrip(t *testing.T) {
	c, err := Parse([]byte(full), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.HA == nil || c.HA.Priority != 200 || !c.HA.Preempt || c.HA.Peers[0].Port() != 7000 || c.HA.DeadAfter.String() != "1s" {
		t.Errorf("ha %+v", c.HA)
	}
	if c.Agents == nil || c.Agents.Port != 7011 || c.Agents.TLSCA == "" {
		t.Errorf("agents %+v", c.Agents)
	}
	if len(c.Advisors) != 2 || c.Advisors[0].HTTP.Status != 204 || c.Advisors[1].Timeout.String() != "2.5s" {
		t.Errorf("advisors %+v", c.Advisors)
	}
	p := c.Ports()[0]
	if p.Scheduler != SchedulerP2C || p.Advisor != "web" || p.Proportions.Active != 50 || !p.Servers[0].Fixed {
		t.Errorf("port %+v", p)
	}
	roundTrip(t, c)
	// The ha section is fixed: a reload may not change it.
	changed := strings.Replace(full, "priority: 200", "priority: 150", 1)
	c2, err := Parse([]byte(changed), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := Diff(c, c2).Err(); err == nil || !strings.Contains(err.Error(), "ha") {
		t.Errorf("changing ha live: %v", err)
	}
	// The refusal names the setting, old and new.
	if err := Diff(c, c2).Err(); err == nil || !strings.Contains(err.Error(), "ha.priority: 200 -> 150") || strings.Contains(err.Error(), "ha.peers") {
		t.Errorf("changing ha.priority live: %v, want it named alone", err)
	}
	// A section removed is one line, not one per setting.
	noHA := full[:strings.Index(full, "ha:\n")] + full[strings.Index(full, "clusters:"):]
	if ch := Diff(c, mustParse(t, noHA)); len(ch.Fixed) != 1 || ch.Fixed[0].Path != "ha" {
		t.Errorf("removing the ha section: %+v", ch.Fixed)
	}
	// But for its refresh period, which a reload changes.
	c4, err := Parse([]byte(strings.Replace(full, "refresh: 20s", "refresh: 5s", 1)), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if ch := Diff(c, c4); ch.Err() != nil || len(ch.Settings) != 1 || ch.Settings[0].Path != "ha.refresh" || ch.Settings[0].New != "5s" {
		t.Errorf("changing ha.refresh: %+v", ch)
	}
	c5, err := Parse([]byte(strings.Replace(full, "mode: active-standby", "mode: active-active", 1)), "nd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if ch := Diff(c, c5); ch.Err() != nil || len(ch.Settings) != 1 || ch.Settings[0].Path != "ha.mode" || !c5.HA.ActiveActive() || c.HA.ActiveActive() {
		t.Errorf("changing ha.mode: %+v", ch)
	}
	if _, err := Parse([]byte(strings.Replace(full, "mode: active-standby", "mode: both", 1)), "nd.yaml"); err == nil || !strings.Contains(err.Error(), "ha.mode") {
		t.Errorf("mode both: %v", err)
	}
	// Advisors and agents are live settings.
	c3, _ := Parse([]byte(strings.Replace(full, "rise: 3", "rise: 4", 1)), "nd.yaml")
	if ch := Diff(c, c3); ch.Err() != nil || len(ch.Settings) != 1 || ch.Settings[0].Path != "advisors" {
		t.Errorf("changing an advisor: %+v", ch)
	}
}

func TestSectionErrors(t *testing.T) {
	for _, tc := range []struct {
		name, from, to, want string
	}{
		{"policy", "policy: best", "policy: random", `manager.policy: "random" is not a policy`},
		{"overload", "overload: 4", "overload: 0.5", "manager.overload: 0.5 is out of range"},
		{"custom sum", "{name: db, advisor: db, proportion: 10}", "{name: db, advisor: db, proportion: 20}", "= 110, want 100"},
		{"custom source", "{name: queue, agent: queue_len, proportion: 10}", "{name: queue, proportion: 10}", "name one source"},
		{"custom advisor", "advisor: db, proportion", "advisor: nodb, proportion", `no advisor named "nodb"`},
		{"advisor kind", "kind: https", "kind: ftp", `"ftp" is not an advisor kind`},
		{"advisor target", "target: vip", "target: host", `"host" is not a target`},
		{"advisor timeout", "timeout: 1s", "timeout: 2s", "must be positive and shorter than the interval"},
		{"advisor path", "path: /healthz", "path: healthz", `"healthz" is not a path`},
		{"advisor command", "command: [/usr/local/bin/check-db, --fast]", "command: [check-db]", "is not an absolute path"},
		{"advisor duplicate", "name: db\n", "name: web\n", `duplicate advisor "web"`},
		{"port advisor", "advisor: web\n        proportions", "advisor: nope\n        proportions", `no advisor named "nope"`},
		{"scheduler", "scheduler: p2c", "scheduler: random", `"random" is not a scheduler`},
		{"agents both", "  tls_cert: /etc/nd/agent-client.pem", "  key_file: /etc/nd/k\n  tls_cert: /etc/nd/agent-client.pem", "key_file and TLS are exclusive"},
		{"agents timeout", "  timeout: 2s\n  disabled", "  timeout: 3s\n  disabled", "agents.timeout"},
		{"ha self", "self: 198.51.100.3:7000", "self: 198.51.100.3", "is not address:port"},
		{"ha peer twice", "peers: [198.51.100.4:7000]", "peers: [198.51.100.4:7000, 198.51.100.4:7000]", "listed twice"},
		{"ha peer self", "peers: [198.51.100.4:7000]", "peers: [198.51.100.3:7000]", "this node itself"},
		{"ha dead_after", "dead_after: 1s", "dead_after: 300ms", "at least two intervals"},
		{"ha key", "key_file: /etc/nd/ha.key", "key_file: ha.key", "not an absolute path"},
		{"ha priority", "priority: 200", "priority: 0", "out of range 1..255"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(full, tc.from, tc.to, 1)
			if src == full {
				t.Fatalf("%q not in the test configuration", tc.from)
			}
			_, err := Parse([]byte(src), "nd.yaml")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
