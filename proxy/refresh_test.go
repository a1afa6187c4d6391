package proxy_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// staleRoutes is a route cache whose entry is older than its store: it
// still holds the tombstone a move just replaced by a live row here. Its
// own Refresh finds the same tombstone again (the store has not caught
// up); refreshingRoutes finds the fresh route.
type staleRoutes struct {
	cached, fresh store.Route
	refreshes     int
}

func (s *staleRoutes) Lookup(context.Context, store.Key) (store.Route, error)  { return s.cached, nil }
func (s *staleRoutes) Refresh(context.Context, store.Key) (store.Route, error) { return s.cached, nil }

type refreshingRoutes struct{ *staleRoutes }

func (s refreshingRoutes) Refresh(context.Context, store.Key) (store.Route, error) {
	s.refreshes++
	return s.fresh, nil
}

// TestForwardedRequestRefreshesAStaleTombstone: during a move the source's
// notification may reach its proxies before the destination's reaches
// its own. A request forwarded by the source then meets the destination's
// stale tombstone; the destination asks its store again instead of
// answering 508.
func TestForwardedRequestRefreshesAStaleTombstone(t *testing.T) {
	app := testbed.EchoServer(t, "app")
	reg := testbed.Registry(t, map[string][2]string{"east": {"127.0.0.1:1", "east.yaml"}, "west": {"127.0.0.1:2", "west.yaml"}})
	stale := &staleRoutes{
		cached: store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: "east", Generation: 2},
		fresh:  store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{testbed.HostOf(app.URL)}, Generation: 3},
	}
	for _, tc := range []struct {
		name   string
		routes proxy.Routes
		want   int
	}{
		{"with refresh", refreshingRoutes{stale}, http.StatusOK},
		{"a refresh that finds the tombstone again: a loop", stale, http.StatusLoopDetected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := proxy.NewHandler(proxy.Config{Zone: testZone, Cluster: "west", Registry: reg, HopSecret: testSecret}, tc.routes, nil, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(h)
			defer srv.Close()
			mark := proxy.SignHop(testSecret, time.Now(), "east", "GET", "/", "blog.alice.repl.test", "203.0.113.7", "http", "blog.alice.repl.test", "id-1")
			resp := forwardedGet(t, srv.URL, mark)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	if stale.refreshes != 1 {
		t.Errorf("refreshes = %d, want 1", stale.refreshes)
	}
}

// TestStaleTombstoneAtTheSenderIsServedLocally: a repl moves back to east.
// East's cache still holds its old tombstone to west for a moment, so east
// forwards; west's (fresh) tombstone points back at east and west answers
// 508 naming east. East then asks its store, finds the repl live, and
// serves the request itself: the client never sees the 508.
func TestStaleTombstoneAtTheSenderIsServedLocally(t *testing.T) {
	mb := startMoveBack(t)
	for _, tc := range []struct {
		method string
		body   int  // bytes
		sized  bool // with a Content-Length (else chunked)
	}{
		{http.MethodGet, 0, true},
		{http.MethodPost, 0, true},
		{http.MethodPost, 2048, true},     // held (holdForward)
		{http.MethodPut, 300 << 10, true}, // sent after 100 Continue
		{http.MethodPost, 5000, false},    // chunked: after 100 Continue too
	} {
		var body io.Reader
		if tc.body > 0 {
			body = strings.NewReader(strings.Repeat("b", tc.body))
			if !tc.sized {
				body = io.MultiReader(body) // no length known
			}
		}
		req, _ := http.NewRequest(tc.method, mb.east.URL+"/page", body)
		req.Host = "blog.alice.repl.test"
		resp, got := doBody(t, req)
		e := testbed.Decode(t, got)
		if resp.StatusCode != http.StatusOK || e.Name != "east-app" || e.BodyLen != int64(tc.body) {
			t.Fatalf("%s with %d bytes (sized %v): status %d %q, want east's container with the whole body", tc.method, tc.body, tc.sized, resp.StatusCode, got)
		}
	}
	if mb.eastRoutes.refreshes != 5 {
		t.Errorf("east refreshed %d times, want once per request", mb.eastRoutes.refreshes)
	}
}

// moveBack is a repl that moved back to east a moment ago: east's cache
// still holds its tombstone to west (its Refresh finds the live row),
// and west's tombstone names east. Both proxies log to observers.
type moveBack struct {
	east, west *httptest.Server
	eastRoutes refreshingRoutes
	logs       map[string]*observer.ObservedLogs
}

func startMoveBack(t *testing.T) *moveBack {
	t.Helper()
	app := testbed.EchoServer(t, "east-app")
	mb := &moveBack{east: httptest.NewUnstartedServer(nil), west: httptest.NewUnstartedServer(nil), logs: map[string]*observer.ObservedLogs{}}
	reg := testbed.Registry(t, map[string][2]string{"east": {mb.east.Listener.Addr().String(), "east.yaml"}, "west": {mb.west.Listener.Addr().String(), "west.yaml"}})
	mb.eastRoutes = refreshingRoutes{&staleRoutes{
		cached: store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: "west", Generation: 2},
		fresh:  store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{testbed.HostOf(app.URL)}, Generation: 3},
	}}
	westRoutes := &staleRoutes{cached: store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: "east", Generation: 3}}
	for _, c := range []struct {
		srv    *httptest.Server
		name   string
		routes proxy.Routes
	}{{mb.east, "east", mb.eastRoutes}, {mb.west, "west", westRoutes}} {
		core, l := observer.New(zap.DebugLevel)
		mb.logs[c.name] = l
		h, err := proxy.NewHandler(proxy.Config{Zone: testZone, Cluster: c.name, Registry: reg, HopSecret: testSecret, AccessLog: true},
			c.routes, proxy.NewMetrics(prometheus.NewRegistry(), c.name, nil), nil, zap.New(core))
		if err != nil {
			t.Fatal(err)
		}
		c.srv.Config.Handler = h
		c.srv.Start()
		t.Cleanup(c.srv.Close)
	}
	return mb
}

