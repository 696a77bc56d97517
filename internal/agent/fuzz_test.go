package agent

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// fuzzNow is the agent's clock in FuzzVerifyRequest, so that the signed
// seeds stay valid however late the corpus runs.
var fuzzNow = time.Unix(1_800_000_000, 0)

// FuzzParseResponse feeds the client arbitrary agent answers. It must
// never panic, never accept a body without the right MAC, and accept only
// reports within the protocol's limits.
func FuzzParseResponse(f *testing.F) {
	good := `{"version":1,"host":"web1","time":"2026-11-26T03:00:00Z","metrics":{"load1":0.5,"cpu":12.5,"queue":3},"errors":{"memory":"no sample yet"},"stats":{"requests":7,"served":6}}`
	for _, s := range []string{
		good,
		`{"version":1,"host":"h","time":"2026-11-26T03:00:00Z"}`,
		`{"version":1,"host":"h","time":"2026-11-26T03:00:00Z","metrics":{"x":1e308}}`,
		`{"version":1,"host":"h","time":"2026-11-26T03:00:00Z","metrics":{"x":1e309}}`,
		`{"version":1,"host":"h","time":"2026-11-26T03:00:00Z","metrics":{"x":1},"errors":{"x":"y"}}`,
		`{"version":1,"host":"h","time":"2026-11-26T03:00:00Z","command":"rm -rf /"}`,
		`{"version":1,"host":"h","time":"2026-11-26T03:00:00Z"} trailing`,
		`{"version":1.5}`, `[]`, `null`, ``, `{`, `"\ud800"`,
	} {
		f.Add([]byte(s), true, 200)
		f.Add([]byte(s), false, 200)
	}
	f.Add([]byte(good), true, 401)
	nonce := hex.EncodeToString(bytes.Repeat([]byte{0x5a}, nonceBytes))
	c, err := NewClient(ClientOptions{Key: testKey})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte, sign bool, status int) {
		var macs []string
		if sign {
			macs = []string{hex.EncodeToString(responseMAC(testKey, nonce, body))}
		} else {
			macs = []string{hex.EncodeToString(responseMAC(wrongKey, nonce, body))}
		}
		rep, err := c.parseResponse(status, macs, nonce, body)
		if err != nil {
			return
		}
		if !sign {
			t.Fatalf("accepted a response MAC'ed with the wrong key: %q", body)
		}
		if status != 200 {
			t.Fatalf("accepted status %d", status)
		}
		if err := validateReport(rep); err != nil {
			t.Fatalf("accepted an invalid report: %v", err)
		}
		// What was accepted survives the agent's own encoder.
		if _, err := encodeReport(rep); err != nil {
			t.Fatalf("accepted report does not re-encode: %v", err)
		}
	})
}

// FuzzVerifyRequest feeds the agent arbitrary HTTP requests. It must never
// panic, accept only a correctly MAC'ed, fresh, unreplayed GET of the
// report, and refuse the same request a second time.
func FuzzVerifyRequest(f *testing.F) {
	render := func(r *http.Request) []byte {
		var b bytes.Buffer
		r.Write(&b)
		return b.Bytes()
	}
	sig := func(at time.Time, key []byte) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "http://agent"+ReportPath, nil)
		if _, err := signRequest(r, key, at); err != nil {
			f.Fatal(err)
		}
		return r
	}
	valid := render(sig(fuzzNow, testKey))
	if r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(valid))); err != nil {
		f.Fatal(err)
	} else if _, rej := (&Agent{cfg: &Config{MaxClockSkew: DefaultMaxClockSkew}, key: testKey, replay: newReplayCache(16)}).verify(r, fuzzNow); rej != nil {
		f.Fatalf("the valid seed is rejected: %v", rej.err)
	}
	f.Add(valid)
	f.Add(render(sig(fuzzNow.Add(-time.Hour), testKey)))
	f.Add(render(sig(fuzzNow, wrongKey)))
	post := sig(fuzzNow, testKey)
	post.Method = http.MethodPost
	f.Add(render(post))
	f.Add([]byte("GET /v1/report HTTP/1.1\r\nHost: a\r\nX-Nd-Time: 1800000000\r\nX-Nd-Nonce: 00000000000000000000000000000000\r\nX-Nd-Mac: 00\r\n\r\n"))
	f.Add([]byte("GET /v1/report?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"))
	f.Add([]byte("GET /v1/report HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd"))
	f.Add([]byte("GET /v1/report HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	f.Add([]byte("garbage"))

	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		a := &Agent{cfg: &Config{MaxClockSkew: DefaultMaxClockSkew}, key: testKey, replay: newReplayCache(16)}
		nonce, rej := a.verify(r, fuzzNow)
		if rej != nil {
			if rej.err == nil || rej.status < 400 || rej.stat == "" {
				t.Fatalf("rejection without a reason: %+v", rej)
			}
			return
		}
		// Accepted: check it independently.
		ts := r.Header.Get(HeaderTime)
		sec, err := strconv.ParseInt(ts, 10, 64)
		if r.Method != http.MethodGet || r.RequestURI != ReportPath || err != nil ||
			sec < fuzzNow.Unix()-30 || sec > fuzzNow.Unix()+30 || nonce != r.Header.Get(HeaderNonce) ||
			r.Header.Get(HeaderMAC) != hex.EncodeToString(requestMAC(testKey, http.MethodGet, ReportPath, ts, nonce)) {
			t.Fatalf("accepted a request that does not verify: %q", raw)
		}
		if _, rej := a.verify(r, fuzzNow); rej == nil || rej.stat != StatReplay {
			t.Fatalf("the same request was accepted twice: %+v", rej)
		}
	})
}

// FuzzParseConfig: any file gives a configuration that validates, or an
// ErrConfig; never a panic.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"key_file: k\n",
		"key_file: k\ncommands:\n  - name: a\n    argv: [x]\n    interval: 1s\n",
		"tls: {cert_file: a, key_file: b, client_ca_file: c}\nlisten: '[::]:7431'\n",
		"commands: [{name: a, argv: [x], interval: -1s, timeout: 1h}]\n",
		"a: &x [*x]\n", "key_file: [\n", "---\n---\n", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error is not an ErrConfig: %v", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted a configuration that does not validate: %v", err)
		}
	})
}
