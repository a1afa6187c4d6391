package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
)

// fakeWakes is a cluster's wake protocol as the store and its container
// manager play it, shared by every proxy of the cluster in a test: which
// repls sleep, their wakes (at most one pending per repl, as the store
// keeps them), and the activity the proxies recorded. The test plays the
// manager: finish wakes a repl, fail gives up on its wake.
type fakeWakes struct {
	mu       sync.Mutex
	asleep   map[string]bool
	wakes    map[string]store.Wake
	made     map[string]int // RequestWake true, by repl
	calls    int            // RequestWake calls
	failWith string         // a new wake fails at once with this reason
	activity []activityCall
}

type activityCall struct {
	at   time.Time
	last map[string]time.Time
}

func newFakeWakes(asleep ...string) *fakeWakes {
	f := &fakeWakes{asleep: map[string]bool{}, wakes: map[string]store.Wake{}, made: map[string]int{}}
	for _, id := range asleep {
		f.asleep[id] = true
	}
	return f
}

func (f *fakeWakes) RequestWake(_ context.Context, id, by string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if !f.asleep[id] {
		return false, nil
	}
	if w, ok := f.wakes[id]; ok && w.Failed == "" {
		return false, nil
	}
	w := store.Wake{ReplID: id, RequestedAt: time.Now(), RequestedBy: by}
	if f.failWith != "" {
		w.ClaimedBy, w.Failed, w.FailedAt = "manager-1", f.failWith, time.Now()
	}
	f.wakes[id] = w
	f.made[id]++
	return true, nil
}

func (f *fakeWakes) GetWake(_ context.Context, id string) (store.Wake, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if w, ok := f.wakes[id]; ok {
		return w, nil
	}
	return store.Wake{}, store.ErrNotFound
}

func (f *fakeWakes) RecordActivity(_ context.Context, last map[string]time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.activity = append(f.activity, activityCall{at: time.Now(), last: last})
	return nil
}

// finish is the manager's FinishWake: the repl is awake, its wake gone.
func (f *fakeWakes) finish(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.asleep, id)
	delete(f.wakes, id)
}

func (f *fakeWakes) sleeping(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asleep[id]
}

func (f *fakeWakes) madeTotal() (made, calls int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.made {
		made += n
	}
	return made, f.calls
}

// routes makes the route of a sleeping repl Asleep, as the store will.
func (f *fakeWakes) routes(r proxy.Routes) proxy.Routes { return sleepyRoutes{r, f} }

type sleepyRoutes struct {
	proxy.Routes
	f *fakeWakes
}

func (s sleepyRoutes) mark(r store.Route, err error) (store.Route, error) {
	if err == nil && r.Kind == store.RouteLocal && s.f.sleeping(r.ReplID) {
		r.Asleep = true
	}
	return r, err
}

func (s sleepyRoutes) Lookup(ctx context.Context, k store.Key) (store.Route, error) {
	return s.mark(s.Routes.Lookup(ctx, k))
}

func (s sleepyRoutes) Refresh(ctx context.Context, k store.Key) (store.Route, error) {
	return s.mark(s.Routes.Refresh(ctx, k))
}

// wakeOpts are a cluster's options with f as its wakes and routes.
func wakeOpts(f *fakeWakes, tweak func(*proxy.Config)) clusterOpts {
	return clusterOpts{
		routes: f.routes,
		tweak: func(c *proxy.Config) {
			c.Wakes = f
			if tweak != nil {
				tweak(c)
			}
		},
		server: func(s *proxy.ServerConfig) { s.H2C = true },
	}
}

// metric returns the value of a counter or gauge of c's with the given
// label values (name=value pairs), 0 when it has none yet.
func metric(t *testing.T, c *testCluster, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := c.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

func held(t *testing.T, cs ...*testCluster) float64 {
	t.Helper()
	var n float64
	for _, c := range cs {
		n += metric(t, c, "replproxy_wake_held_requests")
	}
	return n
}

var h2cClient = func() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 30 * time.Second}
}()

