package api

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/advisor"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/manager"
)

// ManagerResponse answers GET /v1/manager: the manager's settings and its
// last computation per port (the IBM manager report).
type ManagerResponse struct {
	Interval    string               `json:"interval"`
	Sensitivity float64              `json:"sensitivity"`
	Smoothing   float64              `json:"smoothing"`
	Policy      string               `json:"policy"`
	Proportions ProportionsRequest   `json:"proportions"`
	Overload    float64              `json:"overload"`
	CoolDown    string               `json:"cool_down"`
	HostMetric  string               `json:"host_metric"`
	Ports       []manager.PortReport `json:"ports"`
}

// ProportionsRequest are the LMI's proportions in percent, summing to 100.
type ProportionsRequest struct {
	Active  uint32 `json:"active"`
	New     uint32 `json:"new"`
	Advisor uint32 `json:"advisor"`
	Host    uint32 `json:"host"`
}

// ManagerPatch is the body of PATCH /v1/manager: the settings to change; a
// nil field stays as it is. With Port ("vip/port/protocol", e.g.
// "198.51.100.100/80/tcp"), Proportions set that port's own proportions
// and nothing else may be given; ResetPort drops them (the port follows the
// manager's again).
type ManagerPatch struct {
	Interval    *string             `json:"interval,omitempty"`
	Sensitivity *float64            `json:"sensitivity,omitempty"`
	Smoothing   *float64            `json:"smoothing,omitempty"`
	Policy      *string             `json:"policy,omitempty"`
	Proportions *ProportionsRequest `json:"proportions,omitempty"`
	Overload    *float64            `json:"overload,omitempty"`
	CoolDown    *string             `json:"cool_down,omitempty"`
	HostMetric  *string             `json:"host_metric,omitempty"`
	Port        string              `json:"port,omitempty"`
	ResetPort   bool                `json:"reset_port,omitempty"`
}

func (s *Server) getManager(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.managerResponse())
}

// managerResponse is the manager's settings and last computation.
func (s *Server) managerResponse() ManagerResponse {
	m := s.c.Config().Manager
	pr := m.Proportions
	return ManagerResponse{
		Interval: m.Interval.String(), Sensitivity: m.Sensitivity, Smoothing: m.Smoothing, Policy: m.Policy,
		Proportions: ProportionsRequest{Active: pr.Active, New: pr.New, Advisor: pr.Advisor, Host: pr.Host},
		Overload:    m.Overload, CoolDown: m.CoolDown.String(), HostMetric: m.HostMetric,
		Ports: s.c.ManagerReport(),
	}
}

func (s *Server) setManager(w http.ResponseWriter, r *http.Request) {
	var p ManagerPatch
	if err := decodeJSON(w, r, &p); err != nil {
		s.fail(w, r, "change manager", err)
		return
	}
	e, err := managerEdit(p)
	if err != nil {
		s.fail(w, r, "change manager", err)
		return
	}
	s.update(w, r, http.StatusOK, "change manager", e)
}

