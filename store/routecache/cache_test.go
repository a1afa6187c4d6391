package routecache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

// countingReader is a Reader over a map that counts its calls, can fail,
// and can hold calls until released. It stands in for a backend to test
// the cache's own logic; the backends themselves are tested for real.
type countingReader struct {
	mu         sync.Mutex
	routes     map[store.Key]store.Route
	challenges map[string][]store.Challenge
	fail       error
	gate       chan struct{} // when set, calls wait for it to close
	calls      atomic.Int64
	entered    chan struct{} // gets a value as each call starts, when set
}

func newCountingReader() *countingReader {
	return &countingReader{routes: map[store.Key]store.Route{}, challenges: map[string][]store.Challenge{}}
}

func (r *countingReader) set(k store.Key, rt store.Route) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes[k] = rt
}

func (r *countingReader) setFail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = err
}

func (r *countingReader) enter() error {
	r.calls.Add(1)
	r.mu.Lock()
	gate, entered := r.gate, r.entered
	r.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if gate != nil {
		<-gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fail
}

func (r *countingReader) Lookup(_ context.Context, k store.Key) (store.Route, error) {
	if err := r.enter(); err != nil {
		return store.Route{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rt, ok := r.routes[k]
	if !ok {
		return store.Route{}, fmt.Errorf("lookup %s: %w", k, store.ErrNotFound)
	}
	return rt, nil
}

func (r *countingReader) Challenges(_ context.Context, name string) ([]store.Challenge, error) {
	if err := r.enter(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.challenges[name], nil
}

func (r *countingReader) Watch(ctx context.Context, fn func(store.Event)) error {
	fn(store.Event{Kind: store.EventResync})
	<-ctx.Done()
	return ctx.Err()
}

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

var (
	blogKey   = store.ReplKey("alice", "blog")
	blogRoute = store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"10.0.0.1:80"}, Generation: 1}
)

func newTestCache(t *testing.T, r store.Reader, cfg routecache.Config, logger *zap.Logger) *routecache.Cache {
	t.Helper()
	return newClockedCache(t, r, cfg, nil, logger)
}

// newClockedCache is newTestCache with a clock (nil: the real one).
func newClockedCache(t *testing.T, r store.Reader, cfg routecache.Config, now func() time.Time, logger *zap.Logger) *routecache.Cache {
	t.Helper()
	c := routecache.New(r, cfg, now, logger)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-c.Synced()
	return c
}

func lookup(t *testing.T, c *routecache.Cache, k store.Key) (store.Route, error) {
	t.Helper()
	return c.Lookup(t.Context(), k)
}

func TestCacheHitMakesNoBackendCallAndNoAllocation(t *testing.T) {
	r := newCountingReader()
	r.set(blogKey, blogRoute)
	c := newTestCache(t, r, routecache.Config{}, nil)
	for range 3 {
		got, err := lookup(t, c, blogKey)
		if err != nil || got.ReplID != "r1" {
			t.Fatalf("lookup = %+v, %v", got, err)
		}
	}
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("backend calls = %d, want 1", n)
	}
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() { _, _ = c.Lookup(ctx, blogKey) })
	if allocs != 0 {
		t.Fatalf("a hit allocates %v times, want 0", allocs)
	}
	if s := c.Stats(); s.Hits < 1000 || s.Misses != 1 || s.Loads != 1 || s.Entries != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestCacheConcurrentMissesMakeOneCall(t *testing.T) {
	r := newCountingReader()
	r.set(blogKey, blogRoute)
	r.gate = make(chan struct{})
	r.entered = make(chan struct{}, 1)
	c := newTestCache(t, r, routecache.Config{}, nil)

	const n = 1000
	var wg sync.WaitGroup
	var started sync.WaitGroup
	started.Add(n)
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			started.Done()
			got, err := c.Lookup(context.Background(), blogKey)
			if err == nil && got.ReplID != "r1" {
				err = fmt.Errorf("got %+v", got)
			}
			errs <- err
		})
	}
	started.Wait()
	<-r.entered // the one call is in the backend; the others wait on it
	// Let stragglers reach the cache before the call returns.
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().Misses < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	close(r.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if calls := r.calls.Load(); calls != 1 {
		t.Fatalf("%d concurrent misses made %d backend calls, want 1", n, calls)
	}
}

