package proxy

import (
	"context"
	"errors"
	"net/http"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

// Routes resolves routable keys: the route cache (routecache.Cache) in
// production.
type Routes interface {
	// Lookup resolves k, from the cache when it can.
	Lookup(ctx context.Context, k store.Key) (store.Route, error)
	// Refresh drops what is cached for k and asks the store again. The
	// handler calls it only when the cached route is in doubt: a request
	// forwarded here that the cache would not serve locally, and a forward
	// that came back as a loop naming this cluster.
	Refresh(ctx context.Context, k store.Key) (store.Route, error)
}

// staleRefresher is a Routes that can refresh a route proven stale past
// Refresh's rate limit (routecache.Cache.RefreshStale): the handler uses it
// when one is there.
type staleRefresher interface {
	RefreshStale(ctx context.Context, k store.Key, gen int64) (store.Route, error)
}

var _ staleRefresher = (*routecache.Cache)(nil)

// refreshStale asks for k again when the route in hand is older than
// generation gen (or there is none): the repl provably lives here at gen or
// later (see routecache.Cache.RefreshStale). Otherwise, or without a
// staleRefresher, it returns what it was given.
func (h *Handler) refreshStale(ctx context.Context, k store.Key, gen int64, route store.Route, err error) (store.Route, error) {
	sr, ok := h.routes.(staleRefresher)
	behind := errors.Is(err, store.ErrNotFound) || err == nil && route.Kind != store.RouteLocal && route.Generation < gen
	if !ok || gen <= 0 || !behind {
		return route, err
	}
	return sr.RefreshStale(ctx, k, gen)
}

var _ Routes = (*routecache.Cache)(nil)

// Route kinds, as logged and as the "route" label of the metrics.
const (
	routeLocal       = "local"
	routeForwarded   = "forwarded"
	routeNotFound    = "not-found"
	routeBadHost     = "bad-host"
	routeLoop        = "loop"
	routeBounced     = "bounced" // a forwarded request sent back to its source (a move back)
	routeUnavailable = "unavailable"
	routeAsleep      = "asleep" // answered while its repl slept (wake.go)
)

// route resolves the request's Host. When there is nothing to proxy to it
// answers (400, 404 or 503) and returns false.
func (h *Handler) route(w http.ResponseWriter, r *http.Request, ex *exchange) (store.Route, bool) {
	key, err := h.cfg.Zone.ParseName(r.Host)
	if err != nil {
		ex.route = routeBadHost
		writePage(w, r, http.StatusBadRequest, "Bad Host", err.Error())
		return store.Route{}, false
	}
	if !key.Routable() {
		ex.route = routeNotFound
		writeNotFound(w, r)
		return store.Route{}, false
	}
	route, err := h.routes.Lookup(r.Context(), key)
	if ex.trusted && (err != nil || route.Kind != store.RouteLocal) {
		// A proxy of another cluster forwarded this here because its
		// tombstone says the repl lives here. If our cache disagrees, it
		// may be older than our store (the two clusters' change
		// notifications race during a move): ask the store once.
		route, err = h.routes.Refresh(r.Context(), key)
		// The source forwarded on a tombstone of a generation above the
		// route held here: the change feed is late or lost, and Refresh's
		// once a second may have answered from the cache.
		route, err = h.refreshStale(r.Context(), key, ex.hopGen, route, err)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		ex.route = routeNotFound
		writeNotFound(w, r)
		return store.Route{}, false
	case err != nil && r.Context().Err() != nil:
		// The client went away (or half-closed) during the lookup: not
		// the store's failure, and nothing to answer (see upstreamFailed).
		ex.route, ex.status = routeUnavailable, StatusClientClosedRequest
		h.cancelled(r)
		panic(http.ErrAbortHandler)
	case err != nil:
		ex.route = routeUnavailable
		h.warn(h.lookupWarns, "route lookup failed", zap.String("host", r.Host), zap.String("request_id", ex.id), zap.Error(err))
		w.Header().Set("Retry-After", "5")
		writePage(w, r, http.StatusServiceUnavailable, "Service Unavailable", "The routing table cannot be read right now; try again in a few seconds.")
		return store.Route{}, false
	}
	ex.replID, ex.key = route.ReplID, key
	return route, true
}

// endpoint picks one of a local route's endpoints, round-robin.
func (h *Handler) endpoint(route store.Route) string {
	return route.Endpoints[int(h.next.Add(1)%uint64(len(route.Endpoints)))]
}
