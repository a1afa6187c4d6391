package proxy_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

// TestCreatedWhileListenIsDown: with the change feed's LISTEN connection
// lost (and kept from reconnecting) but the database answering, a repl
// created meanwhile is a 404 from the name index only until the feed's
// next poll of the change log: it is routed while the feed is still lost,
// on PostgreSQL.
func TestCreatedWhileListenIsDown(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	u, err := url.Parse(dsn)
	if err != nil || !strings.HasPrefix(dsn, "postgres") {
		t.Fatalf("pgtest's DSN %q is not a URL: %v", dsn, err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	// Connections the pool keeps open: they go on answering while the
	// database takes no new ones (the LISTEN connection's reconnection).
	q := u.Query()
	q.Set("pool_min_conns", "4")
	u.RawQuery = q.Encode()
	st, err := cluster.Open(t.Context(), u.String(), cluster.OpenOptions{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	addr := freeAddr(t)
	reg := testbed.Registry(t, map[string][2]string{"east": {addr, "east.yaml"}, "west": {"127.0.0.1:1", "west.yaml"}})
	c := startCluster(t, "east", addr, st, reg, clusterOpts{})
	app := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
	testbed.WaitFor(t, 10*time.Second, "the pool to hold its connections and the index alice/blog", func() bool {
		return c.Cache.Index().Knows(store.ReplKey("alice", "blog")) == routecache.KnownYes && connections(t, srv, db) >= 5
	})

	admin := func(sql string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, srv.DSN())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	ident := pgx.Identifier{db}.Sanitize()
	admin("ALTER DATABASE " + ident + " ALLOW_CONNECTIONS false")
	defer admin("ALTER DATABASE " + ident + " ALLOW_CONNECTIONS true")
	admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" + db + "' AND query LIKE 'LISTEN %'")
	testbed.WaitFor(t, 10*time.Second, "the feed to be lost", c.Cache.FeedLost)

	testbed.CreateRepl(t, st, "r2", "alice", "shop", testbed.HostOf(app.URL))
	created := time.Now()
	notFound := 0
	for {
		resp, body := get(t, c, "shop.alice.repl.test", "/", nil)
		if resp.StatusCode == http.StatusOK {
			break
		}
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("a repl created while LISTEN is down: %d %q", resp.StatusCode, body)
		}
		notFound++
		if !c.Cache.FeedLost() {
			t.Fatalf("the repl was a 404 until the feed came back (%d requests, %v): the index was not kept current by polling", notFound, time.Since(created))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("a repl created while LISTEN was down was a 404 for %v (%d requests), the feed lost throughout: %v", time.Since(created), notFound, c.Cache.FeedLost())
	if !c.Cache.FeedLost() {
		t.Error("the feed came back before the repl was routed: the test did not keep LISTEN down")
	}
}

// connections counts the sessions open on database db.
func connections(t *testing.T, srv *pgtest.Server, db string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, srv.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", db).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
