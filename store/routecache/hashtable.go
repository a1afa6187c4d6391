package routecache

// A hashTable finds record numbers by a 64-bit hash of their key: open
// addressing with linear probing over one slice of 8-byte slots, each the
// high half of the hash (the tag) and 1 + the record number. It keeps no
// key: a caller walks the records whose tag matches (probe) and compares
// each one's key itself, so two keys with one hash cost a comparison,
// never a wrong answer. Several records may share a key (byName).
//
// Its size is any number of slots, not a power of two (a slot is picked
// by multiplying the hash's low half by the size), so a table reserved
// for n records holds them at three quarters full. Deleted slots are
// marked (and emptied when they end a run); a table seven eighths full of
// records and deleted slots is rebuilt, at the same size when most of
// them were deleted, else half as big again.
type hashTable struct {
	slots []uint64
	live  int // records in it
	used  int // slots not empty: live ones and deleted ones
}

const (
	emptySlot   = 0
	deletedSlot = 1<<32 - 1 // tag 0 and no record (records stay below maxRecords)
)

// hashOf recomputes the hash of record i, for a table that grows.
type hashOf func(i uint32) uint64

func (t *hashTable) home(h uint64) int {
	return int(uint64(uint32(h)) * uint64(len(t.slots)) >> 32)
}

// probe walks the records whose tag is h's, in the order they were put.
type probe struct {
	slots []uint64
	i     int
	tag   uint64
}

func (t *hashTable) probe(h uint64) probe {
	if len(t.slots) == 0 {
		return probe{}
	}
	return probe{slots: t.slots, i: t.home(h), tag: h >> 32}
}

// next returns the next candidate, and false when there are no more.
func (p *probe) next() (uint32, bool) {
	for len(p.slots) > 0 {
		s := p.slots[p.i]
		if s == emptySlot {
			return 0, false
		}
		if p.i++; p.i == len(p.slots) {
			p.i = 0
		}
		if s != deletedSlot && s>>32 == p.tag {
			return uint32(s) - 1, true
		}
	}
	return 0, false
}

// insert adds record i under hash h; it does not look for a record
// already there.
func (t *hashTable) insert(h uint64, i uint32, rehash hashOf) {
	if (t.used+1)*8 > len(t.slots)*7 {
		if t.live*4 < len(t.slots)*3 {
			// Mostly deleted slots: clean them at the same size.
			t.resize(len(t.slots)*3/4, rehash)
		} else {
			t.resize(max(t.live*3/2, 6), rehash)
		}
	}
	t.place(h, i)
}

func (t *hashTable) place(h uint64, i uint32) {
	p := t.home(h)
	for {
		switch t.slots[p] {
		case emptySlot:
			t.used++
			fallthrough
		case deletedSlot:
			t.slots[p] = h>>32<<32 | uint64(i+1)
			t.live++
			return
		}
		if p++; p == len(t.slots) {
			p = 0
		}
	}
}

// delete removes record i, put under hash h.
func (t *hashTable) delete(h uint64, i uint32) {
	p := t.home(h)
	want := h>>32<<32 | uint64(i+1)
	for t.slots[p] != want {
		if t.slots[p] == emptySlot {
			panic("routecache: deleting a record the table does not have")
		}
		if p++; p == len(t.slots) {
			p = 0
		}
	}
	t.live--
	next := p + 1
	if next == len(t.slots) {
		next = 0
	}
	if t.slots[next] != emptySlot {
		t.slots[p] = deletedSlot
		return
	}
	// The end of a run: it and the deleted slots before it become empty.
	for t.slots[p] == deletedSlot || t.slots[p] == want {
		t.slots[p] = emptySlot
		t.used--
		if p--; p < 0 {
			p = len(t.slots) - 1
		}
	}
}

// reserve sizes the table for n records, growing it (or shrinking it when
// it is more than twice too big) once instead of on the way.
func (t *hashTable) reserve(n int, rehash hashOf) {
	if n = max(n, t.live); n*4 > len(t.slots)*3 || len(t.slots) > 2*(n*4/3+8) {
		t.resize(n, rehash)
	}
}

// resize rebuilds the table with room for n records at three quarters
// full. For the time it takes, both slices are held: the table alone, a
// fraction of the index.
func (t *hashTable) resize(n int, rehash hashOf) {
	old := t.slots
	t.slots = make([]uint64, max(8, n*4/3+1))
	t.live, t.used = 0, 0
	for _, s := range old {
		if s != emptySlot && s != deletedSlot {
			i := uint32(s) - 1
			t.place(rehash(i), i)
		}
	}
}
