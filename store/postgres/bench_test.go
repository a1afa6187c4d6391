package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/postgres"
	"github.com/replproxy/replproxy/store/routecache"
)

// fillRepls adds n repls r<i> = o<i>/s<i>, one domain d<i>.example.com per
// ten repls and one tombstone per ten, in one statement each, then ANALYZEs.
func fillRepls(ctx context.Context, pool *pgxpool.Pool, n int) error {
	for _, q := range []string{
		`INSERT INTO repls (id, owner, slug, endpoints)
		 SELECT 'r' || i, 'o' || i, 's' || i, ARRAY['10.0.' || (i % 250) || '.' || (i % 200) || ':8080']
		   FROM generate_series(0, $1 - 1) i`,
		`INSERT INTO domains (name, repl_id, token)
		 SELECT 'd' || i || '.example.com', 'r' || i, 'tok' FROM generate_series(3, $1 - 1, 10) i`,
		`INSERT INTO tombstones (repl_id, owner, slug, cluster, generation)
		 SELECT 't' || i, 'to' || i, 's' || i, 'west', 2 FROM generate_series(0, $1 - 1, 10) i`,
		`ANALYZE`,
	} {
		var args []any
		if strings.Contains(q, "$1") {
			args = append(args, n)
		}
		if _, err := pool.Exec(ctx, q, args...); err != nil {
			return fmt.Errorf("fill %d repls: %w", n, err)
		}
	}
	return nil
}

// explainLookup returns the plan of the query Lookup runs for k.
func explainLookup(ctx context.Context, pool *pgxpool.Pool, k store.Key) (string, error) {
	sql, args := postgres.LookupQuery(k)
	rows, err := pool.Query(ctx, "EXPLAIN "+sql, args...)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for rows.Next() {
		var line string
		if err := rows.Scan(&line); err != nil {
			return "", err
		}
		b.WriteString(line + "\n")
	}
	return b.String(), rows.Err()
}

// BenchmarkLookup compares a cache hit with the PostgreSQL lookup it
// saves, in one run: the figure that matters is their ratio.
func BenchmarkLookup(b *testing.B) {
	srv := pgtest.Start(b)
	ctx := context.Background()
	pg, err := cluster.Open(ctx, srv.NewDatabase(b), cluster.OpenOptions{Migrate: true})
	if err != nil {
		b.Fatal(err)
	}
	defer pg.Close()
	if _, err := pg.CreateRepl(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"10.0.0.1:80"}}); err != nil {
		b.Fatal(err)
	}
	k := store.ReplKey("alice", "blog")

	b.Run("backend=postgres", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pg.Lookup(ctx, k); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The cache runs as in the daemons: watching the store, on its own
	// clock.
	c := routecache.New(pg, routecache.Config{}, nil, nil)
	watchCtx, stop := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); _ = c.Run(watchCtx) }()
	defer func() { stop(); <-watchDone }()
	<-c.Synced()

	b.Run("backend=cache-hit", func(b *testing.B) {
		if _, err := c.Lookup(ctx, k); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Lookup(ctx, k); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("backend=cache-hit-parallel", func(b *testing.B) {
		if _, err := c.Lookup(ctx, k); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				_, _ = c.Lookup(ctx, k)
			}
		})
	})
}

// BenchmarkPostgresLookupScale looks repls up by owner/slug in tables of
// 1,000 and 1,000,000 repls: with the index, the cost barely grows.
func BenchmarkPostgresLookupScale(b *testing.B) {
	srv := pgtest.Start(b)
	ctx := context.Background()
	for _, n := range []int{1_000, 1_000_000} {
		b.Run(fmt.Sprintf("repls=%d", n), func(b *testing.B) {
			dsn := srv.NewDatabase(b)
			s, err := cluster.Open(ctx, dsn, cluster.OpenOptions{Migrate: true})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			pool, err := pgxpool.New(ctx, dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer pool.Close()
			if err := fillRepls(ctx, pool, n); err != nil {
				b.Fatal(err)
			}
			plan, err := explainLookup(ctx, pool, store.ReplKey("o7", "s7"))
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("plan for %d repls:\n%s", n, plan)
			keys := make([]store.Key, 1024)
			for i := range keys {
				j := (i * 7919) % n
				keys[i] = store.ReplKey(fmt.Sprint("o", j), fmt.Sprint("s", j))
			}
			i := 0
			for b.Loop() {
				if _, err := s.Lookup(ctx, keys[i%len(keys)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

// notAFeed hides a store's change log from the index: it follows Watch one
// change at a time and reads each changed name with its own query, as
// before the log.
type notAFeed struct{ store.Store }

// BenchmarkIndexApply measures how fast a name index applies a burst of
// changes from PostgreSQL: 5,000 repls' endpoints changed in one
// statement per round, and the round ends when the index has read them
// all. mode=batch is the change log read in batches with one read of the
// changed rows per batch (store.Feed); mode=per-change is one query per
// change.
func BenchmarkIndexApply(b *testing.B) {
	const n = 5_000 // below the index's queue bound: per-change never rebuilds
	for _, mode := range []string{"batch", "per-change"} {
		b.Run("mode="+mode, func(b *testing.B) {
			srv := pgtest.Start(b)
			ctx := context.Background()
			dsn := srv.NewDatabase(b)
			st, err := cluster.Open(ctx, dsn, cluster.OpenOptions{Migrate: true})
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			pool, err := pgxpool.New(ctx, dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer pool.Close()
			if err := fillRepls(ctx, pool, n); err != nil {
				b.Fatal(err)
			}
			var lister routecache.Lister = st
			if mode == "per-change" {
				lister = notAFeed{st}
			}
			c := routecache.NewIndexed(lister, routecache.Config{}, nil, nil)
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { defer close(done); _ = c.Run(runCtx) }()
			defer func() { stop(); <-done }()
			x := c.Index()
			for !x.Stats().Current {
				time.Sleep(time.Millisecond)
			}
			applied := func() uint64 {
				if s := x.Stats(); mode == "batch" {
					return s.Changes
				} else {
					return s.Queries
				}
			}
			var total time.Duration
			rounds := 0
			for b.Loop() {
				want := applied() + n
				start := time.Now()
				if _, err := pool.Exec(ctx, `UPDATE repls SET endpoints = ARRAY['10.1.0.' || (generation % 200) || ':' || (8000 + $1::int)] WHERE id LIKE 'r%'`, rounds); err != nil {
					b.Fatal(err)
				}
				for applied() < want {
					time.Sleep(100 * time.Microsecond)
				}
				total += time.Since(start)
				rounds++
			}
			if r := x.Stats().Rebuilds; r != 1 {
				b.Fatalf("%d rebuilds, want the first build only", r)
			}
			b.ReportMetric(float64(n*rounds)/total.Seconds(), "changes/s")
		})
	}
}
