package routecache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/internal/backoff"
	"github.com/replproxy/replproxy/store"
)

// Lister is what an Index reads to build itself and to follow changes.
// Every store.Store is one.
type Lister interface {
	store.Reader
	ListAll(ctx context.Context) (store.Snapshot, error)
	GetRepl(ctx context.Context, id string) (store.Repl, error)
	GetTombstone(ctx context.Context, replID string) (store.Tombstone, error)
	GetDomain(ctx context.Context, name string) (store.Domain, error)
}

var _ Lister = store.Store(nil)

// Knowledge is what an Index says about a name.
type Knowledge uint8

const (
	// KnownNo: the index is current and does not have the name.
	KnownNo Knowledge = iota
	// KnownYes: the index has the name.
	KnownYes
	// KnownUnsure: the index does not have the name but may be behind
	// (rebuilding, or a change to the name is being read).
	KnownUnsure
)

// Index is one cluster's set of names in memory: every live repl and every
// tombstone (by owner/slug and by id, with its generation and, for a
// tombstone, the cluster it moved to), the owners that have repls, the
// custom domains, and the DNS-01 challenge records (few and short-lived). It is kept current by the store's change notifications
// (Apply, then Run re-reads what changed), so that a name nobody hosts is
// answered without a cache entry or a store query: a flood of random names
// costs the store nothing and cannot grow the cache.
//
// After an EventResync (the store reconnected and may have missed changes)
// and until it is rebuilt, the index is not current: a name it lacks is then
// KnownUnsure, and so is a name whose change is being read, so callers look
// those up the ordinary way and a repl just created is never refused.
type Index struct {
	st     Lister
	logger *zap.Logger

	mu      sync.RWMutex
	repls   replSet                      // by id, by owner/slug, and the owners
	domains map[string]string            // custom domain → repl id
	chs     map[string][]store.Challenge // challenge name → its records, by value
	pending map[store.Key]uint64         // names whose change is still to be read → its latest seq
	seq     uint64                       // numbers the notifications given to Apply
	current bool
	built   bool // current at least once

	queue   eventQueue
	queries atomic.Uint64 // store calls made

	// The change feed, when the store has a log (store.Feed).
	pos      store.Position // where the index is in the log: applied up to it; under mu
	reached  positionLog    // its last positions and when it reached each; under mu
	rebuilds atomic.Uint64  // full reads made (the first build included)
	changes  atomic.Uint64  // changes applied from the feed without a rebuild

	arrived arrivals // the repls that became live here lately; under mu
}

// IndexEntry is what the index holds for one repl.
type IndexEntry struct {
	ID, Owner, Slug string
	Generation      int64
	MovedTo         string // for a tombstone: the cluster it names; "" when live
}

// NewIndex returns an empty index of st, not current until Run has built
// it.
func NewIndex(st Lister, logger *zap.Logger) *Index {
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Index{
		st:      st,
		logger:  logger.Named("index"),
		repls:   newReplSet(),
		domains: make(map[string]string),
		chs:     make(map[string][]store.Challenge),
		pending: make(map[store.Key]uint64),
		queue:   eventQueue{wake: make(chan struct{}, 1), room: make(chan struct{}, 1)},
		arrived: arrivals{epoch: time.Now()},
	}
}

// Knows says whether the index has the name k (KeyRepl, KeyReplID,
// KeyDomain; any other kind is KnownUnsure).
func (x *Index) Knows(k store.Key) Knowledge {
	var e IndexEntry
	x.mu.RLock()
	kn := x.lookupLocked(k, &e)
	x.mu.RUnlock()
	return kn
}

// Repl says whether the index has the repl named by k (KeyRepl, KeyReplID,
// or KeyDomain for the repl a custom domain is linked to), and when it does
// its entry. It makes no allocation.
func (x *Index) Repl(k store.Key) (Knowledge, IndexEntry) {
	var e IndexEntry
	x.mu.RLock()
	kn := x.lookupLocked(k, &e)
	x.mu.RUnlock()
	return kn, e
}

