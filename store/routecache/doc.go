// Package routecache is what both daemons put in front of a cluster's
// store on their request path: the route Cache (found and not-found
// entries, dropped at once by the store's change notifications, bounded by
// a TTL and by size, one backend call per key at a time, stale entries
// served while the backend is down), the name Index beside it (every name
// the cluster hosts, in memory, so that names nobody hosts cost no query;
// NewIndexed builds both, kept current from one Watch), and the
// Prometheus Collector both daemons export them with.
package routecache
