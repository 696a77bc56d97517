package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the operation failed
	exitUsage = 2 // the command line was wrong
)

// Client is what ndctl needs of ndd's control API; *api.Client is the real
// one, and tests give a fake.
type Client interface {
	Health() error
	Status() (nd.Status, error)
	Config() ([]byte, error)
	ApplyConfig(yaml []byte) (string, error)
	Reload() (string, error)
	AddCluster(vip string, ports ...api.PortRequest) (string, error)
	RemoveCluster(vip string) (string, error)
	AddPort(vip string, p api.PortRequest) (string, error)
	RemovePort(vip string, port uint16, proto string) (string, error)
	AddServer(vip string, port uint16, proto string, s api.ServerRequest) (string, error)
	SetServer(vip string, port uint16, proto, addr string, p api.ServerPatch) (string, error)
	RemoveServer(vip string, port uint16, proto, addr string) (string, error)
	Events(ctx context.Context, follow bool, fn func(nd.Event) error) error
	ManagerReport() (api.ManagerResponse, error)
	SetManager(p api.ManagerPatch) (string, error)
	Advisors() ([]advisor.Status, error)
	Agents() ([]api.AgentStatus, error)
	HAStatus() (ha.Status, error)
	HATakeover() (ha.Status, error)
	BGPStatus() (nd.BGPStatus, error)
	BGPDrain(drain bool) (nd.BGPStatus, error)
	Flows(q api.FlowQuery) (api.FlowsResponse, error)
	Close()
}

// env is everything a command touches outside itself. main fills it with
// the real things; tests with buffers and fakes.
type env struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	getenv         func(string) string
	// dial returns a client of the API at target (a socket path or an
	// http(s):// URL).
	dial func(target, token string) (Client, error)
	// terminal says stdout is a terminal: live views redraw in place.
	terminal bool
	// tick is the refresh period of live views.
	tick time.Duration
	// lab is what `ndctl lab` needs beyond the API.
	lab labEnv
}

// session is one invocation: the environment, the global flags, and the
// command being run.
type session struct {
	*env
	socket, url, token string
	json               bool
	cmd                *command
	// onHelp, when set, is given the flag set of a leaf command whose
	// help is printed: how `ndctl completion` learns every command's flags.
	onHelp func(*flag.FlagSet)
}

// command is a node of the command tree: a group (with subs) or a leaf
// (with run).
type command struct {
	name    string
	args    string // the positional arguments, for the usage line
	summary string // one line, for listings
	help    string // paragraphs, for `ndctl help COMMAND`
	run     func(ctx context.Context, s *session, args []string) error
	subs    []*command
	parent  *command
	// read marks commands that print data, for which --json applies.
	read bool
}

func (c *command) path() string {
	if c.parent == nil || c.parent.name == "" {
		return c.name
	}
	return c.parent.path() + " " + c.name
}

// usageError is a mistake on the command line: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// errHelp ends a command that printed its help.
var errHelp = flag.ErrHelp

// run runs ndctl with args (without the program name) and returns the exit
// code.
func run(ctx context.Context, e *env, args []string) int {
	root := commandTree()
	s := &session{env: e, cmd: root}
	fs := s.flagSet()
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			s.overview(e.stdout)
			return exitOK
		}
		return s.fail(usagef("%v", err))
	}
	args = fs.Args()
	if len(args) == 0 {
		s.overview(e.stderr)
		return exitUsage
	}
	cmd, rest, err := root.find(args)
	if err != nil {
		return s.fail(err)
	}
	s.cmd = cmd
	if cmd.run == nil {
		// A group: `ndctl cluster` or `ndctl cluster -h`.
		if len(rest) > 0 && isHelpFlag(rest[0]) {
			cmd.groupHelp(e.stdout)
			return exitOK
		}
		if len(rest) == 0 {
			return s.fail(usagef("missing subcommand: %s", strings.Join(cmd.subNames(), ", ")))
		}
		return s.fail(usagef("unknown subcommand %q: want %s", rest[0], strings.Join(cmd.subNames(), ", ")))
	}
	return s.fail(cmd.run(ctx, s, rest))
}

