package store

import (
	"context"
	"fmt"
)

// Position is a place in a store's change log: every change before it has
// been delivered. Changes are ordered by the writer's transaction (XID) and
// then by their number (Pos); the zero Position is "nowhere yet": Follow
// starts at the log's end, with an EventResync.
type Position struct {
	XID int64
	Pos int64
}

// IsZero reports whether p is the zero Position.
func (p Position) IsZero() bool { return p == Position{} }

// Less reports whether p comes before q.
func (p Position) Less(q Position) bool {
	return p.XID < q.XID || p.XID == q.XID && p.Pos < q.Pos
}

func (p Position) String() string { return fmt.Sprintf("%d/%d", p.XID, p.Pos) }

// Batch is what Follow delivers at a time: the changes read in one query,
// in log order, and the position after them.
type Batch struct {
	Events []Event
	Next   Position
}

// Feed is a store with a sequenced change log that consumers read in
// batches from their position (the PostgreSQL store). The daemons' route
// cache and name index follow it instead of Watch when the store has one.
type Feed interface {
	// Follow delivers the changes after from until ctx is done, then
	// returns ctx's error. It reads the next batch only once fn has
	// returned, so fn may take its time: the log holds what has not been
	// read. A zero from starts at the log's end with a batch of one
	// EventResync, and so does a from the log no longer holds (pruned):
	// the consumer must rebuild what it holds from a full read made after
	// that batch. A lost connection is an EventLost, then, once the log
	// can be read again, an EventResume and the changes from where it
	// was: no rebuild.
	Follow(ctx context.Context, from Position, fn func(Batch)) error
	// Current reads, in one round trip, what the named repls (by id: the
	// live row or else the tombstone, as Lookup of a ReplIDKey), custom
	// domains and challenge names are now: what a batch of changes
	// touched.
	Current(ctx context.Context, replIDs, domains, challenges []string) (Current, error)
}

// Current is what Feed.Current found. A name that is not there has no
// entry.
type Current struct {
	Routes     map[string]Route       // by repl id: RouteLocal or RouteTombstone
	Domains    map[string]string      // custom domain → repl id
	Challenges map[string][]Challenge // unexpired records by name, ordered by value
}
