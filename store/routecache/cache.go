package routecache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/store"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// Config tunes a Cache. The zero value is usable.
type Config struct {
	// TTL bounds how long a found route is trusted without a change
	// notification: a safety net, since notifications drop entries at once.
	// Zero means 60 s.
	TTL time.Duration
	// NegativeTTL is the same for names that were not found, and for
	// challenge lookups. Zero means 10 s.
	NegativeTTL time.Duration
	// MaxEntries bounds the found routes kept. Zero means 1,000,000.
	MaxEntries int
	// MaxNegative bounds the not-found entries kept, apart from the found
	// ones, so a flood of random names cannot evict hot routes. Zero means
	// 100,000.
	MaxNegative int
	// LoadTimeout bounds one backend call. Zero means 2 s.
	LoadTimeout time.Duration
	// RetryAfter is how long, after the backend failed, misses fail fast
	// (ErrUnavailable) instead of calling it again; one call per period
	// probes it. Zero means 1 s.
	RetryAfter time.Duration
	// MaxBackground bounds the backend calls Peek starts in the background
	// at once (one per key); a Peek that would start one more gets
	// ErrUnavailable at once. Zero means 64.
	MaxBackground int
	// KeepExpired is how long an entry stays in memory once its TTL has
	// run out without it being asked for again (it is kept to be served
	// stale should the store fail): Run sweeps out older ones, so that
	// memory follows the names in use, not every name ever asked. Nothing
	// is swept while the store is failing. Zero means 10 min.
	KeepExpired time.Duration
	// Arrivals is how long a NewIndexed cache's index remembers that a repl
	// arrived, becoming live in this store at a generation the index did not
	// hold it live at (Index.Where's arriving). Zero (or negative): it
	// remembers none, and costs nothing.
	Arrivals time.Duration
}

// withDefaults returns c with every zero (or negative) field set to its
// default. Nothing in a Config can be wrong.
func (c Config) withDefaults() Config {
	if c.TTL <= 0 {
		c.TTL = 60 * time.Second
	}
	if c.NegativeTTL <= 0 {
		c.NegativeTTL = 10 * time.Second
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = 1_000_000
	}
	if c.MaxNegative <= 0 {
		c.MaxNegative = 100_000
	}
	if c.LoadTimeout <= 0 {
		c.LoadTimeout = 2 * time.Second
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = time.Second
	}
	if c.MaxBackground <= 0 {
		c.MaxBackground = 64
	}
	if c.KeepExpired <= 0 {
		c.KeepExpired = 10 * time.Minute
	}
	return c
}

// Stats counts what a Cache did since it was made.
type Stats struct {
	Hits         uint64 // answered from a fresh entry, found or not
	Misses       uint64 // had to ask the backend (or fail fast)
	Stale        uint64 // answered from an old entry because the backend failed
	Loads        uint64 // backend calls made
	LoadErrors   uint64 // backend calls that failed
	Evictions    uint64 // entries dropped for room
	Swept        uint64 // entries dropped long after their TTL (KeepExpired)
	Invalidation uint64 // entries dropped by change notifications
	Screened     uint64 // misses answered not found by the name index, without the backend
	Background   uint64 // backend calls Peek started in the background
	Refused      uint64 // Peeks that found nothing and could not start a call (MaxBackground, or the backend failing)
	Entries      int    // found routes held
	Negative     int    // not-found and challenge entries held
}

// Cache is the route cache both daemons use in front of a Reader: found
// and not-found entries, dropped by change notifications (Run), bounded by
// a TTL and by size, one backend call per key at a time, and serve-stale
// while the backend is down. Its Lookup makes no allocation on a hit.
type Cache struct {
	r      store.Reader
	cfg    Config
	logger *zap.Logger

	found    [cacheShards]shard
	negative [cacheShards]shard
	group    singleflight.Group

	seed      uint64           // of hashKey
	clock     func() time.Time // the clock New was given; time.Now when nil
	userClock bool             // a clock was given: always use it
	coarse    atomic.Int64     // unix nanoseconds, kept by Run while the clock is read; 0 when not running
	clockRead atomic.Bool      // the coarse clock was read since its last tick
	clockWake chan struct{}    // starts a stopped coarse clock
	epoch     atomic.Uint64    // bumped by EventResync; older entries are stale
	feedLost  atomic.Bool      // between EventLost and EventResync: tombstones are confirmed (Lookup)
	lostAt    atomic.Int64     // unix nanoseconds of the EventLost that set feedLost; 0 while the feed is up
	downUntil atomic.Int64     // unix nanoseconds; misses fail fast until then
	failing   atomic.Bool      // an incident is in progress (logged once)
	synced    chan struct{}
	syncOnce  sync.Once

	byReplMu sync.Mutex
	byRepl   map[string]map[store.Key]struct{} // repl id → cached domain keys routing to it

	index *Index // nil unless made by NewIndexed

	bgMu   sync.Mutex
	bgKeys map[store.Key]struct{} // keys Peek is loading in the background
	bgWG   sync.WaitGroup

	hits, misses, stale, loads, loadErrors, evictions, invalidations, screened, bgLoads, refused, swept atomic.Uint64
}

