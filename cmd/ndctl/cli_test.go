package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/executor"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/manager"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// fakeClient records the calls made to it and answers from its fields.
type fakeClient struct {
	calls   []string
	changes string
	err     error // returned by every call
	status  nd.Status
	config  []byte
	events  []nd.Event
	follow  *bool
	// onStatus, if set, runs on each Status call with its number (from 1).
	onStatus func(n int)
	statuses int
	closed   bool
	manager  api.ManagerResponse
	advisors []advisor.Status
	agents   []api.AgentStatus
	ha       ha.Status
	bgp      nd.BGPStatus
	flows    api.FlowsResponse
	flowQ    api.FlowQuery
}

func (f *fakeClient) Flows(q api.FlowQuery) (api.FlowsResponse, error) {
	f.record("Flows")
	f.flowQ = q
	return f.flows, f.err
}

func (f *fakeClient) record(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeClient) change(format string, args ...any) (string, error) {
	f.record(format, args...)
	if f.err != nil {
		return "", f.err
	}
	return f.changes, nil
}

func (f *fakeClient) Health() error { f.record("Health"); return f.err }

func (f *fakeClient) Status() (nd.Status, error) {
	f.statuses++
	f.record("Status")
	if f.onStatus != nil {
		f.onStatus(f.statuses)
	}
	return f.status, f.err
}

func (f *fakeClient) Config() ([]byte, error) { f.record("Config"); return f.config, f.err }

func (f *fakeClient) ApplyConfig(y []byte) (string, error) {
	return f.change("ApplyConfig %q", y)
}

func (f *fakeClient) Reload() (string, error) { return f.change("Reload") }

func (f *fakeClient) AddCluster(vip string, ports ...api.PortRequest) (string, error) {
	return f.change("AddCluster %s %+v", vip, ports)
}

func (f *fakeClient) RemoveCluster(vip string) (string, error) {
	return f.change("RemoveCluster %s", vip)
}

func (f *fakeClient) AddPort(vip string, p api.PortRequest) (string, error) {
	return f.change("AddPort %s %+v", vip, p)
}

func (f *fakeClient) RemovePort(vip string, port uint16, proto string) (string, error) {
	return f.change("RemovePort %s %d %s", vip, port, proto)
}

func (f *fakeClient) AddServer(vip string, port uint16, proto string, s api.ServerRequest) (string, error) {
	w := "nil"
	if s.Weight != nil {
		w = fmt.Sprint(*s.Weight)
	}
	return f.change("AddServer %s %d %s %s weight=%s quiesce=%v local=%v", vip, port, proto, s.Address, w, s.Quiesce, s.Local)
}

func (f *fakeClient) SetServer(vip string, port uint16, proto, addr string, p api.ServerPatch) (string, error) {
	w, q := "nil", "nil"
	if p.Weight != nil {
		w = fmt.Sprint(*p.Weight)
	}
	if p.Quiesce != nil {
		q = fmt.Sprint(*p.Quiesce)
	}
	if p.Fixed != nil {
		return f.change("SetServer %s %d %s %s weight=%s quiesce=%s fixed=%v", vip, port, proto, addr, w, q, *p.Fixed)
	}
	return f.change("SetServer %s %d %s %s weight=%s quiesce=%s", vip, port, proto, addr, w, q)
}

func (f *fakeClient) RemoveServer(vip string, port uint16, proto, addr string) (string, error) {
	return f.change("RemoveServer %s %d %s %s", vip, port, proto, addr)
}

func (f *fakeClient) Events(ctx context.Context, follow bool, fn func(nd.Event) error) error {
	f.record("Events follow=%v", follow)
	if f.err != nil {
		return f.err
	}
	for _, ev := range f.events {
		if err := fn(ev); err != nil {
			return err
		}
	}
	if follow {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func (f *fakeClient) Close() { f.closed = true }

func (f *fakeClient) ManagerReport() (api.ManagerResponse, error) {
	f.record("ManagerReport")
	return f.manager, f.err
}

func (f *fakeClient) SetManager(p api.ManagerPatch) (string, error) {
	b, _ := json.Marshal(p)
	return f.change("SetManager %s", b)
}

func (f *fakeClient) HAStatus() (ha.Status, error) {
	f.record("HAStatus")
	return f.ha, f.err
}

func (f *fakeClient) HATakeover() (ha.Status, error) {
	f.record("HATakeover")
	st := f.ha
	st.State = ha.StateActive
	return st, f.err
}

func (f *fakeClient) BGPStatus() (nd.BGPStatus, error) {
	f.record("BGPStatus")
	return f.bgp, f.err
}

func (f *fakeClient) BGPDrain(drain bool) (nd.BGPStatus, error) {
	f.record("BGPDrain %t", drain)
	st := f.bgp
	st.Drained = drain
	return st, f.err
}

func (f *fakeClient) Agents() ([]api.AgentStatus, error) {
	f.record("Agents")
	return f.agents, f.err
}

func (f *fakeClient) Advisors() ([]advisor.Status, error) {
	f.record("Advisors")
	return f.advisors, f.err
}

// harness runs ndctl commands against a fake client.
type harness struct {
	t       *testing.T
	fc      *fakeClient
	vars    map[string]string
	stdin   string
	dialErr error
	euid    int
	// What the last run dialled.
	dialled         bool
	target, token   string
	stdout, stderr  bytes.Buffer
	terminal        bool
	executable      string
	lookPathMissing bool
}

func newHarness(t *testing.T) *harness {
	return &harness{t: t, fc: &fakeClient{changes: "some changes"}, vars: map[string]string{}}
}

func (h *harness) env() *env {
	return &env{
		stdout: &h.stdout,
		stderr: &h.stderr,
		stdin:  strings.NewReader(h.stdin),
		getenv: func(k string) string { return h.vars[k] },
		dial: func(target, token string) (Client, error) {
			h.dialled, h.target, h.token = true, target, token
			if h.dialErr != nil {
				return nil, h.dialErr
			}
			return h.fc, nil
		},
		terminal: h.terminal,
		tick:     time.Millisecond,
		lab: labEnv{
			geteuid: func() int { return h.euid },
			executable: func() (string, error) {
				if h.executable == "" {
					return "", errors.New("no executable")
				}
				return h.executable, nil
			},
			lookPath: func(string) (string, error) { return "", errors.New("not in $PATH") },
		},
	}
}

func (h *harness) runCtx(ctx context.Context, args ...string) int {
	h.t.Helper()
	h.stdout.Reset()
	h.stderr.Reset()
	h.dialled = false
	h.fc.calls = nil
	return run(ctx, h.env(), args)
}

func (h *harness) run(args ...string) int {
	h.t.Helper()
	return h.runCtx(context.Background(), args...)
}

// leaves returns the path of every command of the tree, groups included.
func commandPaths() [][]string {
	var out [][]string
	var walk func(c *command, path []string)
	walk = func(c *command, path []string) {
		for _, sc := range c.subs {
			p := append(append([]string{}, path...), sc.name)
			out = append(out, p)
			walk(sc, p)
		}
	}
	walk(commandTree(), nil)
	return out
}

func TestHelp(t *testing.T) {
	h := newHarness(t)
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		if code := h.run(args...); code != exitOK {
			t.Errorf("ndctl %v: exit %d", args, code)
		}
		for _, want := range []string{"usage: ndctl", "cluster add|remove|list", "server add|remove|set", "status", "lab", "--socket", "--json"} {
			if !strings.Contains(h.stdout.String(), want) {
				t.Errorf("ndctl %v: overview lacks %q:\n%s", args, want, h.stdout.String())
			}
		}
	}

	paths := commandPaths()
	if len(paths) < 20 {
		t.Fatalf("only %d commands found", len(paths))
	}
	for _, path := range paths {
		name := strings.Join(path, " ")
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			if code := h.run(append([]string{"help"}, path...)...); code != exitOK {
				t.Fatalf("ndctl help %s: exit %d, stderr %q", name, code, h.stderr.String())
			}
			viaHelp := h.stdout.String()
			if !strings.HasPrefix(viaHelp, "usage: ndctl "+name) {
				t.Errorf("ndctl help %s starts %q", name, firstLine(viaHelp))
			}
			if h.stderr.Len() != 0 || h.dialled {
				t.Errorf("help wrote to stderr (%q) or dialled ndd (%v)", h.stderr.String(), h.dialled)
			}
			for _, flag := range []string{"-h", "--help"} {
				if code := h.run(append(path, flag)...); code != exitOK {
					t.Fatalf("ndctl %s %s: exit %d", name, flag, code)
				}
				if h.stdout.String() != viaHelp {
					t.Errorf("ndctl %s %s differs from ndctl help %s:\n%s\n---\n%s", name, flag, name, h.stdout.String(), viaHelp)
				}
			}
		})
	}
}