func TestCacheNegativeEntriesAndTTL(t *testing.T) {
	r := newCountingReader()
	clock := newFakeClock()
	c := newClockedCache(t, r, routecache.Config{TTL: time.Minute, NegativeTTL: 5 * time.Second}, clock.Now, nil)

	for range 2 {
		if _, err := lookup(t, c, blogKey); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("lookup = %v, want not found", err)
		}
	}
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("not-found twice made %d calls, want 1 (negative entry)", n)
	}
	r.set(blogKey, blogRoute)
	clock.Advance(6 * time.Second) // the negative entry expires
	if got, err := lookup(t, c, blogKey); err != nil || got.ReplID != "r1" {
		t.Fatalf("after negative TTL: %+v, %v", got, err)
	}
	clock.Advance(59 * time.Second)
	_, _ = lookup(t, c, blogKey)
	if n := r.calls.Load(); n != 2 {
		t.Fatalf("calls = %d, want 2 (entry still fresh)", n)
	}
	clock.Advance(2 * time.Second) // the found entry expires: asked again
	_, _ = lookup(t, c, blogKey)
	if n := r.calls.Load(); n != 3 {
		t.Fatalf("calls = %d, want 3 (TTL passed)", n)
	}
}

// eventReader is a countingReader whose Watch is driven by the test.
type eventReader struct {
	*countingReader
	events chan store.Event
}

func (r *eventReader) Watch(ctx context.Context, fn func(store.Event)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-r.events:
			fn(e)
		}
	}
}

// send delivers an event and waits until the cache has applied it (the
// watch loop takes the next one only after fn returned).
func (r *eventReader) send(e store.Event) {
	r.events <- e
	r.events <- store.Event{} // a no-op: once taken, e was applied
}

func TestCacheInvalidation(t *testing.T) {
	r := &eventReader{newCountingReader(), make(chan store.Event)}
	domain := store.DomainKey("www.example.com")
	r.set(blogKey, blogRoute)
	r.set(store.ReplIDKey("r1"), blogRoute)
	r.set(domain, blogRoute)
	c := routecache.New(r, routecache.Config{}, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	r.send(store.Event{Kind: store.EventResync})

	for _, k := range []store.Key{blogKey, store.ReplIDKey("r1"), domain} {
		if _, err := lookup(t, c, k); err != nil {
			t.Fatal(err)
		}
	}
	moved := store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: "west", Generation: 2}
	for _, k := range []store.Key{blogKey, store.ReplIDKey("r1"), domain} {
		r.set(k, moved)
	}
	// One repl event drops its name, its id and the domains routing to it.
	r.send(store.Event{Kind: store.EventRepl, ReplID: "r1", Owner: "alice", Slug: "blog"})
	for _, k := range []store.Key{blogKey, store.ReplIDKey("r1"), domain} {
		if got, err := lookup(t, c, k); err != nil || got.Kind != store.RouteTombstone || got.Cluster != "west" {
			t.Fatalf("%s after the event = %+v, %v; want the tombstone", k, got, err)
		}
	}
	if s := c.Stats(); s.Invalidation != 3 || s.Loads != 6 {
		t.Fatalf("stats = %+v, want 3 invalidations and 6 loads", s)
	}

	// A domain event drops a negative entry.
	other := store.DomainKey("new.example.com")
	if _, err := lookup(t, c, other); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	r.set(other, blogRoute)
	r.send(store.Event{Kind: store.EventDomain, Name: "new.example.com"})
	if got, err := lookup(t, c, other); err != nil || got.ReplID != "r1" {
		t.Fatalf("after domain event = %+v, %v", got, err)
	}

	// A resync makes everything be asked again.
	calls := r.calls.Load()
	r.send(store.Event{Kind: store.EventResync})
	_, _ = lookup(t, c, blogKey)
	if r.calls.Load() != calls+1 {
		t.Fatalf("lookup after resync did not ask the backend")
	}
}

