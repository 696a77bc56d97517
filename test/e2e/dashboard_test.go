package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nd-dispatcher/nd/internal/api"
	"github.com/nd-dispatcher/nd/internal/config"
	"github.com/nd-dispatcher/nd/internal/lab"
	"github.com/nd-dispatcher/nd/internal/testutil"
)

// chromiumPath is Debian's Chromium (scripts/setup installs it).
const chromiumPath = "/usr/bin/chromium"

// ScreenshotDirEnv names a directory where TestDashboard writes
// dashboard.png (docs/ for the README's picture).
const ScreenshotDirEnv = "ND_SCREENSHOT_DIR"

const (
	dashToken     = "e2e-dashboard-token-0123456789"
	dashAPIListen = "127.0.0.1:8080" // inside the dispatcher's namespace
	dashTimeout   = 3 * time.Minute
	// screenshotTraffic is how long traffic flows before the screenshot.
	screenshotTraffic = 20 * time.Second
)

// requireChromium skips (or, under ND_REQUIRE_PRIVILEGED=1, fails) without
// the browser.
func requireChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv(testutil.RequirePrivilegedEnv) == "1" {
			t.Fatalf("the dashboard test needs Chromium at %s (scripts/setup installs it): %v", chromiumPath, err)
		}
		t.Skipf("skipping: the dashboard test needs Chromium at %s (scripts/setup installs it)", chromiumPath)
	}
}

// browser starts a headless Chromium with the flags it needs as root on a
// closed network, and collects the errors its first tab reports.
func browser(t *testing.T, ctx context.Context) (context.Context, *consoleErrors) {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox, // root
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1700),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	if err := chromedp.Do(bctx); err != nil {
		cancelBrowser()
		cancelAlloc()
		t.Fatalf("start Chromium: %v", err)
	}
	errs := &consoleErrors{}
	lctx, stopListening := context.WithCancel(bctx)
	var wg sync.WaitGroup
	wg.Add(1)
	msgs := chromedp.Console(lctx)
	go func() {
		defer wg.Done()
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				errs.add(m.String() + " " + m.URL)
			}
		}
	}()
	t.Cleanup(func() { stopListening(); wg.Wait(); cancelBrowser(); cancelAlloc() })
	return bctx, errs
}

// consoleErrors are the console errors, uncaught exceptions and error log
// entries (failed loads, policy violations) of a tab.
type consoleErrors struct {
	mu   sync.Mutex
	errs []string
}

func (c *consoleErrors) add(s string) {
	c.mu.Lock()
	c.errs = append(c.errs, s)
	c.mu.Unlock()
}

func (c *consoleErrors) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errs...)
}