// Where is Repl for a caller that needs only where the repl is: its
// generation and, for a tombstone, the cluster it names. It copies no
// entry (replns asks it on every answer). arriving says the repl is live
// here and became so less than Config.Arrivals ago (see arrivals).
func (x *Index) Where(k store.Key) (kn Knowledge, generation int64, movedTo string, arriving bool) {
	var e IndexEntry
	x.mu.RLock()
	kn = x.lookupLocked(k, &e)
	if kn == KnownYes && e.MovedTo == "" {
		arriving = x.arrived.arriving(e.ID)
	}
	x.mu.RUnlock()
	return kn, e.Generation, e.MovedTo, arriving
}

// lookupLocked finds k's entry, into e when it is there. x.mu is held.
func (x *Index) lookupLocked(k store.Key, e *IndexEntry) Knowledge {
	var (
		i  uint32
		ok bool
	)
	switch k.Kind {
	case store.KeyRepl:
		i, ok = x.repls.findName(k.Owner, k.Slug)
	case store.KeyReplID:
		i, ok = x.repls.findID(k.ID)
	case store.KeyDomain:
		var id string
		if id, ok = x.domains[k.Name]; ok {
			i, ok = x.repls.findID(id)
		}
	default:
		return KnownUnsure
	}
	switch {
	case ok:
		*e = x.repls.entry(i)
		return KnownYes
	case !x.current || len(x.pending) > 0 && x.pending[k] != 0:
		return KnownUnsure
	}
	return KnownNo
}

// Owner says whether owner has repls (live or tombstoned).
func (x *Index) Owner(owner string) Knowledge {
	x.mu.RLock()
	defer x.mu.RUnlock()
	switch {
	case x.repls.hasOwner(owner):
		return KnownYes
	case x.current:
		return KnownNo
	}
	return KnownUnsure
}

// Challenges appends to dst the values of the challenge records named name
// (the whole name, "_acme-challenge." included) that are unexpired at now,
// and says whether the index knows them: KnownYes when it holds some,
// KnownNo when it is current and holds none, KnownUnsure when it may be
// behind (rebuilding, or a change to the name is being read).
func (x *Index) Challenges(name string, now time.Time, dst []string) (Knowledge, []string) {
	start := len(dst)
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, c := range x.chs[name] {
		if c.ExpiresAt.After(now) {
			dst = append(dst, c.Value)
		}
	}
	switch {
	case len(dst) > start:
		return KnownYes, dst
	case !x.current || len(x.pending) > 0 && x.pending[challengeKey(name)] != 0:
		return KnownUnsure, dst
	}
	return KnownNo, dst
}

func challengeKey(name string) store.Key { return store.Key{Kind: store.KeyChallenge, Name: name} }

// IndexStats counts what an index holds and did.
type IndexStats struct {
	Repls      int    // live repls and tombstones, by id
	Domains    int    // custom domains
	Challenges int    // challenge records (expired ones not yet dropped included)
	Current    bool   // built and not behind a resync
	Built      bool   // current at least once
	Queries    uint64 // store calls made to build and follow it
	Rebuilds   uint64 // full reads made, the first build included
	Changes    uint64 // changes applied without a rebuild
	// Position is where the index is in the store's change log (a
	// store.Feed): every change before it is applied. Zero without one.
	Position store.Position
}

// Stats returns what the index holds.
func (x *Index) Stats() IndexStats {
	x.mu.RLock()
	defer x.mu.RUnlock()
	n := 0
	for _, cs := range x.chs {
		n += len(cs)
	}
	return IndexStats{Repls: x.repls.len(), Domains: len(x.domains), Challenges: n, Current: x.current, Built: x.built, Queries: x.queries.Load(),
		Rebuilds: x.rebuilds.Load(), Changes: x.changes.Load(), Position: x.pos}
}

