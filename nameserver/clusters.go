package nameserver

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

// Source is the data a Handler answers from. *Clusters is the real one.
type Source interface {
	// Clusters lists the clusters, whose positions Host returns.
	Clusters() []cluster.Cluster
	// Host returns the position of the cluster that hosts the repl named
	// by k (KeyRepl or KeyReplID): of the clusters where it is live, the
	// one with the highest generation. It returns an error wrapping
	// store.ErrNotFound when no cluster has it, or store.ErrUnavailable
	// when none has it but one could not be asked.
	Host(ctx context.Context, k store.Key) (int, error)
	// HasOwner reports whether owner has repls. When it cannot be sure it
	// says true: an owner's name is an empty non-terminal, and a wrong
	// NXDOMAIN there would hide every repl of the owner from resolvers.
	HasOwner(owner string) bool
	// Challenges appends to dst the values of the DNS-01 challenge records
	// named name in every cluster, without repeats. The error wraps
	// store.ErrUnavailable when there are none but a cluster could not be
	// asked.
	Challenges(ctx context.Context, name string, dst []string) ([]string, error)
}

// ClustersConfig tunes Clusters. The zero value is usable.
type ClustersConfig struct {
	// Cache configures each cluster's route cache; its zero values mean
	// routecache's defaults.
	Cache routecache.Config
	// Open opens a cluster's store. Nil means cluster.Open without
	// migrations (replns only reads), logging as "store".
	Open func(ctx context.Context, addr string) (store.Store, error)
}

// Clusters reads every cluster of the registry: each store through a
// routecache.Cache kept current by change notifications, beside an index of the
// cluster's live repls that turns names no cluster has into NXDOMAIN
// without a database query. Run opens the stores and keeps both current.
type Clusters struct {
	list   []cluster.Cluster
	cs     []*member
	cfg    ClustersConfig
	logger *zap.Logger
}

var _ Source = (*Clusters)(nil)

type member struct {
	info  cluster.Cluster
	cache atomic.Pointer[routecache.Cache] // nil until the store is open
	index *index
	// queries counts the store calls the index makes.
	queries atomic.Uint64
	synced  atomic.Bool // the change feed's first resync came
}

