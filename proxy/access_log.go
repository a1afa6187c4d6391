package proxy

import (
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// finish counts the request and, with Config.AccessLog, logs it.
func (h *Handler) finish(rec *recorder, r *http.Request, ex *exchange) {
	status := rec.status
	if ex.status != 0 {
		status = ex.status
	} else if status == 0 {
		status = http.StatusOK
	}
	h.metrics.request(ex.route, status)
	if h.activity != nil && ex.route == routeLocal {
		h.activity.touch(ex.replID, time.Now())
	}
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