func doBody(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestStaleTombstoneToAThirdCluster: a repl moved a → b and then on to c.
// a's cache still holds its old tombstone to b (its repoint to c is on its
// way); b's tombstone names c, so b answers 508. a asks its store, finds a
// newer tombstone, to c, and sends the request there, once: the client
// gets c's answer, body and all (found by model/move.pml). When a's store
// has nothing newer, the client gets the 508.
func TestStaleTombstoneToAThirdCluster(t *testing.T) {
	app := testbed.EchoServer(t, "c-app")
	srvs := map[string]*httptest.Server{"a": httptest.NewUnstartedServer(nil), "b": httptest.NewUnstartedServer(nil), "c": httptest.NewUnstartedServer(nil)}
	clusters := map[string][2]string{}
	for name, s := range srvs {
		clusters[name] = [2]string{s.Listener.Addr().String(), name + ".yaml"}
	}
	reg := testbed.Registry(t, clusters)
	tomb := func(to string, gen int64) store.Route {
		return store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: to, Generation: gen}
	}
	aRoutes := refreshingRoutes{&staleRoutes{cached: tomb("b", 2), fresh: tomb("c", 3)}}
	routes := map[string]proxy.Routes{
		"a": aRoutes,
		"b": &staleRoutes{cached: tomb("c", 3)},
		"c": &staleRoutes{cached: store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{testbed.HostOf(app.URL)}, Generation: 3}},
	}
	for name, s := range srvs {
		h, err := proxy.NewHandler(proxy.Config{Zone: testZone, Cluster: name, Registry: reg, HopSecret: testSecret},
			routes[name], proxy.NewMetrics(prometheus.NewRegistry(), name, nil), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Config.Handler = h
		s.Start()
		t.Cleanup(s.Close)
	}
	for _, size := range []int{0, 3000, 100 << 10} {
		req, _ := http.NewRequest(http.MethodPost, srvs["a"].URL+"/x", strings.NewReader(strings.Repeat("z", size)))
		req.Host = "blog.alice.repl.test"
		resp, body := doBody(t, req)
		if e := testbed.Decode(t, body); resp.StatusCode != http.StatusOK || e.Name != "c-app" || e.BodyLen != int64(size) ||
			e.Header.Get("X-Forwarded-For") != "127.0.0.1" {
			t.Fatalf("POST of %d bytes: %d %q, want c's container with the body and the client's address", size, resp.StatusCode, body)
		}
	}
	// Nothing newer in a's store: the 508 stands.
	aRoutes.fresh = tomb("b", 2)
	req, _ := http.NewRequest(http.MethodGet, srvs["a"].URL+"/x", nil)
	req.Host = "blog.alice.repl.test"
	if resp, body := doBody(t, req); resp.StatusCode != http.StatusLoopDetected {
		t.Fatalf("with nothing newer: %d %q, want 508", resp.StatusCode, body)
	}
}

// provableRoutes is staleRoutes whose store has the fresh route, which
// only RefreshStale reaches: Refresh answers from the cache (its once a
// second was spent), as a cache whose change feed is lost does.
type provableRoutes struct {
	*staleRoutes
	staleAsks []int64
}

func (s *provableRoutes) RefreshStale(_ context.Context, _ store.Key, gen int64) (store.Route, error) {
	s.staleAsks = append(s.staleAsks, gen)
	return s.fresh, nil
}