const cacheShards = 64

// shard is one lock's worth of entries, chained by the key's 64-bit hash:
// hashing a Key once ourselves is cheaper than the map hashing its four
// strings, and a collision costs a key comparison, never a wrong answer.
type shard struct {
	mu      sync.RWMutex
	entries map[uint64]*entry
	n       int
	max     int
	seq     uint64 // bumped by every invalidation in this shard
}

type entry struct {
	key        store.Key
	next       *entry // same hash, other key
	route      store.Route
	challenges []store.Challenge
	err        error // nil or ErrNotFound
	expires    int64 // unix nanoseconds
	epoch      uint64
	refreshed  int64 // unix nanoseconds when Refresh or confirm last asked for it; atomic (entries are copied, so not an atomic.Int64)
	staleGen   int64 // the generation RefreshStale last loaded it for; atomic
	loaded     int64 // unix nanoseconds when it was loaded
}

// New returns a cache in front of r. Call Run to keep it current. now is
// the clock; nil means time.Now, read coarsely while Run runs.
func New(r store.Reader, cfg Config, now func() time.Time, logger *zap.Logger) *Cache {
	userClock := now != nil
	if now == nil {
		now = time.Now
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = zap.NewNop()
	}
	c := &Cache{
		r:         r,
		cfg:       cfg,
		logger:    logger.Named("cache"),
		synced:    make(chan struct{}),
		clockWake: make(chan struct{}, 1),
		byRepl:    make(map[string]map[store.Key]struct{}),
		bgKeys:    make(map[store.Key]struct{}),
		seed:      rand.Uint64(),
		clock:     now,
		userClock: userClock,
	}
	for i := range c.found {
		c.found[i] = shard{entries: make(map[uint64]*entry), max: max(1, cfg.MaxEntries/cacheShards)}
		c.negative[i] = shard{entries: make(map[uint64]*entry), max: max(1, cfg.MaxNegative/cacheShards)}
	}
	return c
}

// NewIndexed returns a cache in front of st with a name index (Index): a
// miss for a name the index knows nobody hosts is answered ErrNotFound
// without a backend call and without a cache entry, so random names cost
// the store nothing and cannot crowd the cache. Run keeps both current
// from one Watch.
func NewIndexed(st Lister, cfg Config, now func() time.Time, logger *zap.Logger) *Cache {
	c := New(st, cfg, now, logger)
	c.index = NewIndex(st, logger)
	c.index.arrived.keep = cfg.Arrivals
	return c
}

// Index returns the cache's name index; nil when it was made by New.
func (c *Cache) Index() *Index { return c.index }

// coarseTick is how often Run refreshes the cache's clock: reading it is
// far cheaper than time.Now on every hit (43 ns against 92 ns a hit,
// BenchmarkCacheHit), and TTLs are seconds long. The clock ticks only while
// it is read: a tick that finds it unread since the one before stops it,
// and the next read starts it again, so an idle daemon's cache costs no
// wake-ups (BenchmarkIdleCPU in e2e).
const coarseTick = 20 * time.Millisecond

