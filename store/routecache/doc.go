// Package routecache is the route cache both daemons put in front of a
// store.Reader: found and not-found entries, dropped at once by the
// store's change notifications (Run), bounded by a TTL and by size, one
// backend call per key at a time (singleflight), and stale entries served
// while the backend is down.
package routecache
