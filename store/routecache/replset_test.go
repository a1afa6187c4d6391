package routecache

import (
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/store"
)

// check verifies everything the set's structures must agree on.
func (r *replSet) check() error {
	inUse, refs := 0, map[uint32]uint32{}
	for i := range r.ents.records() {
		if !r.ents.inUse(i) {
			continue
		}
		inUse++
		e := r.entry(i)
		if j, ok := r.findID(e.ID); !ok || j != i {
			return fmt.Errorf("record %d (%s): by id: %d, %v", i, e.ID, j, ok)
		}
		found := false
		for p := r.byName.probe(r.entNameHash(i)); ; {
			j, ok := p.next()
			if !ok {
				break
			}
			found = found || j == i
		}
		if !found {
			return fmt.Errorf("record %d (%s): not under its name %s/%s", i, e.ID, e.Owner, e.Slug)
		}
		o := r.ents.at(i).owner
		if !r.owners.inUse(o) {
			return fmt.Errorf("record %d: owner record %d not in use", i, o)
		}
		refs[o]++
	}
	if inUse != r.ents.live || r.byID.live != inUse || r.byName.live != inUse {
		return fmt.Errorf("%d records in use, live %d, byID %d, byName %d", inUse, r.ents.live, r.byID.live, r.byName.live)
	}
	owners := 0
	for o := range r.owners.records() {
		if !r.owners.inUse(o) {
			continue
		}
		owners++
		name, _ := r.owners.str(o)
		if j, ok := r.findOwner(name, r.hash(name)); !ok || j != o {
			return fmt.Errorf("owner %q: found as %d, %v, want %d", name, j, ok, o)
		}
		if n := r.owners.at(o).repls; n != refs[o] {
			return fmt.Errorf("owner %q: counts %d repls, %d refer to it", name, n, refs[o])
		}
	}
	if owners != r.owners.live || r.byOwner.live != owners || owners != len(refs) {
		return fmt.Errorf("%d owners in use, live %d, byOwner %d, referred to %d", owners, r.owners.live, r.byOwner.live, len(refs))
	}
	for _, t := range []*hashTable{&r.byID, &r.byName, &r.byOwner} {
		live, used := 0, 0
		for _, s := range t.slots {
			if s != emptySlot {
				used++
			}
			if s != emptySlot && s != deletedSlot {
				live++
			}
		}
		if live != t.live || used != t.used || used >= len(t.slots) && len(t.slots) > 0 {
			return fmt.Errorf("table: %d live and %d used slots of %d, counted %d and %d", live, used, len(t.slots), t.live, t.used)
		}
	}
	if err := checkSlab(&r.ents); err != nil {
		return fmt.Errorf("ents: %w", err)
	}
	if err := checkSlab(&r.owners); err != nil {
		return fmt.Errorf("owners: %w", err)
	}
	return nil
}

func checkSlab[T any](s *slab[T]) error {
	free := 0
	for f := s.free; f != 0; f = s.chunks[(f-1)>>chunkBits].spans[(f-1)&(chunkLen-1)].off {
		if free++; free > int(s.records()) {
			return fmt.Errorf("the free list loops")
		}
	}
	if free+s.live != int(s.records()) {
		return fmt.Errorf("%d free and %d live of %d records", free, s.live, s.records())
	}
	for k, c := range s.chunks {
		used := 0
		for _, sp := range c.spans {
			if sp.a != 0 {
				used += int(sp.a) + int(sp.b)
			}
		}
		if used+c.garbage != len(c.bytes) {
			return fmt.Errorf("chunk %d: %d bytes used and %d garbage of %d", k, used, c.garbage, len(c.bytes))
		}
	}
	return nil
}

// model is what the index means, kept the simplest way: the entries by
// id, a name owned by the claim store.Prefer picks. (The index before the
// compact set kept only a name's holder and lost the name when the holder
// went, even while another repl's tombstone still claimed it.)
type model map[string]IndexEntry

func (m model) name(owner, slug string) (IndexEntry, bool) {
	var best IndexEntry
	found := false
	for _, e := range m {
		if e.Owner == owner && e.Slug == slug && (!found || store.Prefer(claimOf(e), claimOf(best))) {
			best, found = e, true
		}
	}
	return best, found
}

