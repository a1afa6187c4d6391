package proxy_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

// twoClusters runs east and west, each with its own PostgreSQL server and
// its own proxy, sharing one registry.
func twoClusters(t *testing.T, o clusterOpts) (east, west *testCluster, servers []*pgtest.Server) {
	t.Helper()
	servers = pgtest.StartN(t, 2)
	dsns := [2]string{servers[0].NewDatabase(t), servers[1].NewDatabase(t)}
	addrs := [2]string{freeAddr(t), freeAddr(t)}
	reg := testbed.Registry(t, map[string][2]string{"east": {addrs[0], dsns[0]}, "west": {addrs[1], dsns[1]}})
	var cs [2]*testCluster
	for i, name := range []string{"east", "west"} {
		st, err := cluster.Open(context.Background(), dsns[i], cluster.OpenOptions{Migrate: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		cs[i] = startCluster(t, name, addrs[i], st, reg, o)
	}
	return cs[0], cs[1], servers
}

// moveTo puts repl id live in dst (generation gen) and a tombstone in src.
func moveTo(t *testing.T, src, dst *testCluster, id, owner, slug, endpoint string, gen int64) {
	t.Helper()
	ctx := context.Background()
	if _, err := dst.Store.Activate(ctx, store.Repl{ID: id, Owner: owner, Slug: slug, Endpoints: []string{endpoint}, Generation: gen}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Store.Activate(ctx, store.Repl{ID: id, Owner: owner, Slug: slug, Endpoints: []string{"127.0.0.1:1"}, Generation: gen - 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Store.Retire(ctx, id, dst.Name, gen); err != nil {
		t.Fatal(err)
	}
}

// clientFrom is a client whose connections come from a given loopback
// address, so the tests can tell the client from the proxies.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}, Timeout: 30 * time.Second}
}

func do(t *testing.T, client *http.Client, addr, host string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/page?q=1", nil)
	req.Host = host
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestTombstoneForwarding(t *testing.T) {
	east, west, _ := twoClusters(t, clusterOpts{})
	app := testbed.EchoServer(t, "west-app")
	moveTo(t, east, west, "r1", "alice", "blog", testbed.HostOf(app.URL), 2)
	client := clientFrom("127.0.0.3")

	direct, directBody := do(t, client, west.Addr, "blog.alice.repl.test", nil)
	forwarded, fwdBody := do(t, client, east.Addr, "blog.alice.repl.test", http.Header{
		"X-Forwarded-For": {"6.6.6.6"}, "Replproxy-Hop": {"v1;west;1;forged"},
	})
	if direct.StatusCode != 200 || forwarded.StatusCode != 200 {
		t.Fatalf("status direct %d, forwarded %d (%s)", direct.StatusCode, forwarded.StatusCode, fwdBody)
	}
	d, f := testbed.Decode(t, directBody), testbed.Decode(t, fwdBody)
	if f.Name != "west-app" || f.Host != d.Host || f.Path != d.Path || f.Method != d.Method {
		t.Fatalf("forwarded request reached %+v, direct %+v", f, d)
	}
	// The container sees the client, not the east proxy, and not the spoof.
	for _, e := range []testbed.Echoed{d, f} {
		if got := e.Header.Get("X-Forwarded-For"); got != "127.0.0.3" {
			t.Errorf("container saw X-Forwarded-For %q, want the client 127.0.0.3", got)
		}
		if e.Header.Get("X-Forwarded-Host") != "blog.alice.repl.test" || e.Header.Get("X-Forwarded-Proto") != "http" {
			t.Errorf("container saw forwarding headers %v", e.Header)
		}
		if e.Header.Get(proxy.HopHeader) != "" {
			t.Error("the hop mark reached the container")
		}
	}
	// One request id across both proxies, returned to the client.
	id := forwarded.Header.Get("X-Request-Id")
	if id == "" || f.Header.Get("X-Request-Id") != id {
		t.Errorf("request id: client got %q, container %q", id, f.Header.Get("X-Request-Id"))
	}
	// The response the client sees is the new cluster's, unchanged.
	for _, h := range []string{"Content-Type", "X-Backend"} {
		if direct.Header.Get(h) != forwarded.Header.Get(h) {
			t.Errorf("header %s: direct %q, forwarded %q", h, direct.Header.Get(h), forwarded.Header.Get(h))
		}
	}
	static := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Cache-Control", "max-age=60")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte("the same bytes"))
	}))
	defer static.Close()
	moveTo(t, east, west, "r2", "alice", "static", testbed.HostOf(static.URL), 2)
	direct, directBody = do(t, client, west.Addr, "static.alice.repl.test", nil)
	forwarded, fwdBody = do(t, client, east.Addr, "static.alice.repl.test", nil)
	for _, h := range []string{"X-Request-Id", "Date"} { // per request
		direct.Header.Del(h)
		forwarded.Header.Del(h)
	}
	if direct.StatusCode != forwarded.StatusCode || directBody != fwdBody || !reflect.DeepEqual(direct.Header, forwarded.Header) {
		t.Errorf("forwarded response differs:\n direct    %d %v %q\n forwarded %d %v %q",
			direct.StatusCode, direct.Header, directBody, forwarded.StatusCode, forwarded.Header, fwdBody)
	}
	// East logged it as forwarded, west as local with the same id: west
	// verified the hop mark (else it would have made its own id).
	if !logged(east, id, "forwarded") || !logged(west, id, "local") {
		t.Errorf("access logs: east forwarded %v, west local %v", logged(east, id, "forwarded"), logged(west, id, "local"))
	}
}

func logged(c *testCluster, id, route string) bool {
	for _, l := range c.Logs.FilterMessage("request").All() {
		f := l.ContextMap()
		if f["request_id"] == id && f["route"] == route {
			return true
		}
	}
	return false
}

func TestForwardingLoopGets508(t *testing.T) {
	east, west, _ := twoClusters(t, clusterOpts{})
	ctx := context.Background()
	// Both clusters believe the repl lives in the other one.
	for _, c := range []*testCluster{east, west} {
		if _, err := c.Store.CreateRepl(ctx, store.Repl{ID: "r9", Owner: "bob", Slug: "lost", Endpoints: []string{"127.0.0.1:1"}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := east.Store.Retire(ctx, "r9", "west", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := west.Store.Retire(ctx, "r9", "east", 3); err != nil {
		t.Fatal(err)
	}
	resp, body := do(t, testClient, east.Addr, "lost.bob.repl.test", nil)
	if resp.StatusCode != http.StatusLoopDetected || !strings.Contains(body, "forwarded at most once") {
		t.Fatalf("status %d body %q, want 508 explaining the loop", resp.StatusCode, body)
	}
	// West cannot tell a loop from east's route being a moment stale (a
	// move back), so it logs a bounce; east, whose store still says west
	// after asking again, logs the loop.
	if len(east.Logs.FilterMessage("forwarding loop: the cluster a tombstone names answered 508, and this cluster's store agrees with the tombstone").All()) != 1 {
		t.Error("east did not log the loop")
	}
	if n := len(west.Logs.FilterMessage("forwarding loop: a forwarded request met a tombstone").All()); n != 0 {
		t.Errorf("west logged %d loops for a request bounced back to its source, want 0", n)
	}
}

func TestSpoofedHopMarkIsIgnored(t *testing.T) {
	east, west, _ := twoClusters(t, clusterOpts{})
	app := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, west.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
	// A well-formed mark signed with another secret, and one replayed
	// from long ago: both stripped, with the headers they claim to vouch for.
	for name, mark := range map[string]string{
		"bad signature": proxy.SignHop([]byte("another-secret-32-bytes-long......"), time.Now(), "east", "GET", "/page?q=1", "blog.alice.repl.test", "6.6.6.6", "https", "evil", "id-1"),
		"expired":       proxy.SignHop(testSecret, time.Now().Add(-time.Hour), "east", "GET", "/page?q=1", "blog.alice.repl.test", "6.6.6.6", "https", "evil", "id-1"),
		"garbage":       "v2;;;;;",
	} {
		t.Run(name, func(t *testing.T) {
			resp, body := do(t, clientFrom("127.0.0.3"), west.Addr, "blog.alice.repl.test", http.Header{
				proxy.HopHeader: {mark}, "X-Forwarded-For": {"6.6.6.6"}, "X-Forwarded-Proto": {"https"},
				"X-Forwarded-Host": {"evil"}, "X-Request-Id": {"id-1"},
			})
			e := testbed.Decode(t, body)
			if e.Header.Get("X-Forwarded-For") != "127.0.0.3" || e.Header.Get("X-Forwarded-Proto") != "http" ||
				e.Header.Get("X-Forwarded-Host") != "blog.alice.repl.test" || resp.Header.Get("X-Request-Id") == "id-1" {
				t.Fatalf("spoofed headers got through: %v (request id %q)", e.Header, resp.Header.Get("X-Request-Id"))
			}
		})
	}
	// A valid mark is honoured: the container sees the headers it vouches for.
	good := proxy.SignHop(testSecret, time.Now(), "east", "GET", "/page?q=1", "blog.alice.repl.test", "203.0.113.7", "https", "blog.alice.repl.test", "id-2")
	resp, body := do(t, testClient, west.Addr, "blog.alice.repl.test", http.Header{
		proxy.HopHeader: {good}, "X-Forwarded-For": {"203.0.113.7"}, "X-Forwarded-Proto": {"https"},
		"X-Forwarded-Host": {"blog.alice.repl.test"}, "X-Request-Id": {"id-2"},
	})
	if e := testbed.Decode(t, body); e.Header.Get("X-Forwarded-For") != "203.0.113.7" || e.Header.Get("X-Forwarded-Proto") != "https" || resp.Header.Get("X-Request-Id") != "id-2" {
		t.Fatalf("valid hop mark not honoured: %v", e.Header)
	}
	_ = east
}

func TestRouteChangeTakesEffectWithoutRestart(t *testing.T) {
	// A long TTL: only the change notification can make the proxy see it.
	east, _, _ := twoClusters(t, clusterOpts{cache: routecache.Config{TTL: time.Hour, NegativeTTL: time.Hour}})
	one, two := testbed.EchoServer(t, "one"), testbed.EchoServer(t, "two")
	testbed.CreateRepl(t, east.Store, "r1", "alice", "blog", testbed.HostOf(one.URL))
	if _, body := get(t, east, "blog.alice.repl.test", "/", nil); testbed.Decode(t, body).Name != "one" {
		t.Fatal("not routed to the first endpoint")
	}
	if resp, _ := get(t, east, "new.alice.repl.test", "/", nil); resp.StatusCode != 404 {
		t.Fatal("unknown repl not 404")
	}
	start := time.Now()
	if _, err := east.Store.SetEndpoints(context.Background(), "r1", []string{testbed.HostOf(two.URL)}); err != nil {
		t.Fatal(err)
	}
	testbed.CreateRepl(t, east.Store, "r2", "alice", "new", testbed.HostOf(two.URL))
	testbed.WaitFor(t, 5*time.Second, "the new endpoint and the new repl", func() bool {
		_, body := get(t, east, "blog.alice.repl.test", "/", nil)
		resp, _ := get(t, east, "new.alice.repl.test", "/", nil)
		return testbed.Decode(t, body).Name == "two" && resp.StatusCode == 200
	})
	t.Logf("route change seen after %v", time.Since(start).Round(time.Millisecond))
}

func TestDatabaseOutage(t *testing.T) {
	east, _, servers := twoClusters(t, clusterOpts{})
	app := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, east.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
	testbed.CreateRepl(t, east.Store, "r2", "alice", "later", testbed.HostOf(app.URL))
	if resp, _ := get(t, east, "blog.alice.repl.test", "/", nil); resp.StatusCode != 200 {
		t.Fatal("not serving before the outage")
	}
	servers[0].Stop(t)
	// Known routes keep serving, even once their TTL passed (stale);
	// unknown hosts fail fast with 503.
	for range 3 {
		if resp, body := get(t, east, "blog.alice.repl.test", "/", nil); resp.StatusCode != 200 {
			t.Fatalf("cached route during the outage: %d %s", resp.StatusCode, body)
		}
		if resp, body := get(t, east, "later.alice.repl.test", "/", nil); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("unknown host during the outage: %d %s, want 503", resp.StatusCode, body)
		}
	}
	servers[0].Restart(t)
	testbed.WaitFor(t, 20*time.Second, "service to recover", func() bool {
		resp, _ := get(t, east, "later.alice.repl.test", "/", nil)
		return resp.StatusCode == 200
	})
}
