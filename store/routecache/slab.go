package routecache

import "unsafe"

// A slab holds fixed-size records (T, which must hold no pointers, so the
// collector never scans them), each with up to two strings stored one
// after the other in its chunk's byte arena. Records are numbered from 0
// and found by number; a removed record's number is reused by a later add.
//
// Records come in chunks of chunkLen, each with its own arena, so that
// growth never copies more than one chunk and the garbage left by removed
// or renamed records is reclaimed one chunk at a time (compact), without a
// second copy of the whole slab.
//
// The arenas are append-only: bytes once written are never written again
// (a compaction or a growth copies into a new array). Strings handed out
// by str point into them and stay valid however long they are kept.
type slab[T any] struct {
	chunks []*slabChunk[T]
	free   uint32 // 1 + the first free record, 0 when none
	live   int    // records in use
}

const (
	chunkBits = 16
	chunkLen  = 1 << chunkBits
	// maxRecords keeps a record's number+1 clear of hashTable's marks.
	maxRecords = 1<<32 - 2
)

type slabChunk[T any] struct {
	vals    []T
	spans   []span
	bytes   []byte
	garbage int // arena bytes that no record uses
}

// span places a record's strings in its chunk's arena: a bytes from off,
// then b bytes. a is 0 for a free record (every record's first string is
// not empty), whose off is then 1 + the next free record.
type span struct {
	off  uint32
	a, b uint16
}

// maxStr is the longest string a slab holds.
const maxStr = 1<<16 - 1

func (s *slab[T]) chunk(i uint32) (*slabChunk[T], uint32) {
	return s.chunks[i>>chunkBits], i & (chunkLen - 1)
}

// at returns record i's value, to read or change.
func (s *slab[T]) at(i uint32) *T {
	c, j := s.chunk(i)
	return &c.vals[j]
}

// bytes returns record i's two strings, as views of the arena.
func (s *slab[T]) bytes(i uint32) (a, b []byte) {
	c, j := s.chunk(i)
	sp := c.spans[j]
	a = c.bytes[sp.off : sp.off+uint32(sp.a) : sp.off+uint32(sp.a)]
	b = c.bytes[sp.off+uint32(sp.a) : sp.off+uint32(sp.a)+uint32(sp.b) : sp.off+uint32(sp.a)+uint32(sp.b)]
	return a, b
}

// str returns record i's two strings without copying them: the arena
// bytes never change (see slab).
func (s *slab[T]) str(i uint32) (a, b string) {
	ab, bb := s.bytes(i)
	return unsafe.String(unsafe.SliceData(ab), len(ab)), unsafe.String(unsafe.SliceData(bb), len(bb))
}

// inUse reports whether record i exists and is in use.
func (s *slab[T]) inUse(i uint32) bool {
	if int(i>>chunkBits) >= len(s.chunks) {
		return false
	}
	c, j := s.chunk(i)
	return int(j) < len(c.spans) && c.spans[j].a != 0
}

// records is one more than the highest record number ever used.
func (s *slab[T]) records() uint32 {
	if len(s.chunks) == 0 {
		return 0
	}
	return uint32(len(s.chunks)-1)<<chunkBits + uint32(len(s.chunks[len(s.chunks)-1].spans))
}

// add stores a new record and returns its number. a must not be empty;
// neither string may be longer than maxStr.
func (s *slab[T]) add(v T, a, b string) uint32 {
	var i uint32
	if s.free != 0 {
		i = s.free - 1
		c, j := s.chunk(i)
		s.free = c.spans[j].off
	} else {
		i = s.records()
		if i >= maxRecords {
			panic("routecache: more records than an index holds")
		}
		if i&(chunkLen-1) == 0 {
			if n := len(s.chunks); n > 0 {
				s.chunks[n-1].trim()
			}
			s.chunks = append(s.chunks, &slabChunk[T]{})
		}
		c := s.chunks[len(s.chunks)-1]
		if len(c.vals) == cap(c.vals) {
			// Double up to a whole chunk: a small index stays small.
			n := min(chunkLen, max(16, 2*cap(c.vals)))
			c.vals = append(make([]T, 0, n), c.vals...)
			c.spans = append(make([]span, 0, n), c.spans...)
		}
		var zero T
		c.vals = append(c.vals, zero)
		c.spans = append(c.spans, span{})
	}
	c, j := s.chunk(i)
	c.vals[j] = v
	c.spans[j] = span{off: c.put(a, b), a: uint16(len(a)), b: uint16(len(b))}
	s.live++
	return i
}

// set gives record i the strings a and b, in place when they are the
// ones it has.
func (s *slab[T]) set(i uint32, a, b string) {
	oa, ob := s.bytes(i)
	if string(oa) == a && string(ob) == b {
		return
	}
	c, j := s.chunk(i)
	c.garbage += len(oa) + len(ob)
	c.spans[j] = span{off: c.put(a, b), a: uint16(len(a)), b: uint16(len(b))}
	c.maybeCompact()
}

// remove frees record i; its number goes to the next add.
func (s *slab[T]) remove(i uint32) {
	c, j := s.chunk(i)
	sp := c.spans[j]
	c.garbage += int(sp.a) + int(sp.b)
	var zero T
	c.vals[j] = zero
	c.spans[j] = span{off: s.free}
	s.free = i + 1
	s.live--
	c.maybeCompact()
}

// put appends a and b to the arena and returns where they start.
func (c *slabChunk[T]) put(a, b string) uint32 {
	need := len(a) + len(b)
	if cap(c.bytes)-len(c.bytes) < need {
		// Double while the chunk fills (trim gives back the slack once it
		// is full); after that, grow by an eighth.
		grow := len(c.bytes)
		if len(c.spans) == chunkLen {
			grow = len(c.bytes) / 8
		}
		nb := make([]byte, len(c.bytes), len(c.bytes)+max(grow, need, 256))
		copy(nb, c.bytes)
		c.bytes = nb
	}
	off := len(c.bytes)
	c.bytes = append(c.bytes, a...)
	c.bytes = append(c.bytes, b...)
	return uint32(off)
}

// trim gives back a full chunk's arena slack.
func (c *slabChunk[T]) trim() {
	if slack := cap(c.bytes) - len(c.bytes); slack > len(c.bytes)/16 {
		c.bytes = append(make([]byte, 0, len(c.bytes)+len(c.bytes)/32), c.bytes...)
	}
}

// Compaction thresholds: a chunk's arena is copied without its garbage
// once that is a quarter of it (and at least minGarbage bytes).
const minGarbage = 4 << 10

func (c *slabChunk[T]) maybeCompact() {
	if c.garbage >= minGarbage && c.garbage*4 >= len(c.bytes) {
		c.compact()
	}
}

// compact copies the chunk's strings in use into a new arena, leaving its
// garbage behind (and the old arena to the collector, once no string
// handed out points into it).
func (c *slabChunk[T]) compact() {
	used := len(c.bytes) - c.garbage
	nb := make([]byte, 0, used+used/8)
	for j, sp := range c.spans {
		if sp.a == 0 {
			continue
		}
		off := len(nb)
		nb = append(nb, c.bytes[sp.off:sp.off+uint32(sp.a)+uint32(sp.b)]...)
		c.spans[j].off = uint32(off)
	}
	c.bytes, c.garbage = nb, 0
}
