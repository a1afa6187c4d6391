package nameserver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/backoff"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

// Source is the data a Handler answers from. *Clusters is the real one.
// No method waits for a store: replns's readers answer from memory, and a
// name that would need a store look-up gets an error at once.
type Source interface {
	// Clusters lists the clusters as they are now (a reload may change
	// them: see Clusters.SetRegistry).
	Clusters() []cluster.Cluster
	// Host returns the name of the cluster that hosts the repl named by k
	// (KeyRepl or KeyReplID): of the clusters where it is live, the one
	// with the highest generation. It returns an error wrapping
	// store.ErrNotFound when no cluster has it, or store.ErrUnavailable
	// when none has it but one could not tell at once.
	Host(ctx context.Context, k store.Key) (string, error)
	// HasOwner reports whether owner has repls. When it cannot be sure it
	// says true: an owner's name is an empty non-terminal, and a wrong
	// NXDOMAIN there would hide every repl of the owner from resolvers.
	HasOwner(owner string) bool
	// Challenges appends to dst the values of the DNS-01 challenge records
	// named name in every cluster, without repeats. The error wraps
	// store.ErrUnavailable when there are none but a cluster could not
	// tell.
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
	// MoveHold is how long a repl that has just become live in a cluster
	// (a move's destination) is held back from answers while another
	// cluster still serves or forwards it (see Host). Zero means
	// DefaultMoveHold; a negative value holds nothing back.
	MoveHold time.Duration
}

// DefaultMoveHold is ClustersConfig.MoveHold's default: twenty times the
// commit-to-every-proxy p99 the change feed is built for (100 ms), and
// short beside the answers' TTL (resolvers hold the source's answer up to
// 60 s after a move anyway, so the source must serve it that long
// regardless).
const DefaultMoveHold = 2 * time.Second

// Clusters reads every cluster of the registry: each store through a
// routecache.Cache with its name index (routecache.NewIndexed), kept
// current by the store's one change feed. Every name the indexes hold is
// answered from them, challenge records included, and every name they know
// nobody has is NXDOMAIN: in the steady state no query reaches a store.
// The route cache is asked, never waited for (Cache.Peek), only for what an
// index cannot tell: a name whose change is being read, a name missing from
// an index being rebuilt, and every name of a cluster whose change feed is
// lost (its index no longer follows the store; the cache's TTL bounds how
// stale an answer gets). Run opens the stores and keeps them current;
// SetRegistry adds and removes clusters while it runs.
type Clusters struct {
	set    atomic.Pointer[clusterSet]
	cfg    ClustersConfig
	now    func() time.Time // the clock challenge records expire by
	logger *zap.Logger

	mu      sync.Mutex      // guards runCtx, stopped and starting members
	runCtx  context.Context // Run's; nil before Run
	stopped bool            // Run's context is done: no member starts any more
	wg      sync.WaitGroup  // the members' goroutines
}

var _ Source = (*Clusters)(nil)

// clusterSet is the clusters at one time: the registry's, and a member
// for each, in the same order. It is replaced whole, never modified, so a
// reader that loaded it sees one registry throughout.
type clusterSet struct {
	list []cluster.Cluster
	cs   []*member
}

// member is one cluster's store, cache and index. It lives as long as the
// cluster is in the registry with the same store.
type member struct {
	name, store string
	cache       atomic.Pointer[routecache.Cache] // with its index; nil until the store is open
	synced      atomic.Bool                      // the change feed's first resync came
	started     atomic.Int64                     // unix nanoseconds when its run began: waiting for the feed since
	ended       atomic.Int64                     // unix nanoseconds when its change feed stopped for good; 0 while it runs
	cancel      context.CancelFunc               // stops its run; nil until started (under Clusters.mu)
	done        chan struct{}                    // closed when its run returned
}

