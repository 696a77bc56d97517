package agent

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestDocExample keeps docs/AGENT.md honest: its example configuration
// parses, and the defaults it spells out are the code's.
func TestDocExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/AGENT.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	if !ok {
		t.Fatal("no yaml block in docs/AGENT.md")
	}
	example, _, _ := strings.Cut(rest, "```")
	cfg, err := ParseConfig([]byte(example))
	if err != nil {
		t.Fatalf("the documented example does not parse:\n%v", err)
	}
	if cfg.Listen != DefaultListen || cfg.MaxClockSkew != DefaultMaxClockSkew || cfg.ReplayCacheSize != DefaultReplayCacheSize ||
		cfg.SampleInterval != DefaultSampleInterval || cfg.ProcRoot != DefaultProcRoot {
		t.Errorf("the example's default values differ from the code's: %+v", cfg)
	}
	if len(cfg.Commands) != 2 || cfg.Commands[1].Timeout != 5*time.Second || cfg.Commands[0].Argv[0] != "/usr/local/bin/queue-depth" {
		t.Errorf("commands: %+v", cfg.Commands)
	}
	for _, name := range append(append([]string{}, StandardMetrics...), statNames...) {
		if !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("docs/AGENT.md does not mention %q", name)
		}
	}
}
