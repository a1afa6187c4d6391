package routecache_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

// countingStore counts the calls that reach a real store.
type countingStore struct {
	store.Store
	lookups atomic.Int64
}

func (s *countingStore) Lookup(ctx context.Context, k store.Key) (store.Route, error) {
	s.lookups.Add(1)
	return s.Store.Lookup(ctx, k)
}

// indexBackends opens an empty store of each backend.
func indexBackends(t *testing.T) map[string]func(t *testing.T) store.Store {
	var srv *pgtest.Server
	open := func(t *testing.T, addr string, migrate bool) store.Store {
		s, err := cluster.Open(t.Context(), addr, cluster.OpenOptions{Migrate: migrate})
		if err != nil {
			t.Fatalf("open %s: %v", addr, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	return map[string]func(t *testing.T) store.Store{
		"embedded": func(t *testing.T) store.Store {
			path := filepath.Join(t.TempDir(), "cluster.yaml")
			if err := os.WriteFile(path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			return open(t, path, false)
		},
		"postgres": func(tt *testing.T) store.Store {
			if srv == nil {
				srv = pgtest.Start(t)
			}
			return open(tt, srv.NewDatabase(tt), true)
		},
	}
}

func runIndexed(t *testing.T, s store.Store) (*routecache.Cache, *countingStore) {
	t.Helper()
	cs := &countingStore{Store: s}
	c := routecache.NewIndexed(cs, routecache.Config{}, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitUntil(t, "the index is built", func() bool { return c.Index().Stats().Current })
	return c, cs
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIndexScreensNamesNobodyHosts: once built, a name the cluster does not
// host costs no store lookup and no cache entry, and names it does host
// (live, tombstoned, by id and by custom domain) still route.
func TestIndexScreensNamesNobodyHosts(t *testing.T) {
	for name, open := range indexBackends(t) {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			mustCreateRepl(t, ctx, s, "r1", "alice", "blog")
			mustCreateRepl(t, ctx, s, "r2", "bob", "shop")
			if _, err := s.LinkDomain(ctx, store.Domain{Name: "www.example.com", ReplID: "r1"}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Retire(ctx, "r2", "west", 2); err != nil {
				t.Fatal(err)
			}
			c, cs := runIndexed(t, s)

			before := cs.lookups.Load()
			for i := range 1000 {
				for _, k := range []store.Key{
					store.ReplKey(fmt.Sprintf("u%d", i), "x"),
					store.ReplIDKey(fmt.Sprintf("id%d", i)),
					store.DomainKey(fmt.Sprintf("d%d.example.net", i)),
				} {
					if _, err := c.Lookup(ctx, k); !errors.Is(err, store.ErrNotFound) {
						t.Fatalf("lookup %s: %v, want ErrNotFound", k, err)
					}
				}
			}
			if _, err := c.Refresh(ctx, store.ReplKey("nobody", "x")); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("refresh of a name nobody hosts: %v, want ErrNotFound", err)
			}
			if n := cs.lookups.Load() - before; n != 0 {
				t.Errorf("3,001 lookups of names nobody hosts made %d store lookups, want 0", n)
			}
			st := c.Stats()
			if st.Negative != 0 || st.Screened != 3001 {
				t.Errorf("stats = %+v; want no negative entries and 3001 screened", st)
			}

			for k, want := range map[store.Key]store.RouteKind{
				store.ReplKey("alice", "blog"):     store.RouteLocal,
				store.ReplIDKey("r1"):              store.RouteLocal,
				store.DomainKey("www.example.com"): store.RouteLocal,
				store.ReplKey("bob", "shop"):       store.RouteTombstone,
				store.ReplIDKey("r2"):              store.RouteTombstone,
			} {
				if rt, err := c.Lookup(ctx, k); err != nil || rt.Kind != want {
					t.Errorf("lookup %s = %v, %v; want %v", k, rt.Kind, err, want)
				}
			}
		})
	}
}

// TestIndexFollowsChanges: names created, linked, moved and deleted after
// the index was built are routed or refused as the store says, once their
// notification has been read.
func TestIndexFollowsChanges(t *testing.T) {
	for name, open := range indexBackends(t) {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			c, _ := runIndexed(t, s)
			x := c.Index()
			known := func(k store.Key, want routecache.Knowledge) func() bool {
				return func() bool { return x.Knows(k) == want }
			}

			mustCreateRepl(t, ctx, s, "r1", "alice", "blog")
			waitUntil(t, "the created repl is known", known(store.ReplKey("alice", "blog"), routecache.KnownYes))
			if x.Knows(store.ReplIDKey("r1")) != routecache.KnownYes || x.Owner("alice") != routecache.KnownYes {
				t.Fatal("the repl is known by name but not by id or owner")
			}
			if _, err := s.LinkDomain(ctx, store.Domain{Name: "www.example.com", ReplID: "r1"}); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "the linked domain is known", known(store.DomainKey("www.example.com"), routecache.KnownYes))
			if rt, err := c.Lookup(ctx, store.DomainKey("www.example.com")); err != nil || rt.ReplID != "r1" {
				t.Fatalf("lookup of the linked domain = %+v, %v", rt, err)
			}

			if _, err := s.Retire(ctx, "r1", "west", 2); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "the tombstone is known", func() bool {
				kn, e := x.Repl(store.ReplKey("alice", "blog"))
				return kn == routecache.KnownYes && e.MovedTo == "west" && e.Generation == 2
			})

			if err := s.UnlinkDomain(ctx, "www.example.com"); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "the unlinked domain is gone", known(store.DomainKey("www.example.com"), routecache.KnownNo))

			mustCreateRepl(t, ctx, s, "r3", "carol", "chat")
			if err := s.DeleteRepl(ctx, "r3"); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "the deleted repl is gone", known(store.ReplIDKey("r3"), routecache.KnownNo))
			if x.Owner("carol") != routecache.KnownNo {
				t.Error("an owner whose only repl was deleted is still known")
			}
		})
	}
}