// Apply takes one change notification; it never blocks. The names it
// touches are KnownUnsure until Run has read them again.
func (x *Index) Apply(ev store.Event) {
	switch ev.Kind {
	case store.EventResync, store.EventRepl, store.EventDomain, store.EventChallenge:
	default:
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.seq++
	if ev.Kind == store.EventResync {
		x.current = false
	}
	for _, k := range eventKeys(ev) {
		x.pending[k] = x.seq
	}
	x.queue.push(queued{ev, x.seq}) // under mu: Run takes the queue and seq together
}

// Position returns where the index is in the store's change log: every
// change before it is applied (zero before the first build, and for a
// store without a log). Following the log from it again misses nothing.
func (x *Index) Position() store.Position {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.pos
}

// ApplyBatch takes a batch of store.Feed's changes, as Apply takes one. It
// never drops them for a rebuild: while the index has maxQueuedEvents or
// more to read, it waits (the feed then waits too, and the log keeps what
// it has not read), until ctx is done (then it returns ctx's error).
func (x *Index) ApplyBatch(ctx context.Context, b store.Batch) error {
	for !x.queue.hasRoom() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-x.queue.room:
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, ev := range b.Events {
		switch ev.Kind {
		case store.EventResync, store.EventRepl, store.EventDomain, store.EventChallenge:
		default:
			continue
		}
		x.seq++
		if ev.Kind == store.EventResync {
			x.current = false
		}
		for _, k := range eventKeys(ev) {
			x.pending[k] = x.seq
		}
		x.queue.pushFeed(queued{ev, x.seq})
	}
	x.queue.follow(b.Next)
	return nil
}

// eventKeys returns the names an event is about.
func eventKeys(ev store.Event) []store.Key {
	switch ev.Kind {
	case store.EventRepl:
		if ev.Owner == "" {
			return []store.Key{store.ReplIDKey(ev.ReplID)}
		}
		return []store.Key{store.ReplIDKey(ev.ReplID), store.ReplKey(ev.Owner, ev.Slug)}
	case store.EventDomain:
		return []store.Key{store.DomainKey(ev.Name)}
	case store.EventChallenge:
		return []store.Key{challengeKey(ev.Name)}
	}
	return nil
}

// doneLocked marks the names of notification seq and of every earlier one
// read.
func (x *Index) doneLocked(keys []store.Key, seq uint64) {
	for _, k := range keys {
		if s, ok := x.pending[k]; ok && s <= seq {
			delete(x.pending, k)
		}
	}
}

// Backoff of rebuilds while the store fails.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Run keeps the index current from the notifications given to Apply until
// ctx is done, and returns ctx's error: it rebuilds the index from full
// lists after every EventResync (and when more changes queue up than it
// holds), and otherwise re-reads each changed name.
func (x *Index) Run(ctx context.Context) error {
	delay := minBackoff
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-x.queue.wake:
		}
		x.mu.Lock()
		resync, events, next := x.queue.take()
		taken := x.seq
		x.mu.Unlock()
		if resync {
			if err := x.rebuild(ctx, taken); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				wait := backoff.Jitter(delay)
				delay = min(2*delay, maxBackoff)
				x.logger.Warn("cannot rebuild the name index; looking names up in the store meanwhile",
					zap.Duration("retry_in", wait), zap.Error(err))
				x.queue.push(queued{store.Event{Kind: store.EventResync}, 0})
				x.queue.follow(next)
				if !backoff.Sleep(ctx, wait) {
					return ctx.Err()
				}
				continue
			}
			delay = minBackoff
			x.setPosition(next)
			continue // the lists already reflect the events taken with them
		}
		if f, ok := x.st.(store.Feed); ok && !next.IsZero() {
			// From a change log: the changed names in one read. A failure
			// is retried; the log keeps the changes, so no rebuild.
			for {
				err := x.readBatch(ctx, f, events)
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				wait := backoff.Jitter(delay)
				delay = min(2*delay, maxBackoff)
				x.logger.Warn("cannot read the changed names; retrying (they are looked up in the store meanwhile)",
					zap.Int("changes", len(events)), zap.Duration("retry_in", wait), zap.Error(err))
				if !backoff.Sleep(ctx, wait) {
					return ctx.Err()
				}
			}
			delay = minBackoff
			x.setPosition(next)
			continue
		}
		for _, q := range events {
			if err := x.read(ctx, q); err != nil {
				// The store failed: rebuild the whole index once it answers
				// (which also settles the events not read).
				x.mu.Lock()
				x.current = false
				x.queue.push(queued{store.Event{Kind: store.EventResync}, 0})
				x.mu.Unlock()
				break
			}
		}
	}
}