// NewClusters prepares to read the clusters of reg. Nothing is opened
// until Run. now is the clock challenge records expire by; nil means
// time.Now. A nil logger means zap.NewNop().
func NewClusters(reg *cluster.Registry, cfg ClustersConfig, now func() time.Time, logger *zap.Logger) (*Clusters, error) {
	if reg == nil || len(reg.Clusters) == 0 {
		return nil, errors.New("clusters: the registry names no cluster")
	}
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	if cfg.MoveHold == 0 {
		cfg.MoveHold = DefaultMoveHold
	}
	cfg.Cache.Arrivals = cfg.MoveHold // a negative one: the indexes remember no arrival
	c := &Clusters{cfg: cfg, now: now, logger: logger.Named("clusters")}
	if c.cfg.Open == nil {
		storeLogger := logger.Named("store")
		c.cfg.Open = func(ctx context.Context, addr string) (store.Store, error) {
			return cluster.Open(ctx, addr, cluster.OpenOptions{Logger: storeLogger, AppName: "replns"})
		}
	}
	set := &clusterSet{list: slices.Clone(reg.Clusters)}
	for _, info := range set.list {
		set.cs = append(set.cs, &member{name: info.Name, store: info.Store})
	}
	c.set.Store(set)
	return c, nil
}

// Clusters implements Source.
func (c *Clusters) Clusters() []cluster.Cluster { return c.set.Load().list }

// Host implements Source. Each cluster that knows the repl offers a
// candidate: itself when the repl is live there, or the cluster its
// tombstone names. The highest generation wins, but a repl still arriving
// at a cluster (live there for less than MoveHold) is held back while
// another candidate remains: that cluster's proxies follow its change feed
// each on its own, a moment behind replns or ahead of it, and a client
// sent there before they know the repl gets a 404. Every candidate held
// back to is safe: the source of a move still serves the repl from its live
// row, or forwards it on its tombstone (a forwarded request makes the
// destination's proxy ask its store). Trusting tombstones keeps the answer
// right while a move's changes from the two clusters arrive in either
// order.
func (c *Clusters) Host(_ context.Context, k store.Key) (string, error) {
	set := c.set.Load()
	best, bestGen, bestArriving := -1, int64(0), false
	var failed error
	for i, cl := range set.cs {
		cache := cl.cache.Load()
		if cache == nil {
			failed = fmt.Errorf("cluster %s: %w: its store is not open yet", cl.name, store.ErrUnavailable)
			continue
		}
		known, gen, movedTo, arriving := cache.Index().Where(k)
		if known == routecache.KnownNo {
			continue
		}
		if known == routecache.KnownUnsure || cache.FeedLost() {
			r, err := cache.Peek(k)
			switch {
			case err == nil:
				gen, movedTo, arriving = r.Generation, "", false
				if r.Kind == store.RouteTombstone {
					movedTo = r.Cluster
				}
			case errors.Is(err, store.ErrNotFound):
				continue // the index is a moment ahead, or was wrong
			case known == routecache.KnownYes:
				// Nothing cached yet: the index's word, while the cache
				// loads.
			default:
				failed = fmt.Errorf("cluster %s: lookup %s: %w", cl.name, k, err)
				continue
			}
		}
		target := i
		if movedTo != "" {
			target = set.indexOf(movedTo)
			if target >= 0 && set.notYet(target, k) {
				// The destination has not learned of the repl, or only
				// just has (and nor, likely, have its proxies). Send
				// clients to this cluster, whose tombstone forwards them,
				// until it has.
				target = i
			}
		}
		if target >= 0 && (best < 0 || outranks(gen, arriving, bestGen, bestArriving)) {
			best, bestGen, bestArriving = target, gen, arriving
		}
	}
	switch {
	case best >= 0:
		return set.list[best].Name, nil
	case failed != nil:
		return "", failed
	}
	return "", store.ErrNotFound
}

// outranks reports whether a candidate of generation gen beats the best so
// far: one that has arrived beats one still arriving, and then the higher
// generation wins.
func outranks(gen int64, arriving bool, bestGen int64, bestArriving bool) bool {
	if arriving != bestArriving {
		return !arriving
	}
	return gen > bestGen
}

// notYet reports whether cluster i's index is current and does not have
// k, or has it arriving: a tombstone names a destination that has not
// learned of the repl, or only just has.
func (s *clusterSet) notYet(i int, k store.Key) bool {
	cache := s.cs[i].cache.Load()
	if cache == nil {
		return false
	}
	known, _, _, arriving := cache.Index().Where(k)
	return known == routecache.KnownNo || arriving
}

