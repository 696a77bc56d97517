package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/agent"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/manager"
	"github.com/nd-dispatcher/nd/internal/nd"
)

func fixedStatus() nd.Status {
	return nd.Status{
		Interfaces: []string{"eth0"},
		Ports: []nd.PortStatus{
			{
				VIP: "198.51.100.100", Port: 80, Protocol: "tcp", StickyTime: "0s",
				Packets: 1000, Bytes: 64000, NoServer: 3,
				Servers: []nd.ServerStatus{
					{Address: "198.51.100.11", State: nd.StateUp, MAC: "02:00:00:00:00:11", Interface: "eth0",
						Weight: 10, ConfigWeight: 10, NewFlows: 40, ActiveFlows: 12, HalfOpenFlows: 30, Packets: 600, Bytes: 40000, NewFlowsRate: 2.5},
					{Address: "198.51.100.12", State: nd.StateUnresolved, Reason: "no ARP reply from 198.51.100.12",
						ConfigWeight: 20},
				},
			},
			{
				VIP: "2001:db8::100", Port: 53, Protocol: "udp", StickyTime: "30s",
				Packets: 5, Bytes: 500,
				Servers: []nd.ServerStatus{
					{Address: "2001:db8::100", State: nd.StateLocal, Weight: 5, ConfigWeight: 5, NewFlows: 1, ActiveFlows: 1, Packets: 5, Bytes: 500},
					{Address: "2001:db8::11", State: nd.StateQuiesced, Weight: 0, ConfigWeight: 7, Quiesced: true, NewFlows: 9},
				},
			},
		},
		VIPs: []nd.VIPStatus{
			{VIP: "198.51.100.100", VIPStats: executor.VIPStats{Filtered: 4, Fragments: 1, ICMPLocal: 2, ICMPForwarded: 3}},
		},
		Global: executor.GlobalStats{Passed: 100, Malformed: 2, NotIP: 7, FlowsEvicted: 5, FlowsUnrecorded: 6, FlowEventsLost: 8, OtherHost: 3,
			HalfOpenEvicted: 9, OpenersUnrecorded: 4, StraysUnrecorded: 11, TablePressure: true},
	}
}

