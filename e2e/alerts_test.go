package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/acmetest"
	"github.com/replproxy/replproxy/platformtest"
)

// TestAlertsFireWhenDatabaseStops runs a real Prometheus (Debian package
// prometheus) with the rules of deploy/prometheus, scraping every second
// the replproxy of each of two clusters on PostgreSQL and replns, while a
// client asks east's proxy for a repl ten times a second. Healthy, no
// alert is pending or firing. With east's database stopped, the store
// outage alert ReplproxyStoreErrors fires for east's proxy (its cached
// route expires, the reload fails, the route is served stale),
// ReplnsClusterFeedDown fires for east in replns (its change feed from
// east's store is down), and no alert names west. Every query of the Grafana dashboard then runs without
// error against that Prometheus. The rules are the real ones except for
// their `for:` durations, cut to 5s in the copy Prometheus loads (promtool
// tests the real ones: make rules); the proxies' -cache-ttl is 2s (60s by
// default) so that the route cache goes to the store within the test.
func TestAlertsFireWhenDatabaseStops(t *testing.T) {
	if testing.Short() {
		t.Skip("a real Prometheus server")
	}
	promBin := acmetest.NeedTool(t, "prometheus", "prometheus")
	p := start(t, platformtest.Options{Store: platformtest.Postgres, ProxyFlags: []string{"-cache-ttl", "2s"}})
	app := p.StartApp(t, "east", platformtest.AppOptions{})
	p.CreateRepl(t, platformtest.Repl{ID: "blog1", Owner: "alice", Slug: "blog", Endpoints: []string{app.Addr}})
	// A client of east's proxy; what it gets is not the test's concern.
	client := &http.Client{Timeout: 5 * time.Second}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			req, _ := http.NewRequest(http.MethodGet, "http://"+p.Cluster(t, "east").ProxyAddr+"/", nil)
			req.Host = p.Host("alice", "blog")
			if resp, err := client.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait(); client.CloseIdleConnections() })

	prom := startPrometheus(t, promBin, p)
	prom.waitTargetsUp(t, 1+len(p.Clusters()))
	// Every rule evaluated a few times over healthy targets: silence.
	time.Sleep(4 * time.Second)
	if active := prom.alerts(t); len(active) > 0 {
		t.Fatalf("alerts on a healthy platform: %v", active)
	}

	p.StopDatabase(t, "east")
	stopped := time.Now()
	var fired []alert
	eastProxy := p.Cluster(t, "east").AdminAddr
	firing := map[string]time.Duration{} // alert → when first seen firing for east
	prom.waitAlerts(t, 90*time.Second, "ReplproxyStoreErrors and ReplnsClusterFeedDown firing for east", func(as []alert) bool {
		fired = as
		for _, a := range as {
			name := a.Labels["alertname"]
			switch {
			case a.State != "firing" || a.Labels["cluster"] != "east" || firing[name] != 0:
			case name == "ReplproxyStoreErrors" && a.Labels["instance"] == eastProxy,
				name == "ReplnsClusterFeedDown" && a.Labels["instance"] == p.DNSAdmin():
				firing[name] = time.Since(stopped)
			}
		}
		return firing["ReplproxyStoreErrors"] != 0 && firing["ReplnsClusterFeedDown"] != 0
	})
	t.Logf("east's database stopped: ReplproxyStoreErrors firing after %v, ReplnsClusterFeedDown after %v (for: 5s); alerts then: %v",
		firing["ReplproxyStoreErrors"].Round(100*time.Millisecond), firing["ReplnsClusterFeedDown"].Round(100*time.Millisecond), fired)
	for _, a := range fired {
		switch {
		case a.Labels["cluster"] == "west":
			t.Errorf("an alert names west, whose database runs: %v", a)
		case a.Labels["alertname"] == "ReplnsClusterNotReady":
			t.Errorf("ReplnsClusterNotReady beside ReplnsClusterFeedDown (one page per cause): %v", a)
		}
	}

	// Every dashboard query runs; with the platform's data some answer.
	queries := dashboardQueries(t)
	answered := 0
	for _, q := range queries {
		var res struct {
			Status    string `json:"status"`
			Error     string `json:"error"`
			ErrorType string `json:"errorType"`
			Data      struct {
				Result []json.RawMessage `json:"result"`
			} `json:"data"`
		}
		prom.get(t, "/api/v1/query?query="+url.QueryEscape(q), &res)
		if res.Status != "success" {
			t.Errorf("dashboard query %q: %s: %s", q, res.ErrorType, res.Error)
		}
		if len(res.Data.Result) > 0 {
			answered++
		}
	}
	t.Logf("%d dashboard queries, every one accepted by Prometheus; %d with data", len(queries), answered)

	// Back, for the daemons' graceful stop. (The alert itself resolves
	// once its 5-minute rate window has passed the failures.)
	p.RestartDatabase(t, "east")
}

