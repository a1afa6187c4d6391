package deploy_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/replproxy/replproxy/internal/acmetest"
	"github.com/replproxy/replproxy/nameserver"
	"github.com/replproxy/replproxy/platformtest"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/proxy/ondemand"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { platformtest.RemoveBinaries() }))
}

// family is a metric family as the tests know it: its labels, the values
// each label was seen with, and its help text.
type family struct {
	labels map[string]map[string]bool
	help   string
	seen   bool // in a binary's /metrics, not only registered
}

// families maps a family's name to it; a histogram's samples
// (_bucket, _sum, _count) resolve to the histogram.
type families map[string]*family

func (fs families) lookup(sample string) (*family, string) {
	if f := fs[sample]; f != nil {
		return f, sample
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if name, ok := strings.CutSuffix(sample, suffix); ok && fs[name] != nil {
			return fs[name], name
		}
	}
	return nil, ""
}

func (fs families) add(name, help string, seen bool, labels ...string) *family {
	f := fs[name]
	if f == nil {
		f = &family{labels: map[string]map[string]bool{}}
		fs[name] = f
	}
	if help != "" {
		f.help = help
	}
	f.seen = f.seen || seen
	for _, l := range labels {
		if f.labels[l] == nil {
			f.labels[l] = map[string]bool{}
		}
	}
	return f
}

var (
	reHelp   = regexp.MustCompile(`^# HELP (\S+) (.*)$`)
	reSample = regexp.MustCompile(`^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? \S+`)
	reLabel  = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	reDesc   = regexp.MustCompile(`^Desc\{fqName: ("(?:[^"\\]|\\.)*"), help: ("(?:[^"\\]|\\.)*"), unit: "[^"]*", constLabels: \{[^}]*\}, variableLabels: \{([^}]*)\}\}$`)
)

// scrape reads a /metrics page (text format) into fs.
func scrape(t *testing.T, fs families, addr string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	helps := map[string]string{}
	for sc.Scan() {
		line := sc.Text()
		if m := reHelp.FindStringSubmatch(line); m != nil {
			helps[m[1]] = m[2]
			continue
		}
		m := reSample.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name := m[1]
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suffix); ok && helps[b] != "" {
				base = b
			}
		}
		f := fs.add(base, helps[base], true)
		for _, lm := range reLabel.FindAllStringSubmatch(m[2], -1) {
			if lm[1] == "le" && base != name {
				continue
			}
			fs.add(base, "", true, lm[1])
			f.labels[lm[1]][lm[2]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

// describer is a prometheus.Registerer that keeps what each collector
// describes: every family a constructor registers, with its labels, even
// a vector with no series yet (which /metrics leaves out).
type describer struct {
	fs families
	t  *testing.T
}

func (d describer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		m := reDesc.FindStringSubmatch(desc.String())
		if m == nil {
			d.t.Fatalf("cannot read %s", desc)
		}
		name, _ := strconv.Unquote(m[1])
		help, _ := strconv.Unquote(m[2])
		var labels []string
		if m[3] != "" {
			labels = strings.Split(m[3], ",")
		}
		d.fs.add(name, help, false, labels...)
	}
	return nil
}

func (d describer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = d.Register(c)
	}
}

func (d describer) Unregister(prometheus.Collector) bool { return false }