const expected = `
# HELP nd_dispatcher_packets_total Packets nd did not dispatch: result passed (IP, for no VIP), malformed, not_ip, or other_host (for a VIP but another host's MAC: passed).
# TYPE nd_dispatcher_packets_total counter
nd_dispatcher_packets_total{result="malformed"} 2
nd_dispatcher_packets_total{result="not_ip"} 7
nd_dispatcher_packets_total{result="other_host"} 3
nd_dispatcher_packets_total{result="passed"} 100
# HELP nd_flow_events_lost_total Flow open/close reports for high availability dropped because user space did not keep up.
# TYPE nd_flow_events_lost_total counter
nd_flow_events_lost_total 8
# HELP nd_flow_table_evictions_total Live flows displaced from the connection table, by state: halfopen (by new flows: a SYN flood, or a small table), established (only by flows learnt from a peer).
# TYPE nd_flow_table_evictions_total counter
nd_flow_table_evictions_total{state="established"} 5
nd_flow_table_evictions_total{state="halfopen"} 9
# HELP nd_flow_table_pressure 1 while the connection table is under pressure (within the half-open timeout, a new flow displaced a half-open one or found no way to take), else 0.
# TYPE nd_flow_table_pressure gauge
nd_flow_table_pressure 1
# HELP nd_flows_skipped_total Packets of flows the connection table did not record, forwarded by the pick alone: kind syn (every way of the bucket held an established flow, which no packet displaces) or stray (a packet of an unknown flow, which takes only a free way).
# TYPE nd_flows_skipped_total counter
nd_flows_skipped_total{kind="stray"} 11
nd_flows_skipped_total{kind="syn"} 4
# HELP nd_flows_halfopen Half-open flows (a SYN, no ACK yet) of a server of a port, apart from nd_server_active_flows: a SYN flood shows here only.
# TYPE nd_flows_halfopen gauge
nd_flows_halfopen{port="53",protocol="udp",server="2001:db8::100",vip="2001:db8::100"} 0
nd_flows_halfopen{port="53",protocol="udp",server="2001:db8::11",vip="2001:db8::100"} 0
nd_flows_halfopen{port="80",protocol="tcp",server="198.51.100.11",vip="198.51.100.100"} 30
nd_flows_halfopen{port="80",protocol="tcp",server="198.51.100.12",vip="198.51.100.100"} 0
# HELP nd_flows_evicted_total Live flows pushed out of a full connection table bucket: the table is too small.
# TYPE nd_flows_evicted_total counter
nd_flows_evicted_total 5
# HELP nd_flows_unrecorded_total New flows not recorded because two CPUs raced for the same connection table entry.
# TYPE nd_flows_unrecorded_total counter
nd_flows_unrecorded_total 6
# HELP nd_port_bytes_total Bytes dispatched for a VIP:port.
# TYPE nd_port_bytes_total counter
nd_port_bytes_total{port="53",protocol="udp",vip="2001:db8::100"} 500
nd_port_bytes_total{port="80",protocol="tcp",vip="198.51.100.100"} 64000
# HELP nd_port_no_server_drops_total Packets for a VIP:port dropped because no server had a positive weight.
# TYPE nd_port_no_server_drops_total counter
nd_port_no_server_drops_total{port="53",protocol="udp",vip="2001:db8::100"} 0
nd_port_no_server_drops_total{port="80",protocol="tcp",vip="198.51.100.100"} 3
# HELP nd_port_packets_total Packets dispatched for a VIP:port.
# TYPE nd_port_packets_total counter
nd_port_packets_total{port="53",protocol="udp",vip="2001:db8::100"} 5
nd_port_packets_total{port="80",protocol="tcp",vip="198.51.100.100"} 1000
# HELP nd_scrape_error 1 when the dispatcher's status could not be read at this scrape, else 0.
# TYPE nd_scrape_error gauge
nd_scrape_error 0
# HELP nd_server_active_flows Flows of a server of a port estimated open: new minus closed and expired.
# TYPE nd_server_active_flows gauge
nd_server_active_flows{port="53",protocol="udp",server="2001:db8::100",vip="2001:db8::100"} 1
nd_server_active_flows{port="53",protocol="udp",server="2001:db8::11",vip="2001:db8::100"} 0
nd_server_active_flows{port="80",protocol="tcp",server="198.51.100.11",vip="198.51.100.100"} 12
nd_server_active_flows{port="80",protocol="tcp",server="198.51.100.12",vip="198.51.100.100"} 0
# HELP nd_server_bytes_total Bytes sent to a server of a port.
# TYPE nd_server_bytes_total counter
nd_server_bytes_total{port="53",protocol="udp",server="2001:db8::100",vip="2001:db8::100"} 500
nd_server_bytes_total{port="53",protocol="udp",server="2001:db8::11",vip="2001:db8::100"} 0
nd_server_bytes_total{port="80",protocol="tcp",server="198.51.100.11",vip="198.51.100.100"} 40000
nd_server_bytes_total{port="80",protocol="tcp",server="198.51.100.12",vip="198.51.100.100"} 0
# HELP nd_server_config_weight Weight of a server of a port in the configuration.
# TYPE nd_server_config_weight gauge
nd_server_config_weight{port="53",protocol="udp",server="2001:db8::100",vip="2001:db8::100"} 5
nd_server_config_weight{port="53",protocol="udp",server="2001:db8::11",vip="2001:db8::100"} 7
nd_server_config_weight{port="80",protocol="tcp",server="198.51.100.11",vip="198.51.100.100"} 10
nd_server_config_weight{port="80",protocol="tcp",server="198.51.100.12",vip="198.51.100.100"} 20
# HELP nd_server_new_flows_total New flows given to a server of a port.
# TYPE nd_server_new_flows_total counter
nd_server_new_flows_total{port="53",protocol="udp",server="2001:db8::100",vip="2001:db8::100"} 1
nd_server_new_flows_total{port="53",protocol="udp",server="2001:db8::11",vip="2001:db8::100"} 9
nd_server_new_flows_total{port="80",protocol="tcp",server="198.51.100.11",vip="198.51.100.100"} 40
nd_server_new_flows_total{port="80",protocol="tcp",server="198.51.100.12",vip="198.51.100.100"} 0
# HELP nd_server_packets_total Packets sent to a server of a port.
# TYPE nd_server_packets_total counter
nd_server_packets_total{port="53",protocol="udp",server="2001:db8::100",vip="2001:db8::100"} 5
nd_server_packets_total{port="53",protocol="udp",server="2001:db8::11",vip="2001:db8::100"} 0
nd_server_packets_total{port="80",protocol="tcp",server="198.51.100.11",vip="198.51.100.100"} 600
nd_server_packets_total{port="80",protocol="tcp",server="198.51.100.12",vip="198.51.100.100"} 0
# HELP nd_server_state 1 for the current state of a server of a port (up, quiesced, unresolved, local), 0 for the others.
# TYPE nd_server_state gauge
nd_server_state{port="53",protocol="udp",server="2001:db8::100",state="local",vip="2001:db8::100"} 1
nd_server_state{port="53",protocol="udp",server="2001:db8::100",state="quiesced",vip="2001:db8::100"} 0
nd_server_state{port="53",protocol="udp",server="2001:db8::100",state="unresolved",vip="2001:db8::100"} 0
nd_server_state{port="53",protocol="udp",server="2001:db8::100",state="up",vip="2001:db8::100"} 0
nd_server_state{port="53",protocol="udp",server="2001:db8::11",state="local",vip="2001:db8::100"} 0
nd_server_state{port="53",protocol="udp",server="2001:db8::11",state="quiesced",vip="2001:db8::100"} 1
nd_server_state{port="53",protocol="udp",server="2001:db8::11",state="unresolved",vip="2001:db8::100"} 0
nd_server_state{port="53",protocol="udp",server="2001:db8::11",state="up",vip="2001:db8::100"} 0
nd_server_state{port="80",protocol="tcp",server="198.51.100.11",state="local",vip="198.51.100.100"} 0
nd_server_state{port="80",protocol="tcp",server="198.51.100.11",state="quiesced",vip="198.51.100.100"} 0
nd_server_state{port="80",protocol="tcp",server="198.51.100.11",state="unresolved",vip="198.51.100.100"} 0
nd_server_state{port="80",protocol="tcp",server="198.51.100.11",state="up",vip="198.51.100.100"} 1
nd_server_state{port="80",protocol="tcp",server="198.51.100.12",state="local",vip="198.51.100.100"} 0
nd_server_state{port="80",protocol="tcp",server="198.51.100.12",state="quiesced",vip="198.51.100.100"} 0
nd_server_state{port="80",protocol="tcp",server="198.51.100.12",state="unresolved",vip="198.51.100.100"} 1
nd_server_state{port="80",protocol="tcp",server="198.51.100.12",state="up",vip="198.51.100.100"} 0
# HELP nd_server_weight Weight of a server of a port in the data plane (0 when quiesced or not installed).
# TYPE nd_server_weight gauge
nd_server_weight{port="53",protocol="udp",server="2001:db8::100",vip="2001:db8::100"} 5
nd_server_weight{port="53",protocol="udp",server="2001:db8::11",vip="2001:db8::100"} 0
nd_server_weight{port="80",protocol="tcp",server="198.51.100.11",vip="198.51.100.100"} 10
nd_server_weight{port="80",protocol="tcp",server="198.51.100.12",vip="198.51.100.100"} 0
# HELP nd_vip_dropped_total Packets to a VIP dropped: reason filtered (port or protocol not served) or fragment.
# TYPE nd_vip_dropped_total counter
nd_vip_dropped_total{reason="filtered",vip="198.51.100.100"} 4
nd_vip_dropped_total{reason="fragment",vip="198.51.100.100"} 1
# HELP nd_vip_icmp_total ICMP packets to a VIP: action local (handed to the dispatcher's stack) or forwarded (to the server owning the flow).
# TYPE nd_vip_icmp_total counter
nd_vip_icmp_total{action="forwarded",vip="198.51.100.100"} 3
nd_vip_icmp_total{action="local",vip="198.51.100.100"} 2
`

