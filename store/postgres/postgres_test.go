package postgres_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/postgres"
	"github.com/replproxy/replproxy/store/storetest"
)

// openMigrated opens the PostgreSQL store at dsn with its schema applied,
// closed when the test ends.
func openMigrated(t *testing.T, dsn string) store.Store {
	t.Helper()
	s, err := cluster.Open(t.Context(), dsn, cluster.OpenOptions{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openPostgres(t *testing.T, dsn string) *postgres.Store {
	t.Helper()
	p, err := postgres.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestPostgresSchema(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	ctx := t.Context()

	_, err := cluster.Open(ctx, dsn, cluster.OpenOptions{})
	if err == nil || !strings.Contains(err.Error(), "replctl migrate") {
		t.Fatalf("open without schema: %v; want an error that says to run replctl migrate", err)
	}
	p := openPostgres(t, dsn)
	for range 2 { // migrating is idempotent
		if err := p.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	have, want, err := p.SchemaVersion(ctx)
	if err != nil || have != want || want < 1 {
		t.Fatalf("schema version = %d of %d, %v", have, want, err)
	}
	if err := p.CheckSchema(ctx); err != nil {
		t.Fatal(err)
	}

	// The database keeps data honest even for writers that bypass Go.
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO repls (id, owner, slug, endpoints) VALUES ('r1', 'alice', 'blog', '{127.0.0.1:1}')`); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		`INSERT INTO repls (id, owner, slug, endpoints) VALUES ('r2', 'Alice', 'blog', '{127.0.0.1:1}')`,
		`INSERT INTO repls (id, owner, slug, endpoints) VALUES ('r2', 'id', 'blog', '{127.0.0.1:1}')`,
		`INSERT INTO repls (id, owner, slug, endpoints) VALUES ('r2', 'alice', 'blog', '{127.0.0.1:1}')`,
		`INSERT INTO repls (id, owner, slug, endpoints) VALUES ('r2', 'alice', 'shop', '{}')`,
		`INSERT INTO repls (id, owner, slug, endpoints) VALUES ('-r2', 'alice', 'shop', '{127.0.0.1:1}')`,
		`INSERT INTO domains (name, repl_id, token) VALUES ('www.example.com', 'nope', 'tok')`,
		`INSERT INTO domains (name, repl_id, token) VALUES ('WWW.example.com', 'r1', 'tok')`,
		`INSERT INTO domains (name, repl_id, token) VALUES ('localhost', 'r1', 'tok')`,
		`INSERT INTO challenges (name, value, expires_at) VALUES ('x.alice.repl.test', 'v', now())`,
		`INSERT INTO challenges (name, value, expires_at) VALUES ('_acme-challenge.alice.repl.test', 'a b', now())`,
	} {
		if _, err := conn.Exec(ctx, bad); err == nil {
			t.Errorf("the database accepted: %s", bad)
		}
	}
}

func TestPostgresUnreachableIsOneClearError(t *testing.T) {
	start := time.Now()
	_, err := cluster.Open(t.Context(), "postgres://app:s3cret@127.0.0.1:1/db?connect_timeout=2", cluster.OpenOptions{})
	if err == nil {
		t.Fatal("open of an unreachable database succeeded")
	}
	msg := err.Error()
	if strings.Contains(msg, "s3cret") || !strings.Contains(msg, "127.0.0.1:1") || !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("error = %q; want it to name the server, mask the password and wrap ErrUnavailable", msg)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v: want one attempt, not a stack of retries", d)
	}
}

// watchEvents runs Watch in the background and returns its events.
func watchEvents(t *testing.T, s store.Reader) <-chan store.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan store.Event, 1000)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Watch(ctx, func(e store.Event) { events <- e }) }()
	t.Cleanup(func() { cancel(); <-done })
	return events
}

func TestPostgresNotifications(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	ctx := t.Context()
	s := openMigrated(t, dsn)
	events := watchEvents(t, s)
	if e := storetest.NextEvent(t, events); e.Kind != store.EventResync {
		t.Fatalf("first event %+v, want resync", e)
	}
	repl := store.Event{Kind: store.EventRepl, ReplID: "r1", Owner: "alice", Slug: "blog"}
	domain := store.Event{Kind: store.EventDomain, Name: "www.example.com"}
	challenge := store.Event{Kind: store.EventChallenge, Name: "_acme-challenge.alice.repl.test"}
	steps := []struct {
		name string
		do   func() error
		want []store.Event
	}{
		{"create", func() error {
			_, err := s.CreateRepl(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:1"}})
			return err
		}, []store.Event{repl}},
		{"set endpoints", func() error { _, err := s.SetEndpoints(ctx, "r1", []string{"127.0.0.1:2"}); return err }, []store.Event{repl}},
		{"link", func() error {
			_, err := s.LinkDomain(ctx, store.Domain{Name: "www.example.com", ReplID: "r1"})
			return err
		}, []store.Event{domain}},
		{"retire", func() error { _, err := s.Retire(ctx, "r1", "west", 2); return err }, []store.Event{repl, repl}}, // live row out, tombstone in: the log keeps both
		{"repoint", func() error { return s.Repoint(ctx, "r1", "north", 3) }, []store.Event{repl}},
		{"challenge", func() error {
			return s.PutChallenge(ctx, store.Challenge{Name: challenge.Name, Value: "v", ExpiresAt: time.Now().Add(time.Hour)})
		}, []store.Event{challenge}},
		{"unlink", func() error { return s.UnlinkDomain(ctx, "www.example.com") }, []store.Event{domain}},
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
}

// nextChange is storetest.NextEvent with the event's log position checked
// (growing) and then zeroed.
func nextChange(t *testing.T, events <-chan store.Event) store.Event {
	t.Helper()
	e := storetest.NextEvent(t, events)
	if e.Pos <= 0 {
		t.Fatalf("event %+v has no position in the log", e)
	}
	e.Pos = 0
	return e
}

// TestPostgresWatchReconnectsAndResumes: after the server's restart the
// watcher reconnects and resumes from its position in the log (EventLost,
// then EventResume), with no EventResync.
func TestPostgresWatchReconnectsAndResumes(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	ctx := t.Context()
	s := openMigrated(t, dsn)
	events := watchEvents(t, s)
	if e := storetest.NextEvent(t, events); e.Kind != store.EventResync {
		t.Fatalf("first event %+v, want resync", e)
	}
	srv.Stop(t)
	if e := storetest.NextEvent(t, events); e.Kind != store.EventLost {
		t.Fatalf("event after the server stopped %+v, want lost", e)
	}
	srv.Restart(t)
	// After the server is back, the watcher reconnects and resumes.
	deadline := time.After(20 * time.Second)
	for resumed := false; !resumed; {
		select {
		case e := <-events:
			if e.Kind == store.EventResync {
				t.Fatal("a resync after a reconnection: want a resume from the log's position")
			}
			resumed = e.Kind == store.EventResume
		case <-deadline:
			t.Fatal("no resume within 20s of the server's restart")
		}
	}
	// The pool's first use of a connection from before the restart may
	// fail once; the store answers again right after.
	for attempt := 0; ; attempt++ {
		_, err := s.CreateRepl(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:1"}})
		if err == nil {
			break
		}
		if attempt == 3 || !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("create after restart (attempt %d): %v", attempt+1, err)
		}
	}
	// The pool's stale connection may cost one more lost-and-resumed pair.
	e := storetest.NextEvent(t, events)
	for e.Kind == store.EventLost || e.Kind == store.EventResume {
		e = storetest.NextEvent(t, events)
	}
	if e.Kind != store.EventRepl || e.ReplID != "r1" {
		t.Fatalf("event after reconnect %+v, want repl r1", e)
	}
}

// TestPostgresWatchNoticesHungServer: a frozen server (SIGSTOP: its
// connections stay open, nothing answers) is noticed by the LISTEN
// connection's probe, as EventLost within watchProbeEvery+watchProbeTimeout
// (8 s); a server stopped with a fast shutdown at once. Once the server
// answers again the watcher resumes from its position in the log. Before
// the probe a frozen server was never noticed.
func TestPostgresWatchNoticesHungServer(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	s := openMigrated(t, dsn)
	events := watchEvents(t, s)
	if e := storetest.NextEvent(t, events); e.Kind != store.EventResync {
		t.Fatalf("first event %+v, want resync", e)
	}
	next := func(what string, within time.Duration, kind store.EventKind) time.Duration {
		t.Helper()
		start := time.Now()
		deadline := time.After(within)
		for {
			select {
			case e := <-events:
				if e.Kind == kind {
					return time.Since(start)
				}
			case <-deadline:
				t.Fatalf("%s: no %s event within %v", what, kind, within)
			}
		}
	}
	srv.Pause(t)
	t.Logf("frozen: lost after %v", next("frozen", 12*time.Second, store.EventLost))
	srv.Resume(t)
	t.Logf("resumed: resumed after %v", next("resumed", 15*time.Second, store.EventResume))
	srv.Stop(t)
	t.Logf("stopped: lost after %v", next("stopped", 2*time.Second, store.EventLost))
	srv.Restart(t)
	t.Logf("restarted: resumed after %v", next("restarted", 15*time.Second, store.EventResume))
}

// TestPostgresLookupUsesIndex checks the plans of the request-path
// lookups on a table large enough for the planner to care.
func TestPostgresLookupUsesIndex(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	ctx := t.Context()
	openMigrated(t, dsn) // the schema; the test reads through its own pool
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := fillRepls(ctx, pool, 20_000); err != nil {
		t.Fatal(err)
	}
	for _, k := range []store.Key{store.ReplKey("o123", "s123"), store.ReplIDKey("r123"), store.DomainKey("d123.example.com")} {
		plan, err := explainLookup(ctx, pool, k)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "Index") {
			t.Errorf("lookup %s does not use an index:\n%s", k, plan)
		}
	}
}

// TestPostgresPoolSize: without pool_max_conns in the DSN the pool holds
// DefaultPoolMaxConns, whatever the host's CPU count (pgxpool's own
// default); the DSN's value wins.
func TestPostgresPoolSize(t *testing.T) {
	dsn := pgtest.Start(t).NewDatabase(t)
	tests := []struct {
		name string
		dsn  string
		want int32
	}{
		{name: "default", dsn: dsn, want: postgres.DefaultPoolMaxConns},
		{name: "from the DSN", dsn: dsn + "&pool_max_conns=7", want: 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := postgres.PoolMaxConns(openPostgres(t, tt.dsn)); got != tt.want {
				t.Errorf("pool of %s: %d connections, want %d", tt.dsn, got, tt.want)
			}
		})
	}
}

// TestPostgresApplicationName: the daemons' connections, the LISTEN one
// included, carry the name Open is given (pg_stat_activity shows whose
// they are); a DSN's own application_name wins.
func TestPostgresApplicationName(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	m, err := cluster.Open(t.Context(), dsn, cluster.OpenOptions{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	m.Close() // its connections are unnamed: gone before the counts
	names := func(s *postgres.Store, pool *pgxpool.Pool, want string) map[string]int {
		t.Helper()
		events := watchEvents(t, s)
		_ = storetest.NextEvent(t, events) // following: its LISTEN connection is up
		if _, err := s.Lookup(t.Context(), store.ReplKey("alice", "blog")); !errors.Is(err, store.ErrNotFound) {
			t.Fatal(err)
		}
		got := map[string]int{}
		var rows []string
		testbed.WaitFor(t, 5*time.Second, "a pool connection and the LISTEN one named "+want, func() bool {
			r, err := pool.Query(t.Context(), `SELECT application_name FROM pg_stat_activity WHERE datname = current_database() AND application_name <> 'watcher' AND backend_type = 'client backend'`)
			if err != nil {
				t.Fatal(err)
			}
			rows, err = pgx.CollectRows(r, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, name := range rows {
				if name == want {
					n++
				}
			}
			return n >= 2 // a pool connection and the LISTEN one
		})
		for _, n := range rows {
			got[n]++
		}
		return got
	}
	watcher, err := pgxpool.New(t.Context(), dsn+map[bool]string{true: "&", false: "?"}[strings.Contains(dsn, "?")]+"application_name=watcher")
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()

	s, err := postgres.Open(t.Context(), dsn, nil, postgres.WithApplicationName("replproxy east"))
	if err != nil {
		t.Fatal(err)
	}
	got := names(s, watcher, "replproxy east")
	s.Close()
	if len(got) != 1 || got["replproxy east"] < 2 {
		t.Fatalf("connections named %v, want every one (pool and LISTEN) \"replproxy east\"", got)
	}
	own := dsn + map[bool]string{true: "&", false: "?"}[strings.Contains(dsn, "?")] + "application_name=mine"
	if !strings.HasPrefix(dsn, "postgres") {
		own = dsn + " application_name=mine"
	}
	s, err = postgres.Open(t.Context(), own, nil, postgres.WithApplicationName("replproxy east"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// (The first store's watcher keeps its LISTEN connection until the
	// test ends.)
	if got := names(s, watcher, "mine"); got["mine"] < 2 || len(got) > 2 || got[""] != 0 {
		t.Fatalf("connections named %v, want the second store's (pool and LISTEN) the DSN's own name \"mine\"", got)
	}
}