func TestCacheDoesNotKeepAnswerOlderThanAnInvalidation(t *testing.T) {
	r := &eventReader{newCountingReader(), make(chan store.Event)}
	r.set(blogKey, blogRoute)
	gate := make(chan struct{})
	r.gate = gate
	r.entered = make(chan struct{}, 1)
	c := routecache.New(r, routecache.Config{}, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	r.send(store.Event{Kind: store.EventResync})

	res := make(chan error, 1)
	go func() { _, err := c.Lookup(context.Background(), blogKey); res <- err }()
	<-r.entered // the load has read the old row...
	r.send(store.Event{Kind: store.EventRepl, ReplID: "r1", Owner: "alice", Slug: "blog"})
	r.mu.Lock()
	r.gate, r.entered = nil, nil
	r.mu.Unlock()
	close(gate)
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	// The answer is kept only as stale: with the backend failing it still
	// serves...
	r.setFail(fmt.Errorf("dial: %w", store.ErrUnavailable))
	if got, err := lookup(t, c, blogKey); err != nil || got.ReplID != "r1" {
		t.Fatalf("lookup with the backend down = %+v, %v; want the stale route", got, err)
	}
	if n := r.calls.Load(); n != 2 {
		t.Fatalf("calls = %d, want 2: the answer read before the invalidation must not count as fresh", n)
	}
}

func TestCacheServesStaleWhenBackendFails(t *testing.T) {
	r := &eventReader{newCountingReader(), make(chan store.Event)}
	r.set(blogKey, blogRoute)
	core, logs := observer.New(zap.WarnLevel)
	clock := newFakeClock()
	c := routecache.New(r, routecache.Config{RetryAfter: time.Second}, clock.Now, zap.New(core))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	r.send(store.Event{Kind: store.EventResync})

	if _, err := lookup(t, c, blogKey); err != nil {
		t.Fatal(err)
	}
	r.setFail(fmt.Errorf("dial: %w", store.ErrUnavailable))
	r.send(store.Event{Kind: store.EventResync}) // everything is stale now
	for range 5 {
		got, err := lookup(t, c, blogKey)
		if err != nil || got.ReplID != "r1" {
			t.Fatalf("stale lookup = %+v, %v; want the known route", got, err)
		}
		_, err = lookup(t, c, store.ReplKey("bob", "new"))
		if !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("unknown name while failing: %v, want ErrUnavailable", err)
		}
	}
	if n := r.calls.Load(); n != 2 {
		t.Fatalf("backend calls = %d, want 2: misses fail fast for RetryAfter after a failure", n)
	}
	if s := c.Stats(); s.Stale != 5 {
		t.Fatalf("stale served = %d, want 5", s.Stale)
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d warnings logged, want 1 per incident", n)
	}

	clock.Advance(2 * time.Second) // RetryAfter passed: the backend is probed again
	r.setFail(nil)
	if got, err := lookup(t, c, store.ReplKey("bob", "new")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after recovery = %+v, %v; want not found from the backend", got, err)
	}
	// A new incident is logged again.
	r.setFail(errors.New("connection reset"))
	clock.Advance(time.Hour)
	_, _ = lookup(t, c, blogKey)
	if n := logs.Len(); n != 2 {
		t.Fatalf("%d warnings after a second incident, want 2", n)
	}
}

