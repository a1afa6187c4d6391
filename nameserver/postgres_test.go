package nameserver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/miekg/dns"
	"go.uber.org/zap/zaptest"

	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/postgres"
)

// TestPostgres runs replns over two clusters with PostgreSQL stores on
// servers of their own: creates show within a second, moves within a
// second of the move hold's end, a flood of random names costs the
// databases nothing, and stopping one cluster's server keeps its known
// repls answered.
func TestPostgres(t *testing.T) {
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
	mustCreate := func(t *testing.T, s *postgres.Store, r store.Repl) {
		t.Helper()
		if r.Endpoints == nil {
			r.Endpoints = []string{"127.0.0.1:9000"}
		}
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
	mustCreate(t, east, store.Repl{ID: "r1", Owner: "alice", Slug: "blog"})
	mustCreate(t, east, store.Repl{ID: "r2", Owner: "alice", Slug: "shop"})
	mustCreate(t, east, store.Repl{ID: "r3", Owner: "bob", Slug: "api"})
	mustCreate(t, west, store.Repl{ID: "r4", Owner: "carol", Slug: "app"})

	path := twoClusterWorld(t, dsns)
	cfg, _, looked := counting(nil)
	cfg.MoveHold = 300 * time.Millisecond // short, and still asserted (below)
	c := startClusters(t, path, cfg)
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)

	if got := answerA(ask(t, addr, "blog.alice.repl.test.", dns.TypeA)); got != "192.0.2.10" {
		t.Fatalf("blog.alice: %s", got)
	}

	t.Run("one LISTEN connection per cluster", func(t *testing.T) {
		// The route cache and the index share one change feed.
		for i, dsn := range dsns {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			var n int
			err = conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&n)
			conn.Close(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Errorf("cluster %d: %d LISTEN connections, want 1", i, n)
			}
		}
	})

	t.Run("created repl resolves within 1 s", func(t *testing.T) {
		const name = "fresh.dave.repl.test."
		if got := answerA(ask(t, addr, name, dns.TypeA)); got != "NXDOMAIN" {
			t.Fatalf("before: %s", got)
		}
		mustCreate(t, west, store.Repl{ID: "r9", Owner: "dave", Slug: "fresh"})
		t.Logf("resolved after %v", waitAnswer(t, addr, name, "198.51.100.10", time.Second))
		t.Logf("by id after %v", waitAnswer(t, addr, "r9.id.repl.test.", "198.51.100.10", time.Second))
	})

	t.Run("moved repl resolves to its new cluster after the hold, within 1 s more", func(t *testing.T) {
		const name = "api.bob.repl.test."
		if got := answerA(ask(t, addr, name, dns.TypeA)); got != "192.0.2.10" {
			t.Fatalf("before: %s", got)
		}
		r, err := east.GetRepl(ctx, "r3")
		if err != nil {
			t.Fatal(err)
		}
		r.Generation++
		start := time.Now()
		if _, err := west.Activate(ctx, r); err != nil { // step 1: live in west
			t.Fatal(err)
		}
		waitAnswer(t, addr, name, "198.51.100.10", cfg.MoveHold+time.Second)
		if took := time.Since(start); took < cfg.MoveHold {
			t.Errorf("west answered %v after the activate began, before the %v hold (TestMoveHold): the change feed records no arrival", took, cfg.MoveHold)
		}
		if _, err := east.Retire(ctx, r.ID, "west", r.Generation); err != nil { // step 2
			t.Fatal(err)
		}
		t.Logf("moved after %v", time.Since(start))
		// Still west once the tombstone is in place.
		if got := answerA(ask(t, addr, name, dns.TypeA)); got != "198.51.100.10" {
			t.Errorf("after retire: %s", got)
		}
	})

	t.Run("random and known names do not reach PostgreSQL", func(t *testing.T) {
		// The stores are read only to follow changes: the index re-reads
		// each changed repl by id (those of the subtests above may still
		// be on their way), never a name that was asked.
		zone, _ := store.NewZone("repl.test")
		asked := map[store.Key]bool{}
		const n = 2000
		for i := range n {
			name := fmt.Sprintf("x%x.alice.repl.test.", rand.Uint64())
			if i%2 == 1 {
				name = fmt.Sprintf("x%x.id.repl.test.", rand.Uint64())
			}
			k, _ := zone.ParseName(name[:len(name)-1])
			asked[k] = true
			if r := ask(t, addr, name, dns.TypeA); r.Rcode != dns.RcodeNameError {
				t.Fatalf("%s: %s", name, dns.RcodeToString[r.Rcode])
			}
		}
		for _, name := range []string{"blog.alice.repl.test", "shop.alice.repl.test", "app.carol.repl.test", "r1.id.repl.test"} {
			k, _ := zone.ParseName(name)
			asked[k] = true
			for range 50 {
				if r := ask(t, addr, name+".", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
					t.Fatalf("%s: %v", name, r)
				}
			}
		}
		bad := 0
		for _, k := range looked() {
			if asked[k] {
				bad++
			}
		}
		if bad != 0 {
			t.Errorf("%d of the names asked were looked up in a store; want none", bad)
		}
	})

	t.Run("a stopped database keeps its known repls answered", func(t *testing.T) {
		// blog.alice is cached; shop.alice was never asked (only the index
		// knows it).
		servers[0].Stop(t)
		for _, name := range []string{"blog.alice.repl.test.", "shop.alice.repl.test.", "r1.id.repl.test."} {
			if got := answerA(ask(t, addr, name, dns.TypeA)); got != "192.0.2.10" {
				t.Errorf("%s with east down: %s", name, got)
			}
		}
		if got := answerA(ask(t, addr, "app.carol.repl.test.", dns.TypeA)); got != "198.51.100.10" {
			t.Errorf("west's repl with east down: %s", got)
		}
		if got := answerA(ask(t, addr, "nope.alice.repl.test.", dns.TypeA)); got != "NXDOMAIN" {
			t.Errorf("unknown name with east down: %s", got)
		}
		servers[0].Restart(t)
		mustCreate(t, east, store.Repl{ID: "r10", Owner: "erin", Slug: "late"})
		// The watch reconnects with backoff (up to 5 s), then resyncs.
		waitAnswer(t, addr, "late.erin.repl.test.", "192.0.2.10", 15*time.Second)
	})
}

