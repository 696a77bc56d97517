package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
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

var unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// ParseConfig decodes a configuration strictly (unknown fields are
// errors, reported with their line), fills in defaults and validates it.
func ParseConfig(data []byte) (*Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			probs := make([]string, len(te.Errors))
			for i, p := range te.Errors {
				p = unknownField.ReplaceAllString(p, "unknown field $1")
				if strings.HasSuffix(p, "into time.Duration") {
					p += " (a duration needs a unit, e.g. 10s)"
				}
				probs[i] = p
			}
			return nil, &ConfigError{Problems: probs}
		}
		return nil, &ConfigError{Problems: []string{strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &ConfigError{Problems: []string{"more than one YAML document"}}
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.MaxClockSkew == 0 {
		c.MaxClockSkew = DefaultMaxClockSkew
	}
	if c.ReplayCacheSize == 0 {
		c.ReplayCacheSize = DefaultReplayCacheSize
	}
	if c.SampleInterval == 0 {
		c.SampleInterval = DefaultSampleInterval
	}
	if c.ProcRoot == "" {
		c.ProcRoot = DefaultProcRoot
	}
	for i := range c.Commands {
		if c.Commands[i].Interval == 0 {
			c.Commands[i].Interval = DefaultCommandInterval
		}
		if c.Commands[i].Timeout == 0 {
			c.Commands[i].Timeout = min(DefaultCommandTimeout, c.Commands[i].Interval)
		}
	}
}

// Validate checks a configuration with defaults filled in. It does not
// open the files it names; New does.
func (c *Config) Validate() error {
	var probs []string
	bad := func(format string, args ...any) {
		probs = append(probs, fmt.Sprintf(format, args...))
	}
	if _, err := netip.ParseAddrPort(c.Listen); err != nil {
		bad("listen %q: want IP:port, e.g. %s (%v)", c.Listen, DefaultListen, err)
	}
	if len(c.Host) > maxHostLen || !printable(c.Host) {
		bad("host %q: want at most %d printable characters", c.Host, maxHostLen)
	}
	if c.KeyFile == "" && c.TLS == nil {
		bad("no authentication: set key_file, tls, or both")
	}
	if c.TLS != nil {
		if c.TLS.CertFile == "" || c.TLS.KeyFile == "" || c.TLS.ClientCAFile == "" {
			bad("tls: cert_file, key_file and client_ca_file are all required")
		}
	}
	if c.MaxClockSkew < time.Second || c.MaxClockSkew > 10*time.Minute {
		bad("max_clock_skew %v: want 1s to 10m", c.MaxClockSkew)
	}
	if c.ReplayCacheSize < 16 || c.ReplayCacheSize > 1<<22 {
		bad("replay_cache_size %d: want 16 to %d", c.ReplayCacheSize, 1<<22)
	}
	if c.SampleInterval < 100*time.Millisecond || c.SampleInterval > 10*time.Minute {
		bad("sample_interval %v: want 100ms to 10m", c.SampleInterval)
	}
	if len(c.Commands) > maxCommands {
		bad("%d commands, limit %d", len(c.Commands), maxCommands)
	}
	var names []string
	for i, cmd := range c.Commands {
		where := fmt.Sprintf("commands[%d]", i)
		if cmd.Name != "" {
			where = fmt.Sprintf("commands[%d] (%s)", i, cmd.Name)
		}
		switch {
		case !ValidMetricName(cmd.Name):
			bad("%s: name %q: want a lowercase letter then up to 62 of [a-z0-9_]", where, cmd.Name)
		case slices.Contains(StandardMetrics, cmd.Name):
			bad("%s: name %q is a standard metric", where, cmd.Name)
		case slices.Contains(names, cmd.Name):
			bad("%s: name %q used twice", where, cmd.Name)
		}
		names = append(names, cmd.Name)
		if len(cmd.Argv) == 0 || cmd.Argv[0] == "" {
			bad("%s: argv: want the program and its arguments, e.g. [\"/usr/local/bin/queue-depth\"]", where)
		}
		if cmd.Interval < 100*time.Millisecond || cmd.Interval > 24*time.Hour {
			bad("%s: interval %v: want 100ms to 24h", where, cmd.Interval)
		}
		if cmd.Timeout <= 0 || cmd.Timeout > cmd.Interval {
			bad("%s: timeout %v: want more than 0 and at most the interval (%v)", where, cmd.Timeout, cmd.Interval)
		}
	}
	if len(probs) > 0 {
		return &ConfigError{Problems: probs}
	}
	return nil
}