func TestHelpShowsFlags(t *testing.T) {
	h := newHarness(t)
	for cmd, flags := range map[string][]string{
		"cluster add":   {"--protocol", "--sticky-time", "--weight-bound"},
		"port add":      {"--protocol", "--sticky-time", "--weight-bound"},
		"port remove":   {"--protocol"},
		"server add":    {"--protocol", "--weight", "--quiesce", "--local"},
		"server set":    {"--weight", "--quiesce", "--unquiesce"},
		"status":        {"--watch", "--json prints JSON"},
		"events":        {"--follow"},
		"lab":           {"--servers", "--rate", "--duration", "--ndd", "--dashboard", "root"},
		"config apply":  {"FILE"},
		"cluster list":  {"--json prints JSON"},
		"config show":   {"--json prints JSON"},
		"server remove": {"VIP PORT[/PROTO] ADDRESS"},
	} {
		if code := h.run(append([]string{"help"}, strings.Fields(cmd)...)...); code != exitOK {
			t.Fatalf("help %s: exit %d", cmd, code)
		}
		for _, f := range flags {
			if !strings.Contains(h.stdout.String(), f) {
				t.Errorf("help %s lacks %q:\n%s", cmd, f, h.stdout.String())
			}
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func TestUsageErrors(t *testing.T) {
	const vip = "198.51.100.100"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage: ndctl"},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"cluster"}, "missing subcommand: add, remove, list"},
		{[]string{"cluster", "explode"}, `unknown subcommand "explode"`},
		{[]string{"cluster", "add"}, "missing VIP"},
		{[]string{"cluster", "add", "not-an-ip"}, `VIP "not-an-ip" is not an IP address`},
		{[]string{"cluster", "add", vip, "http"}, `port "http" is not a number`},
		{[]string{"cluster", "remove", vip, "extra"}, `unexpected argument "extra"`},
		{[]string{"cluster", "list", "x"}, `unexpected argument "x"`},
		{[]string{"port", "add", vip}, "missing PORT[/PROTO]"},
		{[]string{"port", "add", vip, "0"}, `port "0" is not a number from 1 to 65535`},
		{[]string{"port", "add", vip, "70000"}, `port "70000"`},
		{[]string{"port", "add", vip, "80", "--protocol", "sctp"}, `protocol "sctp": want tcp or udp`},
		{[]string{"port", "add", vip, "80/sctp"}, `protocol "sctp"`},
		{[]string{"port", "add", vip, "80/udp", "--protocol", "tcp"}, "port 80/udp conflicts with --protocol tcp"},
		{[]string{"port", "add", vip, "80", "--sticky-time", "1500ms"}, "--sticky-time 1.5s: want whole seconds"},
		{[]string{"port", "add", vip, "80", "--sticky-time", "soon"}, `invalid value "soon"`},
		{[]string{"port", "add", vip, "80", "--weight-bound", "0"}, "--weight-bound 0: want 1 to 1000"},
		{[]string{"port", "add", vip, "80", "--weight-bound", "2000"}, "--weight-bound 2000"},
		{[]string{"port", "remove", vip}, "missing PORT[/PROTO]"},
		{[]string{"server", "add", vip, "80"}, "missing ADDRESS"},
		{[]string{"server", "add", vip, "80", "nope"}, `server address "nope" is not an IP address`},
		{[]string{"server", "add", vip, "80", "198.51.100.11", "--weight", "5000"}, "--weight 5000"},
		{[]string{"server", "add", vip, "80", "198.51.100.11", "--weight", "-1"}, "invalid value"},
		{[]string{"server", "remove", vip, "80"}, "missing ADDRESS"},
		{[]string{"server", "set", vip, "80", "198.51.100.11"}, "nothing to change"},
		{[]string{"server", "set", vip, "80", "198.51.100.11", "--quiesce", "--unquiesce"}, "--quiesce and --unquiesce together"},
		{[]string{"server", "set", vip, "80", "198.51.100.11", "--fixed", "--managed"}, "--fixed and --managed together"},
		{[]string{"manager", "set"}, "nothing to change"},
		{[]string{"manager", "set", "--proportions", "50,50"}, "want four numbers"},
		{[]string{"manager", "set", "--proportions", "50,50,x,0"}, `"x" is not a percentage`},
		{[]string{"manager", "set", "--proportions", "150,0,0,0"}, `"150" is not a percentage`},
		{[]string{"manager", "report", "extra"}, `unexpected argument "extra"`},
		{[]string{"status", "extra"}, `unexpected argument "extra"`},
		{[]string{"status", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"events", "now"}, `unexpected argument "now"`},
		{[]string{"config"}, "missing subcommand"},
		{[]string{"config", "apply"}, "missing FILE"},
		{[]string{"config", "save"}, "missing FILE"},
		{[]string{"config", "reload", "now"}, `unexpected argument "now"`},
		{[]string{"lab", "--servers", "0"}, "--servers 0: want 1 to 88"},
		{[]string{"lab", "--servers", "89"}, "--servers 89"},
		{[]string{"lab", "--rate", "0"}, "--rate 0"},
		{[]string{"lab", "--rate", "NaN"}, "--rate NaN"},
		{[]string{"lab", "--duration", "-1s"}, "--duration -1s"},
		{[]string{"lab", "now"}, `unexpected argument "now"`},
		{[]string{"lab", "--dashboard", "198.51.100.3:8480"}, `--dashboard "198.51.100.3:8480": want a loopback ADDR:PORT`},
		{[]string{"help", "nope"}, `unknown command "nope"`},
		{[]string{"help", "cluster", "add", "more"}, `no command "cluster add more"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			h := newHarness(t)
			h.euid = 1000 // a lab that got this far must not start
			if code := h.run(tc.args...); code != exitUsage {
				t.Errorf("exit %d, want %d; stderr %q", code, exitUsage, h.stderr.String())
			}
			if !strings.Contains(h.stderr.String(), tc.want) {
				t.Errorf("stderr %q lacks %q", h.stderr.String(), tc.want)
			}
			if tc.args != nil && strings.Count(h.stderr.String(), "\n") != 1 {
				t.Errorf("stderr is not one line: %q", h.stderr.String())
			}
			if h.dialled || len(h.fc.calls) > 0 {
				t.Errorf("a usage error reached ndd: %v", h.fc.calls)
			}
			if h.stdout.Len() != 0 {
				t.Errorf("stdout %q", h.stdout.String())
			}
		})
	}
}

func TestChanges(t *testing.T) {
	const vip = "198.51.100.100"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cluster", "add", vip, "80", "443/udp", "--sticky-time", "30s", "--weight-bound", "20"},
			"AddCluster 198.51.100.100 [{Port:80 Protocol:tcp StickyTime:30s WeightBound:20 Servers:[]} {Port:443 Protocol:udp StickyTime:30s WeightBound:20 Servers:[]}]"},
		{[]string{"cluster", "add", "2001:DB8::100", "80"},
			"AddCluster 2001:db8::100 [{Port:80 Protocol:tcp StickyTime: WeightBound:0 Servers:[]}]"},
		{[]string{"cluster", "add", vip}, "AddCluster 198.51.100.100 []"},
		{[]string{"cluster", "remove", vip}, "RemoveCluster 198.51.100.100"},
		{[]string{"port", "add", vip, "80"}, "AddPort 198.51.100.100 {Port:80 Protocol:tcp StickyTime: WeightBound:0 Servers:[]}"},
		{[]string{"port", "add", "--protocol", "udp", vip, "53", "--sticky-time", "1m", "--weight-bound", "10"},
			"AddPort 198.51.100.100 {Port:53 Protocol:udp StickyTime:1m0s WeightBound:10 Servers:[]}"},
		{[]string{"port", "add", vip, "53/UDP"}, "AddPort 198.51.100.100 {Port:53 Protocol:udp StickyTime: WeightBound:0 Servers:[]}"},
		{[]string{"port", "remove", vip, "80"}, "RemovePort 198.51.100.100 80 tcp"},
		{[]string{"port", "remove", vip, "53", "--protocol", "udp"}, "RemovePort 198.51.100.100 53 udp"},
		{[]string{"port", "remove", vip, "53/udp"}, "RemovePort 198.51.100.100 53 udp"},
		{[]string{"server", "add", vip, "80", "198.51.100.11"}, "AddServer 198.51.100.100 80 tcp 198.51.100.11 weight=nil quiesce=false local=false"},
		{[]string{"server", "add", vip, "80", "198.51.100.11", "--weight", "0", "--quiesce"},
			"AddServer 198.51.100.100 80 tcp 198.51.100.11 weight=0 quiesce=true local=false"},
		{[]string{"server", "add", vip, "80/udp", "198.51.100.3", "--local", "--weight", "7"},
			"AddServer 198.51.100.100 80 udp 198.51.100.3 weight=7 quiesce=false local=true"},
		{[]string{"server", "remove", vip, "80", "198.51.100.11"}, "RemoveServer 198.51.100.100 80 tcp 198.51.100.11"},
		{[]string{"server", "set", vip, "80", "198.51.100.11", "--weight", "7"}, "SetServer 198.51.100.100 80 tcp 198.51.100.11 weight=7 quiesce=nil"},
		{[]string{"server", "set", vip, "80", "198.51.100.11", "--quiesce"}, "SetServer 198.51.100.100 80 tcp 198.51.100.11 weight=nil quiesce=true"},
		{[]string{"server", "set", vip, "80", "198.51.100.11", "--unquiesce", "--weight", "3"}, "SetServer 198.51.100.100 80 tcp 198.51.100.11 weight=3 quiesce=false"},
		{[]string{"server", "set", "2001:db8::100", "80", "2001:db8::11", "--weight", "0"}, "SetServer 2001:db8::100 80 tcp 2001:db8::11 weight=0 quiesce=nil"},
		{[]string{"config", "reload"}, "Reload"},
		{[]string{"server", "set", vip, "80", "198.51.100.11", "--fixed"}, "SetServer 198.51.100.100 80 tcp 198.51.100.11 weight=nil quiesce=nil fixed=true"},
		{[]string{"server", "set", vip, "80", "198.51.100.11", "--managed"}, "SetServer 198.51.100.100 80 tcp 198.51.100.11 weight=nil quiesce=nil fixed=false"},
		{[]string{"manager", "set", "--policy", "best", "--interval", "5s", "--proportions", "30,30,40,0"},
			`SetManager {"interval":"5s","policy":"best","proportions":{"active":30,"new":30,"advisor":40,"host":0}}`},
		{[]string{"manager", "set", "--port", vip + "/80", "--proportions", "100,0,0,0"},
			`SetManager {"proportions":{"active":100,"new":0,"advisor":0,"host":0},"port":"198.51.100.100/80"}`},
		{[]string{"manager", "set", "--port", vip + "/80", "--reset-port"}, `SetManager {"port":"198.51.100.100/80","reset_port":true}`},
		{[]string{"manager", "set", "--sensitivity", "0.1", "--smoothing", "4", "--overload", "5", "--cool-down", "10s", "--host-metric", "load1"},
			`SetManager {"sensitivity":0.1,"smoothing":4,"overload":5,"cool_down":"10s","host_metric":"load1"}`},
		// Everything after "--" is positional.
		{[]string{"port", "remove", "--protocol", "udp", "--", vip, "53"}, "RemovePort 198.51.100.100 53 udp"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			h := newHarness(t)
			if code := h.run(tc.args...); code != exitOK {
				t.Fatalf("exit %d, stderr %q", code, h.stderr.String())
			}
			if len(h.fc.calls) != 1 || h.fc.calls[0] != tc.want {
				t.Errorf("calls %q, want %q", h.fc.calls, tc.want)
			}
			if h.stdout.String() != "some changes\n" {
				t.Errorf("stdout %q, want the daemon's changes", h.stdout.String())
			}
			if !h.fc.closed {
				t.Error("client not closed")
			}
		})
	}
}

func TestChangesJSON(t *testing.T) {
	h := newHarness(t)
	if code := h.run("--json", "cluster", "remove", "198.51.100.100"); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	var got api.ChangesResponse
	if err := json.Unmarshal(h.stdout.Bytes(), &got); err != nil || got.Changes != "some changes" {
		t.Errorf("stdout %q: %v", h.stdout.String(), err)
	}
}

func TestTarget(t *testing.T) {
	for _, tc := range []struct {
		name        string
		vars        map[string]string
		args        []string
		target, tok string
	}{
		{"default", nil, nil, "/run/nd/ndd.sock", ""},
		{"environment", map[string]string{"ND_SOCKET": "/tmp/nd.sock", "ND_TOKEN": "secret-secret-secret"}, nil, "/tmp/nd.sock", "secret-secret-secret"},
		{"flags win", map[string]string{"ND_SOCKET": "/tmp/nd.sock", "ND_TOKEN": "x"}, []string{"--socket", "/a.sock", "--token", "y"}, "/a.sock", "y"},
		{"url wins", nil, []string{"--socket", "/a.sock", "--url", "https://nd1:8443"}, "https://nd1:8443", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Global flags before the command and after it.
			for _, args := range [][]string{
				append(append([]string{}, tc.args...), "status"),
				append([]string{"status"}, tc.args...),
			} {
				h := newHarness(t)
				for k, v := range tc.vars {
					h.vars[k] = v
				}
				if code := h.run(args...); code != exitOK {
					t.Fatalf("%v: exit %d, %s", args, code, h.stderr.String())
				}
				if h.target != tc.target || h.token != tc.tok {
					t.Errorf("%v: dialled %q with token %q, want %q, %q", args, h.target, h.token, tc.target, tc.tok)
				}
			}
		})
	}
}

func TestOperationErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		err     error
		dialErr error
		args    []string
		want    string
	}{
		{"api error", &api.Error{Status: 404, Message: "cluster 198.51.100.9: not found"}, nil,
			[]string{"cluster", "remove", "198.51.100.9"}, "ndctl cluster remove: cluster 198.51.100.9: not found\n"},
		{"rejected", &api.Error{Status: 400, Message: "add server: configuration rejected: weight 500 is above the bound 100"}, nil,
			[]string{"server", "add", "198.51.100.100", "80", "198.51.100.11", "--weight", "500"},
			"ndctl server add: add server: configuration rejected: weight 500 is above the bound 100\n"},
		{"ndd not running", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)}, nil,
			[]string{"status"}, "ndctl status: cannot reach ndd at /run/nd/ndd.sock: dial unix: connect: no such file or directory (is ndd running? see --socket, --url)\n"},
		{"bad url", nil, errors.New(`api client: target "ftp://x": want http(s)://host:port`),
			[]string{"--url", "ftp://x", "config", "show"}, "ndctl config show: connect to ndd: api client: target \"ftp://x\": want http(s)://host:port\n"},
		{"several lines", errors.New("first\nsecond\nthird"), nil,
			[]string{"config", "reload"}, "ndctl config reload: first (and 2 more lines)\n"},
		{"events", errors.New("read events: unexpected EOF"), nil,
			[]string{"events"}, "ndctl events: read events: unexpected EOF\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.fc.err, h.dialErr = tc.err, tc.dialErr
			if code := h.run(tc.args...); code != exitError {
				t.Errorf("exit %d, want %d", code, exitError)
			}
			if h.stderr.String() != tc.want {
				t.Errorf("stderr %q\nwant   %q", h.stderr.String(), tc.want)
			}
		})
	}
}

func testStatus() nd.Status {
	return nd.Status{
		Time:       time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC),
		Interfaces: []string{"eth0"},
		Ports: []nd.PortStatus{
			{VIP: "198.51.100.100", Port: 80, Protocol: "tcp", StickyTime: "0s", Packets: 1234, Servers: []nd.ServerStatus{
				{Address: "198.51.100.11", State: nd.StateUp, Weight: 1, ConfigWeight: 1, NewFlowsRate: 6.25, ActiveFlows: 3, HalfOpenFlows: 812, PacketsRate: 40},
				{Address: "198.51.100.12", State: nd.StateQuiesced, Weight: 0, ConfigWeight: 2, Quiesced: true},
				{Address: "198.51.100.13", State: nd.StateUnresolved, Reason: "no answer to ARP", ConfigWeight: 4},
			}},
			{VIP: "198.51.100.100", Port: 443, Protocol: "tcp", StickyTime: "30s"},
			{VIP: "2001:db8::100", Port: 80, Protocol: "tcp", StickyTime: "0s", NoServer: 7, Servers: []nd.ServerStatus{
				{Address: "2001:db8::11", State: nd.StateUp, Weight: 4, NewFlowsRate: 25},
			}},
		},
		Global: executor.GlobalStats{HalfOpenEvicted: 4096, OpenersUnrecorded: 17, TablePressure: true},
	}
}

