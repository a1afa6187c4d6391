package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/replproxy/replproxy/internal/ratelog"
	"go.uber.org/zap"
)

// StatusClientClosedRequest is logged (never sent) when the client went
// away before the response, as nginx does.
const StatusClientClosedRequest = 499

// upstreamFailed maps an upstream failure to a status: the client went
// away → 499 (logged; the connection is closed, nothing sent; not the
// upstream's fault); a timeout
// → 504; anything else (refused, unreachable, reset) → 502.
func (h *Handler) upstreamFailed(w http.ResponseWriter, r *http.Request, err error) {
	ex := exchangeOf(r.Context())
	if errors.Is(err, errUpgraded) {
		return
	}
	if errors.Is(err, errStaleForward) {
		h.staleForward(w, ex)
		return
	}
	if !ex.upstreamAt.IsZero() {
		ex.upstreamDur = time.Since(ex.upstreamAt)
	}
	if r.Context().Err() != nil {
		// The client went away, or half-closed its side (net/http cannot
		// tell the two apart). Either way nothing the container said is
		// there to pass on, and returning would make net/http answer an
		// empty 200 in the container's name: abort the response instead.
		ex.status = StatusClientClosedRequest
		h.cancelled(r)
		panic(http.ErrAbortHandler)
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		h.metrics.upstreamError(ex.route, "timeout")
		h.warn(h.upstreamWarns, "upstream timed out", zap.String("host", r.Host), zap.String("upstream", ex.target), zap.String("request_id", ex.id), zap.Error(err))
		writePage(w, r, http.StatusGatewayTimeout, "Gateway Timeout", "The repl did not answer in time.")
	default:
		kind := "other"
		if isRefused(err) {
			kind = "refused"
		}
		h.metrics.upstreamError(ex.route, kind)
		h.warn(h.upstreamWarns, "upstream failed", zap.String("host", r.Host), zap.String("upstream", ex.target), zap.String("request_id", ex.id), zap.Error(err))
		writePage(w, r, http.StatusBadGateway, "Bad Gateway", "The repl could not be reached.")
	}
}

func isRefused(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// warn writes a warning a request caused, at most one a second per kind
// (l): any client can cause as many as it likes. A line says how many of
// its kind were held back since the one before.
func (h *Handler) warn(l *ratelog.Limiter, msg string, fields ...zap.Field) {
	ok, held := l.Allow(time.Now())
	if !ok {
		return
	}
	if held > 0 {
		fields = append(fields, zap.Int64("suppressed", held))
	}
	h.logger.Warn(msg, fields...)
}