type answer struct {
	status int
	header http.Header
	body   string
	proto  int
	took   time.Duration
	err    error
}

// send sends a request for host through c with client, in the background.
func sendAsync(client *http.Client, c *testCluster, method, host string, body io.Reader, header http.Header) <-chan answer {
	ch := make(chan answer, 1)
	go func() {
		start := time.Now()
		req, err := http.NewRequest(method, c.URL("/"), body)
		if err != nil {
			ch <- answer{err: err}
			return
		}
		req.Host = host
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := client.Do(req)
		if err != nil {
			ch <- answer{err: err, took: time.Since(start)}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- answer{status: resp.StatusCode, header: resp.Header, body: string(b), proto: resp.ProtoMajor, took: time.Since(start), err: err}
	}()
	return ch
}

// TestWakeOnceThroughTwoProxies: 100 concurrent requests (HTTP/1.1 and
// HTTP/2) for a sleeping repl through two proxies of one cluster make one
// wake; all are held until it is up, then served.
func TestWakeOnceThroughTwoProxies(t *testing.T) {
	f := newFakeWakes("r1")
	st, path := embeddedStore(t)
	addr1, addr2 := freeAddr(t), freeAddr(t)
	reg := testbed.Registry(t, map[string][2]string{"east": {addr1, path}, "west": {"127.0.0.1:1", path + ".west"}})
	c1 := startCluster(t, "east", addr1, st, reg, wakeOpts(f, nil))
	c2 := startCluster(t, "east", addr2, st, reg, wakeOpts(f, nil))
	backend := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c1.Store, "r1", "alice", "app", testbed.HostOf(backend.URL))
	testbed.WaitFor(t, 10*time.Second, "the second proxy's index to know the repl", func() bool {
		return live(c2.Cache.Index().Repl(store.ReplIDKey("r1")))
	})

	var answers []<-chan answer
	for i := range 100 {
		c := []*testCluster{c1, c2}[i%2]
		client := []*http.Client{testClient, h2cClient}[i/2%2]
		answers = append(answers, sendAsync(client, c, http.MethodGet, "app.alice.repl.test", nil, nil))
	}
	testbed.WaitFor(t, 10*time.Second, "100 requests held", func() bool { return held(t, c1, c2) == 100 })
	if made, calls := f.madeTotal(); made != 1 || calls > 2 {
		t.Fatalf("%d wakes made in %d RequestWake calls; want 1 made, at most one call per proxy", made, calls)
	}
	time.Sleep(300 * time.Millisecond) // still held: the repl sleeps
	if n := held(t, c1, c2); n != 100 {
		t.Fatalf("%v requests held before the wake finished, want 100", n)
	}
	f.finish("r1")
	protos := map[int]int{}
	for i, ch := range answers {
		a := <-ch
		if a.err != nil || a.status != http.StatusOK || testbed.Decode(t, a.body).Name != "app" {
			t.Fatalf("request %d: %d %v %q", i, a.status, a.err, a.body)
		}
		protos[a.proto]++
	}
	if protos[1] != 50 || protos[2] != 50 {
		t.Errorf("answers by HTTP major version: %v, want 50 each", protos)
	}
	if made, _ := f.madeTotal(); made != 1 {
		t.Errorf("%d wakes made, want 1", made)
	}
	if n := held(t, c1, c2); n != 0 {
		t.Errorf("held gauge %v after the wake, want 0", n)
	}
	up := metric(t, c1, "replproxy_wakes_total", "outcome", "up") + metric(t, c2, "replproxy_wakes_total", "outcome", "up")
	requested := metric(t, c1, "replproxy_wakes_requested_total") + metric(t, c2, "replproxy_wakes_requested_total")
	latencies := metric(t, c1, "replproxy_wake_seconds") + metric(t, c2, "replproxy_wake_seconds")
	if up != 2 || requested != 1 || latencies != 2 {
		t.Errorf("wakes up %v (want 2: one waiter a proxy), requested %v (want 1), latencies observed %v (want 2)", up, requested, latencies)
	}
}

