// Package storetest is the contract every store.Store backend must meet:
// the same cases, run against the embedded and the PostgreSQL backends in
// their own tests, and against any other backend that wants to prove
// itself (a platform's own, say):
//
//	func TestContract(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { return openEmpty(t) })
//	}
//
// RunCerts does the same for store.Certs.
package storetest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/store"
)

type contractCase struct {
	name string
	run  func(t *testing.T, ctx context.Context, s store.Store)
}

// Run runs the contract against a backend. open returns a new, empty
// store for each case; the store must be closed by open's cleanup.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	for _, c := range contractCases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			c.run(t, ctx, open(t))
		})
	}
}

func mustCreate(t *testing.T, ctx context.Context, s store.Store, id, owner, slug string) store.Repl {
	t.Helper()
	r, err := s.CreateRepl(ctx, store.Repl{ID: id, Owner: owner, Slug: slug, Endpoints: []string{"127.0.0.1:9001"}})
	if err != nil {
		t.Fatalf("create repl %s: %v", id, err)
	}
	return r
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func wantStats(t *testing.T, ctx context.Context, s store.Store, want store.Stats) {
	t.Helper()
	got, err := s.Stats(ctx)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	if got != want {
		t.Fatalf("stats = %+v, want %+v", got, want)
	}
}

func wantRoute(t *testing.T, ctx context.Context, s store.Store, k store.Key, want store.Route) {
	t.Helper()
	got, err := s.Lookup(ctx, k)
	if err != nil {
		t.Fatalf("lookup %s: %v", k, err)
	}
	if got.Kind != want.Kind || got.ReplID != want.ReplID || got.Owner != want.Owner || got.Slug != want.Slug ||
		!slices.Equal(got.Endpoints, want.Endpoints) || got.Cluster != want.Cluster || got.Generation != want.Generation {
		t.Fatalf("lookup %s = %+v, want %+v", k, got, want)
	}
}

var contractCases = []contractCase{
	{"create, get and look up", func(t *testing.T, ctx context.Context, s store.Store) {
		before := time.Now().Add(-time.Second)
		r, err := s.CreateRepl(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"10.0.0.1:8080", "10.0.0.2:8080"}})
		if err != nil {
			t.Fatal(err)
		}
		if r.Generation != 1 || r.CreatedAt.Before(before) || r.UpdatedAt.Before(before) {
			t.Fatalf("created %+v: want generation 1 and timestamps set", r)
		}
		got, err := s.GetRepl(ctx, "r1")
		if err != nil || got.Owner != "alice" || got.Slug != "blog" || !slices.Equal(got.Endpoints, r.Endpoints) {
			t.Fatalf("get = %+v, %v", got, err)
		}
		want := store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: r.Endpoints, Generation: 1}
		wantRoute(t, ctx, s, store.ReplKey("alice", "blog"), want)
		wantRoute(t, ctx, s, store.ReplIDKey("r1"), want)
		wantStats(t, ctx, s, store.Stats{Repls: 1})
	}},
	{"not found and not routable", func(t *testing.T, ctx context.Context, s store.Store) {
		mustCreate(t, ctx, s, "r1", "alice", "blog")
		for _, k := range []store.Key{store.ReplKey("alice", "shop"), store.ReplKey("bob", "blog"), store.ReplIDKey("r2"), store.DomainKey("example.com")} {
			_, err := s.Lookup(ctx, k)
			wantErr(t, "lookup "+k.String(), err, store.ErrNotFound)
		}
		for _, k := range []store.Key{{Kind: store.KeyApex}, {Kind: store.KeyOwner, Owner: "alice"}, {Kind: store.KeyChallenge, Name: "_acme-challenge.alice.repl.test"}} {
			_, err := s.Lookup(ctx, k)
			wantErr(t, "lookup "+k.String(), err, store.ErrInvalid)
		}
		_, err := s.GetRepl(ctx, "r2")
		wantErr(t, "get r2", err, store.ErrNotFound)
	}},
	{"invalid repls are refused whole", func(t *testing.T, ctx context.Context, s store.Store) {
		for _, r := range []store.Repl{
			{ID: "", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:1"}},
			{ID: "R1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:1"}},
			{ID: "r1", Owner: "id", Slug: "blog", Endpoints: []string{"127.0.0.1:1"}},
			{ID: "r1", Owner: "-alice", Slug: "blog", Endpoints: []string{"127.0.0.1:1"}},
			{ID: "r1", Owner: "alice", Slug: "b_log", Endpoints: []string{"127.0.0.1:1"}},
			{ID: "r1", Owner: "alice", Slug: "blog"},
			{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1"}},
			{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:0"}},
			{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:99999"}},
		} {
			_, err := s.CreateRepl(ctx, r)
			wantErr(t, "create "+r.ID+"/"+r.Owner+"/"+r.Slug, err, store.ErrInvalid)
		}
		wantStats(t, ctx, s, store.Stats{})
	}},
	{"conflicts", func(t *testing.T, ctx context.Context, s store.Store) {
		mustCreate(t, ctx, s, "r1", "alice", "blog")
		_, err := s.CreateRepl(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "other", Endpoints: []string{"127.0.0.1:1"}})
		wantErr(t, "same id", err, store.ErrConflict)
		_, err = s.CreateRepl(ctx, store.Repl{ID: "r2", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:1"}})
		wantErr(t, "same owner/slug", err, store.ErrConflict)
		mustCreate(t, ctx, s, "r3", "bob", "blog") // same slug, other owner
		wantStats(t, ctx, s, store.Stats{Repls: 2})
	}},
	{"list, set endpoints, delete", func(t *testing.T, ctx context.Context, s store.Store) {
		mustCreate(t, ctx, s, "r3", "bob", "a")
		mustCreate(t, ctx, s, "r2", "alice", "z")
		mustCreate(t, ctx, s, "r1", "alice", "m")
		all, err := s.ListRepls(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		if ids := replIDs(all); !slices.Equal(ids, []string{"r1", "r2", "r3"}) {
			t.Fatalf("list = %v, want ordered by owner, slug", ids)
		}
		alice, err := s.ListRepls(ctx, "alice")
		if err != nil || !slices.Equal(replIDs(alice), []string{"r1", "r2"}) {
			t.Fatalf("list alice = %v, %v", replIDs(alice), err)
		}
		r, err := s.SetEndpoints(ctx, "r1", []string{"10.1.1.1:80"})
		if err != nil || !slices.Equal(r.Endpoints, []string{"10.1.1.1:80"}) {
			t.Fatalf("set endpoints = %+v, %v", r, err)
		}
		wantRoute(t, ctx, s, store.ReplIDKey("r1"), store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "m", Endpoints: []string{"10.1.1.1:80"}, Generation: 1})
		_, err = s.SetEndpoints(ctx, "r1", nil)
		wantErr(t, "set no endpoints", err, store.ErrInvalid)
		_, err = s.SetEndpoints(ctx, "nope", []string{"10.1.1.1:80"})
		wantErr(t, "set endpoints of unknown", err, store.ErrNotFound)
		if err := s.DeleteRepl(ctx, "r1"); err != nil {
			t.Fatal(err)
		}
		wantErr(t, "delete again", s.DeleteRepl(ctx, "r1"), store.ErrNotFound)
		_, err = s.Lookup(ctx, store.ReplKey("alice", "m"))
		wantErr(t, "lookup deleted", err, store.ErrNotFound)
	}},
	{"move steps", func(t *testing.T, ctx context.Context, s store.Store) {
		// This cluster is the destination first.
		in := store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"10.0.0.1:80"}, Generation: 2}
		r, err := s.Activate(ctx, in)
		if err != nil || r.Generation != 2 {
			t.Fatalf("activate = %+v, %v", r, err)
		}
		if r, err = s.Activate(ctx, in); err != nil || r.Generation != 2 {
			t.Fatalf("activate again = %+v, %v", r, err)
		}
		old := in
		old.Generation, old.Endpoints = 1, []string{"10.9.9.9:80"}
		if r, err = s.Activate(ctx, old); err != nil || r.Generation != 2 || r.Endpoints[0] != "10.0.0.1:80" {
			t.Fatalf("activate an older generation = %+v, %v; want the newer row left alone", r, err)
		}
		// Then the source: the repl moves on to cluster west.
		ts, err := s.Retire(ctx, "r1", "west", 3)
		if err != nil || ts.Cluster != "west" || ts.Generation != 3 || ts.Owner != "alice" || ts.Slug != "blog" {
			t.Fatalf("retire = %+v, %v", ts, err)
		}
		if ts, err = s.Retire(ctx, "r1", "west", 3); err != nil || ts.Generation != 3 {
			t.Fatalf("retire again = %+v, %v", ts, err)
		}
		tomb := store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: "west", Generation: 3}
		wantRoute(t, ctx, s, store.ReplKey("alice", "blog"), tomb)
		wantRoute(t, ctx, s, store.ReplIDKey("r1"), tomb)
		wantStats(t, ctx, s, store.Stats{Tombstones: 1})
		_, err = s.GetRepl(ctx, "r1")
		wantErr(t, "get retired", err, store.ErrNotFound)
		_, err = s.CreateRepl(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog2", Endpoints: []string{"127.0.0.1:1"}})
		wantErr(t, "create over a tombstone", err, store.ErrConflict)

		// Step 3 of a later move: west → north.
		if err := s.Repoint(ctx, "r1", "north", 4); err != nil {
			t.Fatal(err)
		}
		if err := s.Repoint(ctx, "r1", "west", 3); err != nil { // older: no-op
			t.Fatal(err)
		}
		tomb.Cluster, tomb.Generation = "north", 4
		wantRoute(t, ctx, s, store.ReplIDKey("r1"), tomb)
		wantErr(t, "repoint unknown", s.Repoint(ctx, "r9", "north", 4), store.ErrNotFound)
		_, err = s.Retire(ctx, "r9", "north", 4)
		wantErr(t, "retire unknown", err, store.ErrNotFound)

		// A stale activation (generation not above the tombstone's) is refused.
		_, err = s.Activate(ctx, in)
		wantErr(t, "activate behind the tombstone", err, store.ErrConflict)
		// Moving back: generation 5 replaces the tombstone.
		back := in
		back.Generation = 5
		if _, err := s.Activate(ctx, back); err != nil {
			t.Fatal(err)
		}
		wantRoute(t, ctx, s, store.ReplKey("alice", "blog"), store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: in.Endpoints, Generation: 5})
		wantStats(t, ctx, s, store.Stats{Repls: 1})
		_, err = s.Retire(ctx, "r1", "west", 5)
		wantErr(t, "retire at the live generation", err, store.ErrConflict)
		_, err = s.Retire(ctx, "r1", "Bad_Cluster", 6)
		wantErr(t, "retire to a bad cluster name", err, store.ErrInvalid)
		wantStats(t, ctx, s, store.Stats{Repls: 1})
	}},
	{"a name several rows carry goes to the row store.Prefer picks", func(t *testing.T, ctx context.Context, s store.Store) {
		name := store.ReplKey("alice", "blog")
		tomb := func(id, cluster string, gen int64) store.Route {
			return store.Route{Kind: store.RouteTombstone, ReplID: id, Owner: "alice", Slug: "blog", Cluster: cluster, Generation: gen}
		}
		mustCreate(t, ctx, s, "r2", "alice", "blog")
		if _, err := s.Retire(ctx, "r2", "west", 2); err != nil {
			t.Fatal(err)
		}
		// A new repl given the name: the live row wins over a tombstone of
		// a higher generation.
		r1 := mustCreate(t, ctx, s, "r1", "alice", "blog")
		wantRoute(t, ctx, s, name, store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: r1.Endpoints, Generation: 1})
		// Two tombstones of one generation: the smaller repl id.
		if _, err := s.Retire(ctx, "r1", "west", 2); err != nil {
			t.Fatal(err)
		}
		wantRoute(t, ctx, s, name, tomb("r1", "west", 2))
		// Then the higher generation.
		if err := s.Repoint(ctx, "r2", "north", 3); err != nil {
			t.Fatal(err)
		}
		wantRoute(t, ctx, s, name, tomb("r2", "north", 3))
		wantRoute(t, ctx, s, store.ReplIDKey("r1"), tomb("r1", "west", 2))
		wantStats(t, ctx, s, store.Stats{Tombstones: 2})
	}},
	{"activate with domains", func(t *testing.T, ctx context.Context, s store.Store) {
		at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
		doms := []store.Domain{{Name: "a.example.com", Token: "tok-a", VerifiedAt: at}, {Name: "b.example.com", Token: "tok-b"}}
		in := store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"10.0.0.1:80"}, Generation: 2}
		for range 2 { // a rerun changes nothing
			if _, err := s.ActivateWithDomains(ctx, in, doms); err != nil {
				t.Fatal(err)
			}
		}
		ds, err := s.ListDomains(ctx, "r1")
		if err != nil || len(ds) != 2 || ds[0].Token != "tok-a" || !ds[0].VerifiedAt.Equal(at) || !ds[1].VerifiedAt.IsZero() {
			t.Fatalf("domains = %+v, %v", ds, err)
		}
		wantRoute(t, ctx, s, store.DomainKey("b.example.com"), store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: in.Endpoints, Generation: 2})
		// A domain another repl holds: a conflict, and nothing changes.
		mustCreate(t, ctx, s, "r2", "bob", "shop")
		if _, err := s.LinkDomain(ctx, store.Domain{Name: "c.example.com", ReplID: "r2"}); err != nil {
			t.Fatal(err)
		}
		other := store.Repl{ID: "r3", Owner: "carol", Slug: "app", Endpoints: []string{"10.0.0.3:80"}, Generation: 2}
		_, err = s.ActivateWithDomains(ctx, other, []store.Domain{{Name: "d.example.com", Token: "t"}, {Name: "c.example.com", Token: "t"}})
		wantErr(t, "activate with a domain of another repl", err, store.ErrConflict)
		_, err = s.GetRepl(ctx, "r3")
		wantErr(t, "the refused activation", err, store.ErrNotFound)
		wantStats(t, ctx, s, store.Stats{Repls: 2, Domains: 3})
		_, err = s.ActivateWithDomains(ctx, other, []store.Domain{{Name: "Bad_Domain", Token: "t"}})
		wantErr(t, "activate with a bad domain", err, store.ErrInvalid)
	}},
	{"tombstones list and collect", func(t *testing.T, ctx context.Context, s store.Store) {
		mustCreate(t, ctx, s, "r2", "alice", "b")
		mustCreate(t, ctx, s, "r1", "alice", "a")
		for _, id := range []string{"r2", "r1"} {
			if _, err := s.Retire(ctx, id, "west", 2); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.LinkDomain(ctx, store.Domain{Name: "www.example.com", ReplID: "r1"}); err != nil {
			t.Fatal(err)
		}
		ts, err := s.ListTombstones(ctx)
		if err != nil || len(ts) != 2 || ts[0].ReplID != "r1" || ts[1].ReplID != "r2" {
			t.Fatalf("list tombstones = %+v, %v", ts, err)
		}
		if n, err := s.CollectTombstones(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
			t.Fatalf("collect older than an hour = %d, %v; want 0", n, err)
		}
		if n, err := s.CollectTombstones(ctx, time.Now().Add(time.Second)); err != nil || n != 2 {
			t.Fatalf("collect all = %d, %v; want 2", n, err)
		}
		wantStats(t, ctx, s, store.Stats{})
		_, err = s.GetTombstone(ctx, "r1")
		wantErr(t, "get collected", err, store.ErrNotFound)
	}},
	{"domains", func(t *testing.T, ctx context.Context, s store.Store) {
		mustCreate(t, ctx, s, "r1", "alice", "blog")
		d, err := s.LinkDomain(ctx, store.Domain{Name: "www.example.com", ReplID: "r1"})
		if err != nil || d.Token == "" || !d.VerifiedAt.IsZero() || d.CreatedAt.IsZero() {
			t.Fatalf("link = %+v, %v; want a token, a creation time and no verification", d, err)
		}
		if _, err := s.LinkDomain(ctx, store.Domain{Name: "a.example.org", ReplID: "r1", Token: "given"}); err != nil {
			t.Fatal(err)
		}
		_, err = s.LinkDomain(ctx, store.Domain{Name: "www.example.com", ReplID: "r1"})
		wantErr(t, "link twice", err, store.ErrConflict)
		_, err = s.LinkDomain(ctx, store.Domain{Name: "x.example.com", ReplID: "nope"})
		wantErr(t, "link to unknown repl", err, store.ErrNotFound)
		for _, bad := range []string{"", "localhost", "WWW.example.com", "a..b", "-a.example.com", "a_b.example.com"} {
			_, err = s.LinkDomain(ctx, store.Domain{Name: bad, ReplID: "r1"})
			wantErr(t, "link "+bad, err, store.ErrInvalid)
		}
		_, err = s.LinkDomain(ctx, store.Domain{Name: "t.example.com", ReplID: "r1", Token: "not a token"})
		wantErr(t, "link with a bad token", err, store.ErrInvalid)
		wantRoute(t, ctx, s, store.DomainKey("www.example.com"), store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:9001"}, Generation: 1})
		ds, err := s.ListDomains(ctx, "r1")
		if err != nil || len(ds) != 2 || ds[0].Name != "a.example.org" || ds[0].Token != "given" || ds[1].Name != "www.example.com" {
			t.Fatalf("list domains = %+v, %v", ds, err)
		}
		at := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
		if err := s.MarkDomainVerified(ctx, "www.example.com", at); err != nil {
			t.Fatal(err)
		}
		if d, err := s.GetDomain(ctx, "www.example.com"); err != nil || !d.VerifiedAt.Equal(at) {
			t.Fatalf("get verified = %+v, %v", d, err)
		}
		wantErr(t, "verify unknown", s.MarkDomainVerified(ctx, "no.example.com", at), store.ErrNotFound)

		// The repl moves away: its domains route to the tombstone.
		if _, err := s.Retire(ctx, "r1", "west", 2); err != nil {
			t.Fatal(err)
		}
		wantRoute(t, ctx, s, store.DomainKey("www.example.com"), store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: "west", Generation: 2})
		if _, err := s.LinkDomain(ctx, store.Domain{Name: "late.example.com", ReplID: "r1"}); err != nil {
			t.Fatalf("link to a tombstoned repl: %v", err)
		}
		if err := s.UnlinkDomain(ctx, "late.example.com"); err != nil {
			t.Fatal(err)
		}
		wantErr(t, "unlink again", s.UnlinkDomain(ctx, "late.example.com"), store.ErrNotFound)
		_, err = s.Lookup(ctx, store.DomainKey("late.example.com"))
		wantErr(t, "lookup unlinked", err, store.ErrNotFound)
		wantStats(t, ctx, s, store.Stats{Tombstones: 1, Domains: 2})
	}},
	{"deleting a repl removes its domains", func(t *testing.T, ctx context.Context, s store.Store) {
		mustCreate(t, ctx, s, "r1", "alice", "blog")
		mustCreate(t, ctx, s, "r2", "alice", "shop")
		for _, d := range []store.Domain{{Name: "a.example.com", ReplID: "r1"}, {Name: "b.example.com", ReplID: "r2"}} {
			if _, err := s.LinkDomain(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.DeleteRepl(ctx, "r1"); err != nil {
			t.Fatal(err)
		}
		_, err := s.GetDomain(ctx, "a.example.com")
		wantErr(t, "domain of deleted repl", err, store.ErrNotFound)
		wantStats(t, ctx, s, store.Stats{Repls: 1, Domains: 1})
	}},
	{"challenges", func(t *testing.T, ctx context.Context, s store.Store) {
		name := "_acme-challenge.alice.repl.test"
		later := time.Now().Add(time.Hour)
		for _, v := range []string{"zzz", "aaa"} {
			if err := s.PutChallenge(ctx, store.Challenge{Name: name, Value: v, ExpiresAt: later}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.PutChallenge(ctx, store.Challenge{Name: name, Value: "old", ExpiresAt: time.Now().Add(-time.Minute)}); err != nil {
			t.Fatal(err)
		}
		cs, err := s.Challenges(ctx, name)
		if err != nil || len(cs) != 2 || cs[0].Value != "aaa" || cs[1].Value != "zzz" {
			t.Fatalf("challenges = %+v, %v; want aaa, zzz (old expired)", cs, err)
		}
		// Putting it again extends its expiry.
		if err := s.PutChallenge(ctx, store.Challenge{Name: name, Value: "old", ExpiresAt: later}); err != nil {
			t.Fatal(err)
		}
		if cs, _ := s.Challenges(ctx, name); len(cs) != 3 {
			t.Fatalf("after extending: %+v", cs)
		}
		if err := s.DeleteChallenge(ctx, name, "zzz"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteChallenge(ctx, name, "zzz"); err != nil {
			t.Fatalf("delete a missing challenge: %v, want nil", err)
		}
		if err := s.PutChallenge(ctx, store.Challenge{Name: name, Value: "gone", ExpiresAt: time.Now().Add(-time.Second)}); err != nil {
			t.Fatal(err)
		}
		if n, err := s.DeleteExpiredChallenges(ctx, time.Now()); err != nil || n != 1 {
			t.Fatalf("delete expired = %d, %v; want 1", n, err)
		}
		wantStats(t, ctx, s, store.Stats{Challenges: 2})
		for _, bad := range []store.Challenge{
			{Name: "alice.repl.test", Value: "x", ExpiresAt: later},
			{Name: "_acme-challenge.", Value: "x", ExpiresAt: later},
			{Name: "_acme-challenge.Alice.repl.test", Value: "x", ExpiresAt: later},
			{Name: name, Value: "", ExpiresAt: later},
			{Name: name, Value: "has space", ExpiresAt: later},
			{Name: name, Value: `q"uote`, ExpiresAt: later},
		} {
			wantErr(t, "put "+bad.Name+" "+bad.Value, s.PutChallenge(ctx, bad), store.ErrInvalid)
		}
		wantStats(t, ctx, s, store.Stats{Challenges: 2})
	}},
	{"watch announces changes", func(t *testing.T, ctx context.Context, s store.Store) {
		wctx, stop := context.WithCancel(ctx)
		events := make(chan store.Event, 100)
		done := make(chan error, 1)
		go func() { done <- s.Watch(wctx, func(e store.Event) { events <- e }) }()
		defer func() {
			stop()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("watch returned %v, want context.Canceled", err)
			}
		}()
		if e := NextEvent(t, events); e.Kind != store.EventResync {
			t.Fatalf("first event = %+v, want resync", e)
		}
		mustCreate(t, ctx, s, "r1", "alice", "blog")
		// Either backend may announce a change precisely or ask for a resync.
		e := NextEvent(t, events)
		if e.Kind != store.EventResync && (e.Kind != store.EventRepl || e.ReplID != "r1" || e.Owner != "alice" || e.Slug != "blog") {
			t.Fatalf("event after create = %+v, want repl r1 alice/blog or resync", e)
		}
	}},
}

// NextEvent returns the next event from events, failing t when none comes
// within 10 s.
func NextEvent(t *testing.T, events <-chan store.Event) store.Event {
	t.Helper()
	select {
	case e := <-events:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
		return store.Event{}
	}
}

func replIDs(rs []store.Repl) []string {
	ids := make([]string, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	return ids
}

func init() {
	contractCases = append(contractCases, contractCase{"move claims", testMoveClaims})
}

// testMoveClaims: a claim for one destination keeps a move to another out
// until it expires or is forced, and tells who holds it; a rerun of the
// same move takes it over, keeping when it began; the holder releases it.
func testMoveClaims(t *testing.T, ctx context.Context, s store.Store) {
	a := store.MoveClaim{ReplID: "r1", Holder: "replctl on ops-1, pid 1, by alice", To: "west"}
	got, err := s.ClaimMove(ctx, a, time.Minute, false)
	if err != nil || got.Holder != a.Holder || got.To != "west" || got.Since.IsZero() || !got.Expires.After(got.Since) {
		t.Fatalf("first claim = %+v, %v", got, err)
	}
	b := store.MoveClaim{ReplID: "r1", Holder: "replctl on ops-2, pid 2, by bob", To: "north"}
	_, err = s.ClaimMove(ctx, b, time.Minute, false)
	var held *store.ClaimedError
	if !errors.As(err, &held) || !errors.Is(err, store.ErrConflict) || held.Claim.Holder != a.Holder || held.Claim.To != "west" ||
		!strings.Contains(err.Error(), "ops-1") || !strings.Contains(err.Error(), "to west") {
		t.Fatalf("a claim for another destination: %v, want a ClaimedError naming the move to west by ops-1", err)
	}
	if c, err := s.GetMoveClaim(ctx, "r1"); err != nil || c.Holder != a.Holder {
		t.Fatalf("get claim after a refused one = %+v, %v; want a's", c, err)
	}
	// A rerun of the same move, by anyone, takes it over.
	rerun := store.MoveClaim{ReplID: "r1", Holder: "replctl on ops-3, pid 3, by carol", To: "west"}
	again, err := s.ClaimMove(ctx, rerun, time.Minute, false)
	if err != nil || again.Holder != rerun.Holder || !again.Since.Equal(got.Since) {
		t.Fatalf("the same move again = %+v, %v; want carol's claim since %v", again, err, got.Since)
	}
	// Releasing another's claim does nothing; the holder's removes it.
	if err := s.ReleaseMove(ctx, "r1", a.Holder); err != nil {
		t.Fatal(err)
	}
	if c, err := s.GetMoveClaim(ctx, "r1"); err != nil || c.Holder != rerun.Holder {
		t.Fatalf("after a release by a non-holder = %+v, %v", c, err)
	}
	// Force takes it for another destination.
	forced, err := s.ClaimMove(ctx, b, time.Minute, true)
	if err != nil || forced.To != "north" || forced.Holder != b.Holder {
		t.Fatalf("forced claim = %+v, %v", forced, err)
	}
	if err := s.ReleaseMove(ctx, "r1", b.Holder); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetMoveClaim(ctx, "r1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after release: %v, want ErrNotFound", err)
	}
	// An expired claim is taken by any move.
	if _, err := s.ClaimMove(ctx, a, time.Millisecond, false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if c, err := s.ClaimMove(ctx, b, time.Minute, false); err != nil || c.To != "north" {
		t.Fatalf("a claim after the previous one expired = %+v, %v", c, err)
	}
	for _, bad := range []store.MoveClaim{{ReplID: "R!", Holder: "x", To: "west"}, {ReplID: "r1", Holder: "", To: "west"}, {ReplID: "r1", Holder: "x", To: "We st"}} {
		if _, err := s.ClaimMove(ctx, bad, time.Minute, false); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("claim %+v: %v, want ErrInvalid", bad, err)
		}
	}
}

func init() {
	contractCases = append(contractCases, contractCase{"list everything at once", func(t *testing.T, ctx context.Context, s store.Store) {
		mustCreate(t, ctx, s, "r1", "alice", "blog")
		mustCreate(t, ctx, s, "r2", "bob", "shop")
		if _, err := s.LinkDomain(ctx, store.Domain{Name: "blog.example.com", ReplID: "r1"}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Retire(ctx, "r2", "west", 2); err != nil {
			t.Fatal(err)
		}
		soon := time.Now().Add(time.Hour).Truncate(time.Second)
		for _, c := range []store.Challenge{
			{Name: "_acme-challenge.blog.alice.repl.test", Value: "b", ExpiresAt: soon},
			{Name: "_acme-challenge.alice.repl.test", Value: "a", ExpiresAt: soon},
			{Name: "_acme-challenge.blog.alice.repl.test", Value: "a", ExpiresAt: soon},
			{Name: "_acme-challenge.bob.repl.test", Value: "gone", ExpiresAt: time.Now().Add(-time.Minute)},
		} {
			if err := s.PutChallenge(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		snap, err := s.ListAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(snap.Repls) != 1 || snap.Repls[0].ID != "r1" || len(snap.Tombstones) != 1 || snap.Tombstones[0].ReplID != "r2" ||
			snap.Tombstones[0].Cluster != "west" || len(snap.Domains) != 1 || snap.Domains[0].Name != "blog.example.com" {
			t.Fatalf("ListAll = %+v", snap)
		}
		// Unexpired challenges only, by name and value.
		var got []string
		for _, c := range snap.Challenges {
			got = append(got, c.Name+"="+c.Value)
			if !c.ExpiresAt.Equal(soon) {
				t.Errorf("challenge %s=%s expires %v, want %v", c.Name, c.Value, c.ExpiresAt, soon)
			}
		}
		want := []string{"_acme-challenge.alice.repl.test=a", "_acme-challenge.blog.alice.repl.test=a", "_acme-challenge.blog.alice.repl.test=b"}
		if !slices.Equal(got, want) {
			t.Errorf("ListAll challenges = %q, want %q", got, want)
		}
	}})
}
