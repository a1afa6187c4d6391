package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/store"
)

// Waker is the wake protocol's side a proxy uses (store.Store satisfies
// it): asking for a sleeping repl's wake, following it, and reporting
// when repls last served requests, so that the container manager can put
// idle ones to sleep.
type Waker interface {
	// RequestWake asks for a wake of the live repl replID and reports
	// whether this call made it (false: one was pending already, or the
	// repl is awake). ErrNotFound: the repl is not live in this cluster.
	RequestWake(ctx context.Context, replID, by string) (bool, error)
	// GetWake returns the repl's wake, pending or failed; ErrNotFound: none.
	GetWake(ctx context.Context, replID string) (store.Wake, error)
	// RecordActivity stores when each repl last served a request.
	RecordActivity(ctx context.Context, last map[string]time.Time) error
}

// Waking a sleeping repl (a RouteLocal route with Asleep).
//
// The first request for a sleeping repl makes a waiter for it: one
// goroutine per repl that asks for the wake (RequestWake; the store makes
// one per repl whatever the number of proxies asking) and follows it. It
// looks the route up in the cache every WakePoll (the manager's FinishWake
// changes the repl row, whose change notification invalidates the cached
// route) and asks the store for the wake at most every wakeCheckEvery, to
// see a failed one. Later requests for the repl join the waiter, so a
// crowd of them costs one wake request and one poll; all go on when it
// sees the repl awake, each to the endpoint the route then names.
//
// Requests held are bounded per repl and in all (MaxHeldPerRepl,
// MaxHeld); one beyond either is a 503 at once. New wakes are bounded by
// a token bucket (WakeRate, WakeBurst): a repl whose wake is already
// pending costs no token, a RequestWake that made no wake gives its token
// back, and a request for a repl that would need a new wake when the
// bucket is empty is a 503 at once (no queue: a scan of every name cannot
// hold later requests behind it). Whether a wake is pending when the
// bucket is empty is one GetWake, bounded in turn by a bucket ten times
// as large (beyond it, the 503 without asking).

// wakeCheckEvery is how often a waiter asks the store for its wake (to see
// a failed one, or one that finished while the cache did not hear).
const wakeCheckEvery = 500 * time.Millisecond

// Reasons a held request was refused, the "reason" label of
// replproxy_wake_rejected_total.
const (
	rejectTotal    = "total"    // MaxHeld requests are held already
	rejectRepl     = "repl"     // MaxHeldPerRepl are held for the repl
	rejectRate     = "rate"     // a new wake was needed and the bucket was empty
	rejectDisabled = "disabled" // no Config.Wakes
)

// Wake outcomes, the "outcome" label of replproxy_wakes_total: one per
// waiter (a repl waited for by this proxy).
const (
	wakeUp        = "up"
	wakeFailed    = "failed"    // the manager gave up (store.Wake.Failed)
	wakeTimeout   = "timeout"   // its last request waited WakeTimeout
	wakeAbandoned = "abandoned" // its requests went away (clients gone, or browsers sent the waking page)
	wakeRerouted  = "rerouted"  // the repl moved or was deleted meanwhile
	wakeError     = "error"     // the store failed
	wakeLimited   = "limited"   // no token for a new wake
)

// wakes is a Handler's state for waking repls.
type wakes struct {
	h      *Handler
	waker  Waker
	by     string // RequestWake's by: "<cluster>/<hostname>/<pid>"
	bucket tokenBucket
	// checks bounds the GetWake calls of requests that found bucket empty
	// (is the repl's wake pending already?): 10 times bucket's rate, so
	// that a scan does not turn into a store query per name.
	checks tokenBucket

	mu      sync.Mutex
	waiters map[string]*waiter // by repl id
	held    int                // requests held in all
}

