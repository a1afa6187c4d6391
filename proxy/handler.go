package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

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

var _ Routes = (*routecache.Cache)(nil)

// LoopHeader, on a 508, names the cluster the answering proxy's tombstone
// points to.
const LoopHeader = "Replproxy-Loop"

// errStaleForward: the proxy we forwarded to says the repl lives here.
var errStaleForward = errors.New("forwarded on a stale tombstone")

// staleForward handles a forward that came back as a loop pointing here:
// during a move back, this proxy's cache can still hold the tombstone its
// own store just replaced (the notification is milliseconds behind). It
// asks the store again and, when the repl is live here and the request
// has no body to replay, serves it locally; otherwise it passes the 508 on.
func (h *Handler) staleForward(w http.ResponseWriter, r *http.Request, ex *exchange) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 && r.Header.Get("Transfer-Encoding") == "" {
		if route, err := h.routes.Refresh(r.Context(), ex.key); err == nil && route.Kind == store.RouteLocal {
			ex.route = routeLocal
			ex.target = route.Endpoints[int(h.next.Add(1)%uint64(len(route.Endpoints)))]
			ex.upstreamAt = time.Time{}
			h.proxy.ServeHTTP(w, r)
			return
		}
	}
	ex.route = routeLoop
	w.Header().Set(LoopHeader, h.cfg.Cluster)
	writePage(w, r, http.StatusLoopDetected, "Loop Detected",
		"This repl's tombstone here and the cluster it names disagree about where it lives. A request is forwarded at most once.")
}

// Handler is the proxy's http.Handler.
type Handler struct {
	cfg      Config
	routes   Routes
	logger   *zap.Logger
	metrics  *Metrics
	hop      hopSigner
	ids      *requestIDs
	upgrades *upgrades
	upstream *upstream
	proxy    *httputil.ReverseProxy
	buffers  *bufferPool
	next     atomic.Uint64 // round-robin over a repl's endpoints
}

// NewHandler validates cfg and returns a Handler. metrics may be nil.
func NewHandler(cfg Config, routes Routes, metrics *Metrics, logger *zap.Logger) (*Handler, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
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
	h.hop.secret, h.hop.now = cfg.HopSecret, cfg.Now
	h.upgrades = newUpgrades(metrics.upgradedDelta)
	h.buffers = newBufferPool()
	h.upstream = newUpstream(&h.cfg)
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

// UpgradedConns returns the number of open upgraded (WebSocket)
// connections.
func (h *Handler) UpgradedConns() int { return h.upgrades.Len() }

// DrainUpgraded waits until every upgraded connection has closed or ctx is
// done, then closes those still open and returns how many it closed:
// http.Server.Shutdown does not wait for hijacked connections.
func (h *Handler) DrainUpgraded(ctx context.Context) int {
	for h.upgrades.Len() > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	n := h.upgrades.Len()
	if n > 0 {
		h.upgrades.closeAll()
	}
	return n
}

// CloseIdleConnections closes the idle connections to containers and peer
// proxies.
func (h *Handler) CloseIdleConnections() { h.upstream.CloseIdleConnections() }

// exchange is the state of one request, carried in its context from
// ServeHTTP to the ReverseProxy's callbacks.
type exchange struct {
	start       time.Time
	id          string
	route       string // routeLocal, routeForwarded, ...
	replID      string
	target      string // host:port upstream
	trusted     bool   // arrived with a valid hop mark
	source      string // the cluster that forwarded it, when trusted
	upstreamAt  time.Time
	upstreamDur time.Duration
	status      int // set when the response was not written (499)
	rec         *recorder
	key         store.Key
}

type exchangeKey struct{}

// connSlot carries the exchange of an HTTP/1 connection's current request:
// such a connection serves one request at a time, so the Server puts one
// slot in each connection's context (ConnContext) and requests use it
// instead of a context.WithValue and a Request copy each.
type connSlot struct{ ex *exchange }

type connSlotKey struct{}

// withConnSlot is the http.Server's ConnContext.
func withConnSlot(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connSlotKey{}, &connSlot{})
}

// exchangeOf returns the exchange of a request made by ServeHTTP.
func exchangeOf(ctx context.Context) *exchange {
	if ex, ok := ctx.Value(exchangeKey{}).(*exchange); ok {
		return ex
	}
	return ctx.Value(connSlotKey{}).(*connSlot).ex
}

