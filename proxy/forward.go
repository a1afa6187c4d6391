package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
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
	c, ok := h.registry.Load().Cluster(route.Cluster)
	if !ok {
		ex.route = routeForwarded
		h.logger.Error("tombstone names a cluster missing from the registry",
			zap.String("repl_id", route.ReplID), zap.String("cluster", route.Cluster))
		writePage(w, r, http.StatusBadGateway, "Bad Gateway", "This repl moved to a cluster this proxy does not know.")
		return false
	}
	ex.route = routeForwarded
	ex.target = c.Forward
	ex.fwdGen = route.Generation
	h.metrics.forward()
	return true
}

// errStaleForward: the proxy we forwarded to says the repl lives here.
var errStaleForward = errors.New("forwarded on a stale tombstone")

// staleForward handles a forward that came back as a loop pointing here:
// during a move back, this proxy's cache can still hold the tombstone its
// own store just replaced (the notification is milliseconds behind, or
// lost with the change feed). It asks the store again and, when the repl
// is live here and the request's body is still at hand (held, or not sent
// yet: holdForward), serves it locally; otherwise it passes the 508 on.
func (h *Handler) staleForward(w http.ResponseWriter, ex *exchange) {
	r := ex.in // not the rewritten request: it is dispatched again from the start
	if body, ok := ex.unsentBody(); ok {
		route, err := h.routes.Refresh(r.Context(), ex.key)
		// The peer's tombstone names this cluster, ours named the peer at
		// fwdGen: the repl came back here at a later generation, and a
		// route of fwdGen or lower is older than the store.
		route, err = h.refreshStale(r.Context(), ex.key, ex.fwdGen+1, route, err)
		switch {
		case err == nil && route.Kind == store.RouteLocal:
			r.Body = body
			ex.body, ex.sent = nil, nil
			ex.route = routeLocal
			ex.target = h.endpoint(route)
			ex.upstreamAt = time.Time{}
			h.proxy.ServeHTTP(w, r)
			return
		case err == nil && route.Kind == store.RouteTombstone && route.Generation > ex.fwdGen && route.Cluster != h.cfg.Cluster:
			// A newer tombstone than the one the request went on: a move
			// ran meanwhile (or this proxy's cache had not seen its last
			// repoint). Send it where that one points, once
			// (model/move.pml checks that this suffices).
			if c, ok := h.registry.Load().Cluster(route.Cluster); ok {
				r.Body = body
				if ex.sent != nil { // after the next peer's 100 Continue again
					ex.sent = &sentBody{body: ex.sent.body}
					r.Body = ex.sent
				}
				ex.reforwarded = true
				ex.target, ex.fwdGen = c.Forward, route.Generation
				ex.upstreamAt = time.Time{}
				h.proxy.ServeHTTP(w, r)
				return
			}
		}
	}
	// The peer's tombstone names this cluster and ours names the peer:
	// a real loop, and only this proxy can tell (the peer logged a bounce).
	ex.route = routeLoop
	h.metrics.loop()
	h.logger.Error("forwarding loop: the cluster a tombstone names answered 508, and this cluster's store agrees with the tombstone",
		zap.String("host", r.Host), zap.String("repl_id", ex.replID), zap.String("request_id", ex.id))
	w.Header().Set(LoopHeader, h.hop.signLoop(h.cfg.Cluster, ex.id))
	writePage(w, r, http.StatusLoopDetected, "Loop Detected",
		"This repl's tombstone here and the cluster it names disagree about where it lives. A request is forwarded at most once.")
}

// replayBody is the largest body a forwarded request has held in memory
// (holdForward): most API requests and forms, and at most this much per
// request in flight.
const replayBody = 16 << 10

// holdForward makes sure a forwarded request's body can still be served
// here if the peer answers that its tombstone points back (staleForward):
// a small body of known length is read and held; any other is sent only
// after the peer's 100 Continue (Expect, set by rewrite), so that the
// peer's 508 arrives before a byte of it has left. It reports false when
// the client's body could not be read (answered 400).
func (h *Handler) holdForward(w http.ResponseWriter, r *http.Request, ex *exchange) bool {
	if r.ContentLength > 0 && r.ContentLength <= replayBody {
		body, err := io.ReadAll(io.LimitReader(r.Body, r.ContentLength))
		if err != nil || int64(len(body)) != r.ContentLength {
			ex.route = routeForwarded
			writePage(w, r, http.StatusBadRequest, "Bad Request", "The request body ended before its Content-Length.")
			return false
		}
		ex.body = body
		r.Body = io.NopCloser(bytes.NewReader(body))
		return true
	}
	ex.sent = &sentBody{body: r.Body}
	r.Body = ex.sent
	return true
}

// unsentBody returns a body for a second dispatch of ex.in, when it has
// one to give: none, the held one, or the whole of one not sent yet.
func (ex *exchange) unsentBody() (io.ReadCloser, bool) {
	r := ex.in
	switch {
	case ex.body != nil:
		return io.NopCloser(bytes.NewReader(ex.body)), true
	case ex.sent != nil:
		return ex.sent.body, ex.sent.n.Load() == 0
	case r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 && r.Header.Get("Transfer-Encoding") == "":
		return r.Body, true
	}
	return nil, false
}

// sentBody passes a forwarded request's body to the peer, counting what
// was read of it; closing it leaves the client's body open (the server
// closes that), for a second dispatch.
type sentBody struct {
	body io.ReadCloser
	n    atomic.Int64
}

func (b *sentBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *sentBody) Close() error { return nil }
