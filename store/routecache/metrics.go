package routecache

import (
	"iter"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the counters of one or more route caches, read from
// them when scraped, the same way for both daemons:
//
//	<namespace>_route_cache_events_total{cluster, event}  counter; event is hit,
//	    miss, stale (answered old while the store failed), load (store
//	    calls), load_error, eviction, swept (an entry dropped long after
//	    its TTL, unused), invalidation, screened (a miss
//	    answered not found by the name index, without the store),
//	    background (a store call Peek started) or refused (a Peek that
//	    found nothing and could start no call)
//	<namespace>_route_cache_entries{cluster, kind}        gauge; kind is found or
//	    negative (not-found and challenge entries)
//	<namespace>_index_rebuilds_total{cluster}             counter; full reads of
//	    the store by the name index (the first build included)
//	<namespace>_index_changes_total{cluster}              counter; changes the
//	    name index applied from the change feed without a rebuild
type Collector struct {
	caches   func() iter.Seq2[string, *Cache]
	events   *prometheus.Desc
	entries  *prometheus.Desc
	rebuilds *prometheus.Desc
	changes  *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector for the caches that caches yields at
// each scrape, by cluster name; a nil *Cache (a store not open yet) is
// left out.
func NewCollector(namespace string, caches func() iter.Seq2[string, *Cache]) *Collector {
	return &Collector{
		caches: caches,
		events: prometheus.NewDesc(namespace+"_route_cache_events_total",
			"Route cache events by kind: hit, miss, stale (answered old while the store failed), load (store calls), load_error, eviction, swept (dropped long after its TTL, unused), invalidation, screened (not found by the name index, no store call), background (a store call started without a waiting reader), refused (nothing held and no call could be started).",
			[]string{"cluster", "event"}, nil),
		entries: prometheus.NewDesc(namespace+"_route_cache_entries",
			"Route cache entries held: found routes, and negative (not-found or challenge) entries.",
			[]string{"cluster", "kind"}, nil),
		rebuilds: prometheus.NewDesc(namespace+"_index_rebuilds_total",
			"Full reads of the store by the name index: the first build, and a rebuild when the change feed cannot resume (a change log pruned past the index's position, or a store without one).",
			[]string{"cluster"}, nil),
		changes: prometheus.NewDesc(namespace+"_index_changes_total",
			"Changes the name index applied from the change feed without a rebuild.",
			[]string{"cluster"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	ch <- c.entries
	ch <- c.rebuilds
	ch <- c.changes
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for cluster, cache := range c.caches() {
		if cache == nil {
			continue
		}
		s := cache.Stats()
		for _, e := range [...]struct {
			name string
			v    uint64
		}{
			{"hit", s.Hits}, {"miss", s.Misses}, {"stale", s.Stale}, {"load", s.Loads},
			{"load_error", s.LoadErrors}, {"eviction", s.Evictions}, {"swept", s.Swept}, {"invalidation", s.Invalidation},
			{"screened", s.Screened}, {"background", s.Background}, {"refused", s.Refused},
		} {
			ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(e.v), cluster, e.name)
		}
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Entries), cluster, "found")
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Negative), cluster, "negative")
		if x := cache.Index(); x != nil {
			xs := x.Stats()
			ch <- prometheus.MustNewConstMetric(c.rebuilds, prometheus.CounterValue, float64(xs.Rebuilds), cluster)
			ch <- prometheus.MustNewConstMetric(c.changes, prometheus.CounterValue, float64(xs.Changes), cluster)
		}
	}
}

// One returns the caches function of a single cache, for NewCollector.
func One(cluster string, c *Cache) func() iter.Seq2[string, *Cache] {
	return func() iter.Seq2[string, *Cache] {
		return func(yield func(string, *Cache) bool) { yield(cluster, c) }
	}
}
