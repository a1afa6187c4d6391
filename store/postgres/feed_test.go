package postgres_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/postgres"
	"github.com/replproxy/replproxy/store/routecache"
)

// follow runs Follow from from in the background and returns its batches.
func follow(t *testing.T, s *postgres.Store, from store.Position) <-chan store.Batch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	batches := make(chan store.Batch, 1000)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Follow(ctx, from, func(b store.Batch) { batches <- b }) }()
	t.Cleanup(func() { cancel(); <-done })
	return batches
}

// nextBatch returns the next batch, failing t when none comes within d.
func nextBatch(t *testing.T, batches <-chan store.Batch, d time.Duration) store.Batch {
	t.Helper()
	select {
	case b := <-batches:
		return b
	case <-time.After(d):
		t.Fatalf("no batch within %v", d)
		return store.Batch{}
	}
}

// replsSeen collects the repl ids of EventRepl events until want are all
// seen, failing t on a resync or when d passes first; it returns them in
// the order delivered, with their positions.
func replsSeen(t *testing.T, batches <-chan store.Batch, d time.Duration, want ...string) (ids []string, pos []int64) {
	t.Helper()
	missing := make(map[string]bool)
	for _, id := range want {
		missing[id] = true
	}
	deadline := time.After(d)
	for len(missing) > 0 {
		select {
		case b := <-batches:
			for _, ev := range b.Events {
				switch ev.Kind {
				case store.EventResync:
					t.Fatalf("a resync while following (want %v still)", missing)
				case store.EventRepl:
					ids, pos = append(ids, ev.ReplID), append(pos, ev.Pos)
					delete(missing, ev.ReplID)
				}
			}
		case <-deadline:
			t.Fatalf("changes to %v not delivered within %v (got %v)", missing, d, ids)
		}
	}
	return ids, pos
}

func openFeed(t *testing.T) (*postgres.Store, *pgxpool.Pool, *pgtest.Server, string) {
	t.Helper()
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	openMigrated(t, dsn) // the schema
	s := openPostgres(t, dsn)
	s.SetFeedPoll(100 * time.Millisecond)
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return s, pool, srv, dsn
}

// begin opens a transaction that has its transaction id already (it
// wrote a row no trigger logs).
func begin(t *testing.T, pool *pgxpool.Pool, who string) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(t.Context(), `INSERT INTO repl_activity (repl_id, last_at) VALUES ($1, now())`, who); err != nil {
		t.Fatal(err)
	}
	return tx
}

// TestFeedOutOfOrderCommits: two transactions whose changes commit out of
// position order. T1 takes its transaction id first; T2 logs its change
// first (the lower position); T1 logs and commits first, T2 after. A
// reader that went by position alone would have moved past T2's position
// when it read T1's change and never delivered T2's; Follow delivers both,
// each once, T2's after T1's. And while T1 is open, T2's committed change
// waits (it is above the horizon) rather than being skipped.
func TestFeedOutOfOrderCommits(t *testing.T) {
	s, pool, _, _ := openFeed(t)
	ctx := t.Context()
	batches := follow(t, s, store.Position{})
	if b := nextBatch(t, batches, 10*time.Second); len(b.Events) != 1 || b.Events[0].Kind != store.EventResync {
		t.Fatalf("first batch %+v, want one resync", b)
	}
	add := func(tx pgx.Tx, id string) {
		t.Helper()
		if _, err := tx.Exec(ctx, `INSERT INTO repls (id, owner, slug, endpoints) VALUES ($1, 'o', $1, '{127.0.0.1:1}')`, id); err != nil {
			t.Fatal(err)
		}
	}
	t1 := begin(t, pool, "t1")
	t2 := begin(t, pool, "t2")
	add(t2, "second") // the lower position
	add(t1, "first")
	if err := t1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	ids, pos := replsSeen(t, batches, 5*time.Second, "first")
	if len(ids) != 1 {
		t.Fatalf("delivered %v with T2 still open, want first alone", ids)
	}
	// T2 is committed now, below the position of the change delivered.
	if err := t2.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	ids2, pos2 := replsSeen(t, batches, 5*time.Second, "second")
	if len(ids2) != 1 || pos2[0] >= pos[0] {
		t.Fatalf("then %v at %v, want second at a position below first's %d", ids2, pos2, pos[0])
	}

	// The other order: a change committed while an older transaction is
	// open waits for it, then comes.
	t3 := begin(t, pool, "t3")
	t4 := begin(t, pool, "t4")
	add(t4, "fourth")
	if err := t4.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-batches:
		t.Fatalf("delivered %+v while an older transaction is open: it could still log a change below it", b)
	case <-time.After(500 * time.Millisecond):
	}
	add(t3, "third")
	if err := t3.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	ids3, _ := replsSeen(t, batches, 5*time.Second, "third", "fourth")
	if strings.Join(ids3, ",") != "third,fourth" {
		t.Fatalf("delivered %v, want third,fourth (by transaction)", ids3)
	}
}