// NewClusters prepares to read the clusters of reg. Nothing is opened
// until Run.
func NewClusters(reg *cluster.Registry, cfg ClustersConfig, logger *zap.Logger) (*Clusters, error) {
	if reg == nil || len(reg.Clusters) == 0 {
		return nil, errors.New("clusters: the registry names no cluster")
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	c := &Clusters{list: slices.Clone(reg.Clusters), cfg: cfg, logger: logger.Named("clusters")}
	if c.cfg.Open == nil {
		storeLogger := logger.Named("store")
		c.cfg.Open = func(ctx context.Context, addr string) (store.Store, error) {
			return cluster.Open(ctx, addr, cluster.OpenOptions{Logger: storeLogger})
		}
	}
	for _, info := range c.list {
		c.cs = append(c.cs, &member{info: info, index: newIndex()})
	}
	return c, nil
}

// Clusters implements Source.
func (c *Clusters) Clusters() []cluster.Cluster { return c.list }

// Host implements Source. Each cluster that knows the repl offers a
// candidate: itself when the repl is live there, or the cluster its
// tombstone names. The highest generation wins. Trusting tombstones keeps
// the answer right while a move's change notifications from the two
// clusters arrive in either order.
func (c *Clusters) Host(ctx context.Context, k store.Key) (int, error) {
	best, bestGen := -1, int64(0)
	var failed error
	for i, cl := range c.cs {
		known, gen, movedTo := cl.index.repl(k)
		if known == knownNo {
			continue
		}
		target := i
		cache := cl.cache.Load()
		if cache == nil {
			if known != knownYes {
				failed = fmt.Errorf("cluster %s: %w: its store is not open yet", cl.info.Name, store.ErrUnavailable)
				continue
			}
			if movedTo != "" {
				target = c.indexOf(movedTo)
			}
		} else {
			r, err := cache.Lookup(ctx, k)
			switch {
			case err == nil && r.Kind == store.RouteLocal:
				gen = r.Generation
			case err == nil && r.Kind == store.RouteTombstone:
				target, gen = c.indexOf(r.Cluster), r.Generation
			case errors.Is(err, store.ErrNotFound):
				continue // the index is a moment ahead
			case known == knownYes:
				// The store is down and the cache never held this name:
				// answer from the index.
				if movedTo != "" {
					target = c.indexOf(movedTo)
				}
			default:
				failed = fmt.Errorf("cluster %s: %w", cl.info.Name, err)
				continue
			}
		}
		if target >= 0 && (best < 0 || gen > bestGen) {
			best, bestGen = target, gen
		}
	}
	switch {
	case best >= 0:
		return best, nil
	case failed != nil:
		return -1, failed
	}
	return -1, store.ErrNotFound
}

// indexOf returns the position of the named cluster, or -1 for a cluster
// the registry does not have.
func (c *Clusters) indexOf(name string) int {
	for i, cl := range c.list {
		if cl.Name == name {
			return i
		}
	}
	return -1
}

// HasOwner implements Source.
func (c *Clusters) HasOwner(owner string) bool {
	for _, cl := range c.cs {
		if cl.index.owner(owner) != knownNo {
			return true
		}
	}
	return false
}

// Challenges implements Source.
func (c *Clusters) Challenges(ctx context.Context, name string, dst []string) ([]string, error) {
	start := len(dst)
	var failed error
	for _, cl := range c.cs {
		cache := cl.cache.Load()
		if cache == nil {
			failed = fmt.Errorf("cluster %s: %w: its store is not open yet", cl.info.Name, store.ErrUnavailable)
			continue
		}
		chs, err := cache.Challenges(ctx, name)
		if err != nil {
			failed = fmt.Errorf("cluster %s: %w", cl.info.Name, err)
			continue
		}
		for _, ch := range chs {
			if !slices.Contains(dst[start:], ch.Value) {
				dst = append(dst, ch.Value)
			}
		}
	}
	if len(dst) == start && failed != nil {
		return dst, failed
	}
	return dst, nil
}

// ClusterStatus describes one cluster for readiness and metrics.
type ClusterStatus struct {
	Name string
	// Open: the store is open. Synced: change notifications flow and the
	// index was built at least once. Current: the index is current now.
	Open, Synced, Current bool
	Indexed               int    // live repls in the index
	IndexQueries          uint64 // store calls made to keep the index
	Cache                 routecache.Stats
}

// Status reports on every cluster, in registry order.
func (c *Clusters) Status() []ClusterStatus {
	out := make([]ClusterStatus, 0, len(c.cs))
	for _, cl := range c.cs {
		n, current, built := cl.index.size()
		s := ClusterStatus{Name: cl.info.Name, Indexed: n, Current: current, IndexQueries: cl.queries.Load()}
		if cache := cl.cache.Load(); cache != nil {
			s.Open = true
			s.Cache = cache.Stats()
			s.Synced = built && cl.synced.Load()
		}
		out = append(out, s)
	}
	return out
}

// Run opens every cluster's store (retrying, with backoff, those that
// cannot be reached: the others answer meanwhile) and keeps caches and
// indexes current until ctx is done. It closes the stores and returns nil
// when ctx is done.
func (c *Clusters) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, cl := range c.cs {
		wg.Go(func() { c.run(ctx, cl) })
	}
	wg.Wait()
	return nil
}

// Backoff bounds for opening a store and rebuilding an index.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// sleep waits d, or less when ctx is done; it reports whether ctx is live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }

