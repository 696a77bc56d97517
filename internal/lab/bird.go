package lab

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// The router's BGP identity in the lab.
const (
	RouterASN = 64512
	// DispatcherASN is the dispatchers' AS: one AS for the group, as
	// anycast dispatchers usually are.
	DispatcherASN = 64513
)

// BIRDPeer is one BGP neighbour of the lab's router.
type BIRDPeer struct {
	// Name is the BIRD protocol's name: letters, digits, '_'.
	Name string
	Addr netip.Addr
	ASN  uint32
	// Password is the TCP MD5 key; "" for none.
	Password string
}

// BIRDOptions say how StartBIRD runs BIRD.
type BIRDOptions struct {
	// Dir holds the configuration, the control socket and the log.
	Dir   string
	Peers []BIRDPeer
	// HoldTime in seconds: 3 (BIRD's least) keeps the tests short; 0
	// means BIRD's default of 240.
	HoldTime int
}

// BIRD is the BIRD 2 daemon running in the lab's router namespace: it
// accepts the dispatchers' BGP sessions, takes their VIP routes and installs
// them in the router's kernel table, merged into one ECMP route when several
// dispatchers announce a VIP.
type BIRD struct {
	*Process
	conf, sock, log string
}

var birdConf = template.Must(template.New("bird").Parse(`# BIRD 2 configuration of the nd lab's router (generated)
log "{{.Log}}" all;
router id {{.RouterID}};

protocol device {
	scan time 10;
}

# VIP routes learnt by BGP go to the kernel; equal ones from several
# dispatchers become one multipath route.
protocol kernel kernel4 {
	ipv4 { import none; export all; };
	merge paths on;
}
protocol kernel kernel6 {
	ipv6 { import none; export all; };
	merge paths on;
}
{{range .Peers}}
protocol bgp {{.Name}} {
	local {{.Local}} as {{$.ASN}};
	neighbor {{.Addr}} as {{.ASN}};
{{- if $.HoldTime}}
	hold time {{$.HoldTime}};
	keepalive time 1;
{{- end}}
	connect retry time 1;
	error wait time 1, 5;
{{- if .Password}}
	password "{{.Password}}";
{{- end}}
	{{.Family}} { import all; export none; };
}
{{end}}`))

// StartBIRD writes BIRD's configuration into o.Dir and runs
// `bird -f -c CONF -s SOCK` in the router's namespace; it returns once
// BIRD answers on its control socket.
func (l *Lab) StartBIRD(ctx context.Context, o BIRDOptions) (*BIRD, error) {
	if l.Router == nil {
		return nil, fmt.Errorf("%w: BIRD needs Options.Router", ErrBadOptions)
	}
	b := &BIRD{
		conf: filepath.Join(o.Dir, "bird.conf"),
		sock: filepath.Join(o.Dir, "bird.ctl"),
		log:  filepath.Join(o.Dir, "bird.log"),
	}
	if err := b.write(l, o); err != nil {
		return nil, err
	}
	cmd := l.Router.NS.Command(context.Background(), "bird", "-f", "-c", b.conf, "-s", b.sock, "-P", filepath.Join(o.Dir, "bird.pid"))
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	var err error
	if b.Process, err = StartProcess("bird", cmd); err != nil {
		return nil, fmt.Errorf("start bird: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := b.Show(ctx, "status")
		if err == nil {
			return b, nil
		}
		if b.Exited() {
			return nil, fmt.Errorf("bird exited: %v: %s", b.Err(), bytes.TrimSpace(stderr.Bytes()))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			b.Stop()
			return nil, fmt.Errorf("bird did not answer on %s: %w", b.sock, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *BIRD) write(l *Lab, o BIRDOptions) error {
	type peer struct {
		BIRDPeer
		Local  netip.Addr
		Family string
	}
	data := struct {
		Log      string
		RouterID netip.Addr
		ASN      uint32
		HoldTime int
		Peers    []peer
	}{Log: b.log, RouterID: l.Router.Addr4, ASN: RouterASN, HoldTime: o.HoldTime}
	for _, p := range o.Peers {
		pp := peer{BIRDPeer: p, Local: l.Router.Addr4, Family: "ipv4"}
		if p.Addr.Is6() {
			pp.Local, pp.Family = l.Router.Addr6, "ipv6"
		}
		data.Peers = append(data.Peers, pp)
	}
	var buf bytes.Buffer
	if err := birdConf.Execute(&buf, data); err != nil {
		return err
	}
	return os.WriteFile(b.conf, buf.Bytes(), 0o600)
}

// Show runs `birdc -s SOCK show ARGS...` and returns its output.
func (b *BIRD) Show(ctx context.Context, args ...string) (string, error) {
	return b.birdc(ctx, append([]string{"show"}, args...)...)
}

func (b *BIRD) birdc(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "birdc", append([]string{"-s", b.sock}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// RouteAll is `birdc show route all for PREFIX`: every route BIRD has to
// the VIP, with its attributes (BGP.med, BGP.community, ...).
func (b *BIRD) RouteAll(ctx context.Context, vip netip.Addr) (string, error) {
	return b.Show(ctx, "route", "all", "for", netip.PrefixFrom(vip, vip.BitLen()).String())
}

// Established returns the names of the BGP protocols whose session is
// established (`birdc show protocols`).
func (b *BIRD) Established(ctx context.Context) ([]string, error) {
	out, err := b.Show(ctx, "protocols")
	if err != nil {
		return nil, err
	}
	var up []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[1] == "BGP" && f[len(f)-1] == "Established" {
			up = append(up, f[0])
		}
	}
	return up, nil
}

// LogTail returns the last n lines of BIRD's log.
func (b *BIRD) LogTail(n int) string { return FileTail(b.log, n, "\n") }

// Stop ends BIRD (SIGTERM, then SIGKILL after 5 s) and waits for it.
func (b *BIRD) Stop() error {
	return b.Process.Stop(syscall.SIGTERM, 5*time.Second)
}