func TestStatus(t *testing.T) {
	h := newHarness(t)
	h.fc.status = testStatus()
	if code := h.run("status"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	out := h.stdout.String()
	for _, want := range []string{
		"attached to eth0; 3 ports",
		"198.51.100.100:80/tcp  sticky 0s  1234 packets",
		"198.51.100.100:443/tcp  sticky 30s",
		"no servers",
		"[2001:db8::100]:80/tcp",
		"7 dropped for want of a server",
		"SERVER         STATE",
		"198.51.100.11  up",
		"6.2", // new flows/s
		"198.51.100.12  quiesced",
		"unresolved (no answer to ARP)",
		"2001:db8::11",
		"HALF-OPEN",
		"812",
		"flow table: UNDER PRESSURE  (half-open displaced 4096, established evicted 0, not recorded: 17 SYNs, 0 strays)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	if code := h.run("status", "--json"); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	var got nd.Status
	if err := json.Unmarshal(h.stdout.Bytes(), &got); err != nil {
		t.Fatalf("status --json: %v\n%s", err, h.stdout.String())
	}
	if !reflect.DeepEqual(got, h.fc.status) {
		t.Errorf("status --json gave %+v, want %+v", got, h.fc.status)
	}
}

func TestStatusWatch(t *testing.T) {
	for _, terminal := range []bool{false, true} {
		t.Run(fmt.Sprintf("terminal=%v", terminal), func(t *testing.T) {
			h := newHarness(t)
			h.terminal = terminal
			h.fc.status = testStatus()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			h.fc.onStatus = func(n int) {
				if n == 2 {
					h.fc.err = errors.New("ndd restarting")
				}
				if n == 3 {
					h.fc.err = nil
				}
				if n == 4 {
					cancel()
				}
			}
			if code := h.runCtx(ctx, "status", "--watch"); code != exitOK {
				t.Fatalf("exit %d: %s", code, h.stderr.String())
			}
			out := h.stdout.String()
			if n := strings.Count(out, "198.51.100.100:80/tcp"); n != 3 {
				t.Errorf("%d frames with a table, want 3:\n%s", n, out)
			}
			if !strings.Contains(out, "ndd restarting") {
				t.Errorf("the failed refresh is not shown:\n%s", out)
			}
			if got := strings.Contains(out, "\x1b["); got != terminal {
				t.Errorf("escape sequences: %v, want %v", got, terminal)
			}
		})
	}
	t.Run("json", func(t *testing.T) {
		h := newHarness(t)
		h.fc.status = testStatus()
		ctx, cancel := context.WithCancel(context.Background())
		h.fc.onStatus = func(n int) {
			if n == 3 {
				cancel()
			}
		}
		if code := h.runCtx(ctx, "status", "--watch", "--json"); code != exitOK {
			t.Fatalf("exit %d", code)
		}
		lines := strings.Split(strings.TrimSpace(h.stdout.String()), "\n")
		if len(lines) != 3 {
			t.Fatalf("%d lines, want one JSON object per refresh:\n%s", len(lines), h.stdout.String())
		}
		for _, l := range lines {
			var st nd.Status
			if err := json.Unmarshal([]byte(l), &st); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("first read fails", func(t *testing.T) {
		h := newHarness(t)
		h.fc.err = errors.New("permission denied")
		if code := h.run("status", "--watch"); code != exitError {
			t.Errorf("exit %d, want %d", code, exitError)
		}
	})
}

func TestClusterList(t *testing.T) {
	h := newHarness(t)
	h.fc.status = testStatus()
	if code := h.run("cluster", "list"); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	want := "VIP             PORTS\n" +
		"198.51.100.100  80/tcp (1 of 3 servers up), 443/tcp (0 of 0 servers up, sticky 30s)\n" +
		"2001:db8::100   80/tcp (1 of 1 servers up)\n"
	if h.stdout.String() != want {
		t.Errorf("cluster list:\n%s\nwant:\n%s", h.stdout.String(), want)
	}

	if code := h.run("cluster", "list", "--json"); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	var got []clusterView
	if err := json.Unmarshal(h.stdout.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].VIP != "198.51.100.100" || len(got[0].Ports) != 2 || got[0].Ports[0].Servers != 3 || got[1].Ports[0].Up != 1 {
		t.Errorf("cluster list --json: %+v", got)
	}

	h.fc.status = nd.Status{}
	h.run("cluster", "list")
	if h.stdout.String() != "no clusters\n" {
		t.Errorf("empty list: %q", h.stdout.String())
	}
	h.run("cluster", "list", "--json")
	if strings.TrimSpace(h.stdout.String()) != "[]" {
		t.Errorf("empty list as JSON: %q", h.stdout.String())
	}
}

func TestEvents(t *testing.T) {
	evs := []nd.Event{
		{Time: time.Date(2025, 5, 1, 12, 0, 0, 0, time.UTC), Type: nd.EventConfigApplied, Message: "added port 198.51.100.100:80/tcp"},
		{Time: time.Date(2025, 5, 1, 12, 0, 1, 0, time.UTC), Type: nd.EventServerResolved, Service: "198.51.100.100:80/tcp", Server: "198.51.100.11", Message: "198.51.100.11 is 02:00:00:00:00:0b on eth0"},
	}
	h := newHarness(t)
	h.fc.events = evs
	if code := h.run("events"); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(h.stdout.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "config_applied") || !strings.Contains(lines[1], "server 198.51.100.11") ||
		!strings.Contains(lines[1], "198.51.100.100:80/tcp") {
		t.Errorf("events:\n%s", h.stdout.String())
	}
	if h.fc.calls[0] != "Events follow=false" {
		t.Errorf("calls %v", h.fc.calls)
	}

	if code := h.run("events", "--json"); code != exitOK {
		t.Fatalf("exit %d", code)
	}
	dec := json.NewDecoder(&h.stdout)
	for i := range evs {
		var ev nd.Event
		if err := dec.Decode(&ev); err != nil || !ev.Time.Equal(evs[i].Time) || ev.Type != evs[i].Type {
			t.Errorf("event %d: %+v, %v", i, ev, err)
		}
	}

	// --follow runs until interrupted, which is not an error.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if code := h.runCtx(ctx, "events", "--follow"); code != exitOK {
		t.Fatalf("events --follow: exit %d: %s", code, h.stderr.String())
	}
	if h.fc.calls[0] != "Events follow=true" || strings.Count(h.stdout.String(), "\n") != 2 {
		t.Errorf("calls %v, stdout %q", h.fc.calls, h.stdout.String())
	}
}

const validConfig = `interfaces: [eth0]
clusters:
  - vip: 198.51.100.100
    ports:
      - port: 80
        servers:
          - {address: 198.51.100.11, weight: 10}
`

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t)
	h.fc.config = []byte(validConfig)

	t.Run("show", func(t *testing.T) {
		if code := h.run("config", "show"); code != exitOK || h.stdout.String() != validConfig {
			t.Errorf("exit %d, stdout %q", code, h.stdout.String())
		}
		if code := h.run("config", "show", "--json"); code != exitOK {
			t.Fatalf("exit %d: %s", code, h.stderr.String())
		}
		var doc struct {
			Interfaces []string `json:"interfaces"`
			Clusters   []struct {
				VIP   string `json:"vip"`
				Ports []struct {
					Port int `json:"port"`
				} `json:"ports"`
			} `json:"clusters"`
		}
		if err := json.Unmarshal(h.stdout.Bytes(), &doc); err != nil {
			t.Fatal(err)
		}
		if doc.Interfaces[0] != "eth0" || doc.Clusters[0].VIP != "198.51.100.100" || doc.Clusters[0].Ports[0].Port != 80 {
			t.Errorf("config show --json: %+v", doc)
		}
	})

	t.Run("apply", func(t *testing.T) {
		f := filepath.Join(dir, "nd.yaml")
		if err := os.WriteFile(f, []byte(validConfig), 0o644); err != nil {
			t.Fatal(err)
		}
		if code := h.run("config", "apply", f); code != exitOK {
			t.Fatalf("exit %d: %s", code, h.stderr.String())
		}
		if want := fmt.Sprintf("ApplyConfig %q", validConfig); len(h.fc.calls) != 1 || h.fc.calls[0] != want {
			t.Errorf("calls %q", h.fc.calls)
		}
		if h.stdout.String() != "some changes\n" {
			t.Errorf("stdout %q", h.stdout.String())
		}
	})

	t.Run("apply stdin", func(t *testing.T) {
		h.stdin = validConfig
		defer func() { h.stdin = "" }()
		if code := h.run("config", "apply", "-"); code != exitOK || len(h.fc.calls) != 1 {
			t.Errorf("exit %d, calls %v, stderr %q", code, h.fc.calls, h.stderr.String())
		}
	})

	t.Run("apply invalid", func(t *testing.T) {
		f := filepath.Join(dir, "bad.yaml")
		bad := strings.Replace(validConfig, "weight", "wieght", 1) + "data_plane:\n  ring_size: 65536\n"
		if err := os.WriteFile(f, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if code := h.run("config", "apply", f); code != exitError {
			t.Errorf("exit %d, want %d", code, exitError)
		}
		msg := h.stderr.String()
		if !strings.HasPrefix(msg, "ndctl config apply: "+f+":") || !strings.Contains(msg, "(and 1 more problems)") || strings.Count(msg, "\n") != 1 {
			t.Errorf("stderr %q", msg)
		}
		if len(h.fc.calls) != 0 {
			t.Errorf("an invalid file reached ndd: %v", h.fc.calls)
		}
	})

	t.Run("apply missing", func(t *testing.T) {
		if code := h.run("config", "apply", filepath.Join(dir, "none.yaml")); code != exitError || !strings.Contains(h.stderr.String(), "no such file") {
			t.Errorf("exit %d, stderr %q", code, h.stderr.String())
		}
	})

	t.Run("save", func(t *testing.T) {
		f := filepath.Join(dir, "saved.yaml")
		if err := os.WriteFile(f, []byte("old"), 0o644); err != nil {
			t.Fatal(err)
		}
		if code := h.run("config", "save", f); code != exitOK {
			t.Fatalf("exit %d: %s", code, h.stderr.String())
		}
		b, err := os.ReadFile(f)
		if err != nil || string(b) != validConfig {
			t.Errorf("saved %q, %v", b, err)
		}
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("saved file mode %v, %v; want 0600", fi.Mode(), err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 3 { // nd.yaml, bad.yaml, saved.yaml
			t.Errorf("temporary files left: %v", ents)
		}
		if code := h.run("config", "save", filepath.Join(dir, "no", "such", "dir.yaml")); code != exitError {
			t.Errorf("save into a missing directory: exit %d", code)
		}
	})
}

func TestLabRefusals(t *testing.T) {
	t.Run("not root", func(t *testing.T) {
		h := newHarness(t)
		h.euid = 1000
		if code := h.run("lab", "--duration", "1s"); code != exitError {
			t.Errorf("exit %d, want %d", code, exitError)
		}
		if want := "ndctl lab: must run as root (euid is 1000)"; !strings.HasPrefix(h.stderr.String(), want) {
			t.Errorf("stderr %q, want %q...", h.stderr.String(), want)
		}
		if h.stdout.Len() != 0 || h.dialled {
			t.Errorf("it went on: stdout %q", h.stdout.String())
		}
	})
	t.Run("no ndd", func(t *testing.T) {
		h := newHarness(t)
		h.executable = filepath.Join(t.TempDir(), "ndctl")
		if code := h.run("lab"); code != exitError || !strings.Contains(h.stderr.String(), "no ndd binary beside ndctl or in $PATH") {
			t.Errorf("exit %d, stderr %q", code, h.stderr.String())
		}
	})
	t.Run("bad --ndd", func(t *testing.T) {
		h := newHarness(t)
		notExec := filepath.Join(t.TempDir(), "ndd")
		os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
		for _, p := range []string{notExec, filepath.Dir(notExec), "/nonexistent/ndd"} {
			if code := h.run("lab", "--ndd", p); code != exitError || !strings.HasPrefix(h.stderr.String(), "ndctl lab: --ndd "+p) {
				t.Errorf("--ndd %s: exit %d, stderr %q", p, code, h.stderr.String())
			}
		}
	})
}

func TestLabDispatchersRefusals(t *testing.T) {
	dir := t.TempDir()
	ndd := filepath.Join(dir, "ndd")
	if err := os.WriteFile(ndd, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t)
	h.executable = filepath.Join(dir, "ndctl")
	if code := h.run("lab", "--dispatchers", "4"); code != exitUsage || !strings.Contains(h.stderr.String(), "--dispatchers 4: want 1 to 3") {
		t.Errorf("--dispatchers 4: exit %d, stderr %q", code, h.stderr.String())
	}
}

func TestFindNDD(t *testing.T) {
	dir := t.TempDir()
	ndd := filepath.Join(dir, "ndd")
	if err := os.WriteFile(ndd, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t)
	h.executable = filepath.Join(dir, "ndctl")
	s := &session{env: h.env()}
	if got, err := s.findNDD(""); err != nil || got != ndd {
		t.Errorf("beside ndctl: %q, %v; want %q", got, err, ndd)
	}
	if got, err := s.findNDD(ndd); err != nil || got != ndd {
		t.Errorf("--ndd: %q, %v", got, err)
	}
	s.lab.executable = func() (string, error) { return filepath.Join(t.TempDir(), "ndctl"), nil }
	s.lab.lookPath = func(string) (string, error) { return ndd, nil }
	if got, err := s.findNDD(""); err != nil || got != ndd {
		t.Errorf("in $PATH: %q, %v", got, err)
	}
}

func TestLabConfigWeights(t *testing.T) {
	want := []uint32{1, 1, 2, 4, 1, 1}
	for i, w := range want {
		if got := labWeight(i); got != w {
			t.Errorf("server %d: weight %d, want %d", i, got, w)
		}
	}
}

func TestSweepStaleDirs(t *testing.T) {
	tmp := t.TempDir()
	mk := func(name string, files ...string) string {
		d := filepath.Join(tmp, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(d, f), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return d
	}
	dead := mk("ndlab999999999-abcd-1234", labConfigFile, labLogFile)
	deadEmpty := mk("ndlab999999998-abcd-1234")
	foreign := mk("ndlab999999997-abcd-1234", labConfigFile, "precious.txt")
	live := mk(fmt.Sprintf("ndlab%d-abcd-1234", os.Getpid()), labConfigFile)
	noPID := mk("ndlab-1234", labConfigFile)
	removed := sweepStaleDirs(tmp)
	if !reflect.DeepEqual(removed, []string{deadEmpty, dead}) {
		t.Errorf("removed %v, want %v", removed, []string{deadEmpty, dead})
	}
	for _, d := range []string{foreign, live, noPID} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s: %v", d, err)
		}
	}
}

func TestManagerReport(t *testing.T) {
	h := newHarness(t)
	h.fc.manager = api.ManagerResponse{Interval: "2s", Sensitivity: 0.05, Smoothing: 1.5, Policy: "default", Overload: 3,
		Proportions: api.ProportionsRequest{Active: 50, New: 50},
		Ports: []manager.PortReport{{Port: "198.51.100.100:80/tcp", Committed: true, Reason: "load", Change: 0.12,
			Servers: []manager.ServerReport{
				{Server: netip.MustParseAddr("198.51.100.11"), State: "up", Active: 40, NewPerSec: 120.5, AdvisorMS: -1, Host: -1,
					Loads: map[string]float64{"active": 1.8, "new": 1}, LMI: 1.4, Weight: 50, NewWeight: 38},
				{Server: netip.MustParseAddr("198.51.100.12"), State: "cool-down", AdvisorMS: 12.5, Host: 40, Weight: 50, NewWeight: 0, Note: "load 4x its peers'"},
			}}}}
	if code := h.run("manager", "report"); code != exitOK {
		t.Fatalf("exit %d: %s", code, h.stderr.String())
	}
	out := h.stdout.String()
	for _, want := range []string{"policy default", "sensitivity 5%", "proportions active 50 new 50 advisor 0 host 0",
		"198.51.100.100:80/tcp  (committed: load, change 12%", "active=1.8 new=1", "120.5", "12.5ms", "cool-down", "load 4x its peers'"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	h = newHarness(t)
	h.fc.manager = api.ManagerResponse{Policy: "static"}
	if code := h.run("manager", "report", "--json"); code != exitOK {
		t.Fatal(h.stderr.String())
	}
	var got api.ManagerResponse
	if err := json.Unmarshal(h.stdout.Bytes(), &got); err != nil || got.Policy != "static" {
		t.Errorf("json %q: %v", h.stdout.String(), err)
	}
}

func TestAdvisorStatus(t *testing.T) {
	h := newHarness(t)
	h.fc.advisors = []advisor.Status{
		{Advisor: "web", Kind: "http", Server: netip.MustParseAddr("198.51.100.11"), Port: 80, VIP: netip.MustParseAddr("198.51.100.100"), Known: true, Up: true, Latency: 2 * time.Millisecond, Probes: 7},
		{Advisor: "web", Kind: "http", Server: netip.MustParseAddr("198.51.100.12"), Port: 80, Known: true, Err: "connection refused", Probes: 7, Failures: 7},
	}
	if code := h.run("advisor", "status"); code != exitOK {
		t.Fatal(h.stderr.String())
	}
	out := h.stdout.String()
	for _, want := range []string{"vip 198.51.100.100:80", "up", "2ms", "198.51.100.12:80", "down", "connection refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("advisor status lacks %q:\n%s", want, out)
		}
	}
}

func TestFlows(t *testing.T) {
	h := newHarness(t)
	h.fc.flows = api.FlowsResponse{More: true, Flows: []api.Flow{
		{Protocol: "tcp", Client: "203.0.113.7:40000", VIP: "198.51.100.100:80", Server: "198.51.100.11", IdleMS: 2100},
		{Protocol: "tcp", Client: "203.0.113.8:40001", VIP: "198.51.100.100:80", Server: "198.51.100.12", Closing: true},
	}}
	if code := h.run("flows", "198.51.100.100", "80/tcp", "--server", "198.51.100.11", "--limit", "2"); code != exitOK {
		t.Fatal(h.stderr.String())
	}
	want := api.FlowQuery{VIP: netip.MustParseAddr("198.51.100.100"), Port: 80, Protocol: "tcp", Server: netip.MustParseAddr("198.51.100.11"), Limit: 2}
	if h.fc.flowQ != want {
		t.Errorf("query %+v, want %+v", h.fc.flowQ, want)
	}
	out := h.stdout.String()
	for _, want := range []string{"203.0.113.7:40000", "198.51.100.11", "open", "2s", "closing", "more flows match"} {
		if !strings.Contains(out, want) {
			t.Errorf("flows lacks %q:\n%s", want, out)
		}
	}
	for _, args := range [][]string{
		{"flows", "nope"},
		{"flows", "198.51.100.100", "0"},
		{"flows", "--client", "1.2.3"},
		{"flows", "--limit", "0"},
		{"flows", "198.51.100.100", "80", "extra"},
	} {
		h := newHarness(t)
		if code := h.run(args...); code != exitUsage || strings.Count(strings.TrimSpace(h.stderr.String()), "\n") != 0 {
			t.Errorf("%q: exit %d, stderr %q; want a one-line usage error", args, code, h.stderr.String())
		}
	}
}

func TestAgentStatus(t *testing.T) {
	h := newHarness(t)
	h.fc.agents = []api.AgentStatus{
		{Address: "198.51.100.11:7010", Host: "web1", Last: time.Now(), Metrics: map[string]float64{"cpu": 12.5, "load1": 0.4}},
		{Address: "198.51.100.12:7010", Disabled: true, Error: "connection refused"},
	}
	if code := h.run("agent", "status"); code != exitOK {
		t.Fatal(h.stderr.String())
	}
	out := h.stdout.String()
	for _, want := range []string{"198.51.100.11:7010", "web1", "cpu=12.5", "load1=0.4", "disabled", "connection refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("agent status lacks %q:\n%s", want, out)
		}
	}
}

func TestHA(t *testing.T) {
	h := newHarness(t)
	h.fc.ha = ha.Status{Group: "web", Self: netip.MustParseAddrPort("198.51.100.3:7000"), State: ha.StateStandby, Priority: 100,
		Active:  netip.MustParseAddrPort("198.51.100.4:7000"),
		Peers:   []ha.PeerStatus{{Addr: netip.MustParseAddrPort("198.51.100.4:7000"), Alive: true, State: ha.StateActive, Priority: 200, LastHeard: time.Now()}},
		Refresh: 75 * time.Second, RefreshClosing: 2500 * time.Millisecond,
		Counters: ha.Counters{HeartbeatsReceived: 40, Rejected: map[string]uint64{"auth": 2}, RefreshRounds: 3, FlowsRefreshed: 1200}}
	if code := h.run("ha", "status"); code != exitOK {
		t.Fatal(h.stderr.String())
	}
	for _, want := range []string{"group web: this node 198.51.100.3:7000 is standby", "active: 198.51.100.4:7000", "198.51.100.4:7000  true   active", "rejected messages: auth 2",
		"refresh every 1m15s (closing flows every 2.5s): 3 rounds, 1200 flows refreshed"} {
		if !strings.Contains(h.stdout.String(), want) {
			t.Errorf("ha status lacks %q:\n%s", want, h.stdout.String())
		}
	}
	h = newHarness(t)
	h.fc.ha = ha.Status{Self: netip.MustParseAddrPort("198.51.100.3:7000")}
	if code := h.run("ha", "takeover"); code != exitOK {
		t.Fatal(h.stderr.String())
	}
	if !strings.HasPrefix(h.stdout.String(), "198.51.100.3:7000 is active") || h.fc.calls[0] != "HATakeover" {
		t.Errorf("takeover: %q %v", h.stdout.String(), h.fc.calls)
	}
}

func TestBGP(t *testing.T) {
	st := nd.BGPStatus{ASN: 64513, RouterID: "198.51.100.3",
		Peers: []nd.BGPPeer{{Address: "198.51.100.1", ASN: 64512, State: "established", Since: time.Now().Add(-time.Minute), HoldTime: 9 * time.Second, Advertised: 1}},
		VIPs: []nd.BGPVIP{
			{VIP: "198.51.100.100", Announced: true, MED: 10, Communities: []string{"64513:100"}},
			{VIP: "198.51.100.101", Reason: "no server can take new flows"},
		}}
	h := newHarness(t)
	h.fc.bgp = st
	if code := h.run("bgp", "status"); code != exitOK {
		t.Fatal(h.stderr.String())
	}
	for _, want := range []string{"as 64513, router id 198.51.100.3: announcing", "198.51.100.1  64512  established  1m0s", "198.51.100.100  announced", "64513:100", "withdrawn: no server can take new flows"} {
		if !strings.Contains(h.stdout.String(), want) {
			t.Errorf("bgp status lacks %q:\n%s", want, h.stdout.String())
		}
	}
	h = newHarness(t)
	h.fc.bgp = st
	if code := h.run("bgp", "drain"); code != exitOK || h.fc.calls[0] != "BGPDrain true" || !strings.Contains(h.stdout.String(), "drained") {
		t.Errorf("drain: %d %v\n%s%s", code, h.fc.calls, h.stdout.String(), h.stderr.String())
	}
	h = newHarness(t)
	if code := h.run("bgp", "undrain"); code != exitOK || h.fc.calls[0] != "BGPDrain false" {
		t.Errorf("undrain: %d %v", code, h.fc.calls)
	}
}