// Rebuild replaces the index with the store's full lists now, as Run does
// after an EventResync (for tools and benchmarks; Run does it itself).
func (x *Index) Rebuild(ctx context.Context) error {
	x.mu.Lock()
	taken := x.seq
	x.mu.Unlock()
	return x.rebuild(ctx, taken)
}

// rebuild replaces the index with the store's full lists, read after
// notification taken: the names of that one and every earlier one are
// settled by them.
func (x *Index) rebuild(ctx context.Context, taken uint64) error {
	x.queries.Add(1)
	x.rebuilds.Add(1)
	// One instant: lists read one after another can miss a repl whose
	// live row became a tombstone (or the reverse) between them, and with
	// the change feed down nothing would correct the index until the next
	// rebuild.
	snap, err := x.st.ListAll(ctx)
	if err != nil {
		return err
	}
	x.loadRepls(snap)
	domains := snap.Domains
	byDomain := make(map[string]string, len(domains))
	for _, d := range domains {
		byDomain[d.Name] = d.ReplID
	}
	chs := make(map[string][]store.Challenge)
	for _, c := range snap.Challenges {
		chs[c.Name] = append(chs[c.Name], c)
	}
	x.mu.Lock()
	x.domains, x.chs = byDomain, chs
	x.current, x.built = true, true
	n := x.repls.len()
	for k, s := range x.pending {
		if s <= taken {
			delete(x.pending, k)
		}
	}
	x.mu.Unlock()
	x.logger.Debug("index rebuilt", zap.Int("repls", n), zap.Int("domains", len(byDomain)))
	return nil
}

// setPosition records that the index has applied the log up to next (a
// zero next: the changes came from no log).
func (x *Index) setPosition(next store.Position) {
	if next.IsZero() {
		return
	}
	now := time.Now()
	x.mu.Lock()
	x.pos = next
	x.reached.add(next, now)
	x.mu.Unlock()
}

// PassedAt returns when the index's position first went past every change
// of the log's transaction xid (the writer's pg_current_xact_id()): from
// then on the index had applied them. ok is false when it has not got
// there yet, and when it got there before the oldest of the last
// positionsKept positions it remembers (Position then says which). For
// benchmarks of the feed's fan-out: how long a commit takes to reach every
// consumer.
func (x *Index) PassedAt(xid int64) (at time.Time, ok bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.reached.passed(xid)
}

// positionsKept is how many positions PassedAt remembers (64 KiB): at a
// batch a millisecond, the last 4 s.
const positionsKept = 4096

// positionLog is a ring of the index's last positions, oldest first from
// next, and when it reached each.
type positionLog struct {
	ring [positionsKept]reachedAt
	n    uint64 // positions added, ever
}

type reachedAt struct {
	xid int64 // of the position: every change of a transaction below it is applied
	at  int64 // Unix nanoseconds
}

func (l *positionLog) add(p store.Position, at time.Time) {
	l.ring[l.n%positionsKept] = reachedAt{xid: p.XID, at: at.UnixNano()}
	l.n++
}