// TestExpressionsUseExportedMetrics runs the real binaries (two clusters'
// replproxy and replns), sends what makes their labelled series appear —
// a request served, one to a container that refuses (502), a forged hop
// mark, a sleeping repl whose wake times out, DNS queries; with Pebble
// installed, a certificate obtained on demand — and scrapes their
// /metrics. Every metric an alerting or recording rule or a dashboard
// query names must be exported: seen in a scrape, or, for a labelled
// vector with no series yet (client_golang prints nothing for those, not
// even HELP), registered by the constructors the binaries call
// (proxy.NewMetrics, ondemand.NewMetrics, nameserver.NewMetrics). Every
// label matched must be one of the family's, and every literal value one
// seen in a scrape or named in the family's help text.
func TestExpressionsUseExportedMetrics(t *testing.T) {
	tls := false
	if _, err := exec.LookPath("pebble"); err == nil || acmetest.Required() {
		tls = true
	} else {
		t.Log("pebble not installed (apt-get install -y pebble): the replproxy_tls_* metrics are checked against their registration only")
	}
	p := platformtest.Start(t, platformtest.Options{
		Mode:       platformtest.Binaries,
		TLS:        tls,
		ProxyFlags: []string{"-wake-timeout", "1s", "-wake-page-after", "1s"},
	})
	app := p.StartApp(t, "east", platformtest.AppOptions{})
	p.CreateRepl(t, platformtest.Repl{ID: "blog1", Owner: "alice", Slug: "blog", Endpoints: []string{app.Addr}})
	p.CreateRepl(t, platformtest.Repl{ID: "down1", Owner: "alice", Slug: "down", Endpoints: []string{"127.0.0.1:1"}})
	p.CreateRepl(t, platformtest.Repl{ID: "nap1", Owner: "alice", Slug: "nap", Endpoints: []string{app.Addr}})
	p.Sleep(t, "nap1")
	client, stale := p.Client(t), p.StaleClient(t, "east")
	get := func(client *http.Client, url string, header ...string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	host := func(slug string) string { return "http://" + p.Host("alice", slug) + "/" }
	for _, c := range []struct {
		client *http.Client
		url    string
		header []string
		want   int
	}{
		{client, host("blog"), nil, 200},
		{client, host("down"), nil, 502},
		{client, host("blog"), []string{"Replproxy-Hop", "v2;forged"}, 200},
		{client, host("nap"), nil, 503}, // no container manager: the wake times out
		{stale, "http://nobody.alice." + p.Zone().Name() + "/", nil, 404},
	} {
		if got := get(c.client, c.url, c.header...); got != c.want {
			t.Fatalf("GET %s: %d, want %d", c.url, got, c.want)
		}
	}
	if tls {
		if got := get(client, "https://"+p.Host("alice", "blog")+"/"); got != 200 {
			t.Fatalf("GET https://%s/: %d", p.Host("alice", "blog"), got)
		}
	}

	fs := families{}
	for _, c := range p.Clusters() {
		scrape(t, fs, c.AdminAddr)
	}
	scrape(t, fs, p.DNSAdmin())
	seen := len(fs)
	reg := describer{fs, t}
	proxy.NewMetrics(reg, "east", nil)
	ondemand.NewMetrics(reg)
	nameserver.NewMetrics(reg)
	// Prometheus's own: the scrape's target labels, and up.
	fs.add("up", "", true)
	for _, f := range fs {
		for _, l := range []string{"job", "instance"} {
			if f.labels[l] == nil {
				f.labels[l] = map[string]bool{}
			}
		}
	}
	for _, f := range fs {
		f.labels["job"] = map[string]bool{"replproxy": true, "replns": true} // the jobs of prometheus.yml
	}

	exprs, records, _ := rules(t)
	exprs = append(exprs, dashboard(t)...)
	var registeredOnly []string
	for _, e := range exprs {
		for _, s := range selectors(t, e) {
			if strings.Contains(s.name, ":") {
				if !slices.Contains(records, s.name) {
					t.Errorf("%s: %s is no recording rule of %v", e.where, s.name, ruleFiles)
				}
				continue
			}
			f, name := fs.lookup(s.name)
			if f == nil {
				t.Errorf("%s: %s: no binary exports it", e.where, s.name)
				continue
			}
			if !f.seen && !slices.Contains(registeredOnly, name) {
				registeredOnly = append(registeredOnly, name)
			}
			for _, m := range s.matchers {
				checkMatcher(t, e, s.name, f, m)
			}
		}
	}
	slices.Sort(registeredOnly)
	t.Logf("%d expressions; %d families scraped from the binaries; named but with no series in this test (registered, checked by their descriptions): %v",
		len(exprs), seen, registeredOnly)
}

// checkMatcher checks one matcher of a selector of family f.
func checkMatcher(t *testing.T, e expression, name string, f *family, m matcher) {
	t.Helper()
	values, ok := f.labels[m.label]
	if !ok {
		t.Errorf("%s: %s has no label %q (it has %v)", e.where, name, m.label, labelNames(f))
		return
	}
	if m.op == "!=" || m.op == "!~" || m.label == "code" || m.label == "instance" {
		return
	}
	alts := []string{m.value}
	if m.op == "=~" {
		if m.value == ".*" || m.value == ".+" {
			return
		}
		if !regexp.MustCompile(`^[\w-]+(\|[\w-]+)*$`).MatchString(m.value) {
			t.Errorf("%s: %s{%s=~%q}: only alternatives of plain values are checked here", e.where, name, m.label, m.value)
			return
		}
		alts = strings.Split(m.value, "|")
	}
	for _, v := range alts {
		if values[v] || regexp.MustCompile(`\b`+regexp.QuoteMeta(v)+`\b`).MatchString(f.help) {
			continue
		}
		seen := slices.Sorted(func(yield func(string) bool) {
			for v := range values {
				if !yield(v) {
					return
				}
			}
		})
		t.Errorf("%s: %s{%s=%q}: neither seen (%v) nor named in its help (%q)", e.where, name, m.label, v, seen, f.help)
	}
}

func labelNames(f *family) []string {
	var out []string
	for l := range f.labels {
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}
