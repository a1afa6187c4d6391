// Package store is replproxy's domain: the names (a Zone's ParseName turns
// a Host header or a DNS question into a Key), the data of one cluster
// (Repl, Tombstone, Domain, Challenge), what a name routes to (Route, and
// Prefer, the one rule for which row owns a name), the change
// notifications that keep caches honest (Event), the rules every write
// obeys (CheckRepl, CheckChallenge, ...), and the interfaces the rest of
// the project consumes: Reader on the request path, Store for the whole
// data model, Certs for the shared certificate storage.
//
// The backends live apart: store/postgres (production) and store/embedded
// (one file, no server); cluster.Open picks one from a store address.
// store/storetest is the contract both pass; store/routecache is the
// cache both daemons put in front of a Reader.
//
// A worked example, from a Host header to a route:
//
//	zone, _ := store.NewZone("repl.test")
//	key, err := zone.ParseName("Blog.Alice.repl.test:8080")
//	if err != nil {
//		return err // a *NameError: 400, and no lookup is made
//	}
//	route, err := reader.Lookup(ctx, key) // store.ReplKey("alice", "blog")
//	switch {
//	case errors.Is(err, store.ErrNotFound): // 404
//	case err != nil: // 503
//	case route.Kind == store.RouteLocal: // proxy to route.Endpoints
//	case route.Kind == store.RouteTombstone: // forward to route.Cluster
//	}
package store
