package agent

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/nd-dispatcher/nd/internal/yamlwalk"
)

// Config is the agent's own configuration file. docs/AGENT.md documents
// every field and its default.
type Config struct {
	// Listen is the address and port to serve on.
	Listen string `yaml:"listen"`
	// Host is the name put in reports; empty means the machine's host name.
	Host string `yaml:"host"`
	// KeyFile holds the shared key; with it every request and response
	// carries an HMAC.
	KeyFile string `yaml:"key_file"`
	// TLS, when set, makes the agent serve HTTPS and demand a client
	// certificate signed by ClientCAFile.
	TLS *TLSConfig `yaml:"tls"`
	// MaxClockSkew is how far a request's timestamp may be from the
	// agent's clock.
	MaxClockSkew time.Duration `yaml:"max_clock_skew"`
	// ReplayCacheSize bounds the nonces remembered.
	ReplayCacheSize int `yaml:"replay_cache_size"`
	// SampleInterval is how often the host metrics are sampled; CPU
	// utilisation is measured over this period.
	SampleInterval time.Duration `yaml:"sample_interval"`
	// ProcRoot is where procfs is mounted.
	ProcRoot string `yaml:"proc_root"`
	// Commands are the operator's own metrics.
	Commands []Command `yaml:"commands"`
}

// TLSConfig names the files for mutual TLS.
type TLSConfig struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// Command is an operator-defined metric: argv runs every Interval and its
// standard output, one number, is the metric's value.
type Command struct {
	Name     string        `yaml:"name"`
	Argv     []string      `yaml:"argv"`
	Interval time.Duration `yaml:"interval"`
	Timeout  time.Duration `yaml:"timeout"`
}

// Defaults.
const (
	DefaultListen          = "0.0.0.0:7431"
	DefaultMaxClockSkew    = 30 * time.Second
	DefaultReplayCacheSize = 65536
	DefaultSampleInterval  = 2 * time.Second
	DefaultProcRoot        = "/proc"
	DefaultCommandInterval = 10 * time.Second
	DefaultCommandTimeout  = 5 * time.Second

	maxCommands = 64
)

// ErrConfig is what every *ConfigError matches with errors.Is.
var ErrConfig = errors.New("invalid agent config")

// ConfigError lists everything wrong with a configuration, one problem a
// line, each prefixed with the file (when known) and the line (when the
// YAML decoder knows it) or the field.
type ConfigError struct {
	File     string
	Problems []string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		if e.File != "" {
			b.WriteString(e.File + ": ")
		}
		b.WriteString(p)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrConfig }

// LoadConfig reads and validates a configuration file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, &ConfigError{File: path, Problems: []string{err.Error()}}
	}
	cfg, err := ParseConfig(b)
	var ce *ConfigError
	if errors.As(err, &ce) {
		ce.File = path
	}
	return cfg, err
}

// ParseConfig decodes a configuration strictly (unknown fields are
// errors, reported with their line), fills in defaults and validates it.
func ParseConfig(data []byte) (*Config, error) {
	w := yamlwalk.New()
	var cfg Config
	if root, ok := w.Document(data, "more than one YAML document"); ok && root != nil {
		readConfig(w, &cfg, root)
	}
	if len(w.Problems) > 0 {
		e := &ConfigError{}
		for _, p := range w.Problems {
			e.Problems = append(e.Problems, walkProblem(p))
		}
		return nil, e
	}
	cfg.SetDefaults()
	probs := cfg.problems()
	if len(probs) == 0 {
		return &cfg, nil
	}
	e := &ConfigError{}
	for _, p := range probs {
		msg := p.String()
		if at, ok := lineOf(w.At, pathString(p.path)); ok {
			msg = fmt.Sprintf("line %d: %s", at, msg)
		}
		e.Problems = append(e.Problems, msg)
	}
	return nil, e
}

