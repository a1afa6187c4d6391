package routecache

import "github.com/replproxy/replproxy/store"

// loadBatch is how many rows loadRepls handles per hold of the index's
// lock, so that lookups go on while it works.
const loadBatch = 4096

// loadRepls makes the index's repls and tombstones snap's, in place and a
// batch at a time, instead of building a second set beside it: a rebuild
// then holds one set (and the garbage of what changed), not two.
//
// It marks the records whose id is still in snap, removes the others, then
// puts every row, so the set never holds more than the larger of the old
// and the new. Meanwhile lookups see, for each repl, either what the index
// held or what snap says (a name may pass from one claim to the other
// before the last row is put); a rebuild runs while the index is not
// current, when a name it lacks is KnownUnsure anyway. A change put while
// it runs (read) gets the current mark and is kept.
func (x *Index) loadRepls(snap store.Snapshot) {
	x.mu.Lock()
	x.repls.mark ^= markBit
	x.mu.Unlock()

	fresh := 0
	x.batches(len(snap.Tombstones), func(i int) {
		if !x.repls.markID(snap.Tombstones[i].ReplID) {
			fresh++
		}
	})
	x.batches(len(snap.Repls), func(i int) {
		r := snap.Repls[i]
		x.noteArrivalLocked(r.ID, r.Generation) // before any row is put: against what the index held
		if !x.repls.markID(r.ID) {
			fresh++
		}
	})
	for from, more := uint32(0), true; more; {
		x.mu.Lock()
		from, more = x.repls.sweep(from, loadBatch)
		x.mu.Unlock()
	}

	x.mu.Lock()
	x.repls.reserve(x.repls.len() + fresh)
	x.mu.Unlock()
	// Tombstones first: a repl that has both (it moved back) ends live, as
	// its id's row.
	x.batches(len(snap.Tombstones), func(i int) {
		t := snap.Tombstones[i]
		x.putLocked(IndexEntry{ID: t.ReplID, Owner: t.Owner, Slug: t.Slug, Generation: t.Generation, MovedTo: t.Cluster})
	})
	x.batches(len(snap.Repls), func(i int) {
		r := snap.Repls[i]
		x.putLocked(IndexEntry{ID: r.ID, Owner: r.Owner, Slug: r.Slug, Generation: r.Generation})
	})
}

// batches calls fn(0) to fn(n-1) with x.mu held, loadBatch calls per hold.
func (x *Index) batches(n int, fn func(i int)) {
	for start := 0; start < n; start += loadBatch {
		x.mu.Lock()
		for i := start; i < min(n, start+loadBatch); i++ {
			fn(i)
		}
		x.mu.Unlock()
	}
}