// Run applies the reader's change notifications to the cache (and to its
// index) until ctx is done, and returns ctx's error. While it runs, the
// cache reads a clock it refreshes every 20 ms instead of calling time.Now
// on every lookup.
func (c *Cache) Run(ctx context.Context) error {
	defer c.bgWG.Wait() // Peek's calls, bounded by LoadTimeout
	if !c.userClock {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { c.runClock(stop) })
		defer func() {
			close(stop)
			wg.Wait()
			c.coarse.Store(0)
		}()
	}
	stopSweep := make(chan struct{})
	var sweepWG sync.WaitGroup
	sweepWG.Go(func() { c.runSweep(stopSweep) })
	defer func() {
		close(stopSweep)
		sweepWG.Wait()
	}()
	if c.index == nil {
		return c.r.Watch(ctx, c.apply)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { _ = c.index.Run(ctx) })
	if f, ok := c.r.(store.Feed); ok {
		// A change log: read in batches from the index's position, at the
		// index's pace; a reconnection resumes from there.
		return f.Follow(ctx, c.index.Position(), func(b store.Batch) {
			for _, ev := range b.Events {
				c.apply(ev)
			}
			_ = c.index.ApplyBatch(ctx, b) // only ctx's error
		})
	}
	return c.r.Watch(ctx, func(ev store.Event) {
		c.apply(ev)
		c.index.Apply(ev)
	})
}

// sweepEvery is how often runSweep looks (at most: KeepExpired/2 when it
// is shorter).
const sweepEvery = time.Minute

// runSweep drops entries expired longer than KeepExpired ago, until stop.
func (c *Cache) runSweep(stop <-chan struct{}) {
	tick := time.NewTicker(min(sweepEvery, c.cfg.KeepExpired/2))
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			c.sweep(c.clock().UnixNano())
		}
	}
}

// sweep drops the entries whose TTL ran out before now-KeepExpired, one
// shard at a time, and forgets the swept domain keys of byRepl; it does
// nothing while the store is failing (they may be all there is to serve).
func (c *Cache) sweep(now int64) int {
	if c.failing.Load() {
		return 0
	}
	before := now - int64(c.cfg.KeepExpired)
	n := 0
	type domainKey struct {
		replID string
		key    store.Key
	}
	var domains []domainKey
	for i := range c.found {
		for _, s := range [...]*shard{&c.found[i], &c.negative[i]} {
			s.mu.Lock()
			for h, e := range s.entries {
				for ; e != nil; e = e.next {
					if e.expires >= before {
						continue
					}
					if e.key.Kind == store.KeyDomain && e.route.ReplID != "" {
						domains = append(domains, domainKey{e.route.ReplID, e.key})
					}
					s.del(h, e.key)
					n++
				}
			}
			s.mu.Unlock()
		}
	}
	if len(domains) > 0 {
		c.byReplMu.Lock()
		for _, d := range domains {
			if ks := c.byRepl[d.replID]; ks != nil {
				delete(ks, d.key)
				if len(ks) == 0 {
					delete(c.byRepl, d.replID)
				}
			}
		}
		c.byReplMu.Unlock()
	}
	c.swept.Add(uint64(n))
	return n
}

// runClock keeps the coarse clock while it is read, until stop.
func (c *Cache) runClock(stop <-chan struct{}) {
	for {
		c.coarse.Store(time.Now().UnixNano())
		c.clockRead.Store(true) // the read that started it
		tick := time.NewTicker(coarseTick)
		for running := true; running; {
			select {
			case <-stop:
				tick.Stop()
				return
			case t := <-tick.C:
				if !c.clockRead.Swap(false) {
					// Unread for a whole tick: stop until a read.
					c.coarse.Store(0)
					running = false
					continue
				}
				c.coarse.Store(t.UnixNano())
			}
		}
		tick.Stop()
		select {
		case <-stop:
			return
		case <-c.clockWake:
		}
	}
}

// now returns the time in unix nanoseconds.
func (c *Cache) now() int64 {
	if t := c.coarse.Load(); t != 0 {
		if !c.clockRead.Load() {
			c.clockRead.Store(true)
		}
		return t
	}
	if !c.userClock {
		select { // start the coarse clock (when Run runs)
		case c.clockWake <- struct{}{}:
		default:
		}
	}
	return c.clock().UnixNano()
}

// Synced is closed once change notifications flow (the first EventResync).
func (c *Cache) Synced() <-chan struct{} { return c.synced }