func isHelpFlag(a string) bool {
	return a == "-h" || a == "--help" || a == "-help"
}

// find walks the tree along args and returns the deepest command named and
// the arguments left.
func (c *command) find(args []string) (*command, []string, error) {
	cur := c
	for len(args) > 0 && cur.run == nil {
		var next *command
		for _, sc := range cur.subs {
			if sc.name == args[0] {
				next = sc
			}
		}
		if next == nil {
			if cur == c {
				return nil, nil, usagef("unknown command %q (see 'ndctl help')", args[0])
			}
			return cur, args, nil
		}
		cur, args = next, args[1:]
	}
	return cur, args, nil
}

func (c *command) subNames() []string {
	var n []string
	for _, sc := range c.subs {
		n = append(n, sc.name)
	}
	return n
}

// fail prints err, if any, as one line and returns the exit code.
func (s *session) fail(err error) int {
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &ue):
		where := "ndctl"
		if s.cmd != nil && s.cmd.name != "" {
			where += " " + s.cmd.path()
			fmt.Fprintf(s.stderr, "%s: %s (see 'ndctl help %s')\n", where, oneLine(ue.msg), s.cmd.path())
		} else {
			fmt.Fprintf(s.stderr, "%s: %s (see 'ndctl help')\n", where, oneLine(ue.msg))
		}
		return exitUsage
	default:
		where := "ndctl"
		if s.cmd != nil && s.cmd.name != "" {
			where += " " + s.cmd.path()
		}
		fmt.Fprintf(s.stderr, "%s: %s\n", where, oneLine(s.explain(err)))
		return exitError
	}
}

// explain turns an error into what an operator should read: the server's
// own message for an API error, the failed dial for an unreachable ndd.
func (s *session) explain(err error) string {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Message
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return fmt.Sprintf("cannot reach ndd at %s: %v (is ndd running? see --socket, --url)", s.target(), oe)
	}
	var ce config.Errors
	if errors.As(err, &ce) && len(ce) > 1 {
		return fmt.Sprintf("%v (and %d more problems)", ce[0], len(ce)-1)
	}
	return err.Error()
}

// oneLine keeps the first line of a message, noting how many follow.
func oneLine(msg string) string {
	msg = strings.TrimSpace(msg)
	first, rest, ok := strings.Cut(msg, "\n")
	if !ok {
		return msg
	}
	return fmt.Sprintf("%s (and %d more lines)", strings.TrimSpace(first), strings.Count(rest, "\n")+1)
}

// Global flags, accepted before the command and after it.
var globalFlagNames = []string{"socket", "url", "token", "json"}

// flagSet returns a flag set with the global flags, bound to s.
func (s *session) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("ndctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	socket := s.getenv("ND_SOCKET")
	if socket == "" {
		socket = config.DefaultSocket
	}
	if s.socket == "" {
		s.socket = socket
	}
	if s.token == "" {
		s.token = s.getenv("ND_TOKEN")
	}
	fs.StringVar(&s.socket, "socket", s.socket, "ndd's API socket `PATH` (default $ND_SOCKET, else "+config.DefaultSocket+")")
	fs.StringVar(&s.url, "url", s.url, "ndd's TCP API `URL`, http(s)://host:port, instead of the socket")
	fs.StringVar(&s.token, "token", s.token, "bearer `TOKEN` for --url (default $ND_TOKEN)")
	fs.BoolVar(&s.json, "json", s.json, "print JSON")
	return fs
}

// target is where the client connects: --url, else --socket.
func (s *session) target() string {
	if s.url != "" {
		return s.url
	}
	return s.socket
}

