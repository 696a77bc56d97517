package api

import (
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nd-dispatcher/nd/internal/nd"
)

// DefaultFlowLimit is how many flows GET /v1/flows lists without a limit.
const DefaultFlowLimit = 1000

// Flow is one connection table entry, as GET /v1/flows lists it.
type Flow struct {
	Protocol string `json:"protocol"`
	Client   string `json:"client"` // address:port
	VIP      string `json:"vip"`    // address:port
	Server   string `json:"server"`
	// IdleMS is how long ago the flow last carried a packet, to about a
	// second (the data plane refreshes it once a second).
	IdleMS int64 `json:"idle_ms"`
	// Closing: the client sent FIN or RST; the entry stays until it idles
	// out or the tuple is reused.
	Closing bool `json:"closing"`
}

// FlowsResponse is GET /v1/flows.
type FlowsResponse struct {
	Flows []Flow `json:"flows"`
	// More says that more entries matched than the limit let through.
	More bool `json:"more"`
}

// FlowQuery selects flows for Client.Flows; zero fields match every flow.
type FlowQuery struct {
	VIP, Client, Server netip.Addr
	Port                uint16
	Protocol            string // "tcp", "udp" or ""
	Limit               int    // 0: DefaultFlowLimit
}

func (s *Server) flows(w http.ResponseWriter, r *http.Request) {
	f, limit, err := parseFlowQuery(r.URL.Query())
	if err != nil {
		s.fail(w, r, "flows", err)
		return
	}
	flows, more, err := s.c.Flows(f, limit)
	if err != nil {
		s.fail(w, r, "flows", err)
		return
	}
	out := FlowsResponse{Flows: make([]Flow, 0, len(flows)), More: more}
	for _, fl := range flows {
		out.Flows = append(out.Flows, Flow{
			Protocol: fl.Key.Proto.String(), Client: fl.Key.Client.String(), VIP: fl.Key.VIP.String(),
			Server: fl.Server.String(), IdleMS: fl.Idle.Milliseconds(), Closing: fl.Closing,
		})
	}
	writeJSON(w, http.StatusOK, out)
}

// flowParams are the query parameters of GET /v1/flows.
var flowParams = []string{"vip", "port", "protocol", "client", "server", "limit"}

// parseFlowQuery reads ?vip=&port=&protocol=&client=&server=&limit=.
func parseFlowQuery(q url.Values) (nd.FlowFilter, int, error) {
	var f nd.FlowFilter
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !slices.Contains(flowParams, name) {
			return f, 0, badRequest("unknown query parameter %q: want %s", name, strings.Join(flowParams, ", "))
		}
		if len(q[name]) > 1 {
			return f, 0, badRequest("query parameter %q given %d times: give it once", name, len(q[name]))
		}
	}
	for name, dst := range map[string]*netip.Addr{"vip": &f.VIP, "client": &f.Client, "server": &f.Server} {
		if v := q.Get(name); v != "" {
			a, err := netip.ParseAddr(v)
			if err != nil {
				return f, 0, badRequest("%s: %q is not an IP address", name, v)
			}
			*dst = a.Unmap()
		}
	}
	if v := q.Get("port"); v != "" {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil || p == 0 {
			return f, 0, badRequest("port: %q is not a port number (1 to 65535)", v)
		}
		f.Port = uint16(p)
	}
	if v := q.Get("protocol"); v != "" {
		p, err := nd.ParseProto(v)
		if err != nil {
			return f, 0, badRequest("protocol: %q is not tcp or udp", v)
		}
		f.Proto = p
	}
	limit := DefaultFlowLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > nd.MaxFlowsListed {
			return f, 0, badRequest("limit: %q is not a number from 1 to %d", v, nd.MaxFlowsListed)
		}
		limit = n
	}
	return f, limit, nil
}

// Flows lists connection table entries that match q.
func (c *Client) Flows(q FlowQuery) (FlowsResponse, error) {
	v := url.Values{}
	for name, a := range map[string]netip.Addr{"vip": q.VIP, "client": q.Client, "server": q.Server} {
		if a.IsValid() {
			v.Set(name, a.String())
		}
	}
	if q.Port != 0 {
		v.Set("port", strconv.Itoa(int(q.Port)))
	}
	if q.Protocol != "" {
		v.Set("protocol", q.Protocol)
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := "/v1/flows"
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out FlowsResponse
	err := c.call(http.MethodGet, path, nil, &out)
	return out, err
}

// Idle is the flow's idle time as a duration.
func (f Flow) Idle() time.Duration { return time.Duration(f.IdleMS) * time.Millisecond }
