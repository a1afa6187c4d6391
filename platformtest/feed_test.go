package platformtest_test

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/platformtest"
)

// TestCutFeedResumes: after CutFeed the proxy's and replns's change feeds
// resume from their position in the cluster's change log: neither index
// is rebuilt (their rebuild counters stay at the first build), and a repl
// created during the cut is routed and answered once it ends.
func TestCutFeedResumes(t *testing.T) {
	p := platformtest.Start(t, platformtest.Options{Store: platformtest.Postgres})
	app := p.StartApp(t, "east", platformtest.AppOptions{})
	p.CreateRepl(t, platformtest.Repl{Owner: "carol", Slug: "chat", Endpoints: []string{app.Addr}})
	p.WaitResolves(t, p.Host("carol", "chat"), "east")
	admins := map[string]string{"replproxy": p.Cluster(t, "east").AdminAddr, "replns": p.DNSAdmin()}
	before := map[string]string{}
	for daemon, admin := range admins {
		before[daemon] = indexMetric(t, admin, daemon+`_index_rebuilds_total{cluster="east"}`)
		if before[daemon] != "1" {
			t.Fatalf("%s: %s index rebuilds before the cut, want the first build only", daemon, before[daemon])
		}
	}
	for i := range 3 {
		if n := p.CutFeed(t, "east"); n < 2 {
			t.Fatalf("CutFeed ended %d LISTEN connections; want the proxy's and replns's", n)
		}
		slug := []string{"one", "two", "three"}[i]
		p.CreateRepl(t, platformtest.Repl{Owner: "carol", Slug: slug, Endpoints: []string{app.Addr}})
		p.WaitResolves(t, p.Host("carol", slug), "east")
		if _, err := get(p.Client(t), "http://"+p.Host("carol", slug)+"/"); err != nil {
			t.Errorf("a repl created during cut %d: %v", i+1, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	for daemon, admin := range admins {
		if got := indexMetric(t, admin, daemon+`_index_rebuilds_total{cluster="east"}`); got != before[daemon] {
			t.Errorf("%s: %s index rebuilds after three cuts, want %s: a cut must resume, not rebuild", daemon, got, before[daemon])
		}
		if got := indexMetric(t, admin, daemon+`_index_changes_total{cluster="east"}`); got == "0" || got == "?" {
			t.Errorf("%s: %s changes applied from the feed, want the repls created", daemon, got)
		}
	}
}

// indexMetric reads one sample from a daemon's /metrics; "?" when absent.
func indexMetric(t *testing.T, admin, series string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return v
		}
	}
	return "?"
}
