package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/store"
)

// The wake protocol: a repl asleep, wakes requested by proxies and done
// by the container manager, and activity for idle tracking.

func init() {
	contractCases = append(contractCases,
		contractCase{"sleep keeps the route", testSleep},
		contractCase{"request a wake once", testRequestWake},
		contractCase{"concurrent wake requests make one", testRequestWakeConcurrent},
		contractCase{"claim a wake", testClaimWake},
		contractCase{"finish a wake", testFinishWake},
		contractCase{"fail a wake", testFailWake},
		contractCase{"list wakes", testListWakes},
		contractCase{"record activity", testActivity},
		contractCase{"delete removes wake and activity", testDeleteWake},
	)
}

func mustSleep(t *testing.T, ctx context.Context, s store.Store, id string) store.Repl {
	t.Helper()
	r, err := s.Sleep(ctx, id)
	if err != nil {
		t.Fatalf("sleep %s: %v", id, err)
	}
	return r
}

func mustRequest(t *testing.T, ctx context.Context, s store.Store, id, by string, want bool) {
	t.Helper()
	made, err := s.RequestWake(ctx, id, by)
	if err != nil || made != want {
		t.Fatalf("request wake of %s by %s = %v, %v; want %v", id, by, made, err, want)
	}
}

// testSleep: an asleep repl keeps its row and routes (Asleep, no
// endpoints) by name, id and domain; an awake one is not woken.
func testSleep(t *testing.T, ctx context.Context, s store.Store) {
	mustCreate(t, ctx, s, "r1", "alice", "blog")
	if _, err := s.LinkDomain(ctx, store.Domain{Name: "blog.example.com", ReplID: "r1"}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.GetRepl(ctx, "r1"); err != nil || r.Asleep {
		t.Fatalf("new repl = %+v, %v; want awake", r, err)
	}
	mustRequest(t, ctx, s, "r1", "proxy-1", false) // awake: nothing to do
	if _, err := s.GetWake(ctx, "r1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("wake of an awake repl: %v, want ErrNotFound", err)
	}
	r := mustSleep(t, ctx, s, "r1")
	if !r.Asleep || len(r.Endpoints) != 0 || r.Generation != 1 {
		t.Fatalf("sleep = %+v; want asleep, no endpoints, generation 1", r)
	}
	for _, k := range []store.Key{store.ReplKey("alice", "blog"), store.ReplIDKey("r1"), store.DomainKey("blog.example.com")} {
		got, err := s.Lookup(ctx, k)
		if err != nil || got.Kind != store.RouteLocal || !got.Asleep || got.ReplID != "r1" || len(got.Endpoints) != 0 {
			t.Fatalf("lookup %s after sleep = %+v, %v; want local r1, asleep, no endpoints", k, got, err)
		}
	}
	if got, err := s.GetRepl(ctx, "r1"); err != nil || !got.Asleep || len(got.Endpoints) != 0 {
		t.Fatalf("get after sleep = %+v, %v", got, err)
	}
	if rs, err := s.ListRepls(ctx, ""); err != nil || len(rs) != 1 || !rs[0].Asleep {
		t.Fatalf("list after sleep = %+v, %v", rs, err)
	}
	snap, err := s.ListAll(ctx)
	if err != nil || len(snap.Repls) != 1 || !snap.Repls[0].Asleep {
		t.Fatalf("list all after sleep = %+v, %v", snap.Repls, err)
	}
	mustSleep(t, ctx, s, "r1") // again: no change, no error
	if _, err := s.Sleep(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("sleep of a repl not here: %v, want ErrNotFound", err)
	}
	if _, err := s.RequestWake(ctx, "nope", "proxy-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("wake of a repl not here: %v, want ErrNotFound", err)
	}
	// A repl may be created asleep, without endpoints.
	r2, err := s.CreateRepl(ctx, store.Repl{ID: "r2", Owner: "bob", Slug: "shop", Asleep: true})
	if err != nil || !r2.Asleep || len(r2.Endpoints) != 0 {
		t.Fatalf("create asleep = %+v, %v", r2, err)
	}
	if _, err := s.CreateRepl(ctx, store.Repl{ID: "r3", Owner: "bob", Slug: "cafe"}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("create awake without endpoints: %v, want ErrInvalid", err)
	}
	// A move's Activate carries the repl as given: awake with its endpoints.
	a, err := s.Activate(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:9005"}, Generation: 2})
	if err != nil || a.Asleep || !slices.Equal(a.Endpoints, []string{"127.0.0.1:9005"}) {
		t.Fatalf("activate over an asleep row = %+v, %v; want awake with the move's endpoints", a, err)
	}
}

// testRequestWake: the first request makes the wake, the next ones see it.
func testRequestWake(t *testing.T, ctx context.Context, s store.Store) {
	mustCreate(t, ctx, s, "r1", "alice", "blog")
	mustSleep(t, ctx, s, "r1")
	before := time.Now().Add(-time.Second)
	mustRequest(t, ctx, s, "r1", "east/host-a/1", true)
	mustRequest(t, ctx, s, "r1", "east/host-b/2", false)
	w, err := s.GetWake(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if w.ReplID != "r1" || w.RequestedBy != "east/host-a/1" || w.ClaimedBy != "" || !w.ClaimedAt.IsZero() ||
		w.Failed != "" || !w.FailedAt.IsZero() || w.RequestedAt.Before(before) || w.RequestedAt.After(time.Now().Add(time.Second)) {
		t.Fatalf("wake = %+v; want requested by the first, unclaimed, not failed, now", w)
	}
	// Claimed, it is still pending: no new wake.
	if _, err := s.ClaimWake(ctx, "r1", "manager-1", time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	mustRequest(t, ctx, s, "r1", "east/host-c/3", false)
	if _, err := s.RequestWake(ctx, "r1", ""); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("request by nobody: %v, want ErrInvalid", err)
	}
}

// testRequestWakeConcurrent: 20 proxies asking at once make one wake.
func testRequestWakeConcurrent(t *testing.T, ctx context.Context, s store.Store) {
	mustCreate(t, ctx, s, "r1", "alice", "blog")
	mustSleep(t, ctx, s, "r1")
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		made []string
		errs []error
	)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			by := fmt.Sprintf("east/host-%d/1", i)
			ok, err := s.RequestWake(ctx, "r1", by)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			if ok {
				made = append(made, by)
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 || len(made) != 1 {
		t.Fatalf("20 concurrent requests: made by %v, errors %v; want exactly one made, no errors", made, errs)
	}
	if w, err := s.GetWake(ctx, "r1"); err != nil || w.RequestedBy != made[0] {
		t.Fatalf("wake = %+v, %v; want requested by %s", w, err, made[0])
	}
}

// testClaimWake: a claim keeps other managers out until it is stale; the
// holder may claim again; a failed wake cannot be claimed.
func testClaimWake(t *testing.T, ctx context.Context, s store.Store) {
	mustCreate(t, ctx, s, "r1", "alice", "blog")
	mustSleep(t, ctx, s, "r1")
	if _, err := s.ClaimWake(ctx, "r1", "manager-1", time.Now().Add(-time.Minute)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("claim without a wake: %v, want ErrNotFound", err)
	}
	mustRequest(t, ctx, s, "r1", "proxy-1", true)
	fresh := func() time.Time { return time.Now().Add(-time.Minute) } // a claim of the last minute holds
	w, err := s.ClaimWake(ctx, "r1", "manager-1", fresh())
	if err != nil || w.ClaimedBy != "manager-1" || w.ClaimedAt.IsZero() || w.RequestedBy != "proxy-1" {
		t.Fatalf("claim = %+v, %v", w, err)
	}
	if _, err := s.ClaimWake(ctx, "r1", "manager-2", fresh()); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second manager's claim: %v, want ErrConflict", err)
	}
	if got, err := s.GetWake(ctx, "r1"); err != nil || got.ClaimedBy != "manager-1" {
		t.Fatalf("wake after a refused claim = %+v, %v", got, err)
	}
	if _, err := s.ClaimWake(ctx, "r1", "manager-1", fresh()); err != nil {
		t.Fatalf("the holder claims again: %v", err)
	}
	// Stale (claimed before staleBefore): another manager takes it over.
	w2, err := s.ClaimWake(ctx, "r1", "manager-2", time.Now().Add(time.Second))
	if err != nil || w2.ClaimedBy != "manager-2" {
		t.Fatalf("take-over of a stale claim = %+v, %v", w2, err)
	}
	if _, err := s.ClaimWake(ctx, "r1", "manager-1", fresh()); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("the first manager after the take-over: %v, want ErrConflict", err)
	}
	if err := s.FailWake(ctx, "r1", "no capacity"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimWake(ctx, "r1", "manager-2", time.Now().Add(time.Hour)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("claim of a failed wake: %v, want ErrConflict", err)
	}
}

// testFinishWake: the manager's answer sets the endpoints, wakes the repl,
// removes the wake, and a watcher hears of the repl.
func testFinishWake(t *testing.T, ctx context.Context, s store.Store) {
	mustCreate(t, ctx, s, "r1", "alice", "blog")
	mustSleep(t, ctx, s, "r1")
	mustRequest(t, ctx, s, "r1", "proxy-1", true)
	if _, err := s.ClaimWake(ctx, "r1", "manager-1", time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	events := make(chan store.Event, 100)
	done := make(chan error, 1)
	go func() { done <- s.Watch(wctx, func(e store.Event) { events <- e }) }()
	defer func() { stop(); <-done }()
	if e := NextEvent(t, events); e.Kind != store.EventResync {
		t.Fatalf("first event = %+v, want resync", e)
	}
	if _, err := s.FinishWake(ctx, "r1", nil); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("finish without endpoints: %v, want ErrInvalid", err)
	}
	eps := []string{"127.0.0.1:9007", "127.0.0.1:9008"}
	r, err := s.FinishWake(ctx, "r1", eps)
	if err != nil || r.Asleep || !slices.Equal(r.Endpoints, eps) {
		t.Fatalf("finish = %+v, %v", r, err)
	}
	// The change feed says so: a repl event for r1 (PostgreSQL) or a
	// resync (embedded), before or after the wake's own event.
	for heard := false; !heard; {
		e := NextEvent(t, events)
		heard = e.Kind == store.EventResync || (e.Kind == store.EventRepl && e.ReplID == "r1")
		if !heard && (e.Kind != store.EventWake || e.ReplID != "r1") {
			t.Fatalf("event after finish = %+v, want repl r1 (or wake r1, or resync)", e)
		}
	}
	wantRoute(t, ctx, s, store.ReplKey("alice", "blog"), store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: eps, Generation: 1})
	if got, _ := s.Lookup(ctx, store.ReplIDKey("r1")); got.Asleep {
		t.Fatalf("lookup after finish = %+v; want awake", got)
	}
	if _, err := s.GetWake(ctx, "r1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("wake after finish: %v, want ErrNotFound", err)
	}
	mustRequest(t, ctx, s, "r1", "proxy-1", false) // awake now
	if _, err := s.FinishWake(ctx, "nope", eps); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("finish of a repl not here: %v, want ErrNotFound", err)
	}
}

