package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/http/httputil"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/ratelog"
	"github.com/replproxy/replproxy/store"
)

// Handler is the proxy's http.Handler: it resolves each request's Host
// (route.go), reverse-proxies to the repl's container or forwards to the
// cluster a tombstone names (forward.go, rewrite.go), and answers the rest
// with an error page (pages.go, errors.go).
type Handler struct {
	cfg      Config
	registry atomic.Pointer[cluster.Registry] // cfg.Registry, then what SetRegistry put (registry.go)
	routes   Routes
	logger   *zap.Logger
	metrics  *Metrics
	hop      hopSigner
	ids      *requestIDs
	upgrades *upgrades
	upstream *upstream
	wakes    *wakes    // nil without Config.Wakes
	activity *activity // nil without Config.Wakes
	// Warnings any request can cause, at most one a second each (warn).
	lookupWarns, upstreamWarns, clientWarns *ratelog.Limiter
	proxy                                   *httputil.ReverseProxy
	buffers                                 *bufferPool
	next                                    atomic.Uint64 // round-robin over a repl's endpoints
}

// NewHandler validates cfg and returns a Handler over routes. metrics may
// be nil; a nil now (the clock of hop marks) means time.Now, a nil logger
// logs nothing.
func NewHandler(cfg Config, routes Routes, metrics *Metrics, now func() time.Time, logger *zap.Logger) (*Handler, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if routes == nil {
		return nil, errors.New("proxy: no routes")
	}
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	h := &Handler{
		cfg:     cfg,
		routes:  routes,
		logger:  logger,
		metrics: metrics,
		ids:     newRequestIDs(),
	}
	h.registry.Store(cfg.Registry)
	h.hop.keys.Store(cfg.hopKeys)
	h.hop.now = now
	h.upgrades = newUpgrades(metrics.upgradedDelta)
	h.buffers = newBufferPool()
	h.upstream = newUpstream(&h.cfg, h.clusterAt)
	if cfg.Wakes != nil {
		h.wakes = newWakes(h)
		h.activity = newActivity(cfg.MaxActivity, metrics)
	}
	h.lookupWarns, h.upstreamWarns, h.clientWarns = ratelog.New(time.Second), ratelog.New(time.Second), ratelog.New(time.Second)
	h.proxy = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      h.upstream,
		BufferPool:     h.buffers,
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.upstreamFailed,
		ErrorLog:       zap.NewStdLog(logger.Named("reverseproxy")),
	}
	return h, nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Context().Err() != nil {
		// Cancelled before it began (an HTTP/2 stream reset at once): no
		// route, no upstream, no access-log line; counted, and against
		// the connection's budget.
		h.metrics.cancelledEarly()
		h.cancelled(r)
		return
	}
	ex := exchangePool.Get().(*exchange)
	rec := newRecorder(w, h.upgrades)
	*ex = exchange{start: time.Now(), rec: rec}
	defer func() {
		h.finish(rec, r, ex)
		rec.release()
		*ex = exchange{}
		exchangePool.Put(ex)
	}()

	h.checkHop(r, ex)
	rec.Header().Set("X-Request-Id", ex.id)
	route, ok := h.route(rec, r, ex)
	if !ok {
		return
	}
	if route.Kind == store.RouteLocal && route.Asleep {
		// Held until the repl is up (a body stays unread meanwhile, and
		// is streamed to the container then), or answered.
		if route, ok = h.awaitWake(rec, r, ex, route); !ok {
			return
		}
	}
	switch route.Kind {
	case store.RouteLocal:
		ex.route = routeLocal
		if len(route.Endpoints) == 0 {
			rec.Header().Set("Retry-After", "5")
			writePage(rec, r, http.StatusServiceUnavailable, "Service Unavailable", "This repl has no running container.")
			return
		}
		ex.target = h.endpoint(route)
	case store.RouteTombstone:
		if !h.forward(rec, r, ex, route) {
			return
		}
	}
	if slot, ok := r.Context().Value(connSlotKey{}).(*connSlot); ok && r.ProtoMajor < 2 {
		slot.ex = ex
		defer func() { slot.ex = nil }()
	} else {
		r = r.WithContext(context.WithValue(r.Context(), exchangeKey{}, ex))
	}
	if r.Body != nil && r.Body != http.NoBody {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		r = r.WithContext(ctx)
		fb := newFloorBody(rec, r, h.cfg.BodyWindow, cancel)
		defer fb.finish() // before rec goes back to its pool
		r.Body = fb
	}
	if ex.route == routeForwarded && r.Body != nil && r.Body != http.NoBody && !h.holdForward(rec, r, ex) {
		return
	}
	ex.in = r
	h.proxy.ServeHTTP(rec, r)
}

// cancelled counts a request its client cancelled against its
// connection's budget, and closes the connection when it is spent.
func (h *Handler) cancelled(r *http.Request) {
	slot, ok := r.Context().Value(connSlotKey{}).(*connSlot)
	if !ok || slot.conn == nil || !slot.cancel(time.Now()) {
		return
	}
	h.metrics.resetClosed()
	h.warn(h.clientWarns, "client cancels streams faster than allowed; closing its connection",
		zap.String("remote", r.RemoteAddr), zap.String("proto", r.Proto))
	_ = slot.conn.Close()
}

// CloseIdleConnections closes the idle connections to containers and peer
// proxies.
func (h *Handler) CloseIdleConnections() { h.upstream.CloseIdleConnections() }