// Lookup resolves a routable key like Reader.Lookup, from the cache when it
// can. When the backend fails, a route known before is returned (stale);
// without one the error wraps ErrUnavailable.
func (c *Cache) Lookup(ctx context.Context, k store.Key) (store.Route, error) {
	e, fresh := c.get(k)
	if fresh && c.feedLost.Load() && e.err == nil && e.route.Kind == store.RouteTombstone {
		// The change feed is down: a move back may have replaced this
		// tombstone unnoticed. Confirm it, at most once a second per key.
		return c.confirm(ctx, k, e)
	}
	if fresh {
		c.hits.Add(1)
		return e.route, e.err
	}
	if c.screen(k) {
		return store.Route{}, errNotHosted
	}
	e, err := c.load(ctx, k, e, false)
	if err != nil {
		return store.Route{}, err
	}
	return e.route, e.err
}

// Peek is Lookup for a caller that must not wait for the backend (replns's
// readers). It answers at once from what the cache holds: a fresh entry; or
// an old one (expired, or from before an EventResync), while a backend call
// refreshes it in the background. With nothing held it starts that call and
// returns an error wrapping ErrUnavailable: the caller answers it as a
// failure now, and the next Peek finds the route. Background calls are one
// per key and at most MaxBackground at once; none is started while the
// backend is failing (RetryAfter). Peek does not consult the index: a
// caller asks it when the index cannot answer.
func (c *Cache) Peek(k store.Key) (store.Route, error) {
	e, fresh := c.get(k)
	if fresh {
		c.hits.Add(1)
		return e.route, e.err
	}
	c.misses.Add(1)
	started := c.background(k)
	if e != nil {
		c.stale.Add(1)
		return e.route, e.err
	}
	if !started {
		c.refused.Add(1)
		return store.Route{}, errBusy
	}
	return store.Route{}, errLoading
}

var (
	errLoading = fmt.Errorf("%w: being looked up", store.ErrUnavailable)
	errBusy    = fmt.Errorf("%w: not looked up: the store is failing or too many look-ups are in flight", store.ErrUnavailable)
)

// background starts a backend call for k unless one is in flight, and
// reports whether one is.
func (c *Cache) background(k store.Key) bool {
	if c.now() < c.downUntil.Load() {
		return false
	}
	c.bgMu.Lock()
	defer c.bgMu.Unlock()
	if _, ok := c.bgKeys[k]; ok {
		return true
	}
	if len(c.bgKeys) >= c.cfg.MaxBackground {
		return false
	}
	k = cloneKey(k)
	c.bgKeys[k] = struct{}{}
	c.bgLoads.Add(1)
	c.bgWG.Go(func() {
		// Through the group: a Lookup of k meanwhile shares this call.
		_, _, _ = c.group.Do(k.String(), func() (any, error) { return c.fetch(context.Background(), k, false) })
		c.bgMu.Lock()
		delete(c.bgKeys, k)
		c.bgMu.Unlock()
	})
	return true
}

// errNotHosted is the answer for a name the index knows nobody hosts.
var errNotHosted = fmt.Errorf("%w: no repl has this name", store.ErrNotFound)

// screen reports whether the index knows that nobody hosts k, counting it.
func (c *Cache) screen(k store.Key) bool {
	if c.index == nil || c.index.Knows(k) != KnownNo {
		return false
	}
	c.screened.Add(1)
	return true
}

// confirm asks the backend for k again though old, what the cache holds,
// is fresh, at most once every refreshEvery; while the backend fails, or
// within that time, it answers old.
func (c *Cache) confirm(ctx context.Context, k store.Key, old *entry) (store.Route, error) {
	now := c.now()
	if now-max(atomic.LoadInt64(&old.refreshed), old.loaded) < int64(refreshEvery) || now < c.downUntil.Load() {
		c.hits.Add(1)
		return old.route, old.err
	}
	atomic.StoreInt64(&old.refreshed, now)
	e, err := c.load(ctx, k, old, true)
	if err != nil {
		return store.Route{}, err
	}
	atomic.StoreInt64(&e.refreshed, now)
	return e.route, e.err
}

// FeedLost reports whether the change feed is down (between EventLost and
// the EventResume or EventResync of its reconnection).
func (c *Cache) FeedLost() bool { return c.feedLost.Load() }

// FeedLostSince returns when the change feed was lost (the first EventLost
// since it last resynced, by the cache's clock), and false while it is up
// or before it ever went down.
func (c *Cache) FeedLostSince() (time.Time, bool) {
	at := c.lostAt.Load()
	if at == 0 {
		return time.Time{}, false
	}
	return time.Unix(0, at), true
}