func TestCacheRandomNamesDoNotEvictHotRoutes(t *testing.T) {
	r := newCountingReader()
	const hot = 500
	for i := range hot {
		r.set(store.ReplIDKey(fmt.Sprint("hot", i)), blogRoute)
	}
	// Room for the hot routes whatever the hash seed spreads them over the
	// 64 shards (64 each), and very little for misses.
	c := newTestCache(t, r, routecache.Config{MaxEntries: 64 * 64, MaxNegative: 64 * 4}, nil)
	for i := range hot {
		if _, err := lookup(t, c, store.ReplIDKey(fmt.Sprint("hot", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50_000 {
		_, _ = lookup(t, c, store.ReplIDKey(fmt.Sprint("random", i)))
	}
	s := c.Stats()
	if s.Entries != hot {
		t.Fatalf("found entries = %d, want all %d hot ones kept", s.Entries, hot)
	}
	if s.Negative > 64*4 {
		t.Fatalf("negative entries = %d, want at most %d", s.Negative, 64*4)
	}
	calls := r.calls.Load()
	for i := range hot {
		_, _ = lookup(t, c, store.ReplIDKey(fmt.Sprint("hot", i)))
	}
	if r.calls.Load() != calls {
		t.Fatal("hot routes were asked again after a flood of random names")
	}
}

func TestCacheRefresh(t *testing.T) {
	r := newCountingReader()
	c := newTestCache(t, r, routecache.Config{NegativeTTL: time.Hour}, nil)
	if _, err := lookup(t, c, blogKey); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	r.set(blogKey, blogRoute) // the notification has not come yet
	if _, err := lookup(t, c, blogKey); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("cached: %v, want the negative entry", err)
	}
	if got, err := c.Refresh(t.Context(), blogKey); err != nil || got.ReplID != "r1" {
		t.Fatalf("refresh = %+v, %v; want the route from the backend", got, err)
	}
	if got, err := lookup(t, c, blogKey); err != nil || got.ReplID != "r1" {
		t.Fatalf("after refresh = %+v, %v", got, err)
	}
}

func TestCacheChallenges(t *testing.T) {
	r := newCountingReader()
	clock := newFakeClock()
	name := "_acme-challenge.alice.repl.test"
	r.challenges[name] = []store.Challenge{{Name: name, Value: "v", ExpiresAt: clock.Now().Add(3 * time.Second)}}
	c := newClockedCache(t, r, routecache.Config{NegativeTTL: 10 * time.Second}, clock.Now, nil)
	for range 2 {
		cs, err := c.Challenges(t.Context(), name)
		if err != nil || len(cs) != 1 {
			t.Fatalf("challenges = %+v, %v", cs, err)
		}
	}
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("calls = %d, want 1", n)
	}
	clock.Advance(4 * time.Second) // past the record's expiry, before NegativeTTL
	_, _ = c.Challenges(t.Context(), name)
	if n := r.calls.Load(); n != 2 {
		t.Fatalf("calls = %d, want 2: a cached record must not outlive its expiry", n)
	}
}

// BenchmarkCacheHit measures a hit alone (no database needed); the
// comparison with a PostgreSQL lookup is BenchmarkLookup.
func BenchmarkCacheHit(b *testing.B) {
	r := newCountingReader()
	r.set(blogKey, blogRoute)
	c := routecache.New(r, routecache.Config{}, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-c.Synced()
	if _, err := c.Lookup(ctx, blogKey); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Lookup(ctx, blogKey); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRefreshIsRateLimited: Refresh asks the backend for a key at most
// once a second, however often it is called.
func TestRefreshIsRateLimited(t *testing.T) {
	r := newCountingReader()
	r.set(blogKey, blogRoute)
	c := newTestCache(t, r, routecache.Config{}, nil)
	before := r.calls.Load()
	for range 100 {
		if got, err := c.Refresh(t.Context(), blogKey); err != nil || got.ReplID != "r1" {
			t.Fatalf("refresh = %+v, %v", got, err)
		}
	}
	if n := r.calls.Load() - before; n != 1 {
		t.Errorf("100 refreshes of one key made %d backend calls, want 1", n)
	}
}

// feedReader is a countingReader whose change feed the test drives.
type feedReader struct {
	*countingReader
	events chan store.Event
}

func (r *feedReader) Watch(ctx context.Context, fn func(store.Event)) error {
	fn(store.Event{Kind: store.EventResync})
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev := <-r.events:
			fn(ev)
		}
	}
}

// TestTombstoneConfirmedWhileFeedIsLost: while the change feed is down, a
// cached tombstone is asked of the store again, at most once a second per
// key, so that a move back is seen; a live route is not; while the store
// fails too, the tombstone keeps serving; once the feed is back, the cache
// answers alone again.
func TestTombstoneConfirmedWhileFeedIsLost(t *testing.T) {
	r := &feedReader{countingReader: newCountingReader(), events: make(chan store.Event)}
	tomb := store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: "west", Generation: 2}
	r.set(blogKey, tomb)
	clock := newFakeClock()
	c := newClockedCache(t, r, routecache.Config{}, clock.Now, nil)
	if got, _ := lookup(t, c, blogKey); got.Kind != store.RouteTombstone {
		t.Fatalf("first lookup: %+v", got)
	}
	calls := func() int64 { return r.calls.Load() }
	before := calls()
	for range 10 {
		lookup(t, c, blogKey)
	}
	if n := calls() - before; n != 0 {
		t.Fatalf("with the feed up, 10 lookups of a cached tombstone made %d store calls, want 0", n)
	}

	r.events <- store.Event{Kind: store.EventLost}
	testbedWait(t, c.FeedLost)
	clock.Advance(1100 * time.Millisecond) // a second after the tombstone was loaded
	// The repl moved back here; the notification is lost with the feed.
	back := store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"10.0.0.1:80"}, Generation: 3}
	r.set(blogKey, back)
	if got, _ := lookup(t, c, blogKey); got.Kind != store.RouteLocal {
		t.Fatalf("with the feed lost, the tombstone was not confirmed: %+v", got)
	}
	r.set(blogKey, tomb) // and away again
	before = calls()
	for range 100 {
		lookup(t, c, blogKey)
	}
	if n := calls() - before; n != 0 {
		t.Errorf("100 lookups of a live route with the feed lost made %d store calls, want 0 (only tombstones are confirmed)", n)
	}
	clock.Advance(61 * time.Second) // the live entry (TTL 60 s) expires; the tombstone is loaded again
	lookup(t, c, blogKey)
	before = calls()
	for range 100 {
		lookup(t, c, blogKey)
	}
	if n := calls() - before; n != 0 {
		t.Errorf("100 lookups in the same second made %d store calls, want 0 (one a second per key)", n)
	}
	clock.Advance(1100 * time.Millisecond)
	r.setFail(errors.New("the store is down too"))
	if got, err := lookup(t, c, blogKey); err != nil || got.Kind != store.RouteTombstone {
		t.Errorf("confirming while the store fails: %+v, %v; want the tombstone served stale", got, err)
	}
	r.setFail(nil)
	clock.Advance(10 * time.Second) // past the pause after a failure

	r.events <- store.Event{Kind: store.EventResync}
	testbedWait(t, func() bool { return !c.FeedLost() })
	lookup(t, c, blogKey) // everything held is stale after a resync: loaded again
	clock.Advance(1100 * time.Millisecond)
	before = calls()
	for range 10 {
		lookup(t, c, blogKey)
	}
	if n := calls() - before; n != 0 {
		t.Errorf("with the feed back, 10 lookups made %d store calls, want 0", n)
	}
}

