package nameserver

import (
	"iter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/replproxy/replproxy/store/routecache"
)

// Metrics are the Prometheus metrics of a Handler (given to NewHandler): queries
// by type and reply code, latency, and rate-limited replies; and those of
// the TCP connections of the Server answering with the Handler.
type Metrics struct {
	queries  [len(metricTypes) + 1][len(metricRcodes)]prometheus.Counter
	duration prometheus.Histogram
	dropped  prometheus.Counter
	slipped  prometheus.Counter

	tcpOpen     prometheus.Gauge
	tcpAccepted prometheus.Counter
	tcpRefused  [len(tcpRefuseReasons)]prometheus.Counter
	tcpClosed   [len(tcpCloseReasons)]prometheus.Counter
}

// Why a TCP connection was closed as soon as it was accepted.
type tcpRefusal int

const (
	refusedPerClient tcpRefusal = iota // its client had MaxTCPPerClient open
	refusedFull                        // MaxTCPConns open, none of them idle
)

var tcpRefuseReasons = [...]string{refusedPerClient: "per_client", refusedFull: "full"}

// Why an admitted TCP connection was closed.
type tcpClose int

const (
	closedIdle     tcpClose = iota // idle for the (load-dependent) idle timeout
	closedShed                     // idle the longest when a new one came near MaxTCPConns
	closedLifetime                 // open for TCPMaxLifetime
	closedSlow                     // a query not whole, or a reply not taken, within TCPMessageTimeout
	closedClient                   // the client closed it
	closedError                    // a read or write error, or a message of length 0
	closedShutdown                 // the server shut down
)

var tcpCloseReasons = [...]string{
	closedIdle: "idle", closedShed: "shed", closedLifetime: "lifetime", closedSlow: "slow",
	closedClient: "client", closedError: "error", closedShutdown: "shutdown",
}

// The query types counted by name; others are counted as "other".
var metricTypes = [...]struct {
	t    uint16
	name string
}{
	{typeA, "A"}, {typeAAAA, "AAAA"}, {typeTXT, "TXT"}, {typeNS, "NS"}, {typeSOA, "SOA"},
	{typeCAA, "CAA"}, {typeMX, "MX"}, {typeCNAME, "CNAME"}, {typeANY, "ANY"},
	{64, "SVCB"}, {65, "HTTPS"}, {43, "DS"}, {48, "DNSKEY"}, {12, "PTR"}, {typeAXFR, "AXFR"}, {typeIXFR, "IXFR"},
}

// The reply codes counted; "none" is a query that got no reply (rate
// limited, or not a query at all).
var metricRcodes = [...]string{
	rcodeSuccess:  "NOERROR",
	rcodeFormErr:  "FORMERR",
	rcodeServFail: "SERVFAIL",
	rcodeNXDomain: "NXDOMAIN",
	rcodeNotImp:   "NOTIMP",
	rcodeRefused:  "REFUSED",
	6:             "BADVERS",
	7:             "none",
	8:             "NOTAUTH",
}

const (
	metricBadVers = 6
	metricNone    = 7
	metricNotAuth = 8
)

// NewMetrics makes a Handler's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{}
	qv := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "replns_queries_total",
		Help: "DNS queries answered, by query type and reply code (\"none\": no reply sent).",
	}, []string{"qtype", "rcode"})
	for i := range m.queries {
		name := "other"
		if i < len(metricTypes) {
			name = metricTypes[i].name
		}
		for j, rc := range metricRcodes {
			m.queries[i][j] = qv.WithLabelValues(name, rc)
		}
	}
	m.duration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "replns_query_duration_seconds",
		Help:    "Time from reading a query to having its reply ready.",
		Buckets: []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 1e-3, 5e-3, 25e-3, 100e-3, 500e-3, 2},
	})
	rrl := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "replns_rate_limited_total",
		Help: "UDP replies withheld by response rate limiting: dropped, or slipped (sent empty with TC).",
	}, []string{"action"})
	m.dropped = rrl.WithLabelValues("dropped")
	m.slipped = rrl.WithLabelValues("slipped")

	m.tcpOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "replns_tcp_connections",
		Help: "TCP connections open.",
	})
	m.tcpAccepted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "replns_tcp_connections_accepted_total",
		Help: "TCP connections accepted and admitted (not refused).",
	})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "replns_tcp_connections_refused_total",
		Help: "TCP connections closed as soon as accepted: per_client (its IPv4 address or IPv6 /64 had MaxTCPPerClient open), full (MaxTCPConns open, none idle).",
	}, []string{"reason"})
	for i, r := range tcpRefuseReasons {
		m.tcpRefused[i] = refused.WithLabelValues(r)
	}
	closed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "replns_tcp_connections_closed_total",
		Help: "Admitted TCP connections closed, by reason: idle, shed (idle the longest when the server neared MaxTCPConns), lifetime, slow (a query or reply not through in time), client, error, shutdown.",
	}, []string{"reason"})
	for i, r := range tcpCloseReasons {
		m.tcpClosed[i] = closed.WithLabelValues(r)
	}
	reg.MustRegister(qv, m.duration, rrl, m.tcpOpen, m.tcpAccepted, refused, closed)
	return m
}