func TestCollect(t *testing.T) {
	calls := 0
	c := New(func() (nd.Status, error) { calls++; return fixedStatus(), nil })
	if err := testutil.CollectAndCompare(c, strings.NewReader(expected)); err != nil {
		t.Error(err)
	}
	if calls != 1 {
		t.Errorf("source called %d times for one scrape, want 1", calls)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(expected), "nd_flows_evicted_total"); err != nil {
		t.Error(err)
	}
	if calls != 2 {
		t.Errorf("source called %d times for two scrapes, want 2", calls)
	}
}

func TestScrapeAtScrapeTime(t *testing.T) {
	st := fixedStatus()
	c := New(func() (nd.Status, error) { return st, nil })
	want := func(n string) string {
		return "# HELP nd_flows_evicted_total Live flows pushed out of a full connection table bucket: the table is too small.\n" +
			"# TYPE nd_flows_evicted_total counter\nnd_flows_evicted_total " + n + "\n"
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want("5")), "nd_flows_evicted_total"); err != nil {
		t.Error(err)
	}
	st.Global.FlowsEvicted = 9
	if err := testutil.CollectAndCompare(c, strings.NewReader(want("9")), "nd_flows_evicted_total"); err != nil {
		t.Error(err)
	}
}

func TestScrapeError(t *testing.T) {
	c := New(func() (nd.Status, error) { return nd.Status{}, errors.New("read counters: boom") })
	want := `
# HELP nd_scrape_error 1 when the dispatcher's status could not be read at this scrape, else 0.
# TYPE nd_scrape_error gauge
nd_scrape_error 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func TestEmptyStatus(t *testing.T) {
	c := New(func() (nd.Status, error) { return nd.Status{}, nil })
	// The scrape error and the global counters, nothing per port or VIP.
	if n := testutil.CollectAndCount(c); n != 1+4+1+1+1+2+2+1 {
		t.Errorf("%d metrics from an empty status, want 13", n)
	}
}

func TestLint(t *testing.T) {
	c := New(func() (nd.Status, error) { return fixedStatus(), nil })
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestHandler(t *testing.T) {
	c := New(func() (nd.Status, error) { return fixedStatus(), nil })
	h := Handler(c)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, body)
	}
	for _, want := range []string{
		`nd_server_state{port="80",protocol="tcp",server="198.51.100.11",state="up",vip="198.51.100.100"} 1`,
		`nd_scrape_error 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
	// Two handlers over two collectors do not collide: no global registry.
	h2 := Handler(New(func() (nd.Status, error) { return nd.Status{}, errors.New("down") }))
	rec = httptest.NewRecorder()
	h2.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "nd_scrape_error 1") {
		t.Errorf("second handler: %s", rec.Body)
	}
}

