package nameserver

import (
	"sync"

	"github.com/replproxy/replproxy/store"
)

// knowledge is what an index says about a name.
type knowledge uint8

const (
	knownNo     knowledge = iota // the index is current and does not have it
	knownYes                     // the index has it
	knownUnsure                  // the index does not have it but may be behind
)

// index is one cluster's set of repls — live ones, and tombstoned ones with
// the cluster they moved to — (their ids, owner/slug names and generations)
// and owners, kept in memory and current by change
// notifications. It lets a name that no cluster has be answered NXDOMAIN
// without a cache or database lookup, so a flood of random names costs the
// databases nothing, whereas the route cache alone would ask once per new
// name.
//
// After an EventResync (the store reconnected and may have missed changes)
// and until it is rebuilt, the index is not current: a name it lacks is
// then "unsure" and looked up the ordinary way.
type index struct {
	mu      sync.RWMutex
	byName  map[replName]indexEntry
	byID    map[string]indexEntry
	owners  map[string]int // repls per owner
	current bool
	built   bool // current at least once
}

type replName struct{ owner, slug string }

type indexEntry struct {
	id, owner, slug string
	generation      int64
	movedTo         string // for a tombstone: the cluster it names; "" when live
}

func newIndex() *index {
	return &index{
		byName: make(map[replName]indexEntry),
		byID:   make(map[string]indexEntry),
		owners: make(map[string]int),
	}
}

// repl says whether the index has the repl named by k (KeyRepl or
// KeyReplID), and when it does its generation and, for a tombstone, the
// cluster it moved to.
func (x *index) repl(k store.Key) (knowledge, int64, string) {
	x.mu.RLock()
	var (
		e  indexEntry
		ok bool
	)
	if k.Kind == store.KeyReplID {
		e, ok = x.byID[k.ID]
	} else {
		e, ok = x.byName[replName{k.Owner, k.Slug}]
	}
	current := x.current
	x.mu.RUnlock()
	switch {
	case ok:
		return knownYes, e.generation, e.movedTo
	case current:
		return knownNo, 0, ""
	}
	return knownUnsure, 0, ""
}

// owner says whether owner has live repls.
func (x *index) owner(owner string) knowledge {
	x.mu.RLock()
	n := x.owners[owner]
	current := x.current
	x.mu.RUnlock()
	switch {
	case n > 0:
		return knownYes
	case current:
		return knownNo
	}
	return knownUnsure
}

// stale marks the index as possibly behind.
func (x *index) stale() {
	x.mu.Lock()
	x.current = false
	x.mu.Unlock()
}

// replace rebuilds the index from every live repl and tombstone, and
// marks it current. The row store.Prefer picks owns each name, as in the
// store's lookups.
func (x *index) replace(repls []store.Repl, tombstones []store.Tombstone) {
	byName := make(map[replName]indexEntry, len(repls)+len(tombstones))
	byID := make(map[string]indexEntry, len(repls)+len(tombstones))
	owners := make(map[string]int)
	for _, t := range tombstones {
		e := indexEntry{id: t.ReplID, owner: t.Owner, slug: t.Slug, generation: t.Generation, movedTo: t.Cluster}
		if old, ok := byName[replName{t.Owner, t.Slug}]; !ok || store.Prefer(e.claim(), old.claim()) {
			byName[replName{t.Owner, t.Slug}] = e
		}
		byID[t.ReplID] = e
		owners[t.Owner]++
	}
	for _, r := range repls {
		e := indexEntry{id: r.ID, owner: r.Owner, slug: r.Slug, generation: r.Generation}
		byName[replName{r.Owner, r.Slug}] = e
		byID[r.ID] = e
		owners[r.Owner]++
	}
	x.mu.Lock()
	x.byName, x.byID, x.owners = byName, byID, owners
	x.current, x.built = true, true
	x.mu.Unlock()
}

// put records a live repl.
func (x *index) put(r store.Repl) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.byID[r.ID]; ok {
		x.dropLocked(old)
	}
	// Another id under the same name (now gone, its event still to come).
	if old, ok := x.byName[replName{r.Owner, r.Slug}]; ok {
		x.dropLocked(old)
	}
	x.putLocked(indexEntry{id: r.ID, owner: r.Owner, slug: r.Slug, generation: r.Generation})
}

// putTombstone records that the repl moved from here to t.Cluster; a row
// that store.Prefer picks over it keeps the name.
func (x *index) putTombstone(t store.Tombstone) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.byID[t.ReplID]; ok {
		x.dropLocked(old)
	}
	e := indexEntry{id: t.ReplID, owner: t.Owner, slug: t.Slug, generation: t.Generation, movedTo: t.Cluster}
	if cur, ok := x.byName[replName{t.Owner, t.Slug}]; ok && store.Prefer(cur.claim(), e.claim()) {
		x.byID[t.ReplID] = e // by id only: the name is another row's
		x.owners[t.Owner]++
		return
	}
	x.putLocked(e)
}

func (x *index) putLocked(e indexEntry) {
	x.byName[replName{e.owner, e.slug}] = e
	x.byID[e.id] = e
	x.owners[e.owner]++
}

// remove records that the repl id is not live here (any more).
func (x *index) remove(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old, ok := x.byID[id]; ok {
		x.dropLocked(old)
	}
}

func (x *index) dropLocked(e indexEntry) {
	delete(x.byID, e.id)
	if cur, ok := x.byName[replName{e.owner, e.slug}]; ok && cur.id == e.id {
		delete(x.byName, replName{e.owner, e.slug})
	}
	if x.owners[e.owner]--; x.owners[e.owner] <= 0 {
		delete(x.owners, e.owner)
	}
}

// size returns how many repls the index holds, and whether it is current
// and was ever built.
func (x *index) size() (n int, current, built bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.byID), x.current, x.built
}

// claim is what an entry says about the name it holds (store.Prefer).
func (e indexEntry) claim() store.Claim {
	return store.Claim{Live: e.movedTo == "", Generation: e.generation, ReplID: e.id}
}
