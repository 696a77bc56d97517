package daemon

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/ifaddr"
	"github.com/nd-dispatcher/nd/internal/keyfile"
	"github.com/nd-dispatcher/nd/internal/nd"
)

// Check runs every check the daemon runs on a configuration before it
// accepts it, without a daemon: validation, then the machine (the files
// it names can be read and are private where they must be, and its
// interfaces exist, no VIP is a connected network's broadcast address).
// `ndd --check` is this; New, Reload and Apply refuse whatever it refuses.
// A nil ifaces means net.InterfaceByName; nil networks, the machine's.
func Check(cfg *config.Config, ifaces Interfaces, networks Networks) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %w", nd.ErrRejected, err)
	}
	var errs []error
	if cfg.Agents != nil {
		// A key or certificate that cannot be read refuses the whole
		// configuration, rather than leaving the servers' host metrics
		// disabled (and the servers out) after it was applied.
		cl, err := newAgentClient(cfg.Agents)
		if err != nil {
			errs = append(errs, err)
		} else {
			cl.Close()
		}
	}
	if _, err := cfg.API.ReadToken(); err != nil {
		errs = append(errs, err)
	}
	if cfg.API.TLSCert != "" {
		if _, err := tls.LoadX509KeyPair(cfg.API.TLSCert, cfg.API.TLSKey); err != nil {
			errs = append(errs, fmt.Errorf("api.tls_cert/tls_key: %w", err))
		}
	}
	if err := managerSettings(cfg.Manager).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("manager: %w", err))
	}
	if cfg.HA != nil {
		if key, err := keyfile.Load(cfg.HA.KeyFile, ha.MinKeyLen); err != nil {
			errs = append(errs, fmt.Errorf("ha.key_file: %w", err))
		} else if err := haConfig(cfg, key).Validate(); err != nil {
			errs = append(errs, fmt.Errorf("ha: %w", err))
		}
	}
	if ifaces == nil {
		ifaces = defaultInterfaces
	}
	err := cfg.CheckInterfaces(func(name string) error {
		_, err := ifaces(name)
		return err
	})
	if err != nil {
		errs = append(errs, err)
	}
	if networks == nil {
		networks = connectedNetworks
	}
	if nets, err := networks(); err != nil {
		errs = append(errs, fmt.Errorf("the connected networks: %w", err))
	} else if err := cfg.CheckVIPs(nets); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", nd.ErrRejected, errors.Join(errs...))
	}
	return nil
}

// Networks lists the networks the dispatcher is connected to: its
// interfaces' addresses with their prefix lengths.
type Networks func() ([]netip.Prefix, error)

// connectedNetworks is every interface's addresses in the daemon's
// namespace.
func connectedNetworks() ([]netip.Prefix, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	return ifaddr.Prefixes(addrs), nil
}
