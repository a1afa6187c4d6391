// Package backoff is the waiting between retries that the daemons' store
// loops share: a jittered delay, and a sleep that a context cuts short.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Jitter returns a random duration between d/2 and d, so that many
// retriers do not retry in step.
func Jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }

// Sleep waits d, or less when ctx is done; it reports whether d passed
// (ctx is still live).
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
