package proxy

import (
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/replproxy/replproxy/store"
)

// LoopHeader, on a 508, names the cluster the answering proxy's tombstone
// points to, signed for the request (hopSigner.signLoop). A proxy acts on
// it only on the answer to a request it forwarded, and only when it
// verifies; it is stripped from every response a container sends.
const LoopHeader = "Replproxy-Loop"

// forward aims a request for a repl that moved at the forward address of
// the cluster its tombstone names (rewrite signs the hop mark). A request
// that was forwarded here already, or a tombstone naming this cluster, is
// a loop: it answers 508 and returns false; so it does, with a 502, when
// the registry does not know the cluster.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, ex *exchange, route store.Route) bool {
	if ex.trusted || route.Cluster == h.cfg.Cluster {
		if ex.trusted && route.Cluster == ex.source {
			// The tombstone sends the request back where it came from:
			// that proxy's route is a moment stale (a move back), and it
			// serves the request itself on this answer (staleForward).
			// Not a loop: counted and logged as a bounce.
			ex.route = routeBounced
			if ce := h.logger.Check(zapcore.DebugLevel, "forwarded request bounced back to its source"); ce != nil {
				ce.Write(zap.String("host", r.Host), zap.String("repl_id", route.ReplID), zap.String("from", ex.source), zap.String("request_id", ex.id))
			}
		} else {
			ex.route = routeLoop
			h.metrics.loop()
			h.logger.Error("forwarding loop: a forwarded request met a tombstone",
				zap.String("host", r.Host), zap.String("repl_id", route.ReplID), zap.String("from", ex.source),
				zap.String("tombstone_to", route.Cluster), zap.String("request_id", ex.id))
		}
		// Say where this cluster's tombstone points: when that is the
		// cluster that forwarded the request, its own route was stale
		// (see staleForward) and it can serve the request itself.
		w.Header().Set(LoopHeader, h.hop.signLoop(route.Cluster, ex.id))
		writePage(w, r, http.StatusLoopDetected, "Loop Detected",
			"This repl was forwarded here from cluster "+ex.source+", but this cluster's tombstone sends it on to "+route.Cluster+
				": the clusters disagree about where it lives. A request is forwarded at most once.")
		return false
	}
	c, ok := h.cfg.Registry.Cluster(route.Cluster)
	if !ok {
		ex.route = routeForwarded
		h.logger.Error("tombstone names a cluster missing from the registry",
			zap.String("repl_id", route.ReplID), zap.String("cluster", route.Cluster))
		writePage(w, r, http.StatusBadGateway, "Bad Gateway", "This repl moved to a cluster this proxy does not know.")
		return false
	}
	ex.route = routeForwarded
	ex.target = c.Forward
	h.metrics.forward()
	return true
}

// errStaleForward: the proxy we forwarded to says the repl lives here.
var errStaleForward = errors.New("forwarded on a stale tombstone")

// staleForward handles a forward that came back as a loop pointing here:
// during a move back, this proxy's cache can still hold the tombstone its
// own store just replaced (the notification is milliseconds behind). It
// asks the store again and, when the repl is live here and the request
// has no body to replay, serves it locally; otherwise it passes the 508 on.
func (h *Handler) staleForward(w http.ResponseWriter, ex *exchange) {
	r := ex.in // not the rewritten request: it is dispatched again from the start
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 && r.Header.Get("Transfer-Encoding") == "" {
		if route, err := h.routes.Refresh(r.Context(), ex.key); err == nil && route.Kind == store.RouteLocal {
			ex.route = routeLocal
			ex.target = h.endpoint(route)
			ex.upstreamAt = time.Time{}
			h.proxy.ServeHTTP(w, r)
			return
		}
	}
	// The peer's tombstone names this cluster and ours names the peer:
	// a real loop, and only this proxy can tell (the peer logged a bounce).
	ex.route = routeLoop
	h.metrics.loop()
	h.logger.Error("forwarding loop: the cluster a tombstone names sends the request back",
		zap.String("host", r.Host), zap.String("repl_id", ex.replID), zap.String("request_id", ex.id))
	w.Header().Set(LoopHeader, h.hop.signLoop(h.cfg.Cluster, ex.id))
	writePage(w, r, http.StatusLoopDetected, "Loop Detected",
		"This repl's tombstone here and the cluster it names disagree about where it lives. A request is forwarded at most once.")
}