func (s *session) client() (Client, error) {
	c, err := s.dial(s.target(), s.token)
	if err != nil {
		return nil, fmt.Errorf("connect to ndd: %w", err)
	}
	return c, nil
}

// readClient is the start of every read command: flags, no positional
// arguments, and a connection to ndd.
func (s *session) readClient(fs *flag.FlagSet, args []string) (Client, error) {
	if _, err := s.parse(fs, args, 0, 0); err != nil {
		return nil, err
	}
	return s.client()
}

// parse parses a leaf command's flags, which may come before, between or
// after its positional arguments, and checks that between min and max
// (-1: any number) positional arguments were given. On -h it prints the
// command's help to stdout and returns errHelp.
func (s *session) parse(fs *flag.FlagSet, args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				s.leafHelp(s.stdout, fs)
				return nil, errHelp
			}
			return nil, usagef("%v", err)
		}
		left := fs.Args()
		// Parse stops at the first positional argument, or after "--",
		// which makes everything after it positional.
		if used := len(args) - len(left); used > 0 && args[used-1] == "--" {
			pos = append(pos, left...)
			break
		}
		if len(left) == 0 {
			break
		}
		pos = append(pos, left[0])
		args = left[1:]
	}
	switch {
	case len(pos) < min:
		return nil, usagef("missing %s", missingArgs(s.cmd.args, len(pos)))
	case max >= 0 && len(pos) > max:
		return nil, usagef("unexpected argument %q", pos[max])
	}
	return pos, nil
}

// missingArgs names the positional arguments from index have on.
func missingArgs(synopsis string, have int) string {
	var names []string
	for _, w := range strings.Fields(synopsis) {
		if strings.HasPrefix(w, "[") {
			break
		}
		names = append(names, w)
	}
	if have < len(names) {
		return strings.Join(names[have:], " ")
	}
	return "arguments"
}

// newFlags returns the flag set of the current leaf command, with the
// global flags.
func (s *session) newFlags() *flag.FlagSet {
	fs := s.flagSet()
	fs.Init("ndctl "+s.cmd.path(), flag.ContinueOnError)
	fs.Usage = func() {}
	return fs
}

// Argument parsing shared by the commands.