var exchangePool = sync.Pool{New: func() any { return new(exchange) }}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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

	key, err := h.cfg.Zone.ParseName(r.Host)
	if err != nil {
		ex.route = routeBadHost
		writePage(rec, r, http.StatusBadRequest, "Bad Host", err.Error())
		return
	}
	if !key.Routable() {
		ex.route = routeNotFound
		writePage(rec, r, http.StatusNotFound, "Not Found", "There is no repl at "+hostForPage(r.Host)+".")
		return
	}
	route, err := h.routes.Lookup(r.Context(), key)
	if ex.trusted && (err != nil || route.Kind != store.RouteLocal) {
		// A proxy of another cluster forwarded this here because its
		// tombstone says the repl lives here. If our cache disagrees, it
		// may be older than our store (the two clusters' change
		// notifications race during a move): ask the store once.
		route, err = h.routes.Refresh(r.Context(), key)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		ex.route = routeNotFound
		writePage(rec, r, http.StatusNotFound, "Not Found", "There is no repl at "+hostForPage(r.Host)+".")
		return
	case err != nil:
		ex.route = routeUnavailable
		h.logger.Warn("route lookup failed", zap.String("host", r.Host), zap.String("request_id", ex.id), zap.Error(err))
		rec.Header().Set("Retry-After", "5")
		writePage(rec, r, http.StatusServiceUnavailable, "Service Unavailable", "The routing table cannot be read right now; try again in a few seconds.")
		return
	}
	ex.replID, ex.key = route.ReplID, key

	switch route.Kind {
	case store.RouteLocal:
		ex.route = routeLocal
		ex.target = route.Endpoints[int(h.next.Add(1)%uint64(len(route.Endpoints)))]
	case store.RouteTombstone:
		if ex.trusted || route.Cluster == h.cfg.Cluster {
			ex.route = routeLoop
			h.metrics.loop()
			h.logger.Error("forwarding loop: a forwarded request met a tombstone",
				zap.String("host", r.Host), zap.String("repl_id", route.ReplID), zap.String("from", ex.source),
				zap.String("tombstone_to", route.Cluster), zap.String("request_id", ex.id))
			// Say where this cluster's tombstone points: when that is the
			// cluster that forwarded the request, its own route was stale
			// (see staleForward) and it can serve the request itself.
			rec.Header().Set(LoopHeader, route.Cluster)
			writePage(rec, r, http.StatusLoopDetected, "Loop Detected",
				"This repl was forwarded here from cluster "+ex.source+", but this cluster's tombstone sends it on to "+route.Cluster+
					": the clusters disagree about where it lives. A request is forwarded at most once.")
			return
		}
		c, ok := h.cfg.Registry.Cluster(route.Cluster)
		if !ok {
			ex.route = routeForwarded
			h.logger.Error("tombstone names a cluster missing from the registry",
				zap.String("repl_id", route.ReplID), zap.String("cluster", route.Cluster))
			writePage(rec, r, http.StatusBadGateway, "Bad Gateway", "This repl moved to a cluster this proxy does not know.")
			return
		}
		ex.route = routeForwarded
		ex.target = c.Forward
		h.metrics.forward()
	}
	if slot, ok := r.Context().Value(connSlotKey{}).(*connSlot); ok && r.ProtoMajor < 2 {
		slot.ex = ex
		defer func() { slot.ex = nil }()
	} else {
		r = r.WithContext(context.WithValue(r.Context(), exchangeKey{}, ex))
	}
	h.proxy.ServeHTTP(rec, r)
}

// checkHop verifies and strips the hop mark, and settles the request id.
func (h *Handler) checkHop(r *http.Request, ex *exchange) {
	mark := r.Header.Get(HopHeader)
	if mark != "" {
		r.Header.Del(HopHeader)
		src, err := h.hop.verify(mark, hopFields{
			Host:      r.Host,
			For:       strings.Join(r.Header.Values("X-Forwarded-For"), ", "),
			Proto:     r.Header.Get("X-Forwarded-Proto"),
			FHost:     r.Header.Get("X-Forwarded-Host"),
			RequestID: r.Header.Get("X-Request-Id"),
		})
		if err == nil {
			ex.trusted, ex.source = true, src
		} else if ce := h.logger.Check(zapcore.DebugLevel, "hop mark ignored"); ce != nil {
			ce.Write(zap.String("host", r.Host), zap.String("remote", r.RemoteAddr), zap.Error(err))
		}
	}
	if id := r.Header.Get("X-Request-Id"); ex.trusted && validRequestID(id) {
		ex.id = id
	} else {
		ex.id = h.ids.next()
	}
}