// passed returns when a position first went past transaction xid, if one
// it remembers did and the one before it (when it remembers it) did not.
func (l *positionLog) passed(xid int64) (time.Time, bool) {
	first := uint64(0)
	if l.n > positionsKept {
		first = l.n - positionsKept
	}
	for i := first; i < l.n; i++ {
		if e := l.ring[i%positionsKept]; e.xid > xid {
			if i == first && first > 0 {
				return time.Time{}, false // forgotten: it may have passed earlier
			}
			return time.Unix(0, e.at), true
		}
	}
	return time.Time{}, false
}

// readBatch applies changes from a store.Feed: it reads every name they
// touched again in one call, and applies what it found in one critical
// section.
func (x *Index) readBatch(ctx context.Context, f store.Feed, events []queued) error {
	var ids, domains, chs []string
	seen := make(map[store.Key]struct{}, len(events))
	for _, q := range events {
		ev := q.ev
		var k store.Key
		switch ev.Kind {
		case store.EventRepl:
			k = store.ReplIDKey(ev.ReplID)
		case store.EventDomain:
			k = store.DomainKey(ev.Name)
		case store.EventChallenge:
			k = challengeKey(ev.Name)
		default:
			continue
		}
		if _, ok := seen[k]; ok {
			continue
		}
		seen[k] = struct{}{}
		switch ev.Kind {
		case store.EventRepl:
			ids = append(ids, ev.ReplID)
		case store.EventDomain:
			domains = append(domains, ev.Name)
		case store.EventChallenge:
			chs = append(chs, ev.Name)
		}
	}
	if len(seen) > 0 {
		x.queries.Add(1)
	}
	cur, err := f.Current(ctx, ids, domains, chs)
	if err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, id := range ids {
		r, ok := cur.Routes[id]
		switch {
		case !ok:
			x.removeLocked(id)
		case r.Kind == store.RouteLocal:
			x.noteArrivalLocked(r.ReplID, r.Generation)
			x.putLocked(IndexEntry{ID: r.ReplID, Owner: r.Owner, Slug: r.Slug, Generation: r.Generation})
		default:
			x.putLocked(IndexEntry{ID: r.ReplID, Owner: r.Owner, Slug: r.Slug, Generation: r.Generation, MovedTo: r.Cluster})
		}
	}
	for _, name := range domains {
		if id, ok := cur.Domains[name]; ok {
			x.domains[name] = id
		} else {
			delete(x.domains, name)
		}
	}
	for _, name := range chs {
		if cs := cur.Challenges[name]; len(cs) > 0 {
			x.chs[name] = cs
		} else {
			delete(x.chs, name)
		}
	}
	for _, q := range events {
		x.doneLocked(eventKeys(q.ev), q.seq)
	}
	x.changes.Add(uint64(len(events)))
	return nil
}

// read applies one change: it reads the changed repl or domain again.
func (x *Index) read(ctx context.Context, q queued) error {
	ev := q.ev
	switch ev.Kind {
	case store.EventRepl:
		// One statement reads the live row and the tombstone together:
		// two reads could miss a repl that moves between them.
		x.queries.Add(1)
		r, err := x.st.Lookup(ctx, store.ReplIDKey(ev.ReplID))
		switch {
		case err == nil && r.Kind == store.RouteLocal:
			x.update(q, func() {
				x.noteArrivalLocked(r.ReplID, r.Generation)
				x.putLocked(IndexEntry{ID: r.ReplID, Owner: r.Owner, Slug: r.Slug, Generation: r.Generation})
			})
			return nil
		case err == nil && r.Kind == store.RouteTombstone:
			x.update(q, func() {
				x.putLocked(IndexEntry{ID: r.ReplID, Owner: r.Owner, Slug: r.Slug, Generation: r.Generation, MovedTo: r.Cluster})
			})
			return nil
		case errors.Is(err, store.ErrNotFound):
			x.update(q, func() { x.removeLocked(ev.ReplID) })
			return nil
		}
		return err
	case store.EventDomain:
		x.queries.Add(1)
		d, err := x.st.GetDomain(ctx, ev.Name)
		switch {
		case err == nil:
			x.update(q, func() { x.domains[d.Name] = d.ReplID })
		case errors.Is(err, store.ErrNotFound):
			x.update(q, func() { delete(x.domains, ev.Name) })
		default:
			return err
		}
	case store.EventChallenge:
		x.queries.Add(1)
		cs, err := x.st.Challenges(ctx, ev.Name)
		if err != nil {
			return err
		}
		x.update(q, func() {
			if len(cs) == 0 {
				delete(x.chs, ev.Name)
			} else {
				x.chs[strings.Clone(ev.Name)] = cs
			}
		})
	}
	return nil
}