// TestFeedLostSince: the time the change feed went down is the first
// EventLost's; the watcher's repeats (one per failed reconnection) keep it,
// and EventResync clears it.
func TestFeedLostSince(t *testing.T) {
	r := &feedReader{countingReader: newCountingReader(), events: make(chan store.Event)}
	clock := newFakeClock()
	c := newClockedCache(t, r, routecache.Config{}, clock.Now, nil)
	if at, lost := c.FeedLostSince(); lost {
		t.Fatalf("after the first resync: lost since %v", at)
	}
	lostAt := clock.Now()
	r.events <- store.Event{Kind: store.EventLost}
	testbedWait(t, c.FeedLost)
	clock.Advance(5 * time.Second)
	r.events <- store.Event{Kind: store.EventLost}               // a reconnection failed
	r.events <- store.Event{Kind: store.EventRepl, ReplID: "r1"} // the channel is unbuffered: the one before was applied
	if at, lost := c.FeedLostSince(); !lost || !at.Equal(lostAt) {
		t.Errorf("after two EventLost: %v, %v; want %v, true", at, lost, lostAt)
	}
	r.events <- store.Event{Kind: store.EventResync}
	testbedWait(t, func() bool { return !c.FeedLost() })
	if at, lost := c.FeedLostSince(); lost {
		t.Errorf("after the resync: lost since %v", at)
	}
}

