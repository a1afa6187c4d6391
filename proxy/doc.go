// Package proxy is replproxy's request path: it parses the Host of each
// request into a store.Key, resolves it through the route cache, and
// reverse-proxies to the repl's container, forwards to the cluster a
// tombstone names (signing a hop mark the next proxy verifies), or answers
// with a clear error page. A Server runs a Handler on its listeners, with
// a static certificate or certificates on demand (OnDemand, implemented by
// package proxy/ondemand), and the admin endpoints.
package proxy
