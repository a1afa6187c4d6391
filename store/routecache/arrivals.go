package routecache

import (
	"strings"
	"time"
)

// arrivals remembers, for Config.Arrivals, when repls arrived in the
// index: became live here at a generation it did not hold them live at —
// a move's destination, a repl moving back, a repl created — through a
// change followed after the index's first build. The name server holds a
// move's destination back while it is arriving (nameserver's MoveHold):
// that cluster's proxies follow the same change feed each on its own and
// may be a moment behind it, and a client sent there before they know the
// repl would get a 404.
//
// It is a map and a queue of the arrivals of the last Config.Arrivals,
// pruned as new ones come, so it holds at most the changes of that long
// (at 20,000 a second and 2 s, 40,000 entries: a few MiB) and nothing at
// all while no repl moves.
type arrivals struct {
	keep  time.Duration    // how long an arrival is remembered; 0: none is
	epoch time.Time        // what at counts from (monotonic: a wall clock's step moves nothing)
	at    map[string]int64 // repl id → nanoseconds from epoch when it arrived, never 0
	order []arrival        // the same, oldest first from head
	head  int
}

type arrival struct {
	id string
	at int64
}

// now is the arrivals' clock: nanoseconds from epoch, never 0.
func (a *arrivals) now() int64 { return int64(time.Since(a.epoch)) + 1 }

// add records that repl id arrived now.
func (a *arrivals) add(id string, now int64) {
	a.prune(now)
	if a.at == nil {
		a.at = make(map[string]int64)
	}
	id = strings.Clone(id) // it may point into the index's arena, or a row read
	a.at[id] = now
	a.order = append(a.order, arrival{id: id, at: now})
}

// prune forgets the arrivals older than keep.
func (a *arrivals) prune(now int64) {
	for a.head < len(a.order) && now-a.order[a.head].at >= int64(a.keep) {
		o := a.order[a.head]
		if a.at[o.id] == o.at {
			delete(a.at, o.id)
		}
		a.order[a.head] = arrival{}
		a.head++
	}
	if a.head > 0 && a.head >= len(a.order)/2 {
		// Compact once the forgotten half the queue: each entry is moved
		// at most once per time it is kept.
		n := copy(a.order, a.order[a.head:])
		clear(a.order[n:])
		a.order, a.head = a.order[:n], 0
	}
}

// arriving reports whether repl id arrived less than keep ago.
func (a *arrivals) arriving(id string) bool {
	if len(a.at) == 0 {
		return false
	}
	at, ok := a.at[id]
	return ok && a.now()-at < int64(a.keep)
}