// readConfig reads the document's root mapping into c.
func readConfig(w *yamlwalk.Walker, c *Config, root *yaml.Node) {
	f, done, ok := w.Fields("", root, "listen", "host", "key_file", "tls", "max_clock_skew", "replay_cache_size",
		"sample_interval", "proc_root", "commands")
	defer done()
	if !ok {
		return
	}
	w.StrField(f, "", "listen", &c.Listen)
	w.StrField(f, "", "host", &c.Host)
	w.StrField(f, "", "key_file", &c.KeyFile)
	if n := f["tls"]; n != nil {
		c.TLS = &TLSConfig{}
		f, done, _ := w.Fields("tls", n, "cert_file", "key_file", "client_ca_file")
		w.StrField(f, "tls", "cert_file", &c.TLS.CertFile)
		w.StrField(f, "tls", "key_file", &c.TLS.KeyFile)
		w.StrField(f, "tls", "client_ca_file", &c.TLS.ClientCAFile)
		done()
	}
	w.DurField(f, "", "max_clock_skew", &c.MaxClockSkew)
	yamlwalk.Integer(w, f, "", "replay_cache_size", 0, math.MaxInt32, &c.ReplayCacheSize)
	w.DurField(f, "", "sample_interval", &c.SampleInterval)
	w.StrField(f, "", "proc_root", &c.ProcRoot)
	if n := f["commands"]; n != nil {
		c.Commands = yamlwalk.ListOf(w, "commands", n, func(p string, n *yaml.Node) Command {
			var cmd Command
			f, done, _ := w.Fields(p, n, "name", "argv", "interval", "timeout")
			defer done()
			w.StrField(f, p, "name", &cmd.Name)
			if n := f["argv"]; n != nil {
				cmd.Argv = w.Strings(yamlwalk.Join(p, "argv"), n)
			}
			w.DurField(f, p, "interval", &cmd.Interval)
			w.DurField(f, p, "timeout", &cmd.Timeout)
			return cmd
		})
	}
}

// walkProblem words a problem of reading the file as the agent always has:
// "line 5: unknown field shell", "line 3: commands: cannot unmarshal: want
// a list, got a mapping".
func walkProblem(p yamlwalk.Problem) string {
	msg := p.Msg
	switch p.Kind {
	case yamlwalk.UnknownField:
		return fmt.Sprintf("line %d: unknown field %s%s", p.Line, p.Key, strings.TrimPrefix(msg, "unknown field"))
	case yamlwalk.WrongType:
		msg = "cannot unmarshal: " + msg
	case yamlwalk.NoUnit:
		msg += " (a duration needs a unit)"
	}
	if p.Path != "" {
		msg = p.Path + ": " + msg
	}
	if p.Line > 0 {
		msg = fmt.Sprintf("line %d: %s", p.Line, msg)
	}
	return msg
}

// SetDefaults fills in every unset field with its default. ParseConfig
// calls it; a program that builds a Config itself calls it before New.
func (c *Config) SetDefaults() {
	c.Listen = cmp.Or(c.Listen, DefaultListen)
	c.MaxClockSkew = cmp.Or(c.MaxClockSkew, DefaultMaxClockSkew)
	c.ReplayCacheSize = cmp.Or(c.ReplayCacheSize, DefaultReplayCacheSize)
	c.SampleInterval = cmp.Or(c.SampleInterval, DefaultSampleInterval)
	c.ProcRoot = cmp.Or(c.ProcRoot, DefaultProcRoot)
	for i := range c.Commands {
		cmd := &c.Commands[i]
		cmd.Interval = cmp.Or(cmd.Interval, DefaultCommandInterval)
		cmd.Timeout = cmp.Or(cmd.Timeout, min(DefaultCommandTimeout, cmd.Interval))
	}
}

// Validate checks a configuration with defaults filled in. It does not
// open the files it names; New does.
func (c *Config) Validate() error {
	probs := c.problems()
	if len(probs) == 0 {
		return nil
	}
	e := &ConfigError{}
	for _, p := range probs {
		e.Problems = append(e.Problems, p.String())
	}
	return e
}

