package routecache

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/replproxy/replproxy/store"
)

// TestArrivals: the index says a repl is arriving once it becomes live at a
// generation it did not hold it live at — created, moved here, moved back —
// after the first build, through a rebuild as through the change feed, and
// for Config.Arrivals only. The first build and a change that leaves the
// generation alone make no arrival.
func TestArrivals(t *testing.T) {
	l := &listed{snap: store.Snapshot{
		Repls:      []store.Repl{{ID: "r1", Owner: "alice", Slug: "blog", Generation: 1}},
		Tombstones: []store.Tombstone{{ReplID: "r2", Owner: "bob", Slug: "api", Cluster: "west", Generation: 2}},
	}}
	x := NewIndex(l, nil)
	x.arrived.keep = time.Hour
	arriving := func(id string) bool {
		_, _, _, a := x.Where(store.ReplIDKey(id))
		return a
	}
	if err := x.Rebuild(context.Background()); err != nil {
		t.Fatal(err)
	}
	if arriving("r1") {
		t.Error("r1 arriving after the first build: it was there before replns")
	}

	// The feed's path: a live row at a new generation, a repl moving back
	// over its tombstone, and a change at the same generation.
	x.mu.Lock()
	for _, e := range []IndexEntry{
		{ID: "r1", Owner: "alice", Slug: "blog", Generation: 1}, // an endpoint changed
		{ID: "r2", Owner: "bob", Slug: "api", Generation: 3},    // moved back here
		{ID: "r3", Owner: "carol", Slug: "app", Generation: 1},  // created
	} {
		x.noteArrivalLocked(e.ID, e.Generation)
		x.putLocked(e)
	}
	x.mu.Unlock()
	for id, want := range map[string]bool{"r1": false, "r2": true, "r3": true} {
		if got := arriving(id); got != want {
			t.Errorf("after the feed's changes, %s arriving: %v, want %v", id, got, want)
		}
	}

	// A rebuild's path: r1 comes back at a new generation, r4 is new, r2
	// leaves as a tombstone (not live: not arriving, whatever came before).
	l.snap = store.Snapshot{
		Repls: []store.Repl{
			{ID: "r1", Owner: "alice", Slug: "blog", Generation: 4},
			{ID: "r3", Owner: "carol", Slug: "app", Generation: 1},
			{ID: "r4", Owner: "dave", Slug: "x", Generation: 1},
		},
		Tombstones: []store.Tombstone{{ReplID: "r2", Owner: "bob", Slug: "api", Cluster: "west", Generation: 4}},
	}
	if err := x.Rebuild(context.Background()); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{"r1": true, "r2": false, "r3": true, "r4": true} {
		if got := arriving(id); got != want {
			t.Errorf("after the rebuild, %s arriving: %v, want %v", id, got, want)
		}
	}

	// Past the hold nothing arrives any more.
	x.mu.Lock()
	x.arrived.keep = time.Nanosecond
	x.mu.Unlock()
	time.Sleep(time.Millisecond)
	for _, id := range []string{"r1", "r3", "r4"} {
		if arriving(id) {
			t.Errorf("%s still arriving past the hold", id)
		}
	}
}

// TestArrivalsForget: arrivals older than keep leave the map and the queue
// as new ones come, so they hold the last keep's arrivals only, and a repl
// that arrives twice is remembered by its last arrival.
func TestArrivalsForget(t *testing.T) {
	a := arrivals{keep: 100}
	for i := range 10_000 {
		a.add(fmt.Sprintf("r%d", i%300), int64(i+1))
		if held := len(a.order) - a.head; held > 100 {
			t.Fatalf("after %d arrivals the queue holds %d, want at most 100 (keep)", i+1, held)
		}
		if len(a.order) > 200 {
			t.Fatalf("after %d arrivals the queue's slice is %d long: not compacted", i+1, len(a.order))
		}
		if len(a.at) > 100 {
			t.Fatalf("after %d arrivals the map holds %d, want at most 100", i+1, len(a.at))
		}
	}
	a = arrivals{keep: 100}
	a.add("r1", 1)
	a.add("r1", 50)
	a.add("r2", 120) // prunes r1's first arrival only
	if a.at["r1"] != 50 {
		t.Errorf("r1 arrived at %d, want its last arrival, 50", a.at["r1"])
	}
}
