package proxy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
)

// SetHopSecret replaces the hop secrets (a hop secret file's content, see
// ParseHopKeys) at once for every request that follows. A file that does
// not parse changes nothing.
func (h *Handler) SetHopSecret(data []byte) error {
	keys, err := ParseHopKeys(data)
	if err != nil {
		return err
	}
	h.hop.keys.Store(keys)
	return nil
}

// HopKeyIDs returns the ids of the hop secrets in use, the signing one
// first.
func (h *Handler) HopKeyIDs() []string { return h.hop.keys.Load().IDs() }

// WatchHopSecret reloads h's hop secrets from path whenever its content
// changes (checked every interval; a replaced file, a renamed one and a
// Kubernetes secret's symlink swap alike), until ctx ends. A new content
// that does not parse is logged and the secrets in use are kept.
func WatchHopSecret(ctx context.Context, path string, interval time.Duration, h *Handler, logger *zap.Logger) {
	last, _ := os.ReadFile(path)
	unreadable := false
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			if !unreadable {
				logger.Error("hop secret file unreadable; keeping the secrets in use", zap.String("file", path), zap.Error(err))
				unreadable = true
			}
			continue
		}
		unreadable = false
		if bytes.Equal(data, last) {
			continue
		}
		last = data
		if err := h.SetHopSecret(data); err != nil {
			logger.Error("hop secret file refused; keeping the secrets in use", zap.String("file", path),
				zap.Strings("keys", h.HopKeyIDs()), zap.Error(fmt.Errorf("%s: %w", path, err)))
			continue
		}
		logger.Info("hop secrets reloaded", zap.String("file", path), zap.Strings("keys", h.HopKeyIDs()))
	}
}