func newWakes(h *Handler) *wakes {
	host, _ := os.Hostname()
	return &wakes{
		h:       h,
		waker:   h.cfg.Wakes,
		by:      h.cfg.Cluster + "/" + host + "/" + strconv.Itoa(os.Getpid()),
		bucket:  tokenBucket{rate: h.cfg.WakeRate, burst: float64(h.cfg.WakeBurst), tokens: float64(h.cfg.WakeBurst)},
		checks:  tokenBucket{rate: 10 * h.cfg.WakeRate, burst: 10 * float64(h.cfg.WakeBurst), tokens: 10 * float64(h.cfg.WakeBurst)},
		waiters: make(map[string]*waiter),
	}
}

// waiter follows one repl's wake for the requests held for it.
type waiter struct {
	replID string
	key    store.Key // the first request's, to look the route up again
	start  time.Time
	ctx    context.Context // cancelled when its last request left
	cancel context.CancelFunc
	done   chan struct{} // closed once res is set
	res    wakeResult

	// Under wakes.mu.
	held     int
	timedOut bool // the last request to leave had waited WakeTimeout
}

// wakeResult is how a waiter ended.
type wakeResult struct {
	outcome string
	route   store.Route // wakeUp, wakeRerouted: the route to go on with
	err     error       // wakeRerouted: the lookup's error (ErrNotFound: deleted)
}

// join holds a request for replID: it returns the repl's waiter, made
// when there is none, or the reason it refuses.
func (wk *wakes) join(replID string, key store.Key) (*waiter, string) {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	if wk.held >= wk.h.cfg.MaxHeld {
		return nil, rejectTotal
	}
	wt := wk.waiters[replID]
	if wt != nil && wt.held >= wk.h.cfg.MaxHeldPerRepl {
		return nil, rejectRepl
	}
	if wt == nil {
		ctx, cancel := context.WithCancel(context.Background())
		wt = &waiter{replID: replID, key: cloneKey(key), start: time.Now(), ctx: ctx, cancel: cancel, done: make(chan struct{})}
		wk.waiters[replID] = wt
		go wk.run(wt)
	}
	wt.held++
	wk.held++
	wk.h.metrics.heldDelta(1)
	return wt, ""
}

// cloneKey copies k's strings, which may point into a request's Host.
func cloneKey(k store.Key) store.Key {
	k.Owner, k.Name = string([]byte(k.Owner)), string([]byte(k.Name))
	return k
}

// leave lets go of a held request; the last one out stops the waiter
// (unless it is done already). timedOut says it waited WakeTimeout.
func (wk *wakes) leave(wt *waiter, timedOut bool) {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	wt.held--
	wk.held--
	wk.h.metrics.heldDelta(-1)
	if wt.held == 0 {
		wt.timedOut = timedOut
		if wk.waiters[wt.replID] == wt {
			delete(wk.waiters, wt.replID)
		}
		wt.cancel()
	}
}

// run follows wt's wake to its end and tells its requests.
func (wk *wakes) run(wt *waiter) {
	defer wt.cancel()
	res := wk.follow(wt)
	if res.outcome == "" { // its requests went away
		wk.mu.Lock()
		res.outcome = wakeAbandoned
		if wt.timedOut {
			res.outcome = wakeTimeout
		}
		wk.mu.Unlock()
	}
	if res.outcome == wakeUp {
		wk.h.metrics.wakeLatency(time.Since(wt.start))
	}
	wk.h.metrics.wakeOutcome(res.outcome)
	wk.mu.Lock()
	if wk.waiters[wt.replID] == wt {
		delete(wk.waiters, wt.replID)
	}
	wk.mu.Unlock()
	wt.res = res
	close(wt.done)
}