// update applies fn and marks q's names read, in one critical section.
func (x *Index) update(q queued, fn func()) {
	x.mu.Lock()
	fn()
	x.doneLocked(eventKeys(q.ev), q.seq)
	x.mu.Unlock()
}

// putLocked records e, replacing what the index held for its id. Of the
// repls that claim a name, the one store.Prefer picks owns it.
func (x *Index) putLocked(e IndexEntry) {
	if !x.repls.put(e) {
		x.logger.Warn("repl not indexed: a string is too long", zap.String("repl_id", e.ID))
	}
}

// noteArrivalLocked records, when the index remembers arrivals, that repl
// id arrives live at generation gen if the index has been built and does
// not hold it live at gen already. Call it before putting the entry.
func (x *Index) noteArrivalLocked(id string, gen int64) {
	if x.arrived.keep <= 0 || !x.built {
		return
	}
	if g, live, ok := x.repls.liveGen(id); ok && live && g == gen {
		return
	}
	x.arrived.add(id, x.arrived.now())
}

// removeLocked forgets the repl id.
func (x *Index) removeLocked(id string) { x.repls.remove(id) }

// queued is a notification with its number.
type queued struct {
	ev  store.Event
	seq uint64
}

// eventQueue hands change notifications from Apply, which must not block,
// to Run. An EventResync, or more events than it holds, collapses into
// one rebuild.
type eventQueue struct {
	mu     sync.Mutex
	events []queued
	resync bool
	next   store.Position // of the latest batch from a store.Feed
	wake   chan struct{}
	room   chan struct{} // take emptied the queue (ApplyBatch waits for it)
}

const maxQueuedEvents = 10000

func (q *eventQueue) push(e queued) {
	q.mu.Lock()
	switch {
	case e.ev.Kind == store.EventResync || len(q.events) >= maxQueuedEvents:
		q.resync, q.events = true, nil
	case !q.resync:
		q.events = append(q.events, e)
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pushFeed is push for an event from a change log: more than
// maxQueuedEvents do not collapse into a rebuild (ApplyBatch waits for
// room instead). The caller signals Run with follow.
func (q *eventQueue) pushFeed(e queued) {
	q.mu.Lock()
	switch {
	case e.ev.Kind == store.EventResync:
		q.resync, q.events = true, nil
	case !q.resync:
		q.events = append(q.events, e)
	}
	q.mu.Unlock()
}

// follow records the log position after the events pushed, and wakes Run.
func (q *eventQueue) follow(next store.Position) {
	q.mu.Lock()
	if !next.IsZero() {
		q.next = next
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// hasRoom reports whether the queue holds fewer than maxQueuedEvents.
func (q *eventQueue) hasRoom() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.events) < maxQueuedEvents
}

func (q *eventQueue) take() (resync bool, events []queued, next store.Position) {
	q.mu.Lock()
	defer q.mu.Unlock()
	resync, events, next = q.resync, q.events, q.next
	q.resync, q.events = false, nil
	select {
	case q.room <- struct{}{}:
	default:
	}
	return resync, events, next
}