// TestWakeHoldsBodiesAndUpgrades: a POST with a sized body, one with a
// streamed body of unknown length, and a WebSocket upgrade are held for
// a sleeping repl, then served; the streamed body goes on arriving while
// held and reaches the container whole.
func TestWakeHoldsBodiesAndUpgrades(t *testing.T) {
	f := newFakeWakes("r1")
	c := oneCluster(t, wakeOpts(f, nil))
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			conn, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer conn.CloseNow()
			for {
				typ, msg, err := conn.Read(r.Context())
				if err != nil {
					return
				}
				if err := conn.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
					return
				}
			}
		}
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "got %d bytes", n)
	}))
	defer app.Close()
	testbed.CreateRepl(t, c.Store, "r1", "alice", "app", testbed.HostOf(app.URL))
	host := "app.alice.repl.test"

	sized := sendAsync(testClient, c, http.MethodPost, host, bytes.NewReader(bytes.Repeat([]byte("x"), 100<<10)), nil)
	pr, pw := io.Pipe()
	streamed := sendAsync(testClient, c, http.MethodPost, host, pr, nil)
	go func() {
		defer pw.Close()
		chunk := bytes.Repeat([]byte("y"), 64<<10)
		for range 32 { // 2 MiB, the first chunks while held
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
	}()
	type dialed struct {
		conn *websocket.Conn
		err  error
	}
	ws := make(chan dialed, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		conn, _, err := websocket.Dial(ctx, "ws://"+c.Addr+"/socket", &websocket.DialOptions{Host: host})
		ws <- dialed{conn, err}
	}()
	testbed.WaitFor(t, 10*time.Second, "3 requests held", func() bool { return held(t, c) == 3 })
	f.finish("r1")

	for name, ch := range map[string]<-chan answer{"sized": sized, "streamed": streamed} {
		want := map[string]string{"sized": "got 102400 bytes", "streamed": "got 2097152 bytes"}[name]
		if a := <-ch; a.err != nil || a.status != 200 || a.body != want {
			t.Errorf("%s POST: %d %v %q, want %q", name, a.status, a.err, a.body, want)
		}
	}
	d := <-ws
	if d.err != nil {
		t.Fatalf("WebSocket through a wake: %v", d.err)
	}
	defer d.conn.CloseNow()
	if err := d.conn.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := d.conn.Read(ctx); err != nil || string(msg) != "echo: hi" {
		t.Fatalf("WebSocket echo: %q %v", msg, err)
	}
	d.conn.Close(websocket.StatusNormalClosure, "")
}

// TestWakeNeverAnswered: with a manager that never answers, every held
// request gets its 503 with Retry-After at WakeTimeout, and the held
// gauge and the goroutines go back to where they were.
func TestWakeNeverAnswered(t *testing.T) {
	f := newFakeWakes("r1")
	c := oneCluster(t, wakeOpts(f, func(cfg *proxy.Config) { cfg.WakeTimeout = 400 * time.Millisecond }))
	backend := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "app", testbed.HostOf(backend.URL))
	testClient.CloseIdleConnections()
	h2cClient.CloseIdleConnections()
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()

	var answers []<-chan answer
	for i := range 50 {
		answers = append(answers, sendAsync([]*http.Client{testClient, h2cClient}[i%2], c, http.MethodGet, "app.alice.repl.test", nil, nil))
	}
	for i, ch := range answers {
		a := <-ch
		if a.err != nil || a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" {
			t.Fatalf("request %d: %d %v Retry-After %q", i, a.status, a.err, a.header.Get("Retry-After"))
		}
		if a.took < 350*time.Millisecond || a.took > 5*time.Second {
			t.Errorf("request %d answered after %v, want about the 400ms bound", i, a.took)
		}
	}
	if n := held(t, c); n != 0 {
		t.Errorf("held gauge %v after the bound, want 0", n)
	}
	if made, _ := f.madeTotal(); made != 1 {
		t.Errorf("%d wakes made, want 1", made)
	}
	testbed.WaitFor(t, 5*time.Second, "the waiter's timeout to be counted", func() bool {
		return metric(t, c, "replproxy_wakes_total", "outcome", "timeout") == 1
	})
	testClient.CloseIdleConnections()
	h2cClient.CloseIdleConnections()
	var now int
	testbed.WaitFor(t, 5*time.Second, "the goroutines to go back to the baseline", func() bool {
		now = runtime.NumGoroutine()
		return now <= base
	})
}