// follow asks for wt's wake and waits for its end. An empty outcome means
// wt's context ended first.
func (wk *wakes) follow(wt *waiter) wakeResult {
	ctx := wt.ctx
	log := wk.h.logger
	switch res, ok := wk.ask(wt, true); {
	case ok:
		return res
	case ctx.Err() != nil:
		return wakeResult{}
	}
	tick := time.NewTicker(wk.h.cfg.WakePoll)
	defer tick.Stop()
	nextCheck := time.Now().Add(wakeCheckEvery)
	for {
		select {
		case <-ctx.Done():
			return wakeResult{}
		case <-tick.C:
		}
		route, err := wk.h.routes.Lookup(ctx, wt.key)
		if res, ok := awake(route, err); ok {
			return res
		}
		if time.Now().Before(nextCheck) {
			continue
		}
		nextCheck = time.Now().Add(wakeCheckEvery)
		w, err := wk.waker.GetWake(ctx, wt.replID)
		switch {
		case ctx.Err() != nil:
			return wakeResult{}
		case err == nil && w.Failed != "":
			log.Warn("wake failed", zap.String("repl_id", wt.replID), zap.String("reason", w.Failed),
				zap.String("manager", w.ClaimedBy), zap.Duration("waited", time.Since(wt.start)))
			return wakeResult{outcome: wakeFailed}
		case errors.Is(err, store.ErrNotFound):
			// No wake: it finished and the cache has not heard yet (or
			// its change notification was lost), or it vanished. Ask the
			// store for the route; still asleep, ask for a wake again.
			route, err := wk.h.routes.Refresh(ctx, wt.key)
			if res, ok := awake(route, err); ok {
				return res
			}
			if res, ok := wk.ask(wt, false); ok {
				return res
			}
		case err != nil:
			wk.h.warn(wk.h.lookupWarns, "wake status lookup failed", zap.String("repl_id", wt.replID), zap.Error(err))
		}
	}
}

// awake reports whether a route looked up while waiting ends the wait: the
// repl is awake, or no longer a sleeping repl here (moved, deleted).
func awake(route store.Route, err error) (wakeResult, bool) {
	switch {
	case err == nil && route.Kind == store.RouteLocal && !route.Asleep:
		return wakeResult{outcome: wakeUp, route: route}, true
	case err == nil && route.Kind != store.RouteLocal, errors.Is(err, store.ErrNotFound):
		return wakeResult{outcome: wakeRerouted, route: route, err: err}, true
	}
	return wakeResult{}, false
}

// ask asks for wt's wake when a token allows. first is the waiter's first
// ask: without a token it then looks for a pending wake to wait for, and
// ends the waiter (wakeLimited) when there is none. It returns true with
// a result when the waiter is over.
func (wk *wakes) ask(wt *waiter, first bool) (wakeResult, bool) {
	ctx := wt.ctx
	if !wk.bucket.take(time.Now()) {
		if !first {
			return wakeResult{}, false // ask again at the next check
		}
		if !wk.checks.take(time.Now()) {
			return wakeResult{outcome: wakeLimited}, true
		}
		w, err := wk.waker.GetWake(ctx, wt.replID)
		if err == nil && w.Failed == "" {
			return wakeResult{}, false // pending: waiting costs nothing
		}
		return wakeResult{outcome: wakeLimited}, true
	}
	made, err := wk.waker.RequestWake(ctx, wt.replID, wk.by)
	switch {
	case errors.Is(err, store.ErrNotFound):
		wk.bucket.refund()
		route, err := wk.h.routes.Refresh(ctx, wt.key)
		if res, ok := awake(route, err); ok {
			return res, true
		}
		return wakeResult{outcome: wakeError}, true
	case err != nil:
		wk.bucket.refund()
		if ctx.Err() != nil {
			return wakeResult{}, true
		}
		wk.h.warn(wk.h.lookupWarns, "wake request failed", zap.String("repl_id", wt.replID), zap.Error(err))
		return wakeResult{outcome: wakeError}, true
	case made:
		wk.h.metrics.wakeRequested()
		if ce := wk.h.logger.Check(zap.DebugLevel, "wake requested"); ce != nil {
			ce.Write(zap.String("repl_id", wt.replID), zap.String("by", wk.by))
		}
	default:
		wk.bucket.refund() // pending already (another proxy's), or awake
	}
	return wakeResult{}, false
}