func (m *Metrics) observe(qtype uint16, rcode int, d time.Duration) {
	if m == nil {
		return
	}
	t := len(metricTypes)
	for i := range metricTypes {
		if metricTypes[i].t == qtype {
			t = i
			break
		}
	}
	switch {
	case rcode < 0:
		rcode = metricNone
	case rcode == rcodeBadVers:
		rcode = metricBadVers
	case rcode == rcodeNotAuth:
		rcode = metricNotAuth
	case rcode > rcodeRefused:
		rcode = rcodeServFail
	}
	m.queries[t][rcode].Inc()
	m.duration.Observe(d.Seconds())
}

func (m *Metrics) rateLimited(a rrlAction) {
	if m == nil {
		return
	}
	if a == rrlSlip {
		m.slipped.Inc()
	} else {
		m.dropped.Inc()
	}
}

// tcpConns sets the number of TCP connections open.
func (m *Metrics) tcpConns(open int) {
	if m != nil {
		m.tcpOpen.Set(float64(open))
	}
}

func (m *Metrics) tcpAccept() {
	if m != nil {
		m.tcpAccepted.Inc()
	}
}

func (m *Metrics) tcpRefuse(r tcpRefusal) {
	if m != nil {
		m.tcpRefused[r].Inc()
	}
}

func (m *Metrics) tcpClose(r tcpClose) {
	if m != nil {
		m.tcpClosed[r].Inc()
	}
}

// RegisterClusters registers metrics describing each cluster's store,
// route cache and index, read from c when scraped: readiness and the
// index here, the cache through routecache's collector (replns_route_cache_*).
func RegisterClusters(reg prometheus.Registerer, c *Clusters) {
	reg.MustRegister(clustersCollector{c}, routecache.NewCollector("replns", c.caches))
}

// caches yields each open cluster's route cache by name.
func (c *Clusters) caches() iter.Seq2[string, *routecache.Cache] {
	return func(yield func(string, *routecache.Cache) bool) {
		for _, cl := range c.set.Load().cs {
			if !yield(cl.name, cl.cache.Load()) {
				return
			}
		}
	}
}

type clustersCollector struct{ c *Clusters }

var (
	descReady = prometheus.NewDesc("replns_cluster_ready",
		"1 when the cluster's store is open, its change feed is up and its index is current: the index follows the store.", []string{"cluster"}, nil)
	descFeedUp = prometheus.NewDesc("replns_cluster_feed_up",
		"1 while the cluster's change feed is connected (PostgreSQL: the LISTEN connection, probed when quiet for 5 s); 0 when the store is unreachable, hung or not open: its names are answered from what the index held, changes there are not seen.", []string{"cluster"}, nil)
	descIndexed = prometheus.NewDesc("replns_index_repls",
		"Repls, live or tombstoned, in the cluster's in-memory index.", []string{"cluster"}, nil)
	descIndexQueries = prometheus.NewDesc("replns_index_store_queries_total",
		"Store calls made to keep the cluster's index current.", []string{"cluster"}, nil)
)

func (clustersCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReady, descFeedUp, descIndexed, descIndexQueries} {
		ch <- d
	}
}

func (cc clustersCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range cc.c.Status() {
		ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, gauge(s.Ready()), s.Name)
		ch <- prometheus.MustNewConstMetric(descFeedUp, prometheus.GaugeValue, gauge(s.FeedUp), s.Name)
		ch <- prometheus.MustNewConstMetric(descIndexed, prometheus.GaugeValue, float64(s.Indexed), s.Name)
		ch <- prometheus.MustNewConstMetric(descIndexQueries, prometheus.CounterValue, float64(s.IndexQueries), s.Name)
	}
}

// gauge is 1 for true, 0 for false.
func gauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