// TestFeedResumesAfterCut: ending the LISTEN connection (platformtest's
// CutFeed) is an EventLost, then an EventResume and the changes made
// meanwhile: no resync.
func TestFeedResumesAfterCut(t *testing.T) {
	s, pool, _, _ := openFeed(t)
	ctx := t.Context()
	batches := follow(t, s, store.Position{})
	if b := nextBatch(t, batches, 10*time.Second); b.Events[0].Kind != store.EventResync {
		t.Fatalf("first batch %+v, want a resync", b)
	}
	time.Sleep(200 * time.Millisecond) // listening
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("ended %d LISTEN connections (%v), want 1", n, err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO repls (id, owner, slug, endpoints) VALUES ('during', 'o', 'during', '{127.0.0.1:1}')`); err != nil {
		t.Fatal(err)
	}
	var lost, resumed bool
	deadline := time.After(10 * time.Second)
	for seen := false; !seen || !resumed; {
		select {
		case b := <-batches:
			for _, ev := range b.Events {
				switch ev.Kind {
				case store.EventResync:
					t.Fatal("a resync after the cut: want a resume")
				case store.EventLost:
					lost = true
				case store.EventResume:
					if !lost {
						t.Fatal("a resume before a lost")
					}
					resumed = true
				case store.EventRepl:
					seen = seen || ev.ReplID == "during"
				}
			}
		case <-deadline:
			t.Fatalf("after the cut: lost %v, resumed %v, change seen %v; want all", lost, resumed, seen)
		}
	}
}

// TestFeedPrunedRebuilds: a consumer whose position pruning went past
// gets an EventResync; one that is not behind goes on.
func TestFeedPrunedRebuilds(t *testing.T) {
	s, pool, _, _ := openFeed(t)
	ctx := t.Context()
	batches := follow(t, s, store.Position{})
	old := nextBatch(t, batches, 10*time.Second).Next
	if _, err := pool.Exec(ctx, `INSERT INTO repls (id, owner, slug, endpoints) VALUES ('a', 'o', 'a', '{127.0.0.1:1}')`); err != nil {
		t.Fatal(err)
	}
	replsSeen(t, batches, 5*time.Second, "a")
	if n, err := s.PruneChanges(ctx, time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("pruned %d (%v), want 1", n, err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO repls (id, owner, slug, endpoints) VALUES ('b', 'o', 'b', '{127.0.0.1:1}')`); err != nil {
		t.Fatal(err)
	}
	replsSeen(t, batches, 5*time.Second, "b") // the running consumer was past it: no resync

	behind := follow(t, s, old)
	b := nextBatch(t, behind, 10*time.Second)
	if len(b.Events) != 1 || b.Events[0].Kind != store.EventResync {
		t.Fatalf("a consumer behind the pruned changes got %+v, want a resync", b)
	}
	if _, err := s.PruneChanges(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM changes`).Scan(&left); err != nil || left != 1 {
		t.Fatalf("%d changes left after pruning those older than an hour (%v), want 1", left, err)
	}
}

// TestFeedFollowsStandby: a consumer of a hot standby (where LISTEN is
// refused) sees the changes made on the primary, by polling.
func TestFeedFollowsStandby(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	openMigrated(t, dsn)
	ctx := t.Context()
	primary := openPostgres(t, dsn)
	standby := srv.StartStandby(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	standbyDSN := standby.DatabaseDSN(t, strings.TrimPrefix(u.Path, "/"))
	replica := openPostgres(t, standbyDSN)
	if err := replica.CheckSchema(ctx); err != nil {
		t.Fatalf("the standby's schema: %v", err)
	}
	replica.SetFeedPoll(100 * time.Millisecond)
	conn, err := pgx.Connect(ctx, standbyDSN)
	if err != nil {
		t.Fatal(err)
	}
	var inRecovery bool
	err = conn.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&inRecovery)
	_ = conn.Close(ctx)
	if err != nil || !inRecovery {
		t.Fatalf("the standby in recovery: %v %v", inRecovery, err)
	}
	batches := follow(t, replica, store.Position{})
	if b := nextBatch(t, batches, 10*time.Second); b.Events[0].Kind != store.EventResync {
		t.Fatalf("first batch %+v, want a resync", b)
	}
	for i, id := range []string{"p1", "p2", "p3"} {
		start := time.Now()
		if _, err := primary.CreateRepl(ctx, store.Repl{ID: id, Owner: "o", Slug: id, Endpoints: []string{"127.0.0.1:1"}}); err != nil {
			t.Fatal(err)
		}
		replsSeen(t, batches, 5*time.Second, id)
		t.Logf("change %d seen on the standby after %v", i, time.Since(start).Round(time.Millisecond))
	}
}

// TestIndexResumesAfterCut: the daemons' name index, following the feed,
// is not rebuilt when the LISTEN connection is cut (platformtest's
// CutFeed): its rebuild counter stays at the first build, and a change
// made during the cut reaches it by the log.
func TestIndexResumesAfterCut(t *testing.T) {
	s, pool, _, _ := openFeed(t)
	ctx := t.Context()
	c := routecache.NewIndexed(s, routecache.Config{}, nil, nil)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	x := c.Index()
	waitFor(t, "the index built", func() bool { return x.Stats().Current })
	before := x.Stats()
	if before.Rebuilds != 1 {
		t.Fatalf("%d rebuilds after the first build, want 1", before.Rebuilds)
	}
	for range 3 {
		time.Sleep(200 * time.Millisecond) // listening again
		if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND query LIKE 'LISTEN %'`); err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprint("cut", x.Stats().Changes)
		if _, err := s.CreateRepl(ctx, store.Repl{ID: id, Owner: "o", Slug: id, Endpoints: []string{"127.0.0.1:1"}}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the repl made during the cut indexed", func() bool { return x.Knows(store.ReplIDKey(id)) == routecache.KnownYes })
	}
	waitFor(t, "the feed resumed", func() bool { return !c.FeedLost() })
	after := x.Stats()
	if after.Rebuilds != before.Rebuilds {
		t.Errorf("%d rebuilds after three cuts, want %d: a cut must resume, not rebuild", after.Rebuilds, before.Rebuilds)
	}
	if !before.Position.Less(after.Position) {
		t.Errorf("position %v after the changes, want past %v", after.Position, before.Position)
	}
	if q := after.Queries - before.Queries; q > 3 {
		t.Errorf("%d store calls for 3 changes, want one read each at most", q)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFeedCoalescesWakeUps: a stream of 200 one-change transactions, one
// every millisecond or so, is read in a few batches (a read at most every
// readGap, 25 ms), not once per commit: each read costs the database CPU
// per consumer (make bench-fanout), so with a hundred consumers per
// cluster reading per commit is what saturates it. Every change arrives.
func TestFeedCoalescesWakeUps(t *testing.T) {
	s, pool, _, _ := openFeed(t)
	ctx := t.Context()
	batches := follow(t, s, store.Position{})
	if b := nextBatch(t, batches, 10*time.Second); b.Events[0].Kind != store.EventResync {
		t.Fatalf("first batch %+v, want a resync", b)
	}
	time.Sleep(200 * time.Millisecond) // listening
	var want []string
	start := time.Now()
	for i := range 200 {
		id := fmt.Sprintf("c%d", i)
		want = append(want, id)
		if _, err := pool.Exec(ctx, `INSERT INTO repls (id, owner, slug, endpoints) VALUES ($1, 'o', $1, '{127.0.0.1:1}')`, id); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	missing := map[string]bool{}
	for _, id := range want {
		missing[id] = true
	}
	reads := 0
	deadline := time.After(10 * time.Second)
	for len(missing) > 0 {
		select {
		case b := <-batches:
			reads++
			for _, ev := range b.Events {
				delete(missing, ev.ReplID)
			}
		case <-deadline:
			t.Fatalf("%d changes not delivered", len(missing))
		}
	}
	// One read per 25 ms over the stream, a few more for the held-back
	// rows of commits in progress: far fewer than 200.
	limit := int(took/(25*time.Millisecond))*3 + 10
	t.Logf("200 commits over %v delivered in %d reads (limit %d)", took.Round(time.Millisecond), reads, limit)
	if reads > limit {
		t.Fatalf("200 commits over %v took %d reads of the log, want at most %d: wake-ups are not coalesced", took.Round(time.Millisecond), reads, limit)
	}
}