func testbedWait(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
	}
}

// TestPeekNeverWaits: Peek answers from what the cache holds, fresh or
// not, and loads in the background — one call per key, at most
// MaxBackground at once, none while the backend is failing.
func TestPeekNeverWaits(t *testing.T) {
	r := newCountingReader()
	r.set(blogKey, blogRoute)
	clock := newFakeClock()
	c := newClockedCache(t, r, routecache.Config{MaxBackground: 2}, clock.Now, nil)

	// Nothing held: ErrUnavailable at once, and a load in the background.
	gate := make(chan struct{})
	r.mu.Lock()
	r.gate = gate
	r.mu.Unlock()
	for range 3 { // one call for the key, however often it is asked
		if _, err := c.Peek(blogKey); !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("peek of a name not held: %v, want ErrUnavailable", err)
		}
	}
	// A second key takes the other slot; a third is refused.
	if _, err := c.Peek(store.ReplKey("bob", "api")); !errors.Is(err, store.ErrUnavailable) {
		t.Fatal(err)
	}
	if _, err := c.Peek(store.ReplKey("carol", "app")); !errors.Is(err, store.ErrUnavailable) {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Background != 2 || s.Refused != 1 {
		t.Errorf("stats while loading: %+v; want 2 background calls, 1 refused", s)
	}
	r.mu.Lock()
	r.gate = nil
	r.mu.Unlock()
	close(gate)
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor("the background load", func() bool {
		rt, err := c.Peek(blogKey)
		return err == nil && rt.ReplID == "r1"
	})
	if _, err := c.Peek(store.ReplKey("bob", "api")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a name the backend does not have, once loaded: %v, want ErrNotFound", err)
	}
	calls := r.calls.Load()
	if calls != 2 {
		t.Errorf("%d backend calls; want 2 (one per key)", calls)
	}

	// Expired: the old route at once, refreshed in the background.
	clock.Advance(2 * time.Minute)
	moved := blogRoute
	moved.Generation = 2
	r.set(blogKey, moved)
	if rt, err := c.Peek(blogKey); err != nil || rt.Generation != 1 {
		t.Fatalf("peek of an expired route: %+v %v, want the old one", rt, err)
	}
	waitFor("the refresh", func() bool {
		rt, err := c.Peek(blogKey)
		return err == nil && rt.Generation == 2
	})

	// The backend failing: the old route, and no call while RetryAfter runs.
	r.setFail(fmt.Errorf("%w: down", store.ErrUnavailable))
	clock.Advance(2 * time.Minute)
	if rt, err := c.Peek(blogKey); err != nil || rt.Generation != 2 {
		t.Fatalf("peek while failing: %+v %v", rt, err)
	}
	waitFor("the failed refresh", func() bool { return c.Stats().LoadErrors == 1 })
	before := r.calls.Load()
	for range 10 {
		if _, err := c.Peek(blogKey); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Peek(store.ReplKey("dave", "new")); !errors.Is(err, store.ErrUnavailable) {
			t.Fatal(err)
		}
	}
	if n := r.calls.Load() - before; n != 0 {
		t.Errorf("%d backend calls while it fails; want none until RetryAfter", n)
	}
}

