package api

import (
	"net/http"

	"github.com/nd-dispatcher/nd/internal/ha"
)

func (s *Server) haStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.c.HAStatus()
	if err != nil {
		s.fail(w, r, "ha status", noSection(err))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) haTakeover(w http.ResponseWriter, r *http.Request) {
	if err := s.c.HATakeover(r.Context()); err != nil {
		s.fail(w, r, "ha takeover", noSection(err))
		return
	}
	st, err := s.c.HAStatus()
	if err != nil {
		s.fail(w, r, "ha takeover", noSection(err))
		return
	}
	s.log.Info("ha takeover", "remote", remote(r))
	writeJSON(w, http.StatusOK, st)
}

// HAStatus reads this node's view of its group.
func (c *Client) HAStatus() (ha.Status, error) {
	var out ha.Status
	err := c.call(http.MethodGet, "/v1/ha", nil, &out)
	return out, err
}

// HATakeover makes the node the client talks to the active one.
func (c *Client) HATakeover() (ha.Status, error) {
	var out ha.Status
	err := c.call(http.MethodPost, "/v1/ha/takeover", nil, &out)
	return out, err
}
