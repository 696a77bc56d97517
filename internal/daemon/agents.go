package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/nd-dispatcher/nd/internal/agent"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/manager"
)

// agents polls the host-metric agents of the configured servers and answers
// the manager's questions about them. The poller is rebuilt when the agents
// section changes, and its targets follow the servers.
type agents struct {
	mu      sync.Mutex
	ctx     context.Context // the daemon's Run context; nil before Run
	cfg     *config.Agents
	creds   [sha256.Size]byte // of the files cfg names (credentialsDigest)
	addrs   []netip.AddrPort
	tracker *agent.Tracker
	client  *agent.Client
	stop    context.CancelFunc
	done    chan struct{}

	taken time.Time
	snap  map[netip.AddrPort]agent.Status
}

// start records the daemon's context: pollers run under it.
func (a *agents) start(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ctx = ctx
	a.runLocked()
}

// close stops the poller and waits for it.
func (a *agents) close() {
	a.mu.Lock()
	stop, done := a.stop, a.done
	a.stop, a.done, a.tracker = nil, nil, nil
	a.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	if a.client != nil {
		a.client.Close()
	}
}

// set applies a configuration: a new poller when the agents section
// changed or a file it names was rewritten, new targets when the servers
// did.
func (a *agents) set(cfg *config.Config) error {
	var addrs []netip.AddrPort
	if cfg.Agents != nil {
		seen := map[netip.Addr]bool{}
		for _, p := range cfg.Ports() {
			for _, s := range p.Servers {
				if !seen[s.Address] {
					seen[s.Address] = true
					addrs = append(addrs, netip.AddrPortFrom(s.Address, cfg.Agents.Port))
				}
			}
		}
	}
	creds, err := credentialsDigest(cfg.Agents)
	if err != nil {
		return err
	}
	a.mu.Lock()
	if reflect.DeepEqual(a.cfg, cfg.Agents) && a.creds == creds {
		a.addrs = addrs
		if a.tracker != nil {
			a.tracker.Set(addrs)
		}
		a.mu.Unlock()
		return nil
	}
	a.mu.Unlock()
	var client *agent.Client
	var tracker *agent.Tracker
	if cfg.Agents != nil {
		var err error
		if client, err = newAgentClient(cfg.Agents); err != nil {
			return err
		}
		tracker, err = agent.NewTracker(agent.TrackerOptions{Client: client, Interval: cfg.Agents.Interval, DisableAfter: cfg.Agents.DisabledAfter})
		if err != nil {
			client.Close()
			return fmt.Errorf("agents: %w", err)
		}
		tracker.Set(addrs)
	}
	a.close()
	a.mu.Lock()
	defer a.mu.Unlock()
	if cfg.Agents != nil {
		c := *cfg.Agents
		a.cfg = &c
	} else {
		a.cfg = nil
	}
	a.creds = creds
	a.addrs, a.client, a.tracker, a.snap = addrs, client, tracker, nil
	a.runLocked()
	return nil
}

func (a *agents) runLocked() {
	if a.ctx == nil || a.tracker == nil || a.stop != nil {
		return
	}
	ctx, stop := context.WithCancel(a.ctx)
	done := make(chan struct{})
	a.stop, a.done = stop, done
	t := a.tracker
	go func() {
		defer close(done)
		t.Run(ctx)
	}()
}

// reading is the manager's Host function.
func (a *agents) reading(server netip.Addr) (manager.HostReading, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tracker == nil || a.cfg == nil {
		return manager.HostReading{}, false
	}
	if a.snap == nil || time.Since(a.taken) > 100*time.Millisecond {
		a.snap = a.tracker.Snapshot()
		a.taken = time.Now()
	}
	st, ok := a.snap[netip.AddrPortFrom(server, a.cfg.Port)]
	if !ok {
		return manager.HostReading{}, false
	}
	return manager.HostReading{Metrics: st.Report.Metrics, Disabled: st.Disabled, Err: st.Err}, true
}

// status lists every polled agent.
func (a *agents) status() map[netip.AddrPort]agent.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tracker == nil {
		return nil
	}
	return a.tracker.Snapshot()
}

// credentialsDigest digests the content of the files c names (shared key,
// certificate, key, CA), so that a reload after one was rewritten in place
// (a rotated key, a renewed certificate) builds a new poller with it.
func credentialsDigest(c *config.Agents) ([sha256.Size]byte, error) {
	h := sha256.New()
	if c != nil {
		for _, f := range []string{c.KeyFile, c.TLSCert, c.TLSKey, c.TLSCA} {
			if f == "" {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				return [sha256.Size]byte{}, fmt.Errorf("agents: %w", err)
			}
			sum := sha256.Sum256(b)
			h.Write([]byte(f))
			h.Write(sum[:])
		}
	}
	return [sha256.Size]byte(h.Sum(nil)), nil
}

// newAgentClient builds the poller's client from the agents section: a
// shared key, or mutual TLS.
func newAgentClient(c *config.Agents) (*agent.Client, error) {
	o := agent.ClientOptions{Timeout: c.Timeout}
	if c.KeyFile != "" {
		key, err := agent.LoadKeyFile(c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("agents.key_file: %w", err)
		}
		o.Key = key
	}
	if c.TLSCert != "" {
		cert, pool, err := agent.LoadMutualTLS(c.TLSCert, c.TLSKey, c.TLSCA, "agents.tls_cert/tls_key", "agents.tls_ca")
		if err != nil {
			return nil, err
		}
		o.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}
	}
	cl, err := agent.NewClient(o)
	if err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	return cl, nil
}

// AgentStatus lists every polled agent's state: its last report, when it
// came, and whether the server's host metrics are disabled.
func (d *Daemon) AgentStatus() map[netip.AddrPort]agent.Status {
	return d.hosts.status()
}
