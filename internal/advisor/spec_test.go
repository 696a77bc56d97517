package advisor

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestSpecValidation(t *testing.T) {
	srv := netip.MustParseAddr("198.51.100.2")
	vip := netip.MustParseAddr("198.51.100.100")
	tgt := []Target{{Server: srv, Port: 80}}
	good := func() Spec { return Spec{Name: "web", Kind: KindTCP, Interval: time.Second, Targets: tgt} }
	with := func(f func(*Spec)) Spec { s := good(); f(&s); return s }
	dial := func(ctx context.Context, network, address string) (net.Conn, error) { return nil, errors.New("unused") }

	tests := []struct {
		name string
		spec Spec
		want string
	}{
		{"no name", with(func(s *Spec) { s.Name = "" }), "name is empty"},
		{"control char", with(func(s *Spec) { s.Name = "a\nb" }), "control characters"},
		{"no kind", with(func(s *Spec) { s.Kind = "" }), "kind is empty"},
		{"bad kind", with(func(s *Spec) { s.Kind = "icmp" }), `unknown kind "icmp"`},
		{"short interval", with(func(s *Spec) { s.Interval = 5 * time.Millisecond }), "shorter than 10ms"},
		{"negative interval", with(func(s *Spec) { s.Interval = -time.Second }), "shorter than"},
		{"timeout = interval", with(func(s *Spec) { s.Timeout = time.Second }), "timeout 1s must be shorter than the interval 1s"},
		{"negative timeout", with(func(s *Spec) { s.Timeout = -1 }), "negative"},
		{"negative retries", with(func(s *Spec) { s.Retries = -1 }), "retries -1 outside 0-10"},
		{"many retries", with(func(s *Spec) { s.Retries = 11 }), "retries 11"},
		{"negative rise", with(func(s *Spec) { s.Rise = -2 }), "rise -2"},
		{"huge fall", with(func(s *Spec) { s.Fall = 1000 }), "fall 1000"},
		{"bad mode", with(func(s *Spec) { s.Mode = "dsr" }), `unknown mode "dsr"`},
		{"http no path", with(func(s *Spec) { s.Kind = KindHTTP }), "http path is empty"},
		{"http relative path", with(func(s *Spec) { s.Kind = KindHTTP; s.HTTP.Path = "index.html" }), "must start with /"},
		{"http space in path", with(func(s *Spec) { s.Kind = KindHTTP; s.HTTP.Path = "/a b" }), "spaces"},
		{"http bad method", with(func(s *Spec) { s.Kind = KindHTTP; s.HTTP.Path = "/"; s.HTTP.Method = "GE T" }), "not a valid token"},
		{"http status low", with(func(s *Spec) { s.Kind = KindHTTP; s.HTTP.Path = "/"; s.HTTP.Status = 99 }), "status 99 outside 100-599"},
		{"http status high", with(func(s *Spec) { s.Kind = KindHTTPS; s.HTTP.Path = "/"; s.HTTP.Status = 600 }), "status 600"},
		{"http bad host", with(func(s *Spec) { s.Kind = KindHTTP; s.HTTP.Path = "/"; s.HTTP.Host = "a/b" }), "http host"},
		{"insecure on http", with(func(s *Spec) { s.Kind = KindHTTP; s.HTTP.Path = "/"; s.HTTP.Insecure = true }), "only applies to https"},
		{"http with command", with(func(s *Spec) { s.Kind = KindHTTP; s.HTTP.Path = "/"; s.Command = []string{"x"} }), "command is set"},
		{"tcp with http", with(func(s *Spec) { s.HTTP.Path = "/" }), "http options are set"},
		{"tcp with command", with(func(s *Spec) { s.Command = []string{"true"} }), "command is set"},
		{"custom no command", with(func(s *Spec) { s.Kind = KindCustom }), "command is empty"},
		{"custom empty argv0", with(func(s *Spec) { s.Kind = KindCustom; s.Command = []string{""} }), "command is empty"},
		{"custom vip", with(func(s *Spec) { s.Kind = KindCustom; s.Command = []string{"true"}; s.Mode = ModeVIP }), "mode vip is not possible"},
		{"no server", with(func(s *Spec) { s.Targets = []Target{{Port: 80}} }), "server address is missing"},
		{"port 0", with(func(s *Spec) { s.Targets = []Target{{Server: srv}} }), "port is 0"},
		{"addr set", with(func(s *Spec) {
			s.Targets = []Target{{Server: srv, Port: 80, Addr: netip.MustParseAddrPort("198.51.100.2:80")}}
		}), "leave it empty"},
		{"families", with(func(s *Spec) { s.Targets = []Target{{Server: srv, Port: 80, VIP: netip.MustParseAddr("2001:db8::1")}} }), "different address families"},
		{"vip mode no vip", with(func(s *Spec) { s.Mode = ModeVIP }), "needs the target's VIP"},
		{"vip mode own dial", with(func(s *Spec) { s.Mode = ModeVIP; s.Targets = []Target{{Server: srv, Port: 80, VIP: vip, Dial: dial}} }), "Target.Dial must be nil"},
		{"duplicate target", with(func(s *Spec) { s.Targets = []Target{tgt[0], tgt[0]} }), "listed twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.spec.normalize()
			if err == nil {
				t.Fatalf("normalize accepted %+v", tc.spec)
			}
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want ErrInvalidSpec containing %q", err, tc.want)
			}
			if tc.spec.Name != "" && !strings.Contains(err.Error(), "advisor "+tc.spec.Name) {
				t.Errorf("error %q does not name the advisor", err)
			}
		})
	}
}