// TestForwardedOnANewerTombstoneRefreshesPastTheLimit: the destination's
// cache holds a tombstone of generation 2 (its change feed lost the
// activation of generation 3) and its Refresh is spent; a request forwarded
// on the source's tombstone of generation 3 proves the cache stale, and the
// destination asks its store past the limit instead of bouncing a 508. A
// request forwarded on an older tombstone proves nothing: no such ask.
func TestForwardedOnANewerTombstoneRefreshesPastTheLimit(t *testing.T) {
	app := testbed.EchoServer(t, "app")
	reg := testbed.Registry(t, map[string][2]string{"east": {"127.0.0.1:1", "east.yaml"}, "west": {"127.0.0.1:2", "west.yaml"}})
	for _, tc := range []struct {
		gen   int64
		want  int
		asked []int64
	}{
		{3, http.StatusOK, []int64{3}},
		{2, http.StatusLoopDetected, nil},
	} {
		routes := &provableRoutes{staleRoutes: &staleRoutes{
			cached: store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: "east", Generation: 2},
			fresh:  store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{testbed.HostOf(app.URL)}, Generation: 3},
		}}
		h, err := proxy.NewHandler(proxy.Config{Zone: testZone, Cluster: "west", Registry: reg, HopSecret: testSecret}, routes, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		mark := proxy.SignHopGen(testSecret, time.Now(), tc.gen, "east", "GET", "/", "blog.alice.repl.test", "203.0.113.7", "http", "blog.alice.repl.test", "id-1")
		resp := forwardedGet(t, srv.URL, mark)
		srv.Close()
		if resp.StatusCode != tc.want || len(routes.staleAsks) != len(tc.asked) || len(tc.asked) > 0 && routes.staleAsks[0] != tc.asked[0] {
			t.Errorf("forwarded on generation %d: status %d, stale asks %v; want %d and %v", tc.gen, resp.StatusCode, routes.staleAsks, tc.want, tc.asked)
		}
	}
}

// TestBounceProvesTheSenderStale: a repl moved back to east at generation
// 3; east's cache still holds its tombstone to west of generation 2 and its
// Refresh is spent (its change feed is lost). West's tombstone names east,
// so west bounces the request; that proves east's route older than its
// store, and east asks past the limit (for generation 3) and serves it.
func TestBounceProvesTheSenderStale(t *testing.T) {
	app := testbed.EchoServer(t, "east-app")
	east, west := httptest.NewUnstartedServer(nil), httptest.NewUnstartedServer(nil)
	reg := testbed.Registry(t, map[string][2]string{"east": {east.Listener.Addr().String(), "east.yaml"}, "west": {west.Listener.Addr().String(), "west.yaml"}})
	eastRoutes := &provableRoutes{staleRoutes: &staleRoutes{
		cached: store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: "west", Generation: 2},
		fresh:  store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{testbed.HostOf(app.URL)}, Generation: 3},
	}}
	westRoutes := &staleRoutes{cached: store.Route{Kind: store.RouteTombstone, ReplID: "r1", Owner: "alice", Slug: "blog", Cluster: "east", Generation: 3}}
	for _, c := range []struct {
		srv    *httptest.Server
		name   string
		routes proxy.Routes
	}{{east, "east", eastRoutes}, {west, "west", westRoutes}} {
		h, err := proxy.NewHandler(proxy.Config{Zone: testZone, Cluster: c.name, Registry: reg, HopSecret: testSecret}, c.routes, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.srv.Config.Handler = h
		c.srv.Start()
		t.Cleanup(c.srv.Close)
	}
	req, _ := http.NewRequest(http.MethodGet, east.URL+"/page", nil)
	req.Host = "blog.alice.repl.test"
	resp, got := doBody(t, req)
	if resp.StatusCode != http.StatusOK || testbed.Decode(t, got).Name != "east-app" {
		t.Fatalf("status %d %q, want east's container", resp.StatusCode, got)
	}
	if len(eastRoutes.staleAsks) != 1 || eastRoutes.staleAsks[0] != 3 {
		t.Errorf("east's stale asks %v, want one for generation 3", eastRoutes.staleAsks)
	}
}

// forwardedGet sends GET / for blog.alice.repl.test to url as east's proxy
// would, with mark, and returns the response (its body closed).
func forwardedGet(t *testing.T, url, mark string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url+"/", nil)
	req.Host = "blog.alice.repl.test"
	req.Header = http.Header{proxy.HopHeader: {mark}, "X-Forwarded-For": {"203.0.113.7"}, "X-Forwarded-Proto": {"http"},
		"X-Forwarded-Host": {"blog.alice.repl.test"}, "X-Request-Id": {"id-1"}}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}
