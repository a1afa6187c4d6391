package proxy_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	testZone, _ = store.NewZone("repl.test")
	testSecret  = []byte("0123456789abcdef0123456789abcdef-test")
)

// freeAddr returns a loopback address with a port that was free a moment
// ago (the registry must name forward addresses before proxies start).
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// testCluster is one cluster of a test: its store and its running proxy.
type testCluster struct {
	Name    string
	Store   store.Store
	Cache   *routecache.Cache
	Addr    string // the proxy's HTTP address (also its forward address)
	Logs    *observer.ObservedLogs
	Metrics *prometheus.Registry
	Server  *proxy.Server
	Handler *proxy.Handler
	Cancel  func()          // starts the drain, like SIGTERM
	Served  <-chan struct{} // closed when Serve returned
	stop    func()
}

// URL returns the proxy URL for a path; the Host is set per request.
func (c *testCluster) URL(path string) string { return "http://" + c.Addr + path }

// embeddedStore returns an empty embedded store.
func embeddedStore(t testing.TB) (store.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "store.yaml")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := cluster.Open(context.Background(), path, cluster.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

type clusterOpts struct {
	tweak    func(*proxy.Config)
	server   func(*proxy.ServerConfig)
	onDemand proxy.OnDemand
	cache    routecache.Config
	routes   func(proxy.Routes) proxy.Routes // wraps the cache, as the handler's routes
}

// startCluster runs a proxy for cluster name on addr over st.
func startCluster(t testing.TB, name, addr string, st store.Store, reg *cluster.Registry, o clusterOpts) *testCluster {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	logger := zap.New(core)
	cache := routecache.NewIndexed(st, o.cache, nil, logger)
	ctx, cancel := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); _ = cache.Run(ctx) }()
	select {
	case <-cache.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("cache did not sync")
	}

	cfg := proxy.Config{Zone: testZone, Cluster: name, Registry: reg, HopSecret: testSecret, AccessLog: true}
	if o.tweak != nil {
		o.tweak(&cfg)
	}
	metrics := prometheus.NewRegistry()
	var routes proxy.Routes = cache
	if o.routes != nil {
		routes = o.routes(cache)
	}
	h, err := proxy.NewHandler(cfg, routes, proxy.NewMetrics(metrics, cfg.Cluster, cache), nil, logger)
	if err != nil {
		t.Fatal(err)
	}
	scfg := proxy.ServerConfig{Listen: addr, ShutdownTimeout: 5 * time.Second}
	if o.server != nil {
		o.server(&scfg)
	}
	srv, err := proxy.NewServer(scfg, h, o.onDemand, proxy.Ready(st, cache), metrics, logger)
	if err != nil {
		t.Fatal(err)
	}
	metrics.MustRegister(srv.Collector())
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	var serveErr error
	go func() { serveErr = srv.Serve(ctx); close(served) }()
	c := &testCluster{Name: name, Store: indexedStore{Store: st, t: t, index: cache.Index()}, Cache: cache, Addr: srv.Addr("http"), Logs: logs, Metrics: metrics, Server: srv,
		Handler: h, Cancel: cancel, Served: served}
	var stopped bool
	c.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-served
		if serveErr != nil {
			t.Errorf("serve: %v", serveErr)
		}
		<-watchDone
	}
	t.Cleanup(c.stop)
	return c
}

// oneCluster runs cluster "east" on an embedded store.
func oneCluster(t testing.TB, o clusterOpts) *testCluster {
	t.Helper()
	st, path := embeddedStore(t)
	addr := freeAddr(t)
	reg := testbed.Registry(t, map[string][2]string{"east": {addr, path}, "west": {"127.0.0.1:1", path + ".west"}})
	return startCluster(t, "east", addr, st, reg, o)
}

// get sends a request with the given Host through the proxy.
func get(t testing.TB, c *testCluster, host, path string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.URL(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s: %v", host, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

var testClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}

// indexedStore is a cluster's store as its tests write to it: each write
// returns once the proxy's name index has seen it, as a platform's
// container manager would wait for a repl to be routable (the change
// notification takes a moment; until then the index does not know the
// name and the proxy answers 404 without asking the store).
type indexedStore struct {
	store.Store
	t     testing.TB
	index *routecache.Index
}

// await waits until the index says what want says of k.
func (s indexedStore) await(k store.Key, want func(routecache.Knowledge, routecache.IndexEntry) bool) {
	s.t.Helper()
	testbed.WaitFor(s.t, 10*time.Second, "the name index to see the change to "+k.String(), func() bool {
		return want(s.index.Repl(k))
	})
}

func live(kn routecache.Knowledge, e routecache.IndexEntry) bool {
	return kn == routecache.KnownYes && e.MovedTo == ""
}

func (s indexedStore) CreateRepl(ctx context.Context, r store.Repl) (store.Repl, error) {
	out, err := s.Store.CreateRepl(ctx, r)
	if err == nil {
		s.await(store.ReplIDKey(r.ID), live)
	}
	return out, err
}

func (s indexedStore) Activate(ctx context.Context, r store.Repl) (store.Repl, error) {
	out, err := s.Store.Activate(ctx, r)
	if err == nil {
		s.await(store.ReplIDKey(r.ID), live)
	}
	return out, err
}

func (s indexedStore) Retire(ctx context.Context, id, cluster string, gen int64) (store.Tombstone, error) {
	out, err := s.Store.Retire(ctx, id, cluster, gen)
	if err == nil {
		s.await(store.ReplIDKey(id), func(kn routecache.Knowledge, e routecache.IndexEntry) bool {
			return kn == routecache.KnownYes && e.MovedTo == cluster
		})
	}
	return out, err
}

func (s indexedStore) LinkDomain(ctx context.Context, d store.Domain) (store.Domain, error) {
	out, err := s.Store.LinkDomain(ctx, d)
	if err == nil {
		s.await(store.DomainKey(d.Name), func(kn routecache.Knowledge, _ routecache.IndexEntry) bool { return kn == routecache.KnownYes })
	}
	return out, err
}