// testFailWake: the reason is kept until a new request replaces the wake.
func testFailWake(t *testing.T, ctx context.Context, s store.Store) {
	mustCreate(t, ctx, s, "r1", "alice", "blog")
	mustSleep(t, ctx, s, "r1")
	if err := s.FailWake(ctx, "r1", "x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("fail without a wake: %v, want ErrNotFound", err)
	}
	mustRequest(t, ctx, s, "r1", "proxy-1", true)
	if _, err := s.ClaimWake(ctx, "r1", "manager-1", time.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.FailWake(ctx, "r1", "image pull failed: no such image"); err != nil {
		t.Fatal(err)
	}
	w, err := s.GetWake(ctx, "r1")
	if err != nil || w.Failed != "image pull failed: no such image" || w.FailedAt.IsZero() || w.ClaimedBy != "manager-1" {
		t.Fatalf("wake after fail = %+v, %v", w, err)
	}
	if r, _ := s.GetRepl(ctx, "r1"); !r.Asleep {
		t.Fatalf("repl after a failed wake = %+v; want still asleep", r)
	}
	if ws, err := s.ListWakes(ctx, time.Now().Add(time.Hour)); err != nil || len(ws) != 0 {
		t.Fatalf("list wakes with only a failed one = %+v, %v; want none", ws, err)
	}
	// A new request replaces the failed wake.
	mustRequest(t, ctx, s, "r1", "proxy-2", true)
	w, err = s.GetWake(ctx, "r1")
	if err != nil || w.Failed != "" || !w.FailedAt.IsZero() || w.ClaimedBy != "" || w.RequestedBy != "proxy-2" {
		t.Fatalf("wake after a new request = %+v, %v; want a fresh one by proxy-2", w, err)
	}
	mustRequest(t, ctx, s, "r1", "proxy-3", false)
	// A very long reason is kept, cut.
	long := make([]byte, 5000)
	for i := range long {
		long[i] = 'e'
	}
	if err := s.FailWake(ctx, "r1", string(long)); err != nil {
		t.Fatal(err)
	}
	if w, err := s.GetWake(ctx, "r1"); err != nil || len(w.Failed) != store.MaxWakeText {
		t.Fatalf("a long reason: %d bytes kept, %v; want %d", len(w.Failed), err, store.MaxWakeText)
	}
}

// testListWakes: the wakes to do, oldest first; claimed ones only once stale.
func testListWakes(t *testing.T, ctx context.Context, s store.Store) {
	for _, id := range []string{"r3", "r1", "r2", "r4"} {
		mustCreate(t, ctx, s, id, "alice", "s"+id)
		mustSleep(t, ctx, s, id)
	}
	for _, id := range []string{"r3", "r1", "r2", "r4"} {
		mustRequest(t, ctx, s, id, "proxy-1", true)
		time.Sleep(2 * time.Millisecond) // distinct request times
	}
	ids := func(ws []store.Wake) []string {
		out := make([]string, len(ws))
		for i, w := range ws {
			out[i] = w.ReplID
		}
		return out
	}
	fresh := time.Now().Add(-time.Minute)
	ws, err := s.ListWakes(ctx, fresh)
	if err != nil || !slices.Equal(ids(ws), []string{"r3", "r1", "r2", "r4"}) {
		t.Fatalf("list wakes = %v, %v; want r3 r1 r2 r4 (request order)", ids(ws), err)
	}
	if _, err := s.ClaimWake(ctx, "r1", "manager-1", fresh); err != nil {
		t.Fatal(err)
	}
	if err := s.FailWake(ctx, "r4", "broken"); err != nil {
		t.Fatal(err)
	}
	if ws, err = s.ListWakes(ctx, fresh); err != nil || !slices.Equal(ids(ws), []string{"r3", "r2"}) {
		t.Fatalf("list wakes with r1 claimed, r4 failed = %v, %v; want r3 r2", ids(ws), err)
	}
	// Once the claim is stale, r1 is listed again, in its place.
	if ws, err = s.ListWakes(ctx, time.Now().Add(time.Second)); err != nil || !slices.Equal(ids(ws), []string{"r3", "r1", "r2"}) {
		t.Fatalf("list wakes with r1's claim stale = %v, %v; want r3 r1 r2", ids(ws), err)
	}
}

// testActivity: the later time of a repl wins; repls not here are skipped.
func testActivity(t *testing.T, ctx context.Context, s store.Store) {
	mustCreate(t, ctx, s, "r1", "alice", "blog")
	mustCreate(t, ctx, s, "r2", "bob", "shop")
	if got, err := s.Activity(ctx); err != nil || len(got) != 0 {
		t.Fatalf("activity of a new store = %v, %v", got, err)
	}
	if err := s.RecordActivity(ctx, nil); err != nil {
		t.Fatalf("record nothing: %v", err)
	}
	t0 := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	if err := s.RecordActivity(ctx, map[string]time.Time{"r1": t0.Add(time.Minute), "r2": t0, "nope": t0}); err != nil {
		t.Fatal(err)
	}
	// An older time for r1 (a slow proxy's flush) does not go back.
	if err := s.RecordActivity(ctx, map[string]time.Time{"r1": t0, "r2": t0.Add(2 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Activity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Time{"r1": t0.Add(time.Minute), "r2": t0.Add(2 * time.Minute)}
	if len(got) != len(want) {
		t.Fatalf("activity = %v, want %v", got, want)
	}
	for id, at := range want {
		if !got[id].Equal(at) {
			t.Fatalf("activity = %v, want %v", got, want)
		}
	}
}

// testDeleteWake: a repl that goes takes its wake and its activity along.
func testDeleteWake(t *testing.T, ctx context.Context, s store.Store) {
	mustCreate(t, ctx, s, "r1", "alice", "blog")
	mustCreate(t, ctx, s, "r2", "bob", "shop")
	for _, id := range []string{"r1", "r2"} {
		mustSleep(t, ctx, s, id)
		mustRequest(t, ctx, s, id, "proxy-1", true)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	if err := s.RecordActivity(ctx, map[string]time.Time{"r1": now, "r2": now}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRepl(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Retire(ctx, "r2", "west", 2); err != nil { // moved away
		t.Fatal(err)
	}
	for _, id := range []string{"r1", "r2"} {
		if _, err := s.GetWake(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("wake of %s after it went: %v, want ErrNotFound", id, err)
		}
	}
	if ws, err := s.ListWakes(ctx, time.Now().Add(time.Hour)); err != nil || len(ws) != 0 {
		t.Fatalf("list wakes after the repls went = %+v, %v", ws, err)
	}
	if got, err := s.Activity(ctx); err != nil || len(got) != 0 {
		t.Fatalf("activity after the repls went = %v, %v; want none", got, err)
	}
	// The same id created again starts with no activity of its old self.
	mustCreate(t, ctx, s, "r1", "alice", "blog")
	if got, err := s.Activity(ctx); err != nil || len(got) != 0 {
		t.Fatalf("activity of a repl created again = %v, %v; want none", got, err)
	}
}