func TestDecisions(t *testing.T) {
	c := NewDecisions(Decisions{
		Manager: func() []manager.PortReport {
			return []manager.PortReport{{Port: "[2001:db8::100]:80/tcp", Commits: 3, Servers: []manager.ServerReport{
				{Server: netip.MustParseAddr("2001:db8::11"), State: manager.StateCoolDown, LMI: 3.5, NewWeight: 0, Loads: map[string]float64{"active": 6}},
			}}, {Port: "198.51.100.100:80/tcp", Scheduler: "delay", FlowTime: 11 * time.Millisecond, Servers: []manager.ServerReport{
				{Server: netip.MustParseAddr("198.51.100.11"), State: manager.StateSuspect, LMI: 4, NewWeight: 0, NewDelay: 16},
			}}}
		},
		Advisors: func() []advisor.Status {
			return []advisor.Status{{Advisor: "web", Server: netip.MustParseAddr("198.51.100.11"), Port: 80, Known: true, Up: true, Smoothed: 1500 * time.Microsecond, Probes: 10, Failures: 2}}
		},
		Agents: func() map[netip.AddrPort]agent.Status {
			return map[netip.AddrPort]agent.Status{netip.MustParseAddrPort("198.51.100.11:7010"): {Disabled: true, Report: agent.Report{Metrics: map[string]float64{"cpu": 42}}}}
		},
	})
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	rec := httptest.NewRecorder()
	Handler(New(func() (nd.Status, error) { return fixedStatus(), nil }), c).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`nd_manager_lmi{port="80",protocol="tcp",server="2001:db8::11",vip="2001:db8::100"} 3.5`,
		`nd_manager_server_state{port="80",protocol="tcp",server="2001:db8::11",state="cool-down",vip="2001:db8::100"} 1`,
		`nd_manager_load{metric="active",port="80",protocol="tcp",server="2001:db8::11",vip="2001:db8::100"} 6`,
		`nd_manager_commits_total{port="80",protocol="tcp",vip="2001:db8::100"} 3`,
		`nd_manager_delay_factor{port="80",protocol="tcp",server="198.51.100.11",vip="198.51.100.100"} 16`,
		`nd_manager_flow_time_seconds{port="80",protocol="tcp",vip="198.51.100.100"} 0.011`,
		`nd_manager_server_state{port="80",protocol="tcp",server="198.51.100.11",state="suspect",vip="198.51.100.100"} 1`,
		`nd_advisor_up{advisor="web",port="80",server="198.51.100.11",vip=""} 1`,
		`nd_advisor_latency_seconds{advisor="web",port="80",server="198.51.100.11",vip=""} 0.0015`,
		`nd_advisor_probes_total{advisor="web",port="80",result="failed",server="198.51.100.11",vip=""} 2`,
		`nd_agent_disabled{server="198.51.100.11"} 1`,
		`nd_agent_metric{metric="cpu",server="198.51.100.11"} 42`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}