// TestWakeRateLimit: a flood of requests for 40 sleeping repls makes no
// more new wakes than the bucket allows (burst 3, 1 a second); the others
// are 503 at once, and a repl whose wake is pending still costs nothing.
func TestWakeRateLimit(t *testing.T) {
	var ids []string
	for i := range 40 {
		ids = append(ids, fmt.Sprintf("r%d", i))
	}
	f := newFakeWakes(ids...)
	c := oneCluster(t, wakeOpts(f, func(cfg *proxy.Config) {
		cfg.WakeRate, cfg.WakeBurst, cfg.WakeTimeout = 1, 3, 5*time.Second
	}))
	backend := testbed.EchoServer(t, "app")
	for _, id := range ids {
		testbed.CreateRepl(t, c.Store, id, "alice", "app-"+id, testbed.HostOf(backend.URL))
	}
	start := time.Now()
	answers := map[string]<-chan answer{}
	for _, id := range ids {
		answers[id] = sendAsync(testClient, c, http.MethodGet, id+".id.repl.test", nil, nil)
	}
	var rejected []string
	testbed.WaitFor(t, 10*time.Second, "the flood to be held or refused", func() bool {
		return held(t, c)+metric(t, c, "replproxy_wake_rejected_total", "reason", "rate") >= 40
	})
	elapsed := time.Since(start)
	made, _ := f.madeTotal()
	if allowed := 3 + int(elapsed.Seconds()) + 1; made > allowed || made < 3 {
		t.Fatalf("%d wakes made in %v; want 3 to %d (burst 3, 1/s)", made, elapsed, allowed)
	}
	pending := ""
	f.mu.Lock()
	for id := range f.wakes {
		pending = id
	}
	f.mu.Unlock()
	for id, ch := range answers {
		if _, ok := f.GetWake(context.Background(), id); ok == nil {
			continue // held
		}
		a := <-ch
		if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" || a.took > 3*time.Second {
			t.Errorf("%s: %d after %v, want a 503 with Retry-After at once", id, a.status, a.took)
		}
		rejected = append(rejected, id)
	}
	if len(rejected) != 40-made {
		t.Errorf("%d refused, want %d", len(rejected), 40-made)
	}
	// The bucket is empty; a repl already waking costs nothing.
	again := sendAsync(testClient, c, http.MethodGet, pending+".id.repl.test", nil, nil)
	testbed.WaitFor(t, 5*time.Second, "the request for a pending repl to be held", func() bool { return held(t, c) == float64(made)+1 })
	f.mu.Lock()
	var waking []string
	for id := range f.wakes {
		waking = append(waking, id)
	}
	f.mu.Unlock()
	for _, id := range waking {
		f.finish(id)
	}
	if a := <-again; a.status != http.StatusOK {
		t.Errorf("request for a repl already waking: %d %q", a.status, a.body)
	}
	for id, ch := range answers {
		if !f.sleeping(id) && !contains(rejected, id) {
			if a := <-ch; a.status != http.StatusOK {
				t.Errorf("%s: %d %q once awake", id, a.status, a.body)
			}
		}
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestWakingPage: a browser's GET waits WakePageAfter, then gets the
// self-reloading waking page; an API client waits until WakeTimeout.
func TestWakingPage(t *testing.T) {
	f := newFakeWakes("r1")
	c := oneCluster(t, wakeOpts(f, func(cfg *proxy.Config) {
		cfg.WakePageAfter, cfg.WakeTimeout = 300*time.Millisecond, 1500*time.Millisecond
	}))
	backend := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "app", testbed.HostOf(backend.URL))
	browser := sendAsync(testClient, c, http.MethodGet, "app.alice.repl.test", nil, http.Header{"Accept": {"text/html,application/xhtml+xml"}})
	api := sendAsync(testClient, c, http.MethodGet, "app.alice.repl.test", nil, http.Header{"Accept": {"application/json"}})
	b := <-browser
	if b.status != 503 || b.header.Get("Retry-After") != "1" || !strings.HasPrefix(b.header.Get("Content-Type"), "text/html") ||
		!strings.Contains(b.body, `http-equiv="refresh"`) || !strings.Contains(b.body, "Waking up") {
		t.Errorf("browser: %d Retry-After %q %q", b.status, b.header.Get("Retry-After"), b.body)
	}
	if b.took < 250*time.Millisecond || b.took > 1200*time.Millisecond {
		t.Errorf("browser got the waking page after %v, want about 300ms", b.took)
	}
	a := <-api
	if a.status != 503 || a.header.Get("Retry-After") == "" || strings.Contains(a.body, "<html") {
		t.Errorf("API client: %d Retry-After %q %q", a.status, a.header.Get("Retry-After"), a.body)
	}
	if a.took < 1400*time.Millisecond {
		t.Errorf("API client answered after %v, want the 1.5s bound", a.took)
	}
	// Once awake, the browser's reload is served.
	f.finish("r1")
	if resp, _ := get(t, c, "app.alice.repl.test", "/", http.Header{"Accept": {"text/html"}}); resp.StatusCode != 200 {
		t.Errorf("after the wake: %d", resp.StatusCode)
	}
}

