package ondemand

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Prometheus metrics of certificates on demand. A nil
// *Metrics counts nothing.
type Metrics struct {
	issued, renewed, failed *prometheus.CounterVec
	fromCache, fromStore    *prometheus.CounterVec
	orders                  *prometheus.CounterVec
	refused, backoff        *prometheus.CounterVec
	issueSeconds            *prometheus.HistogramVec
	// fromCache is counted on every handshake: its children are resolved
	// once.
	fromCacheWildcard, fromCacheDomain prometheus.Counter

	manager atomic.Pointer[Manager] // for the gauges, read at scrape time
}

// NewMetrics registers the metrics of certificates on demand with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	kind := []string{"kind"}
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &Metrics{
		issued:  counter("replproxy_tls_certificates_issued_total", "Certificates obtained for a name that had none, by kind (wildcard, domain).", kind),
		renewed: counter("replproxy_tls_certificates_renewed_total", "Certificates obtained to replace one due for renewal, by kind.", kind),
		failed:  counter("replproxy_tls_certificate_failures_total", "Failed attempts to obtain a certificate (the name then backs off), by kind.", kind),
		fromCache: counter("replproxy_tls_served_from_cache_total",
			"TLS handshakes served with a certificate held in memory, by kind.", kind),
		fromStore: counter("replproxy_tls_loaded_from_store_total",
			"Certificates loaded from the cluster's store (obtained by another proxy or before a restart), by kind.", kind),
		orders: counter("replproxy_tls_orders_total", "New orders sent to the ACME server by this proxy, by kind.", kind),
		refused: counter("replproxy_tls_orders_refused_total",
			"Orders stopped before they reached the ACME server, by reason (lease_held: another proxy is ordering the name; rate_limited; not_ours).", []string{"reason"}),
		backoff: counter("replproxy_tls_backoff_refusals_total",
			"TLS handshakes refused at once because the name's last order failed recently, by kind.", kind),
		issueSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "replproxy_tls_issue_seconds",
			Help:    "Time from sending a new order to storing the certificate, by kind.",
			Buckets: []float64{.25, .5, 1, 2, 5, 10, 20, 30, 60, 120, 300},
		}, kind),
	}
	m.fromCacheWildcard = m.fromCache.WithLabelValues(kindWildcard)
	m.fromCacheDomain = m.fromCache.WithLabelValues(kindDomain)
	reg.MustRegister(m.issued, m.renewed, m.failed, m.fromCache, m.fromStore, m.orders, m.refused, m.backoff, m.issueSeconds,
		certGauges{m})
	return m
}

func (m *Metrics) attach(cm *Manager) {
	if m != nil {
		m.manager.Store(cm)
	}
}

func (m *Metrics) servedFromCache(kind string) {
	if m == nil {
		return
	}
	if kind == kindWildcard {
		m.fromCacheWildcard.Inc()
	} else {
		m.fromCacheDomain.Inc()
	}
}

func (m *Metrics) inc(v *prometheus.CounterVec, label string) {
	if m != nil {
		v.WithLabelValues(label).Inc()
	}
}

func (m *Metrics) loadedFromStore(kind string) {
	if m != nil {
		m.inc(m.fromStore, kind)
	}
}

func (m *Metrics) issue(kind string) {
	if m != nil {
		m.inc(m.issued, kind)
	}
}

func (m *Metrics) renewal(kind string) {
	if m != nil {
		m.inc(m.renewed, kind)
	}
}

func (m *Metrics) failure(kind string) {
	if m != nil {
		m.inc(m.failed, kind)
	}
}

func (m *Metrics) order(kind string) {
	if m != nil {
		m.inc(m.orders, kind)
	}
}

func (m *Metrics) refusal(reason string) {
	if m != nil {
		m.inc(m.refused, reason)
	}
}

func (m *Metrics) backoffRefusal(kind string) {
	if m != nil {
		m.inc(m.backoff, kind)
	}
}

func (m *Metrics) issueTime(kind string, d time.Duration) {
	if m != nil {
		m.issueSeconds.WithLabelValues(kind).Observe(d.Seconds())
	}
}

// certGauges reports the certificates a proxy serves, read at scrape time.
type certGauges struct{ m *Metrics }

var (
	certsServedDesc = prometheus.NewDesc("replproxy_tls_certificates", "Certificates this proxy serves, by kind.", []string{"kind"}, nil)
	certsExpiryDesc = prometheus.NewDesc("replproxy_tls_soonest_expiry_seconds",
		"Seconds until the soonest expiry among the certificates this proxy serves (renewal starts with a third of the lifetime left; alert well before zero).", nil, nil)
)

func (g certGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- certsServedDesc
	ch <- certsExpiryDesc
}

func (g certGauges) Collect(ch chan<- prometheus.Metric) {
	cm := g.m.manager.Load()
	if cm == nil {
		return
	}
	counts := map[string]int{kindWildcard: 0, kindDomain: 0}
	var soonest time.Time
	cm.certsMu.RLock()
	for _, sc := range cm.certs {
		counts[sc.kind]++
		if soonest.IsZero() || sc.notAfter.Before(soonest) {
			soonest = sc.notAfter
		}
	}
	cm.certsMu.RUnlock()
	for kind, n := range counts {
		ch <- prometheus.MustNewConstMetric(certsServedDesc, prometheus.GaugeValue, float64(n), kind)
	}
	if !soonest.IsZero() {
		ch <- prometheus.MustNewConstMetric(certsExpiryDesc, prometheus.GaugeValue, soonest.Sub(cm.now()).Seconds())
	}
}