// TestIndexPendingNameIsUnsure: between a notification and the index's
// reading of it, the name is KnownUnsure, so a lookup asks the cache (and
// the store) instead of refusing a repl that was just created.
func TestIndexPendingNameIsUnsure(t *testing.T) {
	r := &gatedLister{countingReader: newCountingReader(), release: make(chan struct{}), held: make(chan struct{})}
	x := routecache.NewIndex(r, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = x.Run(ctx) }()
	defer func() { cancel(); <-done }()

	x.Apply(store.Event{Kind: store.EventResync})
	close(r.release) // the rebuild may list (nothing)
	waitUntil(t, "the index is built", func() bool { return x.Stats().Current })
	if kn := x.Knows(blogKey); kn != routecache.KnownNo {
		t.Fatalf("before the create: %v, want KnownNo", kn)
	}
	r.set(blogKey, blogRoute)
	x.Apply(store.Event{Kind: store.EventRepl, ReplID: "r1", Owner: "alice", Slug: "blog"})
	if kn := x.Knows(blogKey); kn != routecache.KnownUnsure {
		t.Fatalf("while the change is read: %v, want KnownUnsure", kn)
	}
	if kn := x.Knows(store.ReplIDKey("r1")); kn != routecache.KnownUnsure {
		t.Fatalf("by id while the change is read: %v, want KnownUnsure", kn)
	}
	close(r.held) // GetRepl may answer
	waitUntil(t, "the change is read", func() bool { return x.Knows(blogKey) == routecache.KnownYes })
}

// gatedLister is a Lister over a countingReader whose reads can be held.
type gatedLister struct {
	*countingReader
	release chan struct{} // ListAll waits for it to close
	held    chan struct{} // GetRepl and Lookup by id wait for it to close
}

// Lookup by repl id (what the index reads a change with) waits for held,
// and finds the route by id; other keys are the countingReader's.
func (g *gatedLister) Lookup(ctx context.Context, k store.Key) (store.Route, error) {
	if k.Kind != store.KeyReplID {
		return g.countingReader.Lookup(ctx, k)
	}
	<-g.held
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, rt := range g.routes {
		if rt.ReplID == k.ID {
			return rt, nil
		}
	}
	return store.Route{}, store.ErrNotFound
}

func (g *gatedLister) ListAll(context.Context) (store.Snapshot, error) {
	<-g.release
	return store.Snapshot{}, nil
}
func (g *gatedLister) GetRepl(_ context.Context, id string) (store.Repl, error) {
	<-g.held
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, rt := range g.routes {
		if rt.ReplID == id && rt.Kind == store.RouteLocal {
			return store.Repl{ID: rt.ReplID, Owner: rt.Owner, Slug: rt.Slug, Endpoints: rt.Endpoints, Generation: rt.Generation}, nil
		}
	}
	return store.Repl{}, store.ErrNotFound
}
func (g *gatedLister) GetTombstone(context.Context, string) (store.Tombstone, error) {
	return store.Tombstone{}, store.ErrNotFound
}
func (g *gatedLister) GetDomain(context.Context, string) (store.Domain, error) {
	return store.Domain{}, store.ErrNotFound
}

