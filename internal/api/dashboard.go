package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/ha"
	"github.com/nd-dispatcher/nd/internal/history"
	"github.com/nd-dispatcher/nd/internal/nd"
	"github.com/nd-dispatcher/nd/internal/web"
)

// historyEvery is how often the server reads the manager's report into the
// dashboard's history while the dashboard is on: twice the manager's
// default interval, so that no computation is missed (one that was read
// already is skipped).
const historyEvery = 500 * time.Millisecond

// errDashboardOff answers the dashboard's routes while api.dashboard is
// false.
var errDashboardOff = errors.New("the dashboard is off: set api.dashboard: true (with api.listen) and reload")

// DashboardResponse answers GET /v1/dashboard: what the dashboard shows,
// read at once. History holds the readings and marks later than the
// request's since.
type DashboardResponse struct {
	Time    time.Time       `json:"time"`
	Status  nd.Status       `json:"status"`
	Manager ManagerResponse `json:"manager"`
	// HA is this node's view of its group, null without one.
	HA *ha.Status `json:"ha"`
	// Points is how many readings a series keeps (an hour at one a
	// second).
	Points  int                   `json:"points"`
	History []history.PortHistory `json:"history"`
}

// dashboard answers GET /v1/dashboard?since=<Unix ms>.
func (s *Server) dashboard(w http.ResponseWriter, r *http.Request) {
	if !s.dashboardOn.Load() {
		s.fail(w, r, "dashboard", fmt.Errorf("%w: %w", ErrNotFound, errDashboardOff))
		return
	}
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			s.fail(w, r, "dashboard", badRequest("since: %q is not a time in Unix milliseconds (0 or more)", v))
			return
		}
		if ms > 0 {
			since = time.UnixMilli(ms)
		}
	}
	st, err := s.c.Status()
	if err != nil {
		s.fail(w, r, "dashboard", err)
		return
	}
	s.recordHistory()
	out := DashboardResponse{Time: time.Now(), Status: st, Manager: s.managerResponse(), Points: s.history.Points(),
		History: []history.PortHistory{}}
	if h, err := s.c.HAStatus(); err == nil {
		out.HA = &h
	} else if !errors.Is(err, nd.ErrNoHA) {
		s.fail(w, r, "dashboard", err)
		return
	}
	for _, p := range s.history.Ports() {
		if ph, ok := s.history.Port(p, since); ok {
			out.History = append(out.History, ph)
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
}

// recordHistory adds the manager's latest computations to the history
// while the dashboard is on.
func (s *Server) recordHistory() {
	if s.dashboardOn.Load() {
		s.history.Record(s.c.ManagerReport())
		if !s.dashboardOn.Load() {
			s.history.Reset() // turned off meanwhile: keep nothing
		}
	}
}

// keepHistory records the manager's computations, and the decisions that
// the daemon's events tell, while the dashboard is on, until the server
// stops. It follows the events only while the dashboard is on.
func (s *Server) keepHistory() {
	defer s.wg.Done()
	var events <-chan nd.Event // nil while off
	stop := func() {}
	defer func() { stop() }()
	t := time.NewTicker(historyEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			on := s.dashboardOn.Load()
			switch {
			case on && events == nil:
				events, stop = s.c.Events()
			case !on && events != nil:
				stop()
				events, stop = nil, func() {}
			}
			s.recordHistory()
		case ev, ok := <-events:
			if !ok {
				events, stop = nil, func() {}
				continue
			}
			if s.dashboardOn.Load() {
				s.recordHistory() // the port may be new
				s.markEvent(ev)
			}
		}
	}
}

// markEvent turns an event that tells a decision into marks on the plots of
// its port: weights committed (the manager's reason and the weights), and a
// configuration change that names the port (a quiesce, a weight set by
// hand).
func (s *Server) markEvent(ev nd.Event) {
	t := ev.Time.UnixMilli()
	switch ev.Type {
	case nd.EventWeightsCommitted:
		if ev.Service != "" {
			s.history.Mark(ev.Service, history.Mark{T: t, Kind: "commit", Text: ev.Message})
		}
	case nd.EventConfigApplied:
		for _, port := range s.history.Ports() {
			for _, line := range strings.Split(ev.Message, "\n") {
				if strings.Contains(line, " "+port+":") || strings.HasSuffix(line, " "+port) {
					s.history.Mark(port, history.Mark{T: t, Kind: "config", Text: line})
				}
			}
		}
	}
}

// setDashboard turns the dashboard on or off; off forgets its history.
func (s *Server) setDashboard(on bool) {
	if !s.dashboardOn.Swap(on) || on {
		return
	}
	s.history.Reset()
}

// tcpHandler serves the API's TCP listener: the dashboard's files without a
// token while the dashboard is on, everything else with the token. Every
// response carries the dashboard's security headers (no framing, no MIME
// sniffing, a strict policy).
func (s *Server) tcpHandler() http.Handler {
	api := s.authenticate(s.handler)
	files := web.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		web.SecurityHeaders(w.Header())
		p := r.URL.Path
		switch {
		case (p == "/" || p == strings.TrimSuffix(web.Prefix, "/")) && s.dashboardOn.Load():
			http.Redirect(w, r, web.Prefix, http.StatusFound)
		case strings.HasPrefix(p, web.Prefix):
			if !s.dashboardOn.Load() {
				writeError(w, http.StatusNotFound, errDashboardOff.Error())
				return
			}
			files.ServeHTTP(w, r)
		default:
			api.ServeHTTP(w, r)
		}
	})
}