func (m model) owner(owner string) bool {
	for _, e := range m {
		if e.Owner == owner {
			return true
		}
	}
	return false
}

func claimOf(e IndexEntry) store.Claim {
	return store.Claim{Live: e.MovedTo == "", Generation: e.Generation, ReplID: e.ID}
}

// hashes the differential test runs under: the real one, and ones that
// collide on purpose.
var testHashes = map[string]func(string) uint64{
	"maphash":  nil,
	"constant": func(string) uint64 { return 42 },
	"4 buckets": func(s string) uint64 {
		h := fnv.New64a()
		h.Write([]byte(s))
		return h.Sum64() % 4
	},
	"same tag": func(s string) uint64 { // positions spread, every tag alike
		h := fnv.New64a()
		h.Write([]byte(s))
		return uint64(uint32(h.Sum64())) | 7<<32
	},
}

// listed is a Lister whose ListAll answers snap.
type listed struct {
	Lister
	snap store.Snapshot
}

func (l *listed) ListAll(context.Context) (store.Snapshot, error) { return l.snap, nil }

// TestIndexMatchesModel: thousands of random puts, removes, renames,
// moves and rebuilds, under the real hash and under hashes that make
// every key collide, answer every lookup as the model does, and leave the
// structures consistent.
func TestIndexMatchesModel(t *testing.T) {
	for name, h := range testHashes {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			l := &listed{}
			x := NewIndex(l, nil)
			x.repls.testHash = h
			m := model{}
			pick := func(prefix string, n int) string { return fmt.Sprintf("%s%d", prefix, rng.IntN(n)) }
			random := func() IndexEntry {
				e := IndexEntry{ID: pick("id", 300), Owner: pick("o", 20), Slug: pick("s", 8), Generation: int64(rng.IntN(4))}
				if rng.IntN(3) == 0 {
					e.MovedTo = pick("c", 3)
				}
				return e
			}
			for step := range 6000 {
				switch op := rng.IntN(100); {
				case op < 55:
					e := random()
					x.mu.Lock()
					x.putLocked(e)
					x.mu.Unlock()
					m[e.ID] = e
				case op < 85:
					id := pick("id", 300)
					x.mu.Lock()
					x.removeLocked(id)
					x.mu.Unlock()
					delete(m, id)
				case op < 87:
					// A rebuild from a snapshot: most of the model, some of
					// it changed, some new.
					next := model{}
					var snap store.Snapshot
					for id, e := range m {
						switch rng.IntN(6) {
						case 0:
							continue // gone from the store
						case 1:
							e = random()
							e.ID = id
						}
						next[id] = e
					}
					for range rng.IntN(40) {
						e := random()
						next[e.ID] = e
					}
					for _, e := range next {
						if e.MovedTo != "" {
							snap.Tombstones = append(snap.Tombstones, store.Tombstone{ReplID: e.ID, Owner: e.Owner, Slug: e.Slug, Cluster: e.MovedTo, Generation: e.Generation})
						} else {
							snap.Repls = append(snap.Repls, store.Repl{ID: e.ID, Owner: e.Owner, Slug: e.Slug, Generation: e.Generation})
						}
					}
					l.snap = snap
					if err := x.Rebuild(t.Context()); err != nil {
						t.Fatal(err)
					}
					m = next
				default:
					if err := x.repls.check(); err != nil {
						t.Fatalf("step %d: %v", step, err)
					}
				}
				for range 5 {
					owner, slug, id := pick("o", 22), pick("s", 9), pick("id", 320)
					want, wantOK := m.name(owner, slug)
					if kn, got := x.Repl(store.ReplKey(owner, slug)); (kn == KnownYes) != wantOK || got != want {
						t.Fatalf("step %d: %s/%s = %v %+v, want %v %+v", step, owner, slug, kn, got, wantOK, want)
					}
					want, wantOK = m[id]
					if kn, got := x.Repl(store.ReplIDKey(id)); (kn == KnownYes) != wantOK || got != want {
						t.Fatalf("step %d: id %s = %v %+v, want %v %+v", step, id, kn, got, wantOK, want)
					}
					if kn := x.Owner(owner); (kn == KnownYes) != m.owner(owner) {
						t.Fatalf("step %d: owner %s = %v, want %v", step, owner, kn, m.owner(owner))
					}
				}
				if x.Stats().Repls != len(m) {
					t.Fatalf("step %d: %d repls, want %d", step, x.Stats().Repls, len(m))
				}
			}
			if err := x.repls.check(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestIndexNameClaims: of the repls that claim a name, the one
// store.Prefer picks owns it, and when it goes the next one does (the
// tombstone of the repl that had the name before).
func TestIndexNameClaims(t *testing.T) {
	for name, h := range testHashes {
		t.Run(name, func(t *testing.T) {
			x := NewIndex(&listed{}, nil)
			x.repls.testHash = h
			put := func(e IndexEntry) { x.mu.Lock(); x.putLocked(e); x.mu.Unlock() }
			old := IndexEntry{ID: "r1", Owner: "alice", Slug: "blog", Generation: 3, MovedTo: "west"}
			put(old)
			put(IndexEntry{ID: "r0", Owner: "alice", Slug: "blog", Generation: 2, MovedTo: "north"})
			put(IndexEntry{ID: "r2", Owner: "alice", Slug: "blog", Generation: 1})
			put(IndexEntry{ID: "r3", Owner: "alice", Slug: "blogs", Generation: 9})
			k := store.ReplKey("alice", "blog")
			if _, e := x.Repl(k); e.ID != "r2" {
				t.Fatalf("the live repl does not own its name: %+v", e)
			}
			x.mu.Lock()
			x.removeLocked("r2")
			x.mu.Unlock()
			if kn, e := x.Repl(k); kn != KnownYes || e != old {
				t.Fatalf("once the live repl is deleted: %v %+v, want the newest tombstone %+v", kn, e, old)
			}
			// A rename: r3 takes blog, live.
			put(IndexEntry{ID: "r3", Owner: "alice", Slug: "blog", Generation: 9})
			if _, e := x.Repl(k); e.ID != "r3" {
				t.Fatalf("after the rename: %+v", e)
			}
			if kn, _ := x.Repl(store.ReplKey("alice", "blogs")); kn == KnownYes {
				t.Fatal("the old name is still held")
			}
			if err := x.repls.check(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestIndexGrowsAndCompacts: a set of many chunks whose repls are renamed
// again and again keeps its arenas within a quarter of garbage, reuses
// the numbers of removed records, and the entries handed out before
// keep their strings.
func TestIndexGrowsAndCompacts(t *testing.T) {
	const n = 3*chunkLen + 1000
	x := NewIndex(&listed{}, nil)
	put := func(i, round int) {
		x.putLocked(IndexEntry{ID: fmt.Sprintf("id%07d", i), Owner: fmt.Sprintf("owner%d", i/4), Slug: fmt.Sprintf("slug%d-%d", i, round), Generation: int64(round)})
	}
	x.mu.Lock()
	for i := range n {
		put(i, 0)
	}
	x.mu.Unlock()
	_, kept := x.Repl(store.ReplIDKey("id0000007"))
	want := strings.Clone(kept.Slug) + " " + strings.Clone(kept.Owner) + " " + strings.Clone(kept.ID)
	for round := 1; round <= 6; round++ {
		x.mu.Lock()
		for i := range n {
			put(i, round)
		}
		x.mu.Unlock()
	}
	if got := kept.Slug + " " + kept.Owner + " " + kept.ID; got != want {
		t.Fatalf("an entry handed out before compactions reads %q, want %q", got, want)
	}
	records := x.repls.ents.records()
	for k, c := range x.repls.ents.chunks {
		if c.garbage*4 > len(c.bytes) && c.garbage >= minGarbage {
			t.Errorf("chunk %d: %d garbage bytes of %d", k, c.garbage, len(c.bytes))
		}
	}
	if len(x.repls.ents.chunks) != 4 {
		t.Errorf("%d chunks for %d records, want 4", len(x.repls.ents.chunks), n)
	}
	// Remove most, put as many new: the numbers are reused.
	x.mu.Lock()
	for i := range n - 10 {
		x.removeLocked(fmt.Sprintf("id%07d", i))
	}
	if err := x.repls.check(); err != nil {
		t.Fatal(err)
	}
	for i := range n - 10 {
		x.putLocked(IndexEntry{ID: fmt.Sprintf("new%07d", i), Owner: "o", Slug: fmt.Sprintf("s%d", i), Generation: 1})
	}
	x.mu.Unlock()
	if got := x.repls.ents.records(); got != records {
		t.Errorf("%d records after removing and putting as many, want %d", got, records)
	}
	if x.repls.hasOwner("owner0") || !x.repls.hasOwner("o") {
		t.Error("owners not followed")
	}
	if err := x.repls.check(); err != nil {
		t.Fatal(err)
	}
}

// TestIndexRebuildInPlace: a rebuild changes the set it has instead of
// building another: rows gone from the store go, changed ones change,
// the tables are not reallocated when the size stays, and a repl with a
// tombstone and a live row (it moved back) ends live.
func TestIndexRebuildInPlace(t *testing.T) {
	var snap store.Snapshot
	for i := range 5000 {
		snap.Repls = append(snap.Repls, store.Repl{ID: fmt.Sprintf("r%d", i), Owner: fmt.Sprintf("u%d", i%700), Slug: fmt.Sprintf("s%d", i), Generation: 1})
	}
	l := &listed{snap: snap}
	x := NewIndex(l, nil)
	if err := x.Rebuild(t.Context()); err != nil {
		t.Fatal(err)
	}
	slots := &x.repls.byID.slots[0]
	next := store.Snapshot{Repls: append([]store.Repl(nil), snap.Repls[100:]...)}
	for i := range 100 {
		next.Repls = append(next.Repls, store.Repl{ID: fmt.Sprintf("n%d", i), Owner: "u1", Slug: fmt.Sprintf("n%d", i), Generation: 1})
	}
	next.Repls[0].Slug = "renamed"
	next.Tombstones = []store.Tombstone{{ReplID: "r200", Owner: "u200", Slug: "s200", Cluster: "west", Generation: 1}}
	next.Repls[100].Generation = 2 // r200, back
	l.snap = next
	if err := x.Rebuild(t.Context()); err != nil {
		t.Fatal(err)
	}
	if &x.repls.byID.slots[0] != slots {
		t.Error("the id table was reallocated by a rebuild of the same size")
	}
	for k, want := range map[store.Key]bool{
		store.ReplIDKey("r5"): false, store.ReplIDKey("n5"): true, store.ReplKey("u100", "renamed"): true,
		store.ReplKey("u100", "s100"): false, store.ReplIDKey("r4999"): true,
	} {
		if kn := x.Knows(k); (kn == KnownYes) != want {
			t.Errorf("%s: %v, want known %v", k, kn, want)
		}
	}
	if _, e := x.Repl(store.ReplIDKey("r200")); e.MovedTo != "" || e.Generation != 2 {
		t.Errorf("a repl that moved back: %+v, want live", e)
	}
	if got := x.Stats().Repls; got != 5000 {
		t.Errorf("%d repls, want 5000", got)
	}
	if err := x.repls.check(); err != nil {
		t.Fatal(err)
	}
}

// TestIndexLookupsDoNotAllocate: Knows, Repl and Where make no allocation,
// hit or miss, collisions or not.
func TestIndexLookupsDoNotAllocate(t *testing.T) {
	x := NewIndex(&listed{}, nil)
	x.mu.Lock()
	for i := range 1000 {
		x.putLocked(IndexEntry{ID: fmt.Sprintf("r%d", i), Owner: fmt.Sprintf("u%d", i%50), Slug: fmt.Sprintf("s%d", i%7), Generation: int64(i % 3), MovedTo: []string{"", "west"}[i%2]})
	}
	x.current, x.built, x.arrived.keep = true, true, time.Hour
	for i := range 20 {
		x.noteArrivalLocked(fmt.Sprintf("r%d", i*2), 9) // live ones arriving
	}
	x.mu.Unlock()
	keys := []store.Key{store.ReplKey("u3", "s3"), store.ReplKey("u3", "nope"), store.ReplKey("nobody", "s3"), store.ReplIDKey("r7"), store.ReplIDKey("r8"), store.ReplIDKey("x")}
	if n := testing.AllocsPerRun(100, func() {
		for _, k := range keys {
			x.Knows(k)
			x.Repl(k)
			x.Where(k)
		}
		x.Owner("u3")
	}); n != 0 {
		t.Errorf("%v allocations per round of lookups, want 0", n)
	}
}