// Refresh drops what the cache holds for k and looks it up in the backend:
// for a caller that has reason to think the cached route is older than the
// store (a change notification still on its way).
//
// A key that Refresh loaded is not asked again by Refresh for refreshEvery:
// a client that sends requests which keep the cached route in doubt
// (forwarded requests for a name the cluster no longer serves) must not
// turn each into a query.
func (c *Cache) Refresh(ctx context.Context, k store.Key) (store.Route, error) {
	if c.screen(k) {
		return store.Route{}, errNotHosted
	}
	now := c.now()
	if e, fresh := c.get(k); fresh && now-atomic.LoadInt64(&e.refreshed) < int64(refreshEvery) {
		c.hits.Add(1)
		return e.route, e.err
	}
	c.invalidate(k)
	route, err := c.Lookup(ctx, k)
	if e, fresh := c.get(k); fresh {
		atomic.StoreInt64(&e.refreshed, now)
	}
	return route, err
}

// refreshEvery is how often Refresh may ask the backend for one key.
const refreshEvery = time.Second

// RefreshStale is Refresh for a caller that can prove the cached route is
// older than the store: another cluster's proxy forwarded a request here on
// its tombstone of generation gen, so the repl is live here at gen or later,
// and a held route of a lower generation (or none, or the index's "nobody
// hosts it") predates a change whose notification is late or lost. It asks
// the backend — past Refresh's once a second, and past the index — unless
// the route held is of generation gen or later, or a RefreshStale for gen or
// later asked within refreshEvery: a peer's requests cannot each become a
// query, whatever the store answers.
func (c *Cache) RefreshStale(ctx context.Context, k store.Key, gen int64) (store.Route, error) {
	now := c.now()
	e, _ := c.get(k)
	if e != nil && e.err == nil && e.route.Generation >= gen {
		c.hits.Add(1)
		return e.route, nil
	}
	if e != nil && atomic.LoadInt64(&e.staleGen) >= gen && now-atomic.LoadInt64(&e.refreshed) < int64(refreshEvery) {
		c.hits.Add(1)
		return e.route, e.err
	}
	ne, err := c.load(ctx, k, e, true)
	if err != nil {
		return store.Route{}, err
	}
	if ne != e { // the store's answer, not e served stale
		atomic.StoreInt64(&ne.staleGen, gen)
		atomic.StoreInt64(&ne.refreshed, now)
	}
	return ne.route, ne.err
}

// Challenges returns the unexpired challenge records named name, cached
// like Lookup (for NegativeTTL at most, and never past a record's expiry).
func (c *Cache) Challenges(ctx context.Context, name string) ([]store.Challenge, error) {
	k := store.Key{Kind: store.KeyChallenge, Name: name}
	e, fresh := c.get(k)
	if fresh {
		c.hits.Add(1)
		return e.challenges, nil
	}
	e, err := c.load(ctx, k, e, false)
	if err != nil {
		return nil, err
	}
	return e.challenges, nil
}

// hashKey hashes a key's strings (FNV-1a, 64 bits, from a per-cache
// seed so that colliding names cannot be prepared in advance) and picks
// its shard.
func (c *Cache) hashKey(k store.Key) (uint64, int) {
	h := c.seed ^ uint64(k.Kind)
	for _, s := range [...]string{k.Owner, k.Slug, k.ID, k.Name} {
		for i := 0; i < len(s); i++ {
			h ^= uint64(s[i])
			h *= 1099511628211
		}
		h ^= 0xff // field separator
		h *= 1099511628211
	}
	return h, int(h >> 58) // the top 6 bits: cacheShards is 64
}

func (s *shard) get(h uint64, k store.Key) *entry {
	for e := s.entries[h]; e != nil; e = e.next {
		if e.key == k {
			return e
		}
	}
	return nil
}

// del removes k; the caller holds the lock.
func (s *shard) del(h uint64, k store.Key) bool {
	var prev *entry
	for e := s.entries[h]; e != nil; prev, e = e, e.next {
		if e.key != k {
			continue
		}
		switch {
		case prev != nil:
			prev.next = e.next
		case e.next != nil:
			s.entries[h] = e.next
		default:
			delete(s.entries, h)
		}
		s.n--
		return true
	}
	return false
}

