package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
key_file: /etc/nd/agent.key
commands:
  - name: queue_depth
    argv: ["/usr/local/bin/queue-depth", "--now"]
  - name: short
    argv: [echo, "1"]
    interval: 2s
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != DefaultListen || cfg.MaxClockSkew != DefaultMaxClockSkew || cfg.ReplayCacheSize != DefaultReplayCacheSize ||
		cfg.SampleInterval != DefaultSampleInterval || cfg.ProcRoot != DefaultProcRoot {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	c0, c1 := cfg.Commands[0], cfg.Commands[1]
	if c0.Interval != DefaultCommandInterval || c0.Timeout != DefaultCommandTimeout || len(c0.Argv) != 2 {
		t.Errorf("command 0: %+v", c0)
	}
	if c1.Interval != 2*time.Second || c1.Timeout != 2*time.Second {
		t.Errorf("command 1: timeout should default to min(5s, interval): %+v", c1)
	}
}

func TestParseConfigErrors(t *testing.T) {
	cases := []struct{ name, yaml, want string }{
		{"unknown top-level field", "key_file: k\nlisten_port: 1\n", "line 2: unknown field listen_port"},
		{"unknown command field", "key_file: k\ncommands:\n  - name: a\n    argv: [x]\n    shell: true\n", "line 5: unknown field shell"},
		{"unknown tls field", "tls: {cert_file: a, key_file: b, client_ca_file: c, ca: d}\n", "unknown field ca"},
		{"duration without unit", "key_file: k\nsample_interval: 5\n", "needs a unit"},
		{"no auth", "listen: 127.0.0.1:1\n", "no authentication"},
		{"bad listen", "key_file: k\nlisten: localhost:1\n", "listen"},
		{"tls incomplete", "tls: {cert_file: a}\n", "all required"},
		{"skew too small", "key_file: k\nmax_clock_skew: 10ms\n", "max_clock_skew"},
		{"replay cache tiny", "key_file: k\nreplay_cache_size: 2\n", "replay_cache_size"},
		{"bad name", "key_file: k\ncommands: [{name: Bad-Name, argv: [x]}]\n", "line 2: commands[0].name: \"Bad-Name\""},
		{"standard name", "key_file: k\ncommands: [{name: cpu, argv: [x]}]\n", "standard metric"},
		{"duplicate name", "key_file: k\ncommands: [{name: a, argv: [x]}, {name: a, argv: [y]}]\n", "used twice"},
		{"empty argv", "key_file: k\ncommands: [{name: a, argv: []}]\n", "argv"},
		{"timeout above interval", "key_file: k\ncommands: [{name: a, argv: [x], interval: 1s, timeout: 2s}]\n", "timeout"},
		{"negative interval", "key_file: k\ncommands: [{name: a, argv: [x], interval: -1s}]\n", "interval"},
		{"two documents", "key_file: k\n---\nkey_file: j\n", "more than one"},
		{"syntax", "key_file: [\n", "line"},
		{"wrong type", "key_file: k\ncommands: {name: a}\n", "cannot unmarshal"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrConfig) {
				t.Errorf("got %v; want an ErrConfig containing %q", err, c.want)
			}
		})
	}
}

func TestLoadConfigNamesFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte("key_file: k\nbogus: 1\nlisten: nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadConfig(p)
	if err == nil || !strings.HasPrefix(err.Error(), p+": line 3") && !strings.HasPrefix(err.Error(), p+": line 2") {
		t.Fatalf("LoadConfig: %v", err)
	}
	if _, err := LoadConfig(p + ".missing"); !errors.Is(err, ErrConfig) {
		t.Errorf("missing file: %v", err)
	}
}

// TestParseConfigLines checks that validation problems name the line of
// the offending field, or of its command when the field was left out.
func TestParseConfigLines(t *testing.T) {
	_, err := ParseConfig([]byte(`key_file: k
sample_interval: 1h
commands:
  - name: ok
    argv: [x]
  - name: ok
    argv: []
    interval: 1s
    timeout: 2s
  - argv: [y]
`))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		"line 2: sample_interval: 1h0m0s",
		"line 6: commands[1].name: \"ok\" used twice",
		"line 7: commands[1].argv",
		"line 9: commands[1].timeout",
		"line 10: commands[2].name: \"\"",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("no %q in\n%v", want, err)
		}
	}
}
