package routecache

import (
	"hash/maphash"
	"strings"
	"unsafe"

	"github.com/replproxy/replproxy/store"
)

// replSet is the index's repls and tombstones, stored once: each is a
// 16-byte record in a slab (its generation, its owner's record, the cluster
// a tombstone names) with its id and slug in the slab's arena, found by id
// and by owner/slug through two hash tables of record numbers. Owners are
// interned (a record per owner, with its name and its number of repls),
// and so are the clusters tombstones name (few). Nothing in it holds a
// pointer per repl. See README.md, "The route cache", for what a repl
// costs.
type replSet struct {
	seed     maphash.Seed
	testHash func(string) uint64 // when set, hash is it (tests force collisions)
	ents     slab[entryVal]      // strings: id, slug
	owners   slab[ownerVal]      // string: the owner
	byID     hashTable           // ents by hash(id)
	byName   hashTable           // ents by nameHash(hash(owner), hash(slug)); a name may have several
	byOwner  hashTable           // owners by hash(owner)
	clusters []string            // what entryVal.cluster numbers; [0] is "", live
	cluster  map[string]uint32
	mark     uint32 // 0 or markBit: what put gives entryVal.cluster (see Index.loadRepls)
}

type entryVal struct {
	gen     int64
	owner   uint32 // its record in owners
	cluster uint32 // for a tombstone its cluster's number in clusters, 0 when live; | markBit
}

const markBit = 1 << 31

type ownerVal struct{ repls uint32 }

func newReplSet() replSet {
	return replSet{seed: maphash.MakeSeed(), clusters: []string{""}, cluster: map[string]uint32{"": 0}}
}

func (r *replSet) hash(s string) uint64 {
	if r.testHash != nil {
		return r.testHash(s)
	}
	return maphash.String(r.seed, s)
}

// nameHash combines an owner's and a slug's hashes.
func nameHash(owner, slug uint64) uint64 {
	h := (owner^slug>>29)*0x9e3779b97f4a7c15 ^ slug
	return h ^ h>>32
}

func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

func (r *replSet) len() int { return r.ents.live }

// rehash functions, for the tables' growth.
func (r *replSet) idHash(i uint32) uint64 {
	id, _ := r.ents.bytes(i)
	return r.hash(view(id))
}

func (r *replSet) entNameHash(i uint32) uint64 {
	_, slug := r.ents.bytes(i)
	owner, _ := r.owners.bytes(r.ents.at(i).owner)
	return nameHash(r.hash(view(owner)), r.hash(view(slug)))
}

func (r *replSet) ownerHash(i uint32) uint64 {
	owner, _ := r.owners.bytes(i)
	return r.hash(view(owner))
}

func (r *replSet) findID(id string) (uint32, bool) {
	p := r.byID.probe(r.hash(id))
	for {
		i, ok := p.next()
		if !ok {
			return 0, false
		}
		if b, _ := r.ents.bytes(i); string(b) == id {
			return i, true
		}
	}
}

func (r *replSet) findOwner(owner string, h uint64) (uint32, bool) {
	p := r.byOwner.probe(h)
	for {
		i, ok := p.next()
		if !ok {
			return 0, false
		}
		if b, _ := r.owners.bytes(i); string(b) == owner {
			return i, true
		}
	}
}

// findName returns the record that owns the name owner/slug: of those
// that claim it, the one store.Prefer picks.
func (r *replSet) findName(owner, slug string) (uint32, bool) {
	ho := r.hash(owner)
	o, ok := r.findOwner(owner, ho)
	if !ok {
		return 0, false
	}
	p := r.byName.probe(nameHash(ho, r.hash(slug)))
	best, found := uint32(0), false
	for {
		i, ok := p.next()
		if !ok {
			return best, found
		}
		if r.ents.at(i).owner != o {
			continue
		}
		if _, b := r.ents.bytes(i); string(b) != slug {
			continue
		}
		if !found || store.Prefer(r.claim(i), r.claim(best)) {
			best, found = i, true
		}
	}
}

// claim is record i's claim on its name; its ReplID points into the arena.
func (r *replSet) claim(i uint32) store.Claim {
	v := r.ents.at(i)
	id, _ := r.ents.str(i)
	return store.Claim{Live: v.cluster&^markBit == 0, Generation: v.gen, ReplID: id}
}

// entry returns record i without copying a string: they point into the
// arenas, whose bytes never change, and into clusters.
func (r *replSet) entry(i uint32) IndexEntry {
	v := r.ents.at(i)
	id, slug := r.ents.str(i)
	owner, _ := r.owners.str(v.owner)
	return IndexEntry{ID: id, Owner: owner, Slug: slug, Generation: v.gen, MovedTo: r.clusters[v.cluster&^markBit]}
}