func TestSpecDefaults(t *testing.T) {
	s, err := Spec{Name: "w", Kind: KindHTTPS, HTTP: HTTPSpec{Path: "/"},
		Targets: []Target{{Server: netip.MustParseAddr("198.51.100.2"), Port: 443, VIP: netip.MustParseAddr("198.51.100.100")}}}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if s.Interval != DefaultInterval || s.Timeout != DefaultInterval/2 || s.Rise != DefaultRise || s.Fall != DefaultFall ||
		s.Retries != 0 || s.Mode != ModeServer || s.HTTP.Method != "GET" {
		t.Errorf("defaults not applied: %+v", s)
	}
	if got := s.Targets[0].Addr.String(); got != "198.51.100.2:443" {
		t.Errorf("server-mode address %s, want the server's", got)
	}
	s, err = Spec{Name: "w", Kind: KindTCP, Mode: ModeVIP,
		Targets: []Target{{Server: netip.MustParseAddr("198.51.100.2"), Port: 443, VIP: netip.MustParseAddr("198.51.100.100")}}}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Targets[0].Addr.String(); got != "198.51.100.100:443" {
		t.Errorf("vip-mode address %s, want the VIP's", got)
	}
}

func TestSetRejectsAndKeeps(t *testing.T) {
	r := New(Options{})
	ok := Spec{Name: "a", Kind: KindTCP, Targets: []Target{{Server: netip.MustParseAddr("198.51.100.2"), Port: 80}}}
	if err := r.Set([]Spec{ok}); err != nil {
		t.Fatal(err)
	}
	err := r.Set([]Spec{ok, {Name: "b", Kind: "udp"}, {Name: "a", Kind: KindTCP}})
	if err == nil || !strings.Contains(err.Error(), `unknown kind "udp"`) || !strings.Contains(err.Error(), "advisor a is defined twice") {
		t.Fatalf("Set error %v, want both problems named", err)
	}
	if s := r.Snapshot(); len(s) != 1 || s[0].Advisor != "a" {
		t.Fatalf("a rejected Set changed the advisors: %+v", s)
	}
}

func TestLoadValue(t *testing.T) {
	for in, want := range map[string]time.Duration{"42": 42 * time.Millisecond, " 1.5\n": 1500 * time.Microsecond, "0": 0} {
		if got, ok := loadValue(in); !ok || got != want {
			t.Errorf("loadValue(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "ok", "-1", "NaN", "Inf", "1e300", "12 ms"} {
		if got, ok := loadValue(in); ok {
			t.Errorf("loadValue(%q) = %v, want not a number", in, got)
		}
	}
}

func TestRunTwice(t *testing.T) {
	r := New(Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- r.Run(ctx) }()
	go func() { done <- r.Run(ctx) }()
	// One of the two returns at once; the other runs until cancelled.
	first := <-done
	cancel()
	second := <-done
	if !errors.Is(first, ErrRunTwice) || second != nil {
		t.Errorf("two Runs returned %v then %v, want ErrRunTwice then nil", first, second)
	}
}
