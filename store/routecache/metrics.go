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
//	    calls), load_error, eviction, invalidation, screened (a miss
//	    answered not found by the name index, without the store),
//	    background (a store call Peek started) or refused (a Peek that
//	    found nothing and could start no call)
//	<namespace>_route_cache_entries{cluster, kind}        gauge; kind is found or
//	    negative (not-found and challenge entries)
type Collector struct {
	caches  func() iter.Seq2[string, *Cache]
	events  *prometheus.Desc
	entries *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector for the caches that caches yields at
// each scrape, by cluster name; a nil *Cache (a store not open yet) is
// left out.
func NewCollector(namespace string, caches func() iter.Seq2[string, *Cache]) *Collector {
	return &Collector{
		caches: caches,
		events: prometheus.NewDesc(namespace+"_route_cache_events_total",
			"Route cache events by kind: hit, miss, stale (answered old while the store failed), load (store calls), load_error, eviction, invalidation, screened (not found by the name index, no store call), background (a store call started without a waiting reader), refused (nothing held and no call could be started).",
			[]string{"cluster", "event"}, nil),
		entries: prometheus.NewDesc(namespace+"_route_cache_entries",
			"Route cache entries held: found routes, and negative (not-found or challenge) entries.",
			[]string{"cluster", "kind"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.events
	ch <- c.entries
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
			{"load_error", s.LoadErrors}, {"eviction", s.Evictions}, {"invalidation", s.Invalidation},
			{"screened", s.Screened}, {"background", s.Background}, {"refused", s.Refused},
		} {
			ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(e.v), cluster, e.name)
		}
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Entries), cluster, "found")
		ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(s.Negative), cluster, "negative")
	}
}

// One returns the caches function of a single cache, for NewCollector.
func One(cluster string, c *Cache) func() iter.Seq2[string, *Cache] {
	return func() iter.Seq2[string, *Cache] {
		return func(yield func(string, *Cache) bool) { yield(cluster, c) }
	}
}