func mustCreateRepl(t *testing.T, ctx context.Context, s store.Store, id, owner, slug string) {
	t.Helper()
	if _, err := s.CreateRepl(ctx, store.Repl{ID: id, Owner: owner, Slug: slug, Endpoints: []string{"127.0.0.1:9001"}}); err != nil {
		t.Fatalf("create repl %s: %v", id, err)
	}
}

// listOnly is a Lister of n generated repls, for the index's benchmarks.
type listOnly struct {
	*gatedLister
	repls []store.Repl
}

func (l listOnly) ListAll(context.Context) (store.Snapshot, error) {
	return store.Snapshot{Repls: l.repls}, nil
}

func generatedRepls(n int) []store.Repl {
	repls := make([]store.Repl, n)
	for i := range repls {
		repls[i] = store.Repl{ID: fmt.Sprintf("r%08x", i), Owner: fmt.Sprintf("user%d", i/3), Slug: fmt.Sprintf("app%d", i%3), Generation: 1}
	}
	return repls
}

// BenchmarkIndexBuild builds the index of 1M repls: the time a rebuild
// takes, and the heap each repl costs once built (bytes/repl).
func BenchmarkIndexBuild(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("repls=%d", n), func(b *testing.B) {
			l := listOnly{gatedLister: &gatedLister{countingReader: newCountingReader(), release: make(chan struct{}), held: make(chan struct{})}, repls: generatedRepls(n)}
			close(l.release)
			var perRepl float64
			for b.Loop() {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				x := routecache.NewIndex(l, nil)
				if err := x.Rebuild(context.Background()); err != nil {
					b.Fatal(err)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				perRepl = float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
				runtime.KeepAlive(x)
			}
			b.ReportMetric(perRepl, "bytes/repl")
		})
	}
}

// BenchmarkIndexKnows is the index's answer for a hosted name and for one
// nobody hosts: no allocation.
func BenchmarkIndexKnows(b *testing.B) {
	l := listOnly{gatedLister: &gatedLister{countingReader: newCountingReader(), release: make(chan struct{}), held: make(chan struct{})}, repls: generatedRepls(100_000)}
	close(l.release)
	x := routecache.NewIndex(l, nil)
	if err := x.Rebuild(context.Background()); err != nil {
		b.Fatal(err)
	}
	hosted, nobody := store.ReplKey("user10", "app1"), store.ReplKey("nobody", "app1")
	b.ReportAllocs()
	for b.Loop() {
		if x.Knows(hosted) != routecache.KnownYes || x.Knows(nobody) != routecache.KnownNo {
			b.Fatal("wrong answer")
		}
	}
}

// TestIndexHoldsChallenges: the index is built with the challenge records
// and follows their changes; unexpired ones are answered, and a name it has
// none for is KnownNo (KnownUnsure while its change is being read).
func TestIndexHoldsChallenges(t *testing.T) {
	for name, open := range indexBackends(t) {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			ctx := t.Context()
			const ch = "_acme-challenge.alice.repl.test"
			later := time.Now().Add(time.Hour)
			if err := s.PutChallenge(ctx, store.Challenge{Name: ch, Value: "one", ExpiresAt: later}); err != nil {
				t.Fatal(err)
			}
			c, _ := runIndexed(t, s)
			x := c.Index()
			values := func(at time.Time) (routecache.Knowledge, []string) { return x.Challenges(ch, at, nil) }
			if kn, got := values(time.Now()); kn != routecache.KnownYes || !slices.Equal(got, []string{"one"}) {
				t.Fatalf("after the build: %v %q", kn, got)
			}
			if kn, got := values(later.Add(time.Second)); kn != routecache.KnownNo || len(got) != 0 {
				t.Errorf("past the expiry: %v %q, want KnownNo and none", kn, got)
			}
			if kn, _ := x.Challenges("_acme-challenge.bob.repl.test", time.Now(), nil); kn != routecache.KnownNo {
				t.Errorf("a name without records: %v, want KnownNo", kn)
			}

			if err := s.PutChallenge(ctx, store.Challenge{Name: ch, Value: "two", ExpiresAt: later}); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "the second record is held", func() bool {
				_, got := values(time.Now())
				return slices.Equal(got, []string{"one", "two"})
			})
			for _, v := range []string{"one", "two"} {
				if err := s.DeleteChallenge(ctx, ch, v); err != nil {
					t.Fatal(err)
				}
			}
			waitUntil(t, "the deleted records are gone", func() bool {
				kn, got := values(time.Now())
				return kn == routecache.KnownNo && len(got) == 0
			})
			if st := x.Stats(); st.Challenges != 0 {
				t.Errorf("stats: %d challenges held, want 0", st.Challenges)
			}
		})
	}
}