// TestDashboard drives the dashboard in a real browser against ndd in a lab
// with traffic: the page loads without errors, its plots and counters move
// as flows arrive, a quiesce from the page (confirmed in its dialog) goes
// through the API, shows in the event stream and takes the server out of
// the data plane's choice, and a wrong token is refused.
func TestDashboard(t *testing.T) {
	testutil.RequirePrivileged(t) // namespaces, XDP, ndd as root
	requireChromium(t)
	n := newNDDLab(t, []int{10, 10, 10}, func(c *nddConfig) {
		c.Listen, c.Token, c.Dashboard = dashAPIListen, dashToken, true
		c.Manager = "  policy: default\n  interval: 1s\n"
		// An advisor, so that its latency is shown and plotted (the
		// servers listen on the VIP: probes go through it).
		c.Advisors = "advisors:\n  - {name: alive, kind: tcp, target: vip, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}\n"
		c.Ports[0].Advisor = "alive"
	})
	// The browser runs on this machine; the API listens on the
	// dispatcher's loopback: a relay on this namespace's loopback joins
	// them, adding nothing outside the lab.
	fwd, err := lab.Forward("127.0.0.1:0", n.lab.Dispatcher.NS, dashAPIListen)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fwd.Close() })
	base := "http://" + fwd.Addr().String()

	ctx, cancel := context.WithTimeout(context.Background(), dashTimeout)
	defer cancel()

	// Traffic until the test ends: a new connection per request.
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	var traffic sync.WaitGroup
	traffic.Add(1)
	go func() {
		defer traffic.Done()
		for trafficCtx.Err() == nil {
			runLoad(trafficCtx, n.lab.Client.NS, n.vip4(), 100, 4, 64)
			select {
			case <-trafficCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	defer func() { stopTraffic(); traffic.Wait() }()

	bctx, console := browser(t, ctx)
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		actx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(actx, steps...); err != nil {
			t.Fatalf("%s: %v (page errors: %v)", what, err, console.list())
		}
	}
	eval := func(js string) string {
		t.Helper()
		actx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		out, err := chromedp.Run(actx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("evaluate %s: %v", js, err)
		}
		return out
	}

	run("sign in",
		chromedp.Navigate(base+"/dashboard/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), dashToken),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS(`section.port[data-port="198.51.100.100:80/tcp"]`)),
	)

	// The plots and counters move as the flows arrive.
	const plotPoints = `document.querySelector('section.port svg[data-plot="new_per_sec"]').dataset.points`
	const newFlows = `String([...document.querySelectorAll('section.port tr[data-server]')].reduce((a, r) => a + Number(r.dataset.newFlows), 0))`
	p0, f0 := atoi(t, eval(plotPoints)), atoi(t, eval(newFlows))
	waitFor(t, 20*time.Second, "the new-flows plot gains points and the page counts new flows", func() bool {
		return atoi(t, eval(plotPoints)) >= p0+3*len(n.servers) && atoi(t, eval(newFlows)) > f0+50
	})
	maxRate := eval(`String(Math.max(...[...document.querySelectorAll('section.port tr[data-server]')].map(r => Number(r.children[6].textContent) || 0)))`)
	if v, _ := strconv.ParseFloat(maxRate, 64); v <= 0 {
		t.Errorf("no server shows new flows a second while traffic flows (max %s)", maxRate)
	}
	waitFor(t, 10*time.Second, "an advisor latency shown and plotted", func() bool {
		return eval(`String([...document.querySelectorAll('section.port tr[data-server]')].filter(r => Number(r.children[7].textContent) > 0).length)`) != "0" &&
			eval(`document.querySelector('section.port svg[data-plot="advisor_ms"]').dataset.points`) != "0"
	})
	for _, want := range []string{"#events li", `section.port svg[data-plot="weight"] polyline`, `section.port svg[data-plot="lmi"] polyline`} {
		run("find "+want, chromedp.WaitReady(chromedp.CSS(want)))
	}

	// Quiesce from the page, confirmed in its dialog.
	victim := n.servers[1]
	addr := n.addrOf[victim.name].String()
	run("quiesce "+addr,
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`button[data-action="quiesce"][data-server=%q]`, addr))),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.Click(chromedp.CSS("#confirm-yes")),
	)
	waitFor(t, 10*time.Second, addr+" quiesced in ndd", func() bool {
		for _, s := range n.portStatus(t, servicePort).Servers {
			if s.Address == addr {
				return s.Quiesced
			}
		}
		return false
	})
	run("the quiesce in the event stream and the table",
		chromedp.WaitVisible(chromedp.CSS(`#events li[data-type="config_applied"]`)),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`tr[data-server=%q] td[data-state="quiesced"]`, addr))),
	)
	events := eval(`document.getElementById("events").textContent`)
	if !strings.Contains(events, addr) {
		t.Errorf("the event stream does not name %s after its quiesce:\n%s", addr, events)
	}

	// The data plane sends the quiesced server no new flow.
	time.Sleep(500 * time.Millisecond) // flows opened before the quiesce settle
	before := n.newFlows(t)
	waitFor(t, 15*time.Second, "more new flows after the quiesce", func() bool {
		after := n.newFlows(t)
		total := uint64(0)
		for name, v := range after {
			total += v - before[name]
		}
		return total >= 200
	})
	after := n.newFlows(t)
	if got := after[victim.name] - before[victim.name]; got != 0 {
		t.Errorf("%s, quiesced from the dashboard, got %d new flows (before %v, after %v)", victim.name, got, before, after)
	}

	// The other actions, each through its dialog: a cancel changes
	// nothing; a weight, a fixed weight and the manager's proportions.
	other := n.addrOf[n.servers[2].name].String()
	weightButton := chromedp.CSS(fmt.Sprintf(`button[data-action="weight"][data-server=%q]`, other))
	run("cancel a weight change",
		chromedp.Click(weightButton),
		chromedp.WaitVisible(chromedp.CSS("#confirm-input")),
		chromedp.SetValue(chromedp.CSS("#confirm-input"), "3"),
		chromedp.Click(chromedp.CSS("#confirm-no")),
		chromedp.WaitNotVisible(chromedp.CSS("#confirm")),
	)
	time.Sleep(300 * time.Millisecond)
	if w := n.configWeight(t, other); w != 10 {
		t.Errorf("a cancelled weight change set %s's weight to %d", other, w)
	}
	run("set a weight",
		chromedp.Click(weightButton),
		chromedp.WaitVisible(chromedp.CSS("#confirm-input")),
		chromedp.SetValue(chromedp.CSS("#confirm-input"), "5"),
		chromedp.Click(chromedp.CSS("#confirm-yes")),
	)
	waitFor(t, 10*time.Second, other+"'s configured weight 5", func() bool { return n.configWeight(t, other) == 5 })
	run("fix a weight",
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`button[data-action="fix"][data-server=%q]`, other))),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.Click(chromedp.CSS("#confirm-yes")),
		chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`button[data-action="unfix"][data-server=%q]`, other))),
	)
	if !n.fixed(t, other) {
		t.Errorf("%s not fixed after the page fixed it", other)
	}
	run("set the manager's proportions",
		chromedp.SetValue(chromedp.CSS("#prop-active"), "40"),
		chromedp.SetValue(chromedp.CSS("#prop-new"), "20"),
		chromedp.SetValue(chromedp.CSS("#prop-advisor"), "40"),
		chromedp.SetValue(chromedp.CSS("#prop-host"), "0"),
		chromedp.Click(chromedp.CSS("#prop-submit")),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.Click(chromedp.CSS("#confirm-yes")),
	)
	waitFor(t, 10*time.Second, "the manager's proportions 40/20/40/0", func() bool {
		m, err := n.api.ManagerReport()
		if err != nil {
			t.Fatalf("manager: %v", err)
		}
		return m.Proportions == api.ProportionsRequest{Active: 40, New: 20, Advisor: 40, Host: 0}
	})

	if dir := os.Getenv(ScreenshotDirEnv); dir != "" {
		// Longer plots for the picture.
		time.Sleep(screenshotTraffic)
		sctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
		cancel()
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		path := filepath.Join(dir, "dashboard.png")
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
	}
	if errs := console.list(); len(errs) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(errs, "\n"))
	}

	// A wrong token, in a new tab (its own sessionStorage): refused.
	tab, closeTab := chromedp.NewContext(bctx)
	defer closeTab()
	tctx, tcancel := context.WithTimeout(tab, 30*time.Second)
	defer tcancel()
	err = chromedp.Do(tctx,
		chromedp.Navigate(base+"/dashboard/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token-0123456789"),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS(`body[data-state="login"] #login-error:not(:empty)`)),
	)
	if err != nil {
		t.Fatalf("wrong token: %v", err)
	}
	msg, err := chromedp.Run(tctx, chromedp.Text(chromedp.CSS("#login-error")))
	if err != nil || !strings.Contains(msg, "wrong token") {
		t.Errorf("wrong token: the page says %q (%v)", msg, err)
	}
	hidden, err := chromedp.Run(tctx, chromedp.Evaluate[bool](`document.getElementById("dash").hidden`))
	if err != nil || !hidden {
		t.Errorf("wrong token: the dashboard is shown (hidden %v, %v)", hidden, err)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return v
}

// configWeight is addr's configured weight on VIP4:80.
func (n *nddLab) configWeight(t *testing.T, addr string) uint32 {
	t.Helper()
	for _, s := range n.portStatus(t, servicePort).Servers {
		if s.Address == addr {
			return s.ConfigWeight
		}
	}
	t.Fatalf("no server %s on port %d", addr, servicePort)
	return 0
}

// fixed says whether the running configuration fixes addr's weight.
func (n *nddLab) fixed(t *testing.T, addr string) bool {
	t.Helper()
	y, err := n.api.Config()
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	cfg, err := config.Parse(y, "running")
	if err != nil {
		t.Fatalf("parse the running configuration: %v", err)
	}
	for _, p := range cfg.Ports() {
		for _, s := range p.Servers {
			if s.Address.String() == addr {
				return s.Fixed
			}
		}
	}
	t.Fatalf("no server %s in the configuration", addr)
	return false
}
