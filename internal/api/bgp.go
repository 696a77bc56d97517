package api

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/nd-dispatcher/nd/internal/nd"
)

func (s *Server) bgpStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.c.BGPStatus(r.Context())
	if err != nil {
		s.fail(w, r, "bgp status", noSection(err))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// bgpDrain withdraws every VIP (drain) or announces the servable ones
// again (undrain).
func (s *Server) bgpDrain(drain bool) http.HandlerFunc {
	what := "bgp undrain"
	if drain {
		what = "bgp drain"
	}
	return func(w http.ResponseWriter, r *http.Request) {
		st, err := s.c.BGPDrain(r.Context(), drain)
		if err != nil {
			s.fail(w, r, what, noSection(err))
			return
		}
		s.log.Info(what, "remote", remote(r))
		writeJSON(w, http.StatusOK, st)
	}
}

// noSection maps "no bgp section" and "no ha section" to 404.
func noSection(err error) error {
	if errors.Is(err, nd.ErrNoBGP) || errors.Is(err, nd.ErrNoHA) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

// BGPStatus reads the BGP speaker's sessions and routes.
func (c *Client) BGPStatus() (nd.BGPStatus, error) {
	var out nd.BGPStatus
	err := c.call(http.MethodGet, "/v1/bgp", nil, &out)
	return out, err
}

// BGPDrain withdraws every VIP and keeps them withdrawn (drain true), or
// lets the servable ones be announced again (false).
func (c *Client) BGPDrain(drain bool) (nd.BGPStatus, error) {
	path := "/v1/bgp/undrain"
	if drain {
		path = "/v1/bgp/drain"
	}
	var out nd.BGPStatus
	err := c.call(http.MethodPost, path, nil, &out)
	return out, err
}
