package ondemand_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/acmetest"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/proxy/ondemand"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/embedded"
	"github.com/replproxy/replproxy/store/postgres"
	"github.com/replproxy/replproxy/store/routecache"
)

var (
	_ proxy.OnDemand  = (*ondemand.Manager)(nil)
	_ ondemand.Routes = (*routecache.Cache)(nil)
	_ ondemand.Store  = (*postgres.Store)(nil)
	_ ondemand.Store  = (*embedded.Store)(nil)
)

// tlsProxy is one proxy with certificates on demand.
type tlsProxy struct {
	Store   store.Store
	Certs   *ondemand.Manager
	HTTP    string // plain listener
	HTTPS   string // TLS listener
	Metrics *prometheus.Registry
	Logs    *observer.ObservedLogs
	stop    func()
}

type tlsProxyOpts struct {
	storeAddr   string // a postgres:// DSN or an embedded store file
	http, https string // listen addresses; empty: a free port
	forward     string // the registry's forward address of the cluster
	pebble      *acmetest.Pebble
	dns         *acmetest.DNS
	tweak       func(*ondemand.Config)
	// staticCert and staticKey serve the names on-demand does not.
	staticCert, staticKey string
}

// startTLSProxy runs a proxy of cluster "east" over its own handle on the
// cluster's store, with certificates on demand from Pebble.
func startTLSProxy(t testing.TB, o tlsProxyOpts) *tlsProxy {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	st, err := cluster.Open(ctx, o.storeAddr, cluster.OpenOptions{Migrate: true})
	if err != nil {
		cancel()
		t.Fatalf("open store: %v", err)
	}
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		wg.Wait()
		st.Close()
	}
	t.Cleanup(stop)
	core, logs := observer.New(zap.DebugLevel)
	logger := zap.New(core)
	cache := routecache.New(st, routecache.Config{}, nil, logger)
	wg.Go(func() { _ = cache.Run(ctx) })
	select {
	case <-cache.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("route cache did not sync")
	}
	if o.http == "" {
		o.http = "127.0.0.1:" + strconv.Itoa(acmetest.FreePort(t))
	}
	if o.https == "" {
		o.https = "127.0.0.1:" + strconv.Itoa(acmetest.FreePort(t))
	}
	if o.forward == "" {
		o.forward = o.http
	}
	reg := testbed.Registry(t, map[string][2]string{"east": {o.forward, o.storeAddr}})
	metrics := prometheus.NewRegistry()
	ccfg := ondemand.Config{
		Zone:          testZone,
		Directory:     o.pebble.Directory,
		CARoots:       o.pebble.CARoots,
		Email:         "ops@example.com",
		DNS01Check:    []string{o.dns.Addr},
		HandshakeWait: 45 * time.Second,
		OrderTimeout:  45 * time.Second,
		OrdersPerHour: 100, // replproxy's default
	}
	if o.tweak != nil {
		o.tweak(&ccfg)
	}
	cs, ok := st.(ondemand.Store)
	if !ok {
		t.Fatalf("%T is not an ondemand.Store", st)
	}
	certs, err := ondemand.New(ccfg, cs, cache, ondemand.NewMetrics(metrics), nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = certs.Run(ctx) })
	h, err := proxy.NewHandler(proxy.Config{Zone: testZone, Cluster: "east", Registry: reg, HopSecret: testSecret}, cache, proxy.NewMetrics(metrics, "east", cache), nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := proxy.NewServer(proxy.ServerConfig{Listen: o.http, TLSListen: o.https, ShutdownTimeout: 5 * time.Second,
		TLSCertFile: o.staticCert, TLSKeyFile: o.staticKey, HSTSMaxAge: 365 * 24 * time.Hour}, h, certs, nil, metrics, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		if err := srv.Serve(ctx); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &tlsProxy{Store: st, Certs: certs, HTTP: srv.Addr("http"), HTTPS: srv.Addr("https"), Metrics: metrics, Logs: logs, stop: stop}
}

// handshake connects to addr with SNI name, verifies the chain against
// roots, and returns the leaf the server sent.
func handshake(t testing.TB, addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 60 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

func mustHandshake(t testing.TB, addr, name string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	leaf, err := handshake(t, addr, name, roots)
	if err != nil {
		t.Fatalf("TLS handshake with %s for %s: %v", addr, name, err)
	}
	return leaf
}

// httpsClient sends every request to addr, trusting roots.
func httpsClient(addr string, roots *x509.CertPool) *http.Client {
	return &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{RootCAs: roots},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, network, addr)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// metric sums the samples of a counter or gauge named name whose labels
// include want.
func metric(t testing.TB, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	sample:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue sample
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}