func (c *Clusters) run(ctx context.Context, cl *member) {
	logger := c.logger.With(zap.String("cluster", cl.info.Name))
	var st store.Store
	for backoff := minBackoff; ; backoff = min(2*backoff, maxBackoff) {
		var err error
		if st, err = c.cfg.Open(ctx, cl.info.Store); err == nil {
			break
		}
		wait := jitter(backoff)
		logger.Warn("cannot open the cluster's store; its repls are not answered until it opens",
			zap.Duration("retry_in", wait), zap.Error(err))
		if !sleep(ctx, wait) {
			return
		}
	}
	defer func() {
		if err := st.Close(); err != nil {
			logger.Warn("close store", zap.Error(err))
		}
	}()

	// One change feed (one LISTEN connection for PostgreSQL) feeds both
	// the cache and the index: the cache's Run watches through sharedFeed.
	q := newEventQueue()
	cache := routecache.New(sharedFeed{Reader: st, also: q.push}, c.cfg.Cache, logger)
	cl.cache.Store(cache)
	logger.Info("store open")

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		if err := cache.Run(ctx); err != nil && ctx.Err() == nil {
			logger.Error("change notifications stopped", zap.Error(err))
		}
	})
	wg.Go(func() {
		select {
		case <-cache.Synced():
			cl.synced.Store(true)
		case <-ctx.Done():
		}
	})
	c.maintain(ctx, cl, st, q, logger)
}

// sharedFeed is a cluster's store as its route cache sees it: the cache's
// Watch is the cluster's only one, and every event it gets goes to also
// (the index's queue) too, after the cache has applied it.
type sharedFeed struct {
	store.Reader
	also func(store.Event)
}

func (f sharedFeed) Watch(ctx context.Context, fn func(store.Event)) error {
	return f.Reader.Watch(ctx, func(ev store.Event) {
		fn(ev)
		f.also(ev)
	})
}

// maintain keeps cl's index current from the events in q.
func (c *Clusters) maintain(ctx context.Context, cl *member, st store.Store, q *eventQueue, logger *zap.Logger) {
	backoff := minBackoff
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.wake:
		}
		resync, events := q.take()
		if resync {
			cl.index.stale()
			cl.queries.Add(1)
			repls, err := st.ListRepls(ctx, "")
			var tombstones []store.Tombstone
			if err == nil {
				tombstones, err = st.ListTombstones(ctx)
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				wait := jitter(backoff)
				backoff = min(2*backoff, maxBackoff)
				logger.Warn("cannot rebuild the index of live repls; looking names up in the store meanwhile",
					zap.Duration("retry_in", wait), zap.Error(err))
				q.requeue()
				if !sleep(ctx, wait) {
					return
				}
				continue
			}
			backoff = minBackoff
			cl.index.replace(repls, tombstones)
			logger.Debug("index rebuilt", zap.Int("repls", len(repls)))
			continue // the list already reflects the events taken with it
		}
		for _, ev := range events {
			if ev.Kind != store.EventRepl {
				continue
			}
			cl.queries.Add(1)
			r, err := st.GetRepl(ctx, ev.ReplID)
			if err == nil {
				cl.index.put(r)
				continue
			}
			if errors.Is(err, store.ErrNotFound) {
				var t store.Tombstone
				t, err = st.GetTombstone(ctx, ev.ReplID)
				if err == nil {
					cl.index.putTombstone(t)
					continue
				}
			}
			if errors.Is(err, store.ErrNotFound) {
				cl.index.remove(ev.ReplID)
				continue
			}
			// The store failed: rebuild the whole index once it answers.
			q.requeue()
			break
		}
	}
}

// eventQueue hands change notifications from Watch, whose callback must
// not block, to the goroutine that keeps the index. An EventResync, or more
// events than it holds, collapses into one rebuild.
type eventQueue struct {
	mu     sync.Mutex
	events []store.Event
	resync bool
	wake   chan struct{}
}

const maxQueuedEvents = 10000

func newEventQueue() *eventQueue { return &eventQueue{wake: make(chan struct{}, 1)} }

func (q *eventQueue) push(ev store.Event) {
	q.mu.Lock()
	switch {
	case ev.Kind == store.EventResync || len(q.events) >= maxQueuedEvents:
		q.resync, q.events = true, nil
	case ev.Kind == store.EventRepl && !q.resync:
		q.events = append(q.events, ev)
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// requeue asks for a rebuild.
func (q *eventQueue) requeue() { q.push(store.Event{Kind: store.EventResync}) }

func (q *eventQueue) take() (resync bool, events []store.Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	resync, events = q.resync, q.events
	q.resync, q.events = false, nil
	return resync, events
}