// problem is one thing wrong with a configuration, at a path of mapping
// keys and sequence indices.
type problem struct {
	path []any // string keys, int indices
	msg  string
}

func (p problem) String() string {
	if len(p.path) == 0 {
		return p.msg
	}
	return pathString(p.path) + ": " + p.msg
}

func pathString(path []any) string {
	var b strings.Builder
	for _, el := range path {
		switch v := el.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", v)
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(v)
		}
	}
	return b.String()
}

func (c *Config) problems() []problem {
	var probs []problem
	bad := func(path []any, format string, args ...any) {
		probs = append(probs, problem{path, fmt.Sprintf(format, args...)})
	}
	if _, err := netip.ParseAddrPort(c.Listen); err != nil {
		bad([]any{"listen"}, "%q: want IP:port, e.g. %s (%v)", c.Listen, DefaultListen, err)
	}
	if len(c.Host) > maxHostLen || !printable(c.Host) {
		bad([]any{"host"}, "%q: want at most %d printable characters", c.Host, maxHostLen)
	}
	if c.KeyFile == "" && c.TLS == nil {
		bad(nil, "no authentication: set key_file, tls, or both")
	}
	if c.TLS != nil {
		if c.TLS.CertFile == "" || c.TLS.KeyFile == "" || c.TLS.ClientCAFile == "" {
			bad([]any{"tls"}, "cert_file, key_file and client_ca_file are all required")
		}
	}
	if c.MaxClockSkew < time.Second || c.MaxClockSkew > 10*time.Minute {
		bad([]any{"max_clock_skew"}, "%v: want 1s to 10m", c.MaxClockSkew)
	}
	if c.ReplayCacheSize < 16 || c.ReplayCacheSize > 1<<22 {
		bad([]any{"replay_cache_size"}, "%d: want 16 to %d", c.ReplayCacheSize, 1<<22)
	}
	if c.SampleInterval < 100*time.Millisecond || c.SampleInterval > 10*time.Minute {
		bad([]any{"sample_interval"}, "%v: want 100ms to 10m", c.SampleInterval)
	}
	if len(c.Commands) > maxCommands {
		bad([]any{"commands"}, "%d commands, limit %d", len(c.Commands), maxCommands)
	}
	var names []string
	for i, cmd := range c.Commands {
		at := func(field string) []any { return []any{"commands", i, field} }
		switch {
		case !ValidMetricName(cmd.Name):
			bad(at("name"), "%q: want a lowercase letter then up to 62 of [a-z0-9_]", cmd.Name)
		case slices.Contains(StandardMetrics, cmd.Name):
			bad(at("name"), "%q is a standard metric", cmd.Name)
		case slices.Contains(names, cmd.Name):
			bad(at("name"), "%q used twice", cmd.Name)
		}
		names = append(names, cmd.Name)
		if len(cmd.Argv) == 0 || cmd.Argv[0] == "" {
			bad(at("argv"), "want the program and its arguments, e.g. [\"/usr/local/bin/queue-depth\"]")
		}
		if cmd.Interval < 100*time.Millisecond || cmd.Interval > 24*time.Hour {
			bad(at("interval"), "%v: want 100ms to 24h", cmd.Interval)
		}
		if cmd.Timeout <= 0 || cmd.Timeout > cmd.Interval {
			bad(at("timeout"), "%v: want more than 0 and at most the interval (%v)", cmd.Timeout, cmd.Interval)
		}
	}
	return probs
}

// lineOf returns the line where the value at path was read, or its nearest
// ancestor (a defaulted field was not read).
func lineOf(at map[string]yamlwalk.Pos, path string) (int, bool) {
	for path != "" {
		if p, ok := at[path]; ok {
			return p.Line, true
		}
		path = path[:max(0, strings.LastIndexAny(path, ".["))]
	}
	return 0, false
}
