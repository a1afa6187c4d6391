package postgres_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"

	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/postgres"
	"github.com/replproxy/replproxy/store/storetest"
)

// migrateTo applies the migrations up (or down) to version on dsn, as an
// older build would have left the database.
func migrateTo(t *testing.T, dsn string, version int32) {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	m, err := migrate.NewMigrator(ctx, conn, "replproxy_schema_version")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.LoadMigrations(os.DirFS("migrations")); err != nil {
		t.Fatal(err)
	}
	if err := m.MigrateTo(ctx, version); err != nil {
		t.Fatalf("migrate to %d: %v", version, err)
	}
}

// TestPostgresWakeMigration: 004 applies to a database of version 3 with
// data in it; its repls are awake and can sleep and wake; it goes down
// again while no repl is asleep.
func TestPostgresWakeMigration(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	ctx := t.Context()
	migrateTo(t, dsn, 3)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := fillRepls(ctx, pool, 1000); err != nil {
		t.Fatal(err)
	}
	p := openPostgres(t, dsn)
	if err := p.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.CheckSchema(ctx); err != nil {
		t.Fatal(err)
	}
	for _, k := range []store.Key{store.ReplKey("o7", "s7"), store.ReplIDKey("r7"), store.DomainKey("d13.example.com")} {
		rt, err := p.Lookup(ctx, k)
		if err != nil || rt.Kind != store.RouteLocal || rt.Asleep || len(rt.Endpoints) != 1 {
			t.Fatalf("lookup %s after the migration = %+v, %v; want local, awake", k, rt, err)
		}
	}
	if _, err := p.Sleep(ctx, "r7"); err != nil {
		t.Fatal(err)
	}
	if made, err := p.RequestWake(ctx, "r7", "test"); err != nil || !made {
		t.Fatalf("request wake = %v, %v", made, err)
	}
	if rt, err := p.Lookup(ctx, store.ReplKey("o7", "s7")); err != nil || !rt.Asleep || len(rt.Endpoints) != 0 {
		t.Fatalf("lookup asleep = %+v, %v", rt, err)
	}
	// Down again once no repl is asleep without endpoints.
	if _, err := p.FinishWake(ctx, "r7", []string{"127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	migrateTo(t, dsn, 3)
	migrateTo(t, dsn, 4)
}

// TestPostgresWakeNotifications: every change to a wake is "w <id>" on
// the channel, EventWake; finishing one announces the repl too.
func TestPostgresWakeNotifications(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	ctx := t.Context()
	s := openMigrated(t, dsn)
	if _, err := s.CreateRepl(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:1"}}); err != nil {
		t.Fatal(err)
	}
	events := watchEvents(t, s)
	if e := storetest.NextEvent(t, events); e.Kind != store.EventResync {
		t.Fatalf("first event %+v, want resync", e)
	}
	repl := store.Event{Kind: store.EventRepl, ReplID: "r1", Owner: "alice", Slug: "blog"}
	wake := store.Event{Kind: store.EventWake, ReplID: "r1"}
	steps := []struct {
		name string
		do   func() error
		want []store.Event
	}{
		{"sleep", func() error { _, err := s.Sleep(ctx, "r1"); return err }, []store.Event{repl}},
		{"request", func() error { _, err := s.RequestWake(ctx, "r1", "proxy-1"); return err }, []store.Event{wake}},
		{"claim", func() error { _, err := s.ClaimWake(ctx, "r1", "manager-1", time.Now().Add(-time.Minute)); return err }, []store.Event{wake}},
		{"fail", func() error { return s.FailWake(ctx, "r1", "no capacity") }, []store.Event{wake}},
		{"request again", func() error { _, err := s.RequestWake(ctx, "r1", "proxy-2"); return err }, []store.Event{wake}},
		{"finish", func() error { _, err := s.FinishWake(ctx, "r1", []string{"127.0.0.1:2"}); return err }, []store.Event{repl, wake}},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		for _, want := range st.want {
			if got := nextChange(t, events); got != want {
				t.Fatalf("%s: event %+v, want %+v", st.name, got, want)
			}
		}
	}
	// Activity sends nothing: the next event is the one of a later change.
	if err := s.RecordActivity(ctx, map[string]time.Time{"r1": time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sleep(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if got := nextChange(t, events); got != repl {
		t.Fatalf("event after activity and sleep %+v, want %+v", got, repl)
	}
}

// statements counts the statements a pool sends.
type statements struct{ n atomic.Int64 }

func (c *statements) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *statements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestPostgresRecordActivityOneStatement: a flush of 10,000 repls is one
// statement, and every row lands, keeping the later time.
func TestPostgresRecordActivityOneStatement(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	ctx := t.Context()
	openMigrated(t, dsn)
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	count := &statements{}
	cfg.ConnConfig.Tracer = count
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := postgres.New(pool, nil)
	defer p.Close()
	const n = 10_000
	if err := fillRepls(ctx, pool, n); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	last := make(map[string]time.Time, n+1)
	for i := range n {
		last[fmt.Sprintf("r%d", i)] = t0.Add(time.Duration(i) * time.Second)
	}
	last["not-here"] = t0
	for round := range 2 {
		before := count.n.Load()
		if err := p.RecordActivity(ctx, last); err != nil {
			t.Fatal(err)
		}
		if got := count.n.Load() - before; got != 1 {
			t.Fatalf("round %d: RecordActivity of %d repls sent %d statements, want 1", round, len(last), got)
		}
		for id, at := range last { // the second round goes back in time: it must not win
			last[id] = at.Add(-time.Hour)
		}
	}
	got, err := p.Activity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("activity has %d repls, want %d", len(got), n)
	}
	for _, i := range []int{0, 1, 4321, n - 1} {
		id := fmt.Sprintf("r%d", i)
		if want := t0.Add(time.Duration(i) * time.Second); !got[id].Equal(want) {
			t.Fatalf("activity of %s = %v, want %v (the later time)", id, got[id], want)
		}
	}
}

// TestPostgresWakeRequestRacesFinish: a wake requested while the manager
// finishes the one before must not be left behind for a repl that is awake
// (it would be claimed, never finished, and hide the next real request
// until its claim went stale). Under READ COMMITTED the INSERT ... SELECT
// saw the repl asleep and, once the finishing transaction deleted the
// conflicting wake, inserted a new one; the SELECT now locks the repl row.
func TestPostgresWakeRequestRacesFinish(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	ctx := t.Context()
	s := openMigrated(t, dsn)
	if _, err := s.CreateRepl(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:1"}}); err != nil {
		t.Fatal(err)
	}
	left := 0
	for i := range 200 {
		if _, err := s.Sleep(ctx, "r1"); err != nil {
			t.Fatal(err)
		}
		if made, err := s.RequestWake(ctx, "r1", "test"); err != nil || !made {
			t.Fatalf("round %d: request: %v %v", i, made, err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := s.FinishWake(ctx, "r1", []string{"127.0.0.1:2"})
			done <- err
		}()
		if _, err := s.RequestWake(ctx, "r1", "racer"); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		r, err := s.GetRepl(ctx, "r1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetWake(ctx, "r1"); err == nil && !r.Asleep {
			left++
			if err := s.FailWake(ctx, "r1", "cleanup"); err != nil { // so the next round starts clean
				t.Fatal(err)
			}
			if _, err := s.Sleep(ctx, "r1"); err != nil {
				t.Fatal(err)
			}
			if _, err := s.RequestWake(ctx, "r1", "cleanup"); err != nil {
				t.Fatal(err)
			}
			if _, err := s.FinishWake(ctx, "r1", []string{"127.0.0.1:2"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if left > 0 {
		t.Errorf("%d of 200 rounds left a wake behind for an awake repl", left)
	}
}