// managerEdit turns a patch into a configuration edit.
func managerEdit(p ManagerPatch) (editFunc, error) {
	dur := func(what string, v *string) (time.Duration, error) {
		d, err := time.ParseDuration(*v)
		if err != nil {
			return 0, badRequest("%s: %q is not a duration such as \"2s\"", what, *v)
		}
		return d, nil
	}
	if p.Port != "" {
		if p.Interval != nil || p.Sensitivity != nil || p.Smoothing != nil || p.Policy != nil || p.Overload != nil || p.CoolDown != nil || p.HostMetric != nil {
			return editFunc{}, badRequest("with port, only proportions (or reset_port) may be given: the other settings are the manager's")
		}
		if (p.Proportions == nil) == !p.ResetPort {
			return editFunc{}, badRequest("with port, give proportions or reset_port")
		}
		id, err := parsePortName(p.Port)
		if err != nil {
			return editFunc{}, err
		}
		return edit(func(c *config.Config) error {
			port, err := findPort(c, id)
			if err != nil {
				return err
			}
			if p.ResetPort {
				port.Proportions = nil
				return nil
			}
			pr := config.Proportions{Active: p.Proportions.Active, New: p.Proportions.New, Advisor: p.Proportions.Advisor, Host: p.Proportions.Host}
			if port.Proportions != nil {
				pr.Custom = port.Proportions.Custom
			}
			port.Proportions = &pr
			return nil
		}), nil
	}
	if p.ResetPort {
		return editFunc{}, badRequest("reset_port needs port")
	}
	var interval, coolDown time.Duration
	var err error
	if p.Interval != nil {
		if interval, err = dur("interval", p.Interval); err != nil {
			return editFunc{}, err
		}
	}
	if p.CoolDown != nil {
		if coolDown, err = dur("cool_down", p.CoolDown); err != nil {
			return editFunc{}, err
		}
	}
	if p == (ManagerPatch{}) {
		return editFunc{}, badRequest("nothing to change")
	}
	return edit(func(c *config.Config) error {
		m := &c.Manager
		if p.Interval != nil {
			m.Interval = interval
		}
		patchField(&m.Sensitivity, p.Sensitivity)
		patchField(&m.Smoothing, p.Smoothing)
		patchField(&m.Policy, p.Policy)
		if p.Proportions != nil {
			m.Proportions.Active, m.Proportions.New = p.Proportions.Active, p.Proportions.New
			m.Proportions.Advisor, m.Proportions.Host = p.Proportions.Advisor, p.Proportions.Host
		}
		patchField(&m.Overload, p.Overload)
		if p.CoolDown != nil {
			m.CoolDown = coolDown
		}
		patchField(&m.HostMetric, p.HostMetric)
		return nil
	}), nil
}

// parsePortName reads "vip/port/protocol" or "vip/port" (tcp).
func parsePortName(s string) (portID, error) {
	var vip, port, proto string
	n := 0
	for i, part := range splitSlash(s) {
		switch i {
		case 0:
			vip = part
		case 1:
			port = part
		case 2:
			proto = part
		}
		n++
	}
	if n < 2 || n > 3 {
		return portID{}, badRequest("port %q: want vip/port or vip/port/protocol", s)
	}
	if proto == "" {
		proto = "tcp"
	}
	return parsePortID(vip, port, proto)
}

func splitSlash(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// AgentStatus is one polled agent in GET /v1/agents.
type AgentStatus struct {
	Address  string             `json:"address"`
	Disabled bool               `json:"disabled"`
	Last     time.Time          `json:"last,omitempty"`
	Error    string             `json:"error,omitempty"`
	Host     string             `json:"host,omitempty"`
	Metrics  map[string]float64 `json:"metrics,omitempty"`
	Errors   map[string]string  `json:"metric_errors,omitempty"`
}

func (s *Server) agents(w http.ResponseWriter, r *http.Request) {
	out := []AgentStatus{}
	for a, st := range s.c.AgentStatus() {
		out = append(out, AgentStatus{Address: a.String(), Disabled: st.Disabled, Last: st.Last, Error: st.Err,
			Host: st.Report.Host, Metrics: st.Report.Metrics, Errors: st.Report.Errors})
	}
	slices.SortFunc(out, func(a, b AgentStatus) int { return strings.Compare(a.Address, b.Address) })
	writeJSON(w, http.StatusOK, out)
}

// Agents reads every polled agent's state.
func (c *Client) Agents() ([]AgentStatus, error) {
	var out []AgentStatus
	err := c.call(http.MethodGet, "/v1/agents", nil, &out)
	return out, err
}

func (s *Server) advisors(w http.ResponseWriter, r *http.Request) {
	st := s.c.AdvisorStatus()
	if st == nil {
		st = []advisor.Status{}
	}
	writeJSON(w, http.StatusOK, st)
}

// ManagerReport reads the manager's settings and last computation.
func (c *Client) ManagerReport() (ManagerResponse, error) {
	var out ManagerResponse
	err := c.call(http.MethodGet, "/v1/manager", nil, &out)
	return out, err
}

// SetManager changes manager settings live.
func (c *Client) SetManager(p ManagerPatch) (string, error) {
	return c.change(http.MethodPatch, "/v1/manager", p)
}

// Advisors reads every advisor target's state.
func (c *Client) Advisors() ([]advisor.Status, error) {
	var out []advisor.Status
	err := c.call(http.MethodGet, "/v1/advisors", nil, &out)
	return out, err
}
