package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

// readyProbe is a key no repl has: looking it up tells whether the store
// answers, at the cost of one indexed query.
var readyProbe = store.ReplIDKey("readyz-probe")

// Ready returns the /readyz check: ready when the store answers, or when
// the cache holds routes it can serve stale while the store is away.
func Ready(st store.Reader, cache *routecache.Cache) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := st.Lookup(ctx, readyProbe)
		if err == nil || errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if cache.Stats().Entries > 0 {
			return nil // serving known routes stale
		}
		return fmt.Errorf("store unreachable and no routes cached: %w", err)
	}
}