func (r *replSet) hasOwner(owner string) bool {
	_, ok := r.findOwner(owner, r.hash(owner))
	return ok
}

// fits reports whether e's strings fit a record; the store's rules
// (labels of at most 63 bytes) keep them far shorter.
func fits(e IndexEntry) bool {
	return e.ID != "" && e.Owner != "" && len(e.ID) <= maxStr && len(e.Slug) <= maxStr && len(e.Owner) <= maxStr
}

// put records e, replacing what the set held for its id, and gives it
// the current mark. It reports false, holding nothing for e, when e's
// strings do not fit (see fits).
func (r *replSet) put(e IndexEntry) bool {
	if !fits(e) {
		r.remove(e.ID)
		return false
	}
	cl := r.internCluster(e.MovedTo) | r.mark
	i, ok := r.findID(e.ID)
	if !ok {
		ho := r.hash(e.Owner)
		o := r.holdOwner(e.Owner, ho)
		i = r.ents.add(entryVal{gen: e.Generation, owner: o, cluster: cl}, e.ID, e.Slug)
		r.byID.insert(r.hash(e.ID), i, r.idHash)
		r.byName.insert(nameHash(ho, r.hash(e.Slug)), i, r.entNameHash)
		return true
	}
	v := r.ents.at(i)
	v.gen, v.cluster = e.Generation, cl
	owner, _ := r.owners.bytes(v.owner)
	if _, slug := r.ents.bytes(i); string(owner) == e.Owner && string(slug) == e.Slug {
		return true
	}
	// A new name: out of byName under the old one, in under the new.
	r.byName.delete(r.entNameHash(i), i)
	ho := r.hash(e.Owner)
	if string(owner) != e.Owner {
		r.releaseOwner(v.owner)
		v.owner = r.holdOwner(e.Owner, ho)
	}
	r.ents.set(i, e.ID, e.Slug)
	r.byName.insert(nameHash(ho, r.hash(e.Slug)), i, r.entNameHash)
	return true
}

// remove forgets the repl id.
func (r *replSet) remove(id string) {
	i, ok := r.findID(id)
	if !ok {
		return
	}
	r.drop(i)
}

func (r *replSet) drop(i uint32) {
	r.byID.delete(r.idHash(i), i)
	r.byName.delete(r.entNameHash(i), i)
	r.releaseOwner(r.ents.at(i).owner)
	r.ents.remove(i)
}

// holdOwner counts one more repl of owner and returns its record.
func (r *replSet) holdOwner(owner string, h uint64) uint32 {
	o, ok := r.findOwner(owner, h)
	if !ok {
		o = r.owners.add(ownerVal{}, owner, "")
		r.byOwner.insert(h, o, r.ownerHash)
	}
	r.owners.at(o).repls++
	return o
}

func (r *replSet) releaseOwner(o uint32) {
	if v := r.owners.at(o); v.repls > 1 {
		v.repls--
		return
	}
	r.byOwner.delete(r.ownerHash(o), o)
	r.owners.remove(o)
}

func (r *replSet) internCluster(name string) uint32 {
	if c, ok := r.cluster[name]; ok {
		return c
	}
	c := uint32(len(r.clusters))
	if c >= markBit {
		panic("routecache: more clusters than an index numbers")
	}
	name = strings.Clone(name) // not a string of the snapshot's
	r.clusters = append(r.clusters, name)
	r.cluster[name] = c
	return c
}

// liveGen returns id's generation and whether its record is live (not a
// tombstone); ok is false when there is none.
func (r *replSet) liveGen(id string) (gen int64, live, ok bool) {
	i, ok := r.findID(id)
	if !ok {
		return 0, false, false
	}
	v := r.ents.at(i)
	return v.gen, v.cluster&^markBit == 0, true
}

// markID gives id's record the current mark and reports whether it has
// one.
func (r *replSet) markID(id string) bool {
	i, ok := r.findID(id)
	if ok {
		v := r.ents.at(i)
		v.cluster = v.cluster&^markBit | r.mark
	}
	return ok
}

// sweep removes the records from from on (at most n of them looked at)
// that do not have the current mark, and returns where to go on, or false
// when it has looked at them all.
func (r *replSet) sweep(from uint32, n int) (uint32, bool) {
	end := r.ents.records()
	for ; from < end && n > 0; from, n = from+1, n-1 {
		if r.ents.inUse(from) && r.ents.at(from).cluster&markBit != r.mark {
			r.drop(from)
		}
	}
	return from, from < end
}

// reserve sizes the tables for n repls at once.
func (r *replSet) reserve(n int) {
	r.byID.reserve(n, r.idHash)
	r.byName.reserve(n, r.entNameHash)
}
