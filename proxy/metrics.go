package proxy

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/replproxy/replproxy/store/routecache"
)

// Metrics are the proxy's Prometheus metrics.
type Metrics struct {
	requests       *prometheus.CounterVec
	upstream       *prometheus.HistogramVec
	upstreamErrors *prometheus.CounterVec
	forwarded      prometheus.Counter
	loops          prometheus.Counter
	upgraded       prometheus.Gauge
	cancelled      prometheus.Counter // requests cancelled before they began
	resetCloses    prometheus.Counter // connections closed for cancelling too fast
	hopRefused     *prometheus.CounterVec

	wakesRequested  prometheus.Counter
	wakeOutcomes    *prometheus.CounterVec
	wakeSeconds     prometheus.Histogram
	held            prometheus.Gauge
	heldRejections  *prometheus.CounterVec
	activityDrops   prometheus.Counter
	activityFlushes prometheus.Counter // failed ones

	// counters caches the children of requests by route and status, so
	// that the request path neither hashes label values nor allocates.
	counters [len(routeKinds)][600]atomic.Pointer[prometheus.Counter]
}

// routeKinds lists the route labels; a route's index is its position.
var routeKinds = [...]string{routeLocal, routeForwarded, routeNotFound, routeBadHost, routeLoop, routeBounced, routeUnavailable, routeAsleep}

func routeIndex(route string) int {
	for i, r := range routeKinds {
		if r == route {
			return i
		}
	}
	return -1
}

// NewMetrics registers the proxy's metrics with reg, and, when cache is
// not nil, the route cache's (routecache.NewCollector: replproxy_route_cache_*,
// labelled with cluster), read at scrape time.
func NewMetrics(reg prometheus.Registerer, cluster string, cache *routecache.Cache) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "replproxy_requests_total",
			Help: "Requests served, by route kind (local, forwarded, not-found, bad-host, loop, bounced, unavailable) and status code (499: the client went away).",
		}, []string{"route", "code"}),
		upstream: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "replproxy_upstream_seconds",
			Help:    "Time from sending a request upstream to its response headers, by route kind.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route"}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "replproxy_upstream_errors_total",
			Help: "Upstream failures by route kind and kind of failure (refused, timeout, other); clients that went away are not counted.",
		}, []string{"route", "error"}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "replproxy_forwarded_total",
			Help: "Requests forwarded to another cluster by a tombstone.",
		}),
		loops: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "replproxy_forward_loops_total",
			Help: "Forwarded requests that met a tombstone again (answered 508).",
		}),
		upgraded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "replproxy_upgraded_connections",
			Help: "Open upgraded (WebSocket) connections.",
		}),
		cancelled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "replproxy_requests_cancelled_early_total",
			Help: "Requests (HTTP/2 streams) their client cancelled before the handler began: not routed, not proxied, not in the access log.",
		}),
		resetCloses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "replproxy_connections_closed_for_cancels_total",
			Help: "Client connections closed because requests their client cancelled reached handlers faster than the budget.",
		}),
		hopRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "replproxy_hop_marks_refused_total",
			Help: "Hop marks refused, by reason (malformed, skew, unknown_key, signature, replay, replay_cache_full); the request is served as an untrusted client's.",
		}, []string{"reason"}),
	}
	m.wakesRequested = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "replproxy_wakes_requested_total",
		Help: "Wakes of sleeping repls this proxy requested (RequestWake made one; a wake pending already is not counted).",
	})
	m.wakeOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "replproxy_wakes_total",
		Help: "Waits for a sleeping repl (one per repl, however many requests it held), by outcome: up, failed (the manager gave up), timeout (the last request waited the bound), abandoned (its requests went away), rerouted (moved or deleted meanwhile), limited (no token for a new wake), error (the store failed).",
	}, []string{"outcome"})
	m.wakeSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "replproxy_wake_seconds",
		Help:    "Time from a sleeping repl's first held request to seeing it up.",
		Buckets: []float64{.1, .25, .5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60},
	})
	m.held = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "replproxy_wake_held_requests",
		Help: "Requests held waiting for a sleeping repl to wake.",
	})
	m.heldRejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "replproxy_wake_rejected_total",
		Help: "Requests for sleeping repls answered 503 at once, by reason: total (MaxHeld held), repl (MaxHeldPerRepl held for it), rate (a new wake was needed and the wake rate was spent), disabled (no wakes configured).",
	}, []string{"reason"})
	m.activityDrops = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "replproxy_activity_dropped_total",
		Help: "Requests whose repl's activity was not recorded: MaxActivity repls were recorded since the last flush.",
	})
	m.activityFlushes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "replproxy_activity_flush_errors_total",
		Help: "Flushes of the repls' activity to the store that failed (the batch is kept for the next one).",
	})
	reg.MustRegister(m.requests, m.upstream, m.upstreamErrors, m.forwarded, m.loops, m.upgraded, m.cancelled, m.resetCloses, m.hopRefused,
		m.wakesRequested, m.wakeOutcomes, m.wakeSeconds, m.held, m.heldRejections, m.activityDrops, m.activityFlushes)
	if cache != nil {
		reg.MustRegister(routecache.NewCollector("replproxy", routecache.One(cluster, cache)))
	}
	return m
}

func (m *Metrics) request(route string, status int) {
	if m == nil {
		return
	}
	i := routeIndex(route)
	if i < 0 || status < 0 || status >= len(m.counters[i]) {
		m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
		return
	}
	c := m.counters[i][status].Load()
	if c == nil {
		child := m.requests.WithLabelValues(route, strconv.Itoa(status))
		c = &child
		m.counters[i][status].Store(c)
	}
	(*c).Inc()
}

func (m *Metrics) upstreamTime(route string, d time.Duration) {
	if m != nil {
		m.upstream.WithLabelValues(route).Observe(d.Seconds())
	}
}

func (m *Metrics) upstreamError(route, kind string) {
	if m != nil {
		m.upstreamErrors.WithLabelValues(route, kind).Inc()
	}
}

func (m *Metrics) hopMarkRefused(reason string) {
	if m != nil {
		m.hopRefused.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) forward() {
	if m != nil {
		m.forwarded.Inc()
	}
}

func (m *Metrics) cancelledEarly() {
	if m != nil {
		m.cancelled.Inc()
	}
}

func (m *Metrics) resetClosed() {
	if m != nil {
		m.resetCloses.Inc()
	}
}

func (m *Metrics) loop() {
	if m != nil {
		m.loops.Inc()
	}
}

func (m *Metrics) upgradedDelta(d int) {
	if m != nil {
		m.upgraded.Add(float64(d))
	}
}

func (m *Metrics) wakeRequested() {
	if m != nil {
		m.wakesRequested.Inc()
	}
}

func (m *Metrics) wakeOutcome(outcome string) {
	if m != nil {
		m.wakeOutcomes.WithLabelValues(outcome).Inc()
	}
}

func (m *Metrics) wakeLatency(d time.Duration) {
	if m != nil {
		m.wakeSeconds.Observe(d.Seconds())
	}
}

func (m *Metrics) heldDelta(d int) {
	if m != nil {
		m.held.Add(float64(d))
	}
}

func (m *Metrics) heldRejected(reason string) {
	if m != nil {
		m.heldRejections.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) activityDropped() {
	if m != nil {
		m.activityDrops.Inc()
	}
}

func (m *Metrics) activityFlushFailed() {
	if m != nil {
		m.activityFlushes.Inc()
	}
}
