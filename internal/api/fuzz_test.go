package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/nd-dispatcher/nd/internal/config"
)

// FuzzEditRequests sends arbitrary bodies and path elements to the routes
// that edit the configuration. Whatever comes in, the answer is a JSON 2xx,
// 400 or 404, a refused request leaves the configuration as it was, and an
// accepted one leaves a valid configuration.
func FuzzEditRequests(f *testing.F) {
	base, err := config.Parse([]byte(fakeYAML), "fake.yaml")
	if err != nil {
		f.Fatal(err)
	}
	seeds := []struct {
		route     uint8
		seg, body string
	}{
		{0, "", `{"vip":"203.0.113.1","ports":[{"port":80,"servers":[{"address":"203.0.113.2","weight":3}]}]}`},
		{0, "", `{"vip":"203.0.113.1"}`},
		{0, "", `{"vip":"198.51.100.100","ports":[{"port":1}]}`},
		{1, "198.51.100.100", `{"port":8080,"protocol":"udp","sticky_time":"30s","weight_bound":100}`},
		{1, "198.51.100.100", `{"port":80}`},
		{2, "80", `{"address":"198.51.100.13","weight":10,"quiesce":false,"local":false}`},
		{2, "80", `{"address":"198.51.100.13","weight":4294967295}`},
		{3, "198.51.100.11", `{"weight":5}`},
		{3, "198.51.100.11", `{"quiesce":true}`},
		{3, "198.51.100.99", `{"weight":5,"quiesce":false}`},
		{4, "198.51.100.11", ``},
		{5, "53", ``},
		{6, "2001:db8::100", ``},
		{0, "", `{"vip":"1.2.3.4","ports":[{"port":1}]} trailing`},
		{1, "%zz", `{"port":1e3}`},
		{2, "udp", "\x00\xff{"},
	}
	for _, sd := range seeds {
		f.Add(sd.route, sd.seg, []byte(sd.body))
	}
	f.Fuzz(func(t *testing.T, route uint8, seg string, body []byte) {
		fc := newFake(t)
		fc.cfg = cloneConfig(base)
		s := handlerServer(fc)
		before := fc.yaml(t)

		p := url.PathEscape(seg)
		var method, path string
		switch route % 7 {
		case 0:
			method, path = "POST", "/v1/clusters"
		case 1:
			method, path = "POST", "/v1/clusters/"+p+"/ports"
		case 2:
			method, path = "POST", "/v1/clusters/198.51.100.100/ports/"+p+"/tcp/servers"
		case 3:
			method, path = "PATCH", "/v1/clusters/198.51.100.100/ports/80/tcp/servers/"+p
		case 4:
			method, path = "DELETE", "/v1/clusters/198.51.100.100/ports/80/tcp/servers/"+p
		case 5:
			method, path = "DELETE", "/v1/clusters/198.51.100.100/ports/"+p+"/udp"
		case 6:
			method, path = "DELETE", "/v1/clusters/"+p
		}
		req, err := http.NewRequest(method, "http://nd"+path, strings.NewReader(string(body)))
		if err != nil {
			return // not a request a client could send
		}
		rec := httptest.NewRecorder()
		s.handler.ServeHTTP(rec, req)

		switch rec.Code {
		case 200, 201:
			var cr ChangesResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &cr); err != nil || cr.Changes == "" {
				t.Fatalf("%s %s %q: %d with body %q", method, path, body, rec.Code, rec.Body)
			}
			if err := fc.Config().Validate(); err != nil {
				t.Fatalf("%s %s %q left an invalid configuration: %v", method, path, body, err)
			}
		case 301, 307, 308:
			// ServeMux redirects a path with "." or ".." elements to
			// its clean form.
			if got := fc.yaml(t); got != before {
				t.Fatalf("%s %s redirected but changed the configuration", method, path)
			}
		case 400, 404:
			var er ErrorResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &er); err != nil || er.Error == "" || strings.Contains(er.Error, "\n") {
				t.Fatalf("%s %s %q: %d with body %q", method, path, body, rec.Code, rec.Body)
			}
			if got := fc.yaml(t); got != before {
				t.Fatalf("%s %s %q refused with %d but changed the configuration:\n%s", method, path, body, rec.Code, got)
			}
		default:
			t.Fatalf("%s %s %q: status %d: %s", method, path, body, rec.Code, rec.Body)
		}
	})
}
