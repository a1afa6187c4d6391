// Package store is the data model of replproxy and its backends.
//
// It owns the names (ParseName turns a Host header or a DNS question into a
// Key), the data of one cluster (repls, tombstones, custom domains, DNS-01
// challenges), the Store interface with its two backends — PostgreSQL for
// production and an embedded file for one machine — the change
// notifications that keep caches honest, the route Cache both daemons use,
// and the cluster Registry.
package store
