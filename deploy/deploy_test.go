// Package deploy holds what nd ships beside its binaries: the systemd
// units, the Debian packaging, the Grafana dashboard and the Prometheus
// alerting rules. These tests check that the dashboard and the rules speak
// of metrics nd exports, and that the example files parse; scripts/
// check-deploy builds and installs the package and runs promtool.
package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/nd-dispatcher/nd/internal/agent"
)

// exported returns the nd_ metrics that internal/metrics defines.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob("../internal/metrics/*.go")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	lit := regexp.MustCompile(`"(nd_[a-z0-9_]+)"`)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range lit.FindAllStringSubmatch(string(b), -1) {
			names[m[1]] = true
		}
	}
	if len(names) < 20 {
		t.Fatalf("found only %d metrics in internal/metrics: %v", len(names), names)
	}
	return names
}

var (
	ndMetric = regexp.MustCompile(`\bnd_[a-z0-9_]+\b`)
	// Standard metrics: Prometheus's own up and the Go client's.
	stdMetric = regexp.MustCompile(`\b(up|process_[a-z_]+|go_[a-z_]+)\s*[{\[]`)
)

// checkExpr says what is wrong with one PromQL expression, if anything.
func checkExpr(known map[string]bool, expr string) []string {
	var problems []string
	names := ndMetric.FindAllString(expr, -1)
	for _, n := range names {
		if !known[n] {
			problems = append(problems, "unknown metric "+n)
		}
	}
	if len(names) == 0 && !stdMetric.MatchString(expr) {
		problems = append(problems, "names no metric")
	}
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
		problems = append(problems, "unbalanced brackets")
	}
	return problems
}

func TestCheckExpr(t *testing.T) {
	known := map[string]bool{"nd_server_weight": true}
	for expr, want := range map[string]string{
		`max by (vip) (nd_server_weight{vip=~"$vip"})`: "",
		`rate(nd_server_wieght[5m])`:                   "unknown metric nd_server_wieght",
		`up{job="nd"} == 0`:                            "",
		`vector(1)`:                                    "names no metric",
		`sum(nd_server_weight`:                         "unbalanced brackets",
	} {
		if got := strings.Join(checkExpr(known, expr), "; "); got != want {
			t.Errorf("checkExpr(%s) = %q, want %q", expr, got, want)
		}
	}
}

// dashboard is the part of Grafana's model the test reads.
type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name string `json:"name"`
			Expr string `json:"expr"`
		} `json:"list"`
	} `json:"annotations"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func TestDashboard(t *testing.T) {
	known := exported(t)
	b, err := os.ReadFile("grafana/nd.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana/nd.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 {
		t.Errorf("uid %q, title %q, schemaVersion %d: all are required", d.UID, d.Title, d.SchemaVersion)
	}

	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
		if q, ok := v.Query.(map[string]any); ok {
			for _, p := range checkExpr(known, q["query"].(string)) {
				t.Errorf("variable %s: %s", v.Name, p)
			}
		}
	}
	for _, want := range []string{"datasource", "instance", "vip", "port"} {
		if !slices.Contains(vars, want) {
			t.Errorf("no variable %q", want)
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			for _, p := range checkExpr(known, a.Expr) {
				t.Errorf("annotation %s: %s", a.Name, p)
			}
		}
	}

	ids := map[int]bool{}
	used := map[string]bool{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel id %d twice", p.ID)
			}
			ids[p.ID] = true
			if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("panel %q: gridPos %+v outside the 24 columns", p.Title, g)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: datasource must be the ${datasource} variable", p.Title)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				for _, pr := range checkExpr(known, tg.Expr) {
					t.Errorf("panel %q: %s in %s", p.Title, pr, tg.Expr)
				}
				for _, n := range ndMetric.FindAllString(tg.Expr, -1) {
					used[n] = true
				}
			}
		}
	}
	walk(d.Panels)

	// What issue 14 asks the dashboard to show.
	for _, want := range []string{
		"nd_server_weight", "nd_manager_lmi", "nd_server_new_flows_total", "nd_server_active_flows",
		"nd_advisor_latency_seconds", "nd_advisor_up", "nd_manager_commits_total", "nd_ha_state",
		"nd_dispatcher_packets_total", "nd_flow_table_pressure", "nd_flows_halfopen",
	} {
		if !used[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
}

// rules is the part of a Prometheus rule file the test reads.
type rules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func TestAlertRules(t *testing.T) {
	known := exported(t)
	b, err := os.ReadFile("prometheus/nd-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var r rules
	if err := yaml.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			alerts[rule.Alert] = true
			for _, p := range checkExpr(known, rule.Expr) {
				t.Errorf("alert %s: %s", rule.Alert, p)
			}
			if rule.Labels["severity"] == "" || rule.Annotations["summary"] == "" || rule.Annotations["description"] == "" {
				t.Errorf("alert %s needs a severity, a summary and a description", rule.Alert)
			}
		}
	}
	// What issue 14 asks operators to be told.
	for _, want := range []string{"NDDown", "NDPortNoServer", "NDServerCooledDownRepeatedly", "NDConnectionTablePressure", "NDHAWithoutStandby"} {
		if !alerts[want] {
			t.Errorf("no alert %s", want)
		}
	}

	// Every alert has a promtool unit test.
	tb, err := os.ReadFile("prometheus/nd-alerts_test.yml")
	if err != nil {
		t.Fatal(err)
	}
	for a := range alerts {
		if !strings.Contains(string(tb), "alertname: "+a+"\n") {
			t.Errorf("alert %s has no promtool test in prometheus/nd-alerts_test.yml", a)
		}
	}
}

// TestAgentExample: the packaged agent example is a valid configuration.
func TestAgentExample(t *testing.T) {
	if _, err := agent.LoadConfig("debian/agent.yaml.example"); err != nil {
		t.Error(err)
	}
}

// TestUnits: the units run the binaries where scripts/package puts them
// and read the configuration where the package's examples point.
func TestUnits(t *testing.T) {
	pkg, err := os.ReadFile("../scripts/package")
	if err != nil {
		t.Fatal(err)
	}
	for unit, want := range map[string][]string{
		"systemd/ndd.service": {"Type=notify", "ExecStart=/usr/sbin/ndd --config /etc/nd/nd.yaml",
			"ExecReload=/bin/kill -HUP $MAINPID", "ReadWritePaths=/sys/fs/bpf", "LimitMEMLOCK=infinity",
			"RuntimeDirectory=nd"},
		"systemd/ndagent.service": {"ExecStart=/usr/sbin/ndagent --config /etc/nd/agent.yaml"},
	} {
		b, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if !strings.Contains(string(b), "\n"+w+"\n") {
				t.Errorf("%s lacks the line %q", unit, w)
			}
		}
		if !strings.Contains(string(pkg), "deploy/"+unit) {
			t.Errorf("scripts/package does not install %s", unit)
		}
	}
}