// rewrite builds the upstream request: the target, the Host kept, our
// forwarding headers, and a hop mark when forwarding to another cluster.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	ex := exchangeOf(pr.In.Context())
	in, out := pr.In, pr.Out
	out.URL.Scheme = "http"
	out.URL.Host = ex.target
	out.Host = in.Host

	clientIP, _, err := net.SplitHostPort(in.RemoteAddr)
	if err != nil {
		clientIP = in.RemoteAddr
	}
	var xff, proto, fhost string
	if ex.trusted {
		// The proxy that forwarded the request vouched for these (the hop
		// mark signs them) and set them as it would have for its own
		// container; the hop between clusters is not the client's, so the
		// container sees what it would have seen there.
		xff = strings.Join(in.Header.Values("X-Forwarded-For"), ", ")
		proto = in.Header.Get("X-Forwarded-Proto")
		fhost = in.Header.Get("X-Forwarded-Host")
	} else {
		xff = clientIP
		proto = "http"
		if in.TLS != nil {
			proto = "https"
		}
		fhost = in.Host
	}
	oh := out.Header
	oh["X-Forwarded-For"] = []string{xff}
	oh["X-Forwarded-Proto"] = []string{proto}
	oh["X-Forwarded-Host"] = []string{fhost}
	oh["X-Request-Id"] = []string{ex.id}
	via := "1.1 replproxy"
	if in.ProtoMajor == 2 {
		via = "2 replproxy"
	}
	oh["Via"] = append(in.Header.Values("Via"), via)
	oh.Del(HopHeader)

	if ex.route == routeForwarded {
		oh[HopHeader] = []string{h.hop.sign(hopFields{
			Source:    h.cfg.Cluster,
			Host:      out.Host,
			For:       xff,
			Proto:     proto,
			FHost:     fhost,
			RequestID: ex.id,
		})}
	}
	ex.upstreamAt = time.Now()
}

func (h *Handler) modifyResponse(resp *http.Response) error {
	ex := exchangeOf(resp.Request.Context())
	ex.upstreamDur = time.Since(ex.upstreamAt)
	h.metrics.upstreamTime(ex.route, ex.upstreamDur)
	resp.Header.Set("X-Request-Id", ex.id)
	if ex.route == routeForwarded && resp.StatusCode == http.StatusLoopDetected && resp.Header.Get(LoopHeader) == h.cfg.Cluster {
		return errStaleForward
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return h.takeOver(ex, resp)
	}
	return nil
}

// upstreamFailed maps an upstream failure to a status: the client went
// away → 499 (logged, nothing sent, not the upstream's fault); a timeout
// → 504; anything else (refused, unreachable, reset) → 502.
func (h *Handler) upstreamFailed(w http.ResponseWriter, r *http.Request, err error) {
	ex := exchangeOf(r.Context())
	if errors.Is(err, errUpgraded) {
		return
	}
	if errors.Is(err, errStaleForward) {
		h.staleForward(w, r, ex)
		return
	}
	if !ex.upstreamAt.IsZero() {
		ex.upstreamDur = time.Since(ex.upstreamAt)
	}
	if r.Context().Err() != nil {
		ex.status = StatusClientClosedRequest
		return
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		h.metrics.upstreamError(ex.route, "timeout")
		h.logger.Warn("upstream timed out", zap.String("host", r.Host), zap.String("upstream", ex.target), zap.String("request_id", ex.id), zap.Error(err))
		writePage(w, r, http.StatusGatewayTimeout, "Gateway Timeout", "The repl did not answer in time.")
	default:
		kind := "other"
		if isRefused(err) {
			kind = "refused"
		}
		h.metrics.upstreamError(ex.route, kind)
		h.logger.Warn("upstream failed", zap.String("host", r.Host), zap.String("upstream", ex.target), zap.String("request_id", ex.id), zap.Error(err))
		writePage(w, r, http.StatusBadGateway, "Bad Gateway", "The repl could not be reached.")
	}
}

func isRefused(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// finish logs the request and counts it.
func (h *Handler) finish(rec *recorder, r *http.Request, ex *exchange) {
	status := rec.status
	if ex.status != 0 {
		status = ex.status
	} else if status == 0 {
		status = http.StatusOK
	}
	h.metrics.request(ex.route, status)
	if !h.cfg.AccessLog {
		return
	}
	if ce := h.logger.Check(zapcore.InfoLevel, "request"); ce != nil {
		ce.Write(
			zap.String("host", r.Host),
			zap.String("method", r.Method),
			zap.String("path", r.URL.Path),
			zap.String("proto", r.Proto),
			zap.String("remote", r.RemoteAddr),
			zap.String("repl_id", ex.replID),
			zap.String("route", ex.route),
			zap.Int("status", status),
			zap.Int64("bytes", rec.bytes),
			zap.Duration("duration", time.Since(ex.start)),
			zap.Duration("upstream_time", ex.upstreamDur),
			zap.String("upstream", ex.target),
			zap.String("request_id", ex.id),
		)
	}
}

// hostForPage shortens a Host for an error page.
func hostForPage(host string) string {
	if len(host) > 100 {
		return host[:100] + "…"
	}
	return host
}