// prometheus is a Prometheus server started by a test.
type prometheus struct {
	url string
	log string // its log file
}

type alert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (a alert) String() string {
	var ls []string
	for k, v := range a.Labels {
		if k != "alertname" {
			ls = append(ls, k+"="+v)
		}
	}
	slices.Sort(ls)
	return fmt.Sprintf("%s{%s} %s", a.Labels["alertname"], strings.Join(ls, ","), a.State)
}

// startPrometheus writes a configuration that scrapes p's daemons every
// second and loads deploy/prometheus's rules with `for:` cut to 5s, starts
// Prometheus on it, and kills it (by its pid) when the test ends.
func startPrometheus(t *testing.T, bin string, p *platformtest.Platform) *prometheus {
	t.Helper()
	dir := t.TempDir()
	var ruleFiles []string
	for _, f := range []string{"replproxy.rules.yml", "replns.rules.yml"} {
		b, err := os.ReadFile(filepath.Join("..", "deploy", "prometheus", f))
		if err != nil {
			t.Fatal(err)
		}
		b = regexp.MustCompile(`(?m)^(\s+for:) \S+$`).ReplaceAll(b, []byte("$1 5s"))
		path := filepath.Join(dir, f)
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		ruleFiles = append(ruleFiles, path)
	}
	var proxies []string
	for _, c := range p.Clusters() {
		proxies = append(proxies, fmt.Sprintf("%q", c.AdminAddr))
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q, %q]
scrape_configs:
  - job_name: replproxy
    static_configs: [{targets: [%s]}]
  - job_name: replns
    static_configs: [{targets: [%q]}]
`, ruleFiles[0], ruleFiles[1], strings.Join(proxies, ", "), p.DNSAdmin())
	configPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	logPath := filepath.Join(dir, "prometheus.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+configPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // gone with the test binary, too
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logFile.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // by its pid
		<-exited
	})
	prom := &prometheus{url: "http://" + addr, log: logPath}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(prom.url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return prom
			}
		}
		select {
		case <-exited:
			t.Fatalf("prometheus exited:\n%s", prom.logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within 30 s:\n%s", prom.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (prom *prometheus) logs() string {
	b, _ := os.ReadFile(prom.log)
	return string(b)
}

// get decodes the JSON answer of a GET of path.
func (prom *prometheus) get(t *testing.T, path string, v any) {
	t.Helper()
	resp, err := http.Get(prom.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %d: %v", path, resp.StatusCode, err)
	}
}

// waitTargetsUp waits until n targets have been scraped and are up.
func (prom *prometheus) waitTargetsUp(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var res struct {
			Data struct {
				ActiveTargets []struct {
					ScrapeURL string `json:"scrapeUrl"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		prom.get(t, "/api/v1/targets", &res)
		up := 0
		for _, tg := range res.Data.ActiveTargets {
			if tg.Health == "up" {
				up++
			}
		}
		if up == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d targets up within 30 s: %+v", up, n, res.Data.ActiveTargets)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// alerts returns the alerts pending or firing.
func (prom *prometheus) alerts(t *testing.T) []alert {
	t.Helper()
	var res struct {
		Data struct {
			Alerts []alert `json:"alerts"`
		} `json:"data"`
	}
	prom.get(t, "/api/v1/alerts", &res)
	return res.Data.Alerts
}

// waitAlerts polls the alerts until cond holds of them.
func (prom *prometheus) waitAlerts(t *testing.T, d time.Duration, what string, cond func([]alert) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		as := prom.alerts(t)
		if cond(as) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; alerts: %v\nprometheus log:\n%s", what, d, as, prom.logs())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// dashboardQueries returns the PromQL of every target of every panel of
// deploy/grafana/replproxy.json, with the dashboard's variables replaced
// as Grafana would ($__rate_interval: 1m, $cluster: every cluster).
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "grafana", "replproxy.json"))
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d panel
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	vars := strings.NewReplacer("$__rate_interval", "1m", "$__range", "1h", "$__interval", "15s", "$cluster", ".*")
	var out []string
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatal(err)
			}
			for _, tg := range p.Targets {
				out = append(out, vars.Replace(tg.Expr))
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	if len(out) == 0 {
		t.Fatal("the dashboard has no queries")
	}
	return out
}