// TestWakeFailed: the manager gives up: the held request is a 503 that
// does not show the manager's reason, which the proxy logs.
func TestWakeFailed(t *testing.T) {
	f := newFakeWakes("r1")
	f.failWith = "docker: no space left on device /var/lib/docker/overlay2 (node-17.internal)"
	c := oneCluster(t, wakeOpts(f, nil))
	backend := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "app", testbed.HostOf(backend.URL))
	a := <-sendAsync(testClient, c, http.MethodGet, "app.alice.repl.test", nil, nil)
	if a.status != 503 || a.header.Get("Retry-After") == "" || strings.Contains(a.body, "docker") || a.took > 3*time.Second {
		t.Errorf("failed wake: %d after %v, Retry-After %q, body %q", a.status, a.took, a.header.Get("Retry-After"), a.body)
	}
	logs := c.Logs.FilterMessage("wake failed").All()
	if len(logs) != 1 || logs[0].ContextMap()["reason"] != f.failWith || logs[0].ContextMap()["repl_id"] != "r1" {
		t.Errorf("log of the failed wake: %v", logs)
	}
	if n := metric(t, c, "replproxy_wakes_total", "outcome", "failed"); n != 1 {
		t.Errorf("failed wakes %v, want 1", n)
	}
}

// TestWakeBounds: over MaxHeldPerRepl for one repl, or MaxHeld in all, a
// request is a 503 at once; without Wakes a sleeping repl is a 503 at
// once; a name nobody has is a 404 and asks for no wake.
func TestWakeBounds(t *testing.T) {
	f := newFakeWakes("a", "b", "c")
	c := oneCluster(t, wakeOpts(f, func(cfg *proxy.Config) { cfg.MaxHeldPerRepl, cfg.MaxHeld = 3, 5 }))
	backend := testbed.EchoServer(t, "app")
	for _, id := range []string{"a", "b", "c"} {
		testbed.CreateRepl(t, c.Store, id, "alice", id, testbed.HostOf(backend.URL))
	}
	var answers []<-chan answer
	for range 3 {
		answers = append(answers, sendAsync(testClient, c, http.MethodGet, "a.alice.repl.test", nil, nil))
	}
	testbed.WaitFor(t, 5*time.Second, "3 held for a", func() bool { return held(t, c) == 3 })
	if a := <-sendAsync(testClient, c, http.MethodGet, "a.alice.repl.test", nil, nil); a.status != 503 || a.took > 2*time.Second {
		t.Errorf("4th request for a: %d after %v, want 503 at once", a.status, a.took)
	}
	for range 2 {
		answers = append(answers, sendAsync(testClient, c, http.MethodGet, "b.alice.repl.test", nil, nil))
	}
	testbed.WaitFor(t, 5*time.Second, "5 held", func() bool { return held(t, c) == 5 })
	if a := <-sendAsync(testClient, c, http.MethodGet, "c.alice.repl.test", nil, nil); a.status != 503 || a.took > 2*time.Second {
		t.Errorf("request for c over MaxHeld: %d after %v, want 503 at once", a.status, a.took)
	}
	if r, tot := metric(t, c, "replproxy_wake_rejected_total", "reason", "repl"), metric(t, c, "replproxy_wake_rejected_total", "reason", "total"); r != 1 || tot != 1 {
		t.Errorf("rejections: repl %v, total %v; want 1 each", r, tot)
	}
	f.finish("a")
	f.finish("b")
	for _, ch := range answers {
		if a := <-ch; a.status != 200 {
			t.Errorf("held request: %d %q", a.status, a.body)
		}
	}
	_, calls := f.madeTotal()
	if resp, _ := get(t, c, "nope.alice.repl.test", "/", nil); resp.StatusCode != 404 {
		t.Errorf("unknown name: %d", resp.StatusCode)
	}
	if _, after := f.madeTotal(); after != calls {
		t.Errorf("an unknown name asked for a wake")
	}

	off := newFakeWakes("r1")
	nc := oneCluster(t, clusterOpts{routes: off.routes})
	testbed.CreateRepl(t, nc.Store, "r1", "alice", "app", testbed.HostOf(backend.URL))
	if a := <-sendAsync(testClient, nc, http.MethodGet, "app.alice.repl.test", nil, nil); a.status != 503 || !strings.Contains(a.body, "asleep") {
		t.Errorf("without Wakes: %d %q", a.status, a.body)
	}
}