// TestHungDatabase: with one cluster's PostgreSQL frozen (SIGSTOP to the
// server and its backends: connections open, nothing answers), every
// question is still answered at once — the other cluster's names, the
// frozen cluster's known names (from its index), the apex, random names and
// challenge names. Before, a reader waited up to the 2 s load timeout.
func TestHungDatabase(t *testing.T) {
	servers := pgtest.StartN(t, 2)
	ctx := context.Background()
	var dsns [2]string
	for i, srv := range servers {
		dsns[i] = srv.NewDatabase(t)
		p, err := postgres.Open(ctx, dsns[i], zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		for j := range 40 {
			r := store.Repl{ID: fmt.Sprintf("c%dr%d", i, j), Owner: fmt.Sprintf("o%d", i), Slug: fmt.Sprintf("s%d", j), Endpoints: []string{"127.0.0.1:9000"}}
			if _, err := p.CreateRepl(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		p.Close()
	}
	path := twoClusterWorld(t, dsns)
	c := startClusters(t, path, ClustersConfig{})
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)

	// One round of questions about repls first to first+19 (names no
	// cache holds yet); returns the p99 of the answers' times.
	round := func(what string, first int) time.Duration {
		var took []time.Duration
		for n := range 40 {
			i := first + n%20
			for _, q := range []struct {
				name  string
				qtype uint16
				want  int // rcode
				addr  string
			}{
				{fmt.Sprintf("s%d.o1.repl.test.", i), dns.TypeA, dns.RcodeSuccess, "198.51.100.10"},
				{fmt.Sprintf("c0r%d.id.repl.test.", i), dns.TypeA, dns.RcodeSuccess, "192.0.2.10"}, // the frozen cluster's
				{"repl.test.", dns.TypeSOA, dns.RcodeSuccess, ""},
				{fmt.Sprintf("x%x.o0.repl.test.", rand.Uint64()), dns.TypeA, dns.RcodeNameError, ""},
				{fmt.Sprintf("_acme-challenge.s%d.o0.repl.test.", i), dns.TypeTXT, dns.RcodeNameError, ""},
			} {
				start := time.Now()
				r := ask(t, addr, q.name, q.qtype)
				took = append(took, time.Since(start))
				if r.Rcode != q.want || q.addr != "" && answerA(r) != q.addr {
					t.Errorf("%s, %s: %s %s", what, q.name, dns.RcodeToString[r.Rcode], answerA(r))
				}
			}
		}
		slices.Sort(took)
		return took[len(took)*99/100]
	}
	before := round("before", 0)
	servers[0].Pause(t)
	frozen := round("east frozen", 20)
	servers[0].Resume(t)
	t.Logf("p99 %v before, %v with east's database frozen", before, frozen)
	// The failure this guards against is a reader waiting for a load
	// timeout (2 s); an answer from memory takes well under a millisecond.
	if frozen > 200*time.Millisecond {
		t.Errorf("p99 %v with east's database frozen (before: %v); want answers from memory", frozen, before)
	}
}

// twoClusterWorld writes a registry of east and west on the stores at
// dsns and returns its path.
func twoClusterWorld(t *testing.T, dsns [2]string) string {
	t.Helper()
	return writeWorld(t, map[string]string{"clusters.yaml": fmt.Sprintf(`
clusters:
  - name: east
    proxy_ipv4: [192.0.2.10]
    forward: 10.0.0.10:8443
    store: %s
  - name: west
    proxy_ipv4: [198.51.100.10]
    forward: 10.1.0.10:8443
    store: %s
`, dsns[0], dsns[1])})
}