func (s *shard) len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.n
}

// get returns the entry for k, if any, and whether it is fresh.
func (c *Cache) get(k store.Key) (*entry, bool) {
	h, i := c.hashKey(k)
	for _, s := range [...]*shard{&c.found[i], &c.negative[i]} {
		s.mu.RLock()
		e := s.get(h, k)
		s.mu.RUnlock()
		if e != nil {
			return e, e.epoch == c.epoch.Load() && c.now() < e.expires
		}
	}
	return nil, false
}

// load asks the backend for k, once for all concurrent callers, and serves
// old (stale) when it fails. force asks even when the cache holds a fresh
// entry (confirm, RefreshStale: the caller doubts it).
func (c *Cache) load(ctx context.Context, k store.Key, old *entry, force bool) (*entry, error) {
	c.misses.Add(1)
	if c.now() < c.downUntil.Load() {
		return c.serveStale(k, old, fmt.Errorf("lookup %s: %w: backend failed recently, retrying shortly", k, store.ErrUnavailable))
	}
	key := k.String()
	if force {
		key = "force " + key
	}
	ch := c.group.DoChan(key, func() (any, error) { return c.fetch(ctx, k, force) })
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return c.serveStale(k, old, res.Err)
		}
		return res.Val.(*entry), nil
	}
}

// fetch makes one backend call and stores its answer.
func (c *Cache) fetch(ctx context.Context, k store.Key, force bool) (*entry, error) {
	// A caller that missed just before another call for k finished would
	// ask the backend again: look once more (unless it wants the store's
	// word: confirm).
	if e, fresh := c.get(k); fresh && !force {
		return e, nil
	}
	k = cloneKey(k) // kept in the cache: do not pin the caller's buffers
	h, i := c.hashKey(k)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.LoadTimeout)
	defer cancel()

	epoch := c.epoch.Load()
	c.found[i].mu.RLock()
	seq := c.found[i].seq
	c.found[i].mu.RUnlock()

	c.loads.Add(1)
	e := &entry{key: k, epoch: epoch, loaded: c.now()}
	ttl := c.cfg.TTL
	var err error
	if k.Kind == store.KeyChallenge {
		e.challenges, err = c.r.Challenges(ctx, k.Name)
		ttl = c.cfg.NegativeTTL
		for _, ch := range e.challenges {
			ttl = min(ttl, time.Duration(ch.ExpiresAt.UnixNano()-c.now()))
		}
	} else {
		e.route, err = c.r.Lookup(ctx, k)
		if errors.Is(err, store.ErrNotFound) {
			e.err, err, ttl = store.ErrNotFound, nil, c.cfg.NegativeTTL
		}
	}
	if err != nil {
		c.loadErrors.Add(1)
		if !errors.Is(err, store.ErrInvalid) {
			c.downUntil.Store(c.now() + int64(c.cfg.RetryAfter))
		}
		return nil, err
	}
	c.recovered()
	e.expires = c.now() + int64(ttl)

	dst := &c.found[i]
	if e.err != nil || k.Kind == store.KeyChallenge {
		dst = &c.negative[i]
	}
	c.found[i].mu.RLock()
	invalidated := c.found[i].seq != seq
	c.found[i].mu.RUnlock()
	if invalidated {
		// A notification for this shard came while we asked: what we got
		// may predate it. Keep it already expired: the next lookup asks
		// again, but while the backend is down it still serves stale.
		stale := *e
		stale.expires = 0
		dst.put(h, &stale, c.now(), &c.evictions)
		return e, nil
	}
	dst.put(h, e, c.now(), &c.evictions)
	// An entry of the other kind is outdated now.
	other := &c.negative[i]
	if dst == other {
		other = &c.found[i]
	}
	other.mu.Lock()
	other.del(h, k)
	other.mu.Unlock()
	if k.Kind == store.KeyDomain && e.err == nil {
		c.byReplMu.Lock()
		ks := c.byRepl[e.route.ReplID]
		if ks == nil {
			ks = make(map[store.Key]struct{})
			c.byRepl[e.route.ReplID] = ks
		}
		ks[k] = struct{}{}
		c.byReplMu.Unlock()
	}
	return e, nil
}