// indexOf returns the position of the named cluster, or -1 for a cluster
// the registry does not have (a tombstone naming a cluster removed from
// it: that candidate is passed over).
func (s *clusterSet) indexOf(name string) int {
	for i, cl := range s.list {
		if cl.Name == name {
			return i
		}
	}
	return -1
}

// HasOwner implements Source.
func (c *Clusters) HasOwner(owner string) bool {
	for _, cl := range c.set.Load().cs {
		cache := cl.cache.Load()
		if cache == nil || cache.Index().Owner(owner) != routecache.KnownNo {
			return true
		}
	}
	return false
}

// Challenges implements Source, from the indexes: challenge records are
// few and short-lived, and each index holds its cluster's.
func (c *Clusters) Challenges(_ context.Context, name string, dst []string) ([]string, error) {
	start := len(dst)
	now := c.now()
	var failed error
	for _, cl := range c.set.Load().cs {
		cache := cl.cache.Load()
		if cache == nil {
			failed = fmt.Errorf("cluster %s: %w: its store is not open yet", cl.name, store.ErrUnavailable)
			continue
		}
		n := len(dst)
		known, values := cache.Index().Challenges(name, now, dst)
		dst = values[:n] // compacted in place below: writes never pass reads
		if known == routecache.KnownUnsure {
			failed = fmt.Errorf("cluster %s: challenges %s: %w: its index is catching up", cl.name, name, store.ErrUnavailable)
		}
		for _, v := range values[n:] {
			if !slices.Contains(dst[start:], v) {
				dst = append(dst, v)
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
	// Open: the store is open. Synced: change notifications came and the
	// index was built, at least once: the cluster's names are answered
	// from memory, and stay answered (serve-stale) while its store is down.
	// FeedUp: the change feed is connected now (for PostgreSQL, its LISTEN
	// connection, probed when quiet for 5 s): the index follows the store.
	// Current: the index is current now (not being rebuilt).
	Open, Synced, FeedUp, Current bool
	// FeedDownSince is when the change feed was lost, or, for one that
	// never came up, when replns began opening the store; zero while
	// FeedUp.
	FeedDownSince time.Time
	Indexed       int    // repls in the index, live or tombstoned
	IndexQueries  uint64 // store calls made to keep the index
	Cache         routecache.Stats
}

// Ready reports whether the cluster's index follows its store now: open,
// notified (the change feed up) and indexed (current). It is
// replns_cluster_ready. A cluster that is Synced but not Ready still has
// its names answered, from what its index held.
func (s ClusterStatus) Ready() bool { return s.Open && s.Synced && s.FeedUp && s.Current }

// Status reports on every cluster, in registry order.
func (c *Clusters) Status() []ClusterStatus {
	cs := c.set.Load().cs
	out := make([]ClusterStatus, 0, len(cs))
	for _, cl := range cs {
		s := ClusterStatus{Name: cl.name}
		if at := cl.started.Load(); at != 0 {
			s.FeedDownSince = time.Unix(0, at)
		}
		if cache := cl.cache.Load(); cache != nil {
			x := cache.Index().Stats()
			s.Open, s.Cache = true, cache.Stats()
			s.Indexed, s.Current, s.IndexQueries = x.Repls, x.Current, x.Queries
			synced := cl.synced.Load()
			s.Synced = x.Built && synced
			lostAt, lost := cache.FeedLostSince()
			ended := cl.ended.Load()
			switch {
			case ended != 0:
				s.FeedDownSince = time.Unix(0, ended)
			case lost:
				s.FeedDownSince = lostAt
			case synced:
				s.FeedUp, s.FeedDownSince = true, time.Time{}
			}
		}
		out = append(out, s)
	}
	return out
}

// Run opens every cluster's store (retrying, with backoff, those that
// cannot be reached: the others answer meanwhile) and keeps caches and
// indexes current until ctx is done, for the clusters of the registry as
// SetRegistry changes it. It closes the stores and returns nil when ctx is
// done.
func (c *Clusters) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.runCtx != nil {
		c.mu.Unlock()
		return errors.New("clusters: Run called twice")
	}
	c.runCtx = ctx
	for _, cl := range c.set.Load().cs {
		c.start(cl)
	}
	c.mu.Unlock()
	<-ctx.Done()
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

// start runs cl under Run's context; c.mu is held.
func (c *Clusters) start(cl *member) {
	ctx, cancel := context.WithCancel(c.runCtx)
	cl.cancel, cl.done = cancel, make(chan struct{})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(cl.done)
		defer cancel()
		c.run(ctx, cl)
	}()
}

// SetRegistry makes reg's clusters the ones answered for, at once for
// every query that follows (a reload): a cluster added is opened, indexed
// and followed as at start (its repls are answered once its store is
// open; /readyz counts it), a cluster removed stops (its change feed ends
// and its store closes before SetRegistry returns), and a cluster whose
// store address changed is a removal and an addition. The other clusters'
// stores, caches and indexes are not touched; their new addresses (A and
// AAAA) are for the Handler to take (Handler.SetClusters). It returns the
// names of the clusters added, removed and restarted.
func (c *Clusters) SetRegistry(reg *cluster.Registry) (added, removed, restarted []string, err error) {
	if reg == nil || len(reg.Clusters) == 0 {
		return nil, nil, nil, errors.New("clusters: the registry names no cluster")
	}
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil, nil, nil, errors.New("clusters: stopped")
	}
	old := c.set.Load()
	next := &clusterSet{list: slices.Clone(reg.Clusters)}
	kept := make(map[*member]bool)
	var fresh []*member
	for _, info := range next.list {
		i := old.indexOf(info.Name)
		switch {
		case i >= 0 && old.cs[i].store == info.Store:
			next.cs = append(next.cs, old.cs[i])
			kept[old.cs[i]] = true
			continue
		case i >= 0:
			restarted = append(restarted, info.Name)
		default:
			added = append(added, info.Name)
		}
		m := &member{name: info.Name, store: info.Store}
		next.cs = append(next.cs, m)
		fresh = append(fresh, m)
	}
	var stop []*member
	for _, cl := range old.cs {
		if !kept[cl] {
			stop = append(stop, cl)
			if next.indexOf(cl.name) < 0 {
				removed = append(removed, cl.name)
			}
		}
	}
	c.set.Store(next)
	if c.runCtx != nil {
		for _, m := range fresh {
			c.start(m)
		}
	}
	c.mu.Unlock()
	for _, cl := range stop {
		if cl.cancel != nil { // started
			cl.cancel()
			<-cl.done
		}
	}
	return added, removed, restarted, nil
}

// Backoff bounds for opening a store and rebuilding an index.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

func (c *Clusters) run(ctx context.Context, cl *member) {
	cl.started.Store(time.Now().UnixNano()) // the cache's clock, as FeedLostSince
	logger := c.logger.With(zap.String("cluster", cl.name))
	var st store.Store
	for delay := minBackoff; ; delay = min(2*delay, maxBackoff) {
		var err error
		if st, err = c.cfg.Open(ctx, cl.store); err == nil {
			break
		}
		wait := backoff.Jitter(delay)
		logger.Warn("cannot open the cluster's store; its repls are not answered until it opens",
			zap.Duration("retry_in", wait), zap.Error(err))
		if !backoff.Sleep(ctx, wait) {
			return
		}
	}
	defer func() {
		if err := st.Close(); err != nil {
			logger.Warn("close store", zap.Error(err))
		}
	}()

	// One change feed (one LISTEN connection for PostgreSQL) keeps both
	// the cache and its index current: the cache's Run.
	cache := routecache.NewIndexed(st, c.cfg.Cache, nil, logger)
	cl.cache.Store(cache)
	logger.Info("store open")

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		select {
		case <-cache.Synced():
			cl.synced.Store(true)
		case <-ctx.Done():
		}
	})
	if err := cache.Run(ctx); err != nil && ctx.Err() == nil {
		cl.ended.Store(time.Now().UnixNano())
		logger.Error("change notifications stopped", zap.Error(err))
	}
}