// TestActivityFlushed: the repls that served requests, and one with a
// WebSocket open, are written in one RecordActivity call per interval.
func TestActivityFlushed(t *testing.T) {
	f := newFakeWakes()
	const interval = 300 * time.Millisecond
	c := oneCluster(t, wakeOpts(f, func(cfg *proxy.Config) { cfg.ActivityFlush = interval }))
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if conn, err := websocket.Accept(w, r, nil); err == nil {
			defer conn.CloseNow()
			_, _, _ = conn.Read(r.Context())
			return
		}
	}))
	defer ws.Close()
	backend := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "one", testbed.HostOf(backend.URL))
	testbed.CreateRepl(t, c.Store, "r2", "alice", "two", testbed.HostOf(backend.URL))
	testbed.CreateRepl(t, c.Store, "r3", "alice", "chat", testbed.HostOf(ws.URL))
	start := time.Now()
	for range 20 {
		get(t, c, "one.alice.repl.test", "/", nil)
		get(t, c, "two.alice.repl.test", "/", nil)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+c.Addr+"/", &websocket.DialOptions{Host: "chat.alice.repl.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	time.Sleep(5 * interval)
	f.mu.Lock()
	calls := append([]activityCall(nil), f.activity...)
	f.mu.Unlock()
	elapsed := time.Since(start)
	if len(calls) == 0 || len(calls) > int(elapsed/interval)+1 {
		t.Fatalf("%d RecordActivity calls in %v, want one per %v", len(calls), elapsed, interval)
	}
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].at.Sub(calls[i-1].at); gap < interval/2 {
			t.Errorf("calls %d and %d %v apart, want one per %v", i-1, i, gap, interval)
		}
	}
	seen := map[string]bool{}
	for _, call := range calls {
		for id := range call.last {
			seen[id] = true
		}
	}
	if !seen["r1"] || !seen["r2"] || !seen["r3"] {
		t.Errorf("repls recorded: %v, want r1, r2, r3", seen)
	}
	// The open WebSocket keeps r3 active in every later flush.
	last := calls[len(calls)-1]
	if _, ok := last.last["r3"]; !ok || len(last.last) != 1 {
		t.Errorf("last flush %v, want r3 alone (its WebSocket is open, the others idle)", last.last)
	}
}