// awaitWake holds a request for a sleeping repl until it is awake, and
// returns the route to go on with. It answers the request itself and
// returns false when the wait ends otherwise: over a bound, a failed wake,
// WakeTimeout, or a browser that waited WakePageAfter (the waking page).
func (h *Handler) awaitWake(w http.ResponseWriter, r *http.Request, ex *exchange, route store.Route) (store.Route, bool) {
	ex.route = routeAsleep
	if h.wakes == nil {
		h.metrics.heldRejected(rejectDisabled)
		w.Header().Set("Retry-After", "5")
		writePage(w, r, http.StatusServiceUnavailable, "Asleep", "This repl is asleep; this proxy cannot wake it.")
		return store.Route{}, false
	}
	browser := wantsHTML(r) && (r.Method == http.MethodGet || r.Method == http.MethodHead)
	wt, reason := h.wakes.join(route.ReplID, ex.key)
	if wt == nil {
		h.metrics.heldRejected(reason)
		if browser {
			writeWakingPage(w, r)
			return store.Route{}, false
		}
		w.Header().Set("Retry-After", "2")
		writePage(w, r, http.StatusServiceUnavailable, "Service Unavailable", "This repl is waking up; too many requests are waiting for it. Try again in a moment.")
		return store.Route{}, false
	}
	bound := time.NewTimer(h.cfg.WakeTimeout - time.Since(ex.start))
	defer bound.Stop()
	var page <-chan time.Time
	if browser {
		t := time.NewTimer(h.cfg.WakePageAfter - time.Since(ex.start))
		defer t.Stop()
		page = t.C
	}
	select {
	case <-wt.done:
		h.wakes.leave(wt, false)
	case <-bound.C:
		h.wakes.leave(wt, true)
		w.Header().Set("Retry-After", "5")
		writePage(w, r, http.StatusServiceUnavailable, "Service Unavailable",
			fmt.Sprintf("This repl is waking up and was not ready within %v. Try again in a few seconds.", h.cfg.WakeTimeout))
		return store.Route{}, false
	case <-page:
		h.wakes.leave(wt, false)
		writeWakingPage(w, r)
		return store.Route{}, false
	case <-r.Context().Done():
		h.wakes.leave(wt, false)
		ex.status = StatusClientClosedRequest
		h.cancelled(r)
		panic(http.ErrAbortHandler)
	}
	res := wt.res
	switch res.outcome {
	case wakeUp:
		return res.route, true
	case wakeRerouted:
		if errors.Is(res.err, store.ErrNotFound) {
			ex.route = routeNotFound
			writeNotFound(w, r)
			return store.Route{}, false
		}
		return res.route, true
	case wakeLimited:
		h.metrics.heldRejected(rejectRate)
		if browser {
			writeWakingPage(w, r)
			return store.Route{}, false
		}
		w.Header().Set("Retry-After", "2")
		writePage(w, r, http.StatusServiceUnavailable, "Service Unavailable", "Too many repls are waking up right now. Try again in a moment.")
	case wakeFailed:
		// The manager's reason is in the log (wake failed), not here: it
		// may name hosts, paths or the container runtime's errors.
		w.Header().Set("Retry-After", "5")
		writePage(w, r, http.StatusServiceUnavailable, "Service Unavailable", "This repl could not be started. Try again later.")
	default: // wakeError: the store failed (logged by ask or follow)
		w.Header().Set("Retry-After", "5")
		writePage(w, r, http.StatusServiceUnavailable, "Service Unavailable", "This repl cannot be woken right now; try again in a few seconds.")
	}
	return store.Route{}, false
}

// tokenBucket bounds new wakes: rate tokens a second, at most burst held.
type tokenBucket struct {
	mu          sync.Mutex
	rate, burst float64
	tokens      float64
	at          time.Time
}

func (b *tokenBucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.at.IsZero() {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.at).Seconds()*b.rate)
	}
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// refund gives back a token that made no wake.
func (b *tokenBucket) refund() {
	b.mu.Lock()
	b.tokens = min(b.burst, b.tokens+1)
	b.mu.Unlock()
}