func parseVIP(s string) (string, error) {
	a, err := parseAddr("VIP", s)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

func parseServerAddr(s string) (string, error) {
	a, err := parseAddr("server address", s)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

// parseAddr reads an IP address given as what.
func parseAddr(what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, usagef("%s %q is not an IP address", what, s)
	}
	return a, nil
}

// parsePort reads PORT or PORT/PROTO; proto is "" when not given.
func parsePort(s string) (port uint16, proto string, err error) {
	num, proto, _ := strings.Cut(s, "/")
	n, perr := strconv.ParseUint(num, 10, 16)
	if perr != nil || n == 0 {
		return 0, "", usagef("port %q is not a number from 1 to 65535", s)
	}
	if proto != "" {
		if proto, err = parseProto(proto); err != nil {
			return 0, "", err
		}
	}
	return uint16(n), proto, nil
}

func parseProto(s string) (string, error) {
	p := strings.ToLower(s)
	if p != "tcp" && p != "udp" {
		return "", usagef("protocol %q: want tcp or udp", s)
	}
	return p, nil
}

// portAndProto combines a PORT[/PROTO] argument with --protocol.
func portAndProto(arg, flagProto string, flagSet bool) (uint16, string, error) {
	port, proto, err := parsePort(arg)
	if err != nil {
		return 0, "", err
	}
	fp, err := parseProto(flagProto)
	if err != nil {
		return 0, "", err
	}
	switch {
	case proto == "":
		proto = fp
	case flagSet && proto != fp:
		return 0, "", usagef("port %s conflicts with --protocol %s", arg, fp)
	}
	return port, proto, nil
}

// isSet reports whether the flag name was given.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}

// ifSet is v if the flag name was given, else nil: a patch's field.
func ifSet[T any](fs *flag.FlagSet, name string, v *T) *T {
	if isSet(fs, name) {
		return v
	}
	return nil
}

// help: the overview, group and leaf help.

func (s *session) overview(w io.Writer) {
	root := commandTree()
	fmt.Fprintf(w, "ndctl controls ndd, the nd dispatcher daemon, through its control API.\n\n")
	fmt.Fprintf(w, "usage: ndctl [global flags] COMMAND [ARGUMENTS] [flags]\n\ncommands:\n")
	for _, c := range root.subs {
		name := c.name
		if len(c.subs) > 0 {
			name += " " + strings.Join(c.subNames(), "|")
		} else if c.args != "" {
			name += " " + c.args
		}
		fmt.Fprintf(w, "  %-32s %s\n", name, c.summary)
	}
	fmt.Fprintf(w, "\nglobal flags (before or after the command):\n")
	printFlags(w, s.flagSet(), func(name string) bool { return true })
	fmt.Fprintf(w, "\nExit status: 0 done, 1 the operation failed, 2 the command line was wrong.\n")
	fmt.Fprintf(w, "Run 'ndctl help COMMAND' for a command's arguments and flags.\n")
}

func (c *command) groupHelp(w io.Writer) {
	fmt.Fprintf(w, "usage: ndctl %s %s ...\n\n", c.path(), strings.Join(c.subNames(), "|"))
	if c.help != "" {
		fmt.Fprintf(w, "%s\n\n", strings.TrimSpace(c.help))
	}
	fmt.Fprintf(w, "subcommands:\n")
	for _, sc := range c.subs {
		fmt.Fprintf(w, "  %-40s %s\n", sc.name+" "+sc.args, sc.summary)
	}
	fmt.Fprintf(w, "\nRun 'ndctl help %s SUBCOMMAND' for its flags.\n", c.path())
}

func (s *session) leafHelp(w io.Writer, fs *flag.FlagSet) {
	if s.onHelp != nil {
		s.onHelp(fs)
	}
	c := s.cmd
	line := "ndctl " + c.path()
	if c.args != "" {
		line += " " + c.args
	}
	fmt.Fprintf(w, "usage: %s [flags]\n\n%s\n", line, c.summary)
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.help))
	}
	isGlobal := func(name string) bool { return slices.Contains(globalFlagNames, name) }
	own := false
	fs.VisitAll(func(f *flag.Flag) { own = own || !isGlobal(f.Name) })
	if own {
		fmt.Fprintf(w, "\nflags:\n")
		printFlags(w, fs, func(name string) bool { return !isGlobal(name) })
	}
	if c.read {
		fmt.Fprintf(w, "\n--json prints JSON. ")
	} else {
		fmt.Fprintf(w, "\n")
	}
	fmt.Fprintf(w, "Global flags: --socket PATH, --url URL, --token TOKEN, --json (see 'ndctl help').\n")
}

func printFlags(w io.Writer, fs *flag.FlagSet, want func(string) bool) {
	fs.VisitAll(func(f *flag.Flag) {
		if !want(f.Name) {
			return
		}
		name, usage := flag.UnquoteUsage(f)
		head := "--" + f.Name
		if name != "" {
			head += " " + name
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" && !strings.Contains(usage, "default") {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  %-26s %s%s\n", head, usage, def)
	})
}

// helpCmd is `ndctl help [COMMAND...]`.
func helpCmd(ctx context.Context, s *session, args []string) error {
	fs := s.newFlags()
	args, err := s.parse(fs, args, 0, -1)
	if err != nil {
		return err
	}
	if len(args) == 0 {
		s.overview(s.stdout)
		return nil
	}
	root := commandTree()
	c, rest, err := root.find(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("no command %q", strings.Join(args, " "))
	}
	if c.run == nil {
		c.groupHelp(s.stdout)
		return nil
	}
	sub := &session{env: s.env, cmd: c}
	return c.run(ctx, sub, []string{"-h"})
}
