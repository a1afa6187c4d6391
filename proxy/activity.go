package proxy

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"
)

// activity records when each repl last served a request through this
// proxy, and which have upgraded connections open (active while open), for
// the store (Waker.RecordActivity): the container manager puts repls that
// stayed idle to sleep. It holds at most max repls between two flushes; a
// repl beyond that is not recorded (counted) until the next flush empties
// the map.
type activity struct {
	mu   sync.Mutex
	last map[string]time.Time
	open map[string]int // upgraded connections open, by repl id
	max  int
	m    *Metrics
}

func newActivity(max int, m *Metrics) *activity {
	return &activity{last: make(map[string]time.Time), open: make(map[string]int), max: max, m: m}
}

// touch records that replID served a request at now.
func (a *activity) touch(replID string, now time.Time) {
	a.mu.Lock()
	if _, ok := a.last[replID]; ok || len(a.last) < a.max {
		a.last[replID] = now
		a.mu.Unlock()
		return
	}
	a.mu.Unlock()
	a.m.activityDropped()
}

// opened counts an upgraded connection of replID as open.
func (a *activity) opened(replID string) {
	a.mu.Lock()
	a.open[replID]++
	a.mu.Unlock()
}

// closed counts it closed, at now: the repl was active until then.
func (a *activity) closed(replID string, now time.Time) {
	a.mu.Lock()
	if a.open[replID]--; a.open[replID] <= 0 {
		delete(a.open, replID)
	}
	a.mu.Unlock()
	a.touch(replID, now)
}

// take returns what was recorded since the last take, with every repl that
// has an upgraded connection open active at now, and starts afresh.
func (a *activity) take(now time.Time) map[string]time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.open {
		a.last[id] = now
	}
	if len(a.last) == 0 {
		return nil
	}
	out := a.last
	a.last = make(map[string]time.Time, len(out))
	return out
}

// putBack returns a batch whose flush failed, for the next one, keeping
// the later time of a repl recorded again meanwhile, within max.
func (a *activity) putBack(batch map[string]time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, t := range batch {
		if cur, ok := a.last[id]; ok {
			if t.After(cur) {
				a.last[id] = t
			}
		} else if len(a.last) < a.max {
			a.last[id] = t
		}
	}
}

// RunActivity flushes the repls' activity to Config.Wakes every
// ActivityFlush, in one RecordActivity call a flush, until ctx is done;
// then it flushes once more and returns. Server.Serve runs it. Without
// Config.Wakes it returns at once.
func (h *Handler) RunActivity(ctx context.Context) {
	if h.activity == nil {
		return
	}
	tick := time.NewTicker(h.cfg.ActivityFlush)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			h.flushActivity(fctx, false)
			cancel()
			return
		case <-tick.C:
			fctx, cancel := context.WithTimeout(ctx, h.cfg.ActivityFlush)
			h.flushActivity(fctx, true)
			cancel()
		}
	}
}

// flushActivity writes what was recorded since the last flush; on failure
// it keeps the batch for the next one when retry.
func (h *Handler) flushActivity(ctx context.Context, retry bool) {
	batch := h.activity.take(time.Now())
	if batch == nil {
		return
	}
	if err := h.cfg.Wakes.RecordActivity(ctx, batch); err != nil {
		h.metrics.activityFlushFailed()
		h.logger.Warn("recording the repls' activity failed", zap.Int("repls", len(batch)), zap.Error(err))
		if retry {
			h.activity.putBack(batch)
		}
	}
}