// put stores e (replacing an entry with its key). When the shard is full
// it evicts one entry first: the first expired one among a few looked at,
// else the first looked at (map iteration starts at a random place, so
// that one is arbitrary).
func (s *shard) put(h uint64, e *entry, now int64, evictions *atomic.Uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	replaced := s.del(h, e.key)
	if !replaced && s.n >= s.max {
		var victim *entry
		var victimHash uint64
		looked := 0
		for vh, ve := range s.entries {
			if victim == nil || ve.expires <= now {
				victim, victimHash = ve, vh
			}
			if looked++; looked == 8 {
				break
			}
		}
		s.del(victimHash, victim.key)
		evictions.Add(1)
	}
	e.next = s.entries[h]
	s.entries[h] = e
	s.n++
}

// cloneKey copies a key's strings.
func cloneKey(k store.Key) store.Key {
	k.Owner, k.Slug, k.ID, k.Name = strings.Clone(k.Owner), strings.Clone(k.Slug), strings.Clone(k.ID), strings.Clone(k.Name)
	return k
}

// serveStale answers with old when there is one, counting it and logging
// the incident once; otherwise it returns err marked unavailable.
func (c *Cache) serveStale(k store.Key, old *entry, err error) (*entry, error) {
	if errors.Is(err, store.ErrInvalid) {
		return nil, err
	}
	if !errors.Is(err, store.ErrUnavailable) {
		err = fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	if c.failing.CompareAndSwap(false, true) {
		c.logger.Warn("store failing: serving known routes stale, unknown names fail", zap.Error(err))
	}
	if old == nil {
		return nil, err
	}
	c.stale.Add(1)
	return old, nil
}

func (c *Cache) recovered() {
	if c.failing.CompareAndSwap(true, false) {
		c.downUntil.Store(0)
		c.logger.Info("store answering again", zap.Uint64("stale_served_total", c.stale.Load()))
	}
}

// apply handles one change notification.
func (c *Cache) apply(ev store.Event) {
	switch ev.Kind {
	case store.EventResync:
		c.epoch.Add(1)
		c.lostAt.Store(0)
		c.feedLost.Store(false)
		c.syncOnce.Do(func() { close(c.synced) })
	case store.EventLost:
		// A watcher repeats EventLost on every failed reconnection: the
		// first one says since when. (apply runs on one goroutine.)
		if !c.feedLost.Load() {
			c.lostAt.Store(c.clock().UnixNano())
			c.feedLost.Store(true)
		}
	case store.EventResume:
		c.lostAt.Store(0)
		c.feedLost.Store(false)
	case store.EventRepl:
		c.invalidate(store.ReplKey(ev.Owner, ev.Slug))
		c.invalidate(store.ReplIDKey(ev.ReplID))
		c.byReplMu.Lock()
		domains := c.byRepl[ev.ReplID]
		delete(c.byRepl, ev.ReplID)
		c.byReplMu.Unlock()
		for k := range domains {
			c.invalidate(k)
		}
	case store.EventDomain:
		c.invalidate(store.DomainKey(ev.Name))
	case store.EventChallenge:
		c.invalidate(store.Key{Kind: store.KeyChallenge, Name: ev.Name})
	}
}

// invalidate drops what the cache holds for k, and bumps the shard's
// sequence so that a load that overlapped it is kept only as stale.
func (c *Cache) invalidate(k store.Key) {
	h, i := c.hashKey(k)
	for _, s := range [...]*shard{&c.found[i], &c.negative[i]} {
		s.mu.Lock()
		if s.del(h, k) {
			c.invalidations.Add(1)
		}
		s.mu.Unlock()
	}
	c.found[i].mu.Lock()
	c.found[i].seq++
	c.found[i].mu.Unlock()
}

// Stats returns the cache's counters.
func (c *Cache) Stats() Stats {
	s := Stats{
		Hits:         c.hits.Load(),
		Misses:       c.misses.Load(),
		Stale:        c.stale.Load(),
		Loads:        c.loads.Load(),
		LoadErrors:   c.loadErrors.Load(),
		Evictions:    c.evictions.Load(),
		Swept:        c.swept.Load(),
		Invalidation: c.invalidations.Load(),
		Screened:     c.screened.Load(),
		Background:   c.bgLoads.Load(),
		Refused:      c.refused.Load(),
	}
	for i := range c.found {
		s.Entries += c.found[i].len()
		s.Negative += c.negative[i].len()
	}
	return s
}