// TestRefreshStale: a route proven older than the store is asked for past
// Refresh's once a second; not when the route held is new enough, and once
// per generation per second whatever the store answers.
func TestRefreshStale(t *testing.T) {
	r := newCountingReader()
	old := blogRoute
	old.Kind, old.Cluster, old.Endpoints, old.Generation = store.RouteTombstone, "west", nil, 2
	r.set(blogKey, old)
	clock := newFakeClock()
	c := newClockedCache(t, r, routecache.Config{}, clock.Now, nil)
	ctx := t.Context()
	if _, err := c.Refresh(ctx, blogKey); err != nil { // Refresh's once a second, spent
		t.Fatal(err)
	}
	live := blogRoute
	live.Generation = 3
	r.set(blogKey, live) // the store moves on; no notification comes
	if rt, _ := c.Refresh(ctx, blogKey); rt.Generation != 2 {
		t.Fatalf("Refresh within its second: generation %d, want the cached 2", rt.Generation)
	}
	before := r.calls.Load()
	rt, err := c.RefreshStale(ctx, blogKey, 3)
	if err != nil || rt.Kind != store.RouteLocal || rt.Generation != 3 {
		t.Fatalf("RefreshStale(3) = %+v, %v; want the store's live route", rt, err)
	}
	if _, err := c.RefreshStale(ctx, blogKey, 3); err != nil { // held now: no call
		t.Fatal(err)
	}
	if n := r.calls.Load() - before; n != 1 {
		t.Errorf("%d backend calls, want 1", n)
	}

	// A store that stays behind the proof: one call per generation per second.
	r.set(blogKey, old)
	c.Refresh(ctx, blogKey) // nothing: within the second of the last ask
	clock.Advance(2 * time.Second)
	if rt, _ := c.Refresh(ctx, blogKey); rt.Generation != 2 {
		t.Fatalf("after a second, Refresh: %+v", rt)
	}
	before = r.calls.Load()
	for range 10 {
		if rt, _ := c.RefreshStale(ctx, blogKey, 4); rt.Generation != 2 {
			t.Fatalf("RefreshStale(4) with the store at 2: %+v", rt)
		}
	}
	if n := r.calls.Load() - before; n != 1 {
		t.Errorf("%d backend calls for 10 RefreshStale(4) with the store behind, want 1", n)
	}
}

// TestCacheSweepsLongExpiredEntries: an entry whose TTL ran out
// KeepExpired ago without being asked for leaves memory (found and not
// found alike, a custom domain's repl link too), one still within it
// stays (to be served stale), and nothing is swept while the store fails.
func TestCacheSweepsLongExpiredEntries(t *testing.T) {
	r := newCountingReader()
	clock := newFakeClock()
	c := newClockedCache(t, r, routecache.Config{TTL: time.Minute, NegativeTTL: 5 * time.Second, KeepExpired: 30 * time.Second}, clock.Now, nil)
	r.set(blogKey, blogRoute)
	domain := store.Key{Kind: store.KeyDomain, Name: "www.example.com"}
	r.set(domain, blogRoute)
	for _, k := range []store.Key{blogKey, domain, store.ReplKey("alice", "nothing")} {
		_, _ = lookup(t, c, k)
	}
	if s := c.Stats(); s.Entries != 2 || s.Negative != 1 {
		t.Fatalf("cached %d found and %d negative, want 2 and 1", s.Entries, s.Negative)
	}
	// Within the TTL, and just past it: kept.
	clock.Advance(61 * time.Second)
	c.Sweep()
	if s := c.Stats(); s.Entries != 2 || s.Swept != 1 {
		t.Fatalf("found entries expired for 1 s: %d kept, %d swept; want 2 kept and only the negative one (expired 56 s ago) swept", s.Entries, s.Swept)
	}
	// The store fails: nothing is swept, the expired route is served stale.
	r.setFail(errors.New("connection refused"))
	clock.Advance(time.Hour)
	if got, err := lookup(t, c, blogKey); err != nil || got.ReplID != "r1" {
		t.Fatalf("served stale: %+v, %v", got, err)
	}
	if n := c.Sweep(); n != 0 {
		t.Fatalf("swept %d entries while the store fails", n)
	}
	if s := c.Stats(); s.Entries != 2 {
		t.Fatalf("%d found entries left while the store fails, want 2 (nothing swept)", s.Entries)
	}
	// The store answers again: the long-expired ones go.
	r.setFail(nil)
	clock.Advance(2 * time.Second) // past RetryAfter
	if _, err := lookup(t, c, store.ReplKey("alice", "other")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("lookup after recovery: %v", err)
	}
	clock.Advance(time.Hour)
	c.Sweep()
	if s := c.Stats(); s.Entries != 0 || s.Negative != 0 {
		t.Fatalf("%d found and %d negative entries left an hour past their TTL", s.Entries, s.Negative)
	}
}
