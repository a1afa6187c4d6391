package nameserver

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/postgres"
)

// TestDatabaseOutageIsReported: when east's PostgreSQL stops (a fast
// shutdown: the LISTEN connection ends) or freezes (SIGSTOP: it stays open
// and silent), east is shown not ready within a bound — in its status
// (FeedUp false, since when), in replns_cluster_ready and
// replns_cluster_feed_up, and in /readyz?all=1 — while its known repls are
// still answered, /readyz stays 200 and west stays ready. Once the
// database is back east is ready again and its index has caught up: a repl
// created as the database came back is answered. Before, east stayed ready
// through both outages.
func TestDatabaseOutageIsReported(t *testing.T) {
	servers := pgtest.StartN(t, 2)
	ctx := context.Background()
	var dsns [2]string
	var stores [2]*postgres.Store
	for i, srv := range servers {
		dsns[i] = srv.NewDatabase(t)
		p, err := postgres.Open(ctx, dsns[i], zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		if err := p.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		stores[i] = p
	}
	east, west := stores[0], stores[1]
	create := func(t *testing.T, s *postgres.Store, r store.Repl) {
		t.Helper()
		r.Endpoints = []string{"127.0.0.1:9000"}
		// After a restart the pool's old connections fail once each.
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := s.CreateRepl(ctx, r)
			if err == nil {
				return
			}
			if !errors.Is(err, store.ErrUnavailable) || time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	create(t, east, store.Repl{ID: "r1", Owner: "alice", Slug: "blog"})
	create(t, west, store.Repl{ID: "r2", Owner: "carol", Slug: "app"})

	c := startClusters(t, twoClusterWorld(t, dsns), ClustersConfig{})
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	reg := prometheus.NewRegistry()
	RegisterClusters(reg, c)
	admin := httptest.NewServer(NewAdminHandler(reg, nil, c))
	defer admin.Close()

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(admin.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	// gauges returns the per-cluster gauges: name → cluster → value.
	gauges := func() map[string]map[string]float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				if mf.GetType().String() != "GAUGE" {
					continue
				}
				for _, l := range m.GetLabel() {
					if l.GetName() == "cluster" {
						if out[mf.GetName()] == nil {
							out[mf.GetName()] = map[string]float64{}
						}
						out[mf.GetName()][l.GetValue()] = m.GetGauge().GetValue()
					}
				}
			}
		}
		return out
	}
	status := func(name string) ClusterStatus {
		for _, s := range c.Status() {
			if s.Name == name {
				return s
			}
		}
		t.Fatalf("no cluster %s", name)
		return ClusterStatus{}
	}
	eastReady := func() bool { return gauges()["replns_cluster_ready"]["east"] == 1 }
	eastDown := func() bool {
		g := gauges()
		return g["replns_cluster_ready"]["east"] == 0 && g["replns_cluster_feed_up"]["east"] == 0
	}
	// waitUntil polls cond and returns how long it took to hold.
	waitUntil := func(t *testing.T, limit time.Duration, what string, cond func() bool) time.Duration {
		t.Helper()
		start := time.Now()
		waitFor(t, limit, what, cond)
		return time.Since(start)
	}
	// checkDown checks everything that should say east is down.
	checkDown := func(t *testing.T) {
		t.Helper()
		s := status("east")
		if s.FeedUp || s.FeedDownSince.IsZero() || !s.Synced || s.Ready() {
			t.Errorf("east's status with its database down: %+v", s)
		}
		if g := gauges(); g["replns_cluster_ready"]["west"] != 1 || g["replns_cluster_feed_up"]["west"] != 1 {
			t.Errorf("west's gauges with east's database down: %v", g)
		}
		if code, body := get("/readyz"); code != 200 || !strings.Contains(body, "1 of 2 clusters ready, 1 more answering from their index with the change feed down") {
			t.Errorf("/readyz with east's database down: %d %q; want 200 (west ready, east answering from memory)", code, body)
		}
		code, body := get("/readyz?all=1")
		if code != 503 || !strings.Contains(body, "cluster east: change feed down since ") || !strings.Contains(body, "cluster west: ready") {
			t.Errorf("/readyz?all=1 with east's database down: %d %q; want 503 and why", code, body)
		}
		t.Logf("/readyz?all=1: %d %q", code, body)
		// Serve-stale: east's known repl is answered from its index.
		if got := answerA(ask(t, addr, "blog.alice.repl.test.", dns.TypeA)); got != "192.0.2.10" {
			t.Errorf("east's known repl with its database down: %s", got)
		}
	}
	checkBack := func(t *testing.T, id, slug string) {
		t.Helper()
		create(t, east, store.Repl{ID: id, Owner: "erin", Slug: slug})
		feedDown := !status("east").FeedUp
		took := waitUntil(t, 15*time.Second, "east ready again", eastReady)
		waitAnswer(t, addr, slug+".erin.repl.test.", "192.0.2.10", 5*time.Second)
		t.Logf("east ready %v after %s was created, the database back (its change feed still down then: %v)", took, id, feedDown)
		if code, body := get("/readyz?all=1"); code != 200 {
			t.Errorf("/readyz?all=1 with east back: %d %q", code, body)
		}
	}

	if !eastReady() {
		t.Fatalf("east not ready at the start: %v", gauges())
	}

	t.Run("stopped database", func(t *testing.T) {
		stopped := time.Now()
		servers[0].Stop(t) // pg_ctl stop -m fast: the LISTEN connection ends
		took := waitUntil(t, 2*time.Second, "east shown down", eastDown)
		t.Logf("east shown down %v after the stop began (%v after it finished)", time.Since(stopped), took)
		checkDown(t)
		servers[0].Restart(t)
		checkBack(t, "r10", "late")
	})

	t.Run("frozen database", func(t *testing.T) {
		waitFor(t, 15*time.Second, "east ready", eastReady)
		servers[0].Pause(t) // connections stay open and silent
		took := waitUntil(t, 12*time.Second, "east shown down", eastDown)
		t.Logf("east shown down %v after its database froze", took)
		checkDown(t)
		servers[0].Resume(t)
		checkBack(t, "r11", "thawed")
	})
}
