package proxy

import (
	"log"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// serverErrorLog is an http.Server's ErrorLog. Failed TLS handshakes
// (scanners, clients that hang up, names without a certificate) happen all
// day on a public listener: they go to debug. Everything else the server
// reports (a panic in a handler, an accept error) is a warning.
func serverErrorLog(logger *zap.Logger) *log.Logger {
	return log.New(errorLogWriter{logger}, "", 0)
}

type errorLogWriter struct{ logger *zap.Logger }

func (w errorLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	level := zapcore.WarnLevel
	if strings.Contains(msg, "TLS handshake error") {
		level = zapcore.DebugLevel
	}
	if ce := w.logger.Check(level, msg); ce != nil {
		ce.Write()
	}
	return len(p), nil
}
