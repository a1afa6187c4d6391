// Package ratelog keeps a log line that a request can cause from being
// written once per request: a Limiter lets one line through per interval
// and counts those it held back, so that the next line can say how many
// there were. A flood of bad requests then costs a line a second, not a
// line each.
package ratelog

import (
	"sync/atomic"
	"time"
)

// Limiter lets one line through per interval. Its zero value is not
// usable; make one with New. It is safe for concurrent use.
type Limiter struct {
	every int64        // nanoseconds
	last  atomic.Int64 // unix nanoseconds of the last line let through
	held  atomic.Int64 // lines held back since
}

// New returns a limiter of one line per every.
func New(every time.Duration) *Limiter { return &Limiter{every: int64(every)} }

// Allow reports whether a line may be written at now and, when it may, how
// many lines were held back since the last one (to log with it).
func (l *Limiter) Allow(now time.Time) (ok bool, suppressed int64) {
	t := now.UnixNano()
	last := l.last.Load()
	if t-last < l.every || !l.last.CompareAndSwap(last, t) {
		l.held.Add(1)
		return false, 0
	}
	return true, l.held.Swap(0)
}
