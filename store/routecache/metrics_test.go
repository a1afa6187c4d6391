package routecache_test

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

func TestCollector(t *testing.T) {
	r := newCountingReader()
	k := store.ReplKey("alice", "blog")
	r.set(k, store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:1"}})
	c := newTestCache(t, r, routecache.Config{}, nil)
	for range 3 {
		if _, err := c.Lookup(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Lookup(context.Background(), store.ReplKey("bob", "nope")); err == nil {
		t.Fatal("lookup of an unknown name: no error")
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(routecache.NewCollector("replproxy", routecache.One("east", c)))
	want := `
# HELP replproxy_route_cache_entries Route cache entries held: found routes, and negative (not-found or challenge) entries.
# TYPE replproxy_route_cache_entries gauge
replproxy_route_cache_entries{cluster="east",kind="found"} 1
replproxy_route_cache_entries{cluster="east",kind="negative"} 1
# HELP replproxy_route_cache_events_total Route cache events by kind: hit, miss, stale (answered old while the store failed), load (store calls), load_error, eviction, swept (dropped long after its TTL, unused), invalidation, screened (not found by the name index, no store call), background (a store call started without a waiting reader), refused (nothing held and no call could be started).
# TYPE replproxy_route_cache_events_total counter
replproxy_route_cache_events_total{cluster="east",event="background"} 0
replproxy_route_cache_events_total{cluster="east",event="eviction"} 0
replproxy_route_cache_events_total{cluster="east",event="hit"} 2
replproxy_route_cache_events_total{cluster="east",event="invalidation"} 0
replproxy_route_cache_events_total{cluster="east",event="load"} 2
replproxy_route_cache_events_total{cluster="east",event="load_error"} 0
replproxy_route_cache_events_total{cluster="east",event="miss"} 2
replproxy_route_cache_events_total{cluster="east",event="refused"} 0
replproxy_route_cache_events_total{cluster="east",event="screened"} 0
replproxy_route_cache_events_total{cluster="east",event="stale"} 0
replproxy_route_cache_events_total{cluster="east",event="swept"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
