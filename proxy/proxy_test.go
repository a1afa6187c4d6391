package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
)

func TestRoutingByHost(t *testing.T) {
	c := oneCluster(t, clusterOpts{})
	blog, shop := testbed.EchoServer(t, "blog"), testbed.EchoServer(t, "shop")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(blog.URL))
	testbed.CreateRepl(t, c.Store, "r2", "bob", "shop", testbed.HostOf(shop.URL))
	if _, err := c.Store.LinkDomain(context.Background(), store.Domain{Name: "www.example.com", ReplID: "r2"}); err != nil {
		t.Fatal(err)
	}
	browser := http.Header{"Accept": {"text/html,application/xhtml+xml"}}
	for _, tc := range []struct {
		name, host string
		header     http.Header
		status     int
		backend    string // for 200
		bodyHas    string // for errors
		ctype      string
	}{
		{name: "owner/slug", host: "blog.alice.repl.test", status: 200, backend: "blog"},
		{name: "case and port and dot", host: "Blog.ALICE.repl.test.:8080", status: 200, backend: "blog"},
		{name: "by id", host: "r2.id.repl.test", status: 200, backend: "shop"},
		{name: "custom domain", host: "www.example.com", status: 200, backend: "shop"},
		{name: "unknown repl, plain", host: "nope.alice.repl.test", status: 404, bodyHas: "nope.alice.repl.test", ctype: "text/plain"},
		{name: "unknown repl, browser", host: "nope.alice.repl.test", header: browser, status: 404, bodyHas: "<h1>Not Found</h1>", ctype: "text/html"},
		{name: "unknown domain", host: "other.example.com", status: 404, bodyHas: "other.example.com"},
		{name: "apex", host: "repl.test", status: 404},
		{name: "owner only", host: "alice.repl.test", status: 404},
		{name: "malformed", host: "bad_host.repl.test", status: 400, bodyHas: "bad_host"},
		{name: "too deep", host: "a.b.c.repl.test", status: 400, bodyHas: "too many labels"},
		{name: "ip literal", host: "127.0.0.1", status: 400, bodyHas: "IP address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, c, tc.host, "/x?y=1", tc.header)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d; body %q", resp.StatusCode, tc.status, body)
			}
			if resp.Header.Get("X-Request-Id") == "" {
				t.Error("no X-Request-Id in the response")
			}
			if tc.status == 200 {
				e := testbed.Decode(t, body)
				if e.Name != tc.backend || e.Host != tc.host || e.Path != "/x?y=1" {
					t.Fatalf("reached %+v, want backend %s with the same Host and path", e, tc.backend)
				}
				return
			}
			if !strings.Contains(body, tc.bodyHas) {
				t.Errorf("body %q does not contain %q", body, tc.bodyHas)
			}
			if tc.ctype != "" && !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype) {
				t.Errorf("content type %q, want %s", resp.Header.Get("Content-Type"), tc.ctype)
			}
		})
	}
	// Every request after the first for a host was answered from the cache.
	if s := c.Cache.Stats(); s.Loads > 6 {
		t.Errorf("store loads = %d for 4 distinct routable hosts (+2 unknown): the cache is not used", s.Loads)
	}
}

func TestForwardingHeaders(t *testing.T) {
	c := oneCluster(t, clusterOpts{})
	blog := testbed.EchoServer(t, "blog")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(blog.URL))
	resp, body := get(t, c, "blog.alice.repl.test", "/", http.Header{
		"X-Forwarded-For":   {"6.6.6.6"},
		"X-Forwarded-Proto": {"https"},
		"X-Forwarded-Host":  {"evil.example"},
		"X-Request-Id":      {"client-chosen"},
		"Replproxy-Hop":     {"v1;west;0;forged"},
		"Connection":        {"X-Secret"},
		"X-Secret":          {"hop-by-hop"},
		"Via":               {"1.1 somewhere"},
	})
	e := testbed.Decode(t, body)
	h := e.Header
	for name, want := range map[string]string{
		"X-Forwarded-For":   "127.0.0.1",
		"X-Forwarded-Proto": "http",
		"X-Forwarded-Host":  "blog.alice.repl.test",
		"Via":               "1.1 somewhere, 1.1 replproxy",
	} {
		if got := strings.Join(h.Values(name), ", "); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	id := resp.Header.Get("X-Request-Id")
	if id == "" || id == "client-chosen" || h.Get("X-Request-Id") != id {
		t.Errorf("request id: response %q, upstream %q; want a generated id, the same on both", id, h.Get("X-Request-Id"))
	}
	for _, gone := range []string{"X-Secret", "Replproxy-Hop"} {
		if v := h.Get(gone); v != "" {
			t.Errorf("%s reached the container: %q", gone, v)
		}
	}
	// One access-log line with the request's fields.
	lines := c.Logs.FilterMessage("request").All()
	if len(lines) != 1 {
		t.Fatalf("%d access-log lines, want 1", len(lines))
	}
	f := lines[0].ContextMap()
	if f["host"] != "blog.alice.repl.test" || f["repl_id"] != "r1" || f["route"] != "local" || f["status"] != int64(200) || f["request_id"] != id {
		t.Errorf("access log fields %v", f)
	}
}

func TestWebSocketEcho(t *testing.T) {
	c := oneCluster(t, clusterOpts{})
	ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		conn.SetReadLimit(8 << 20)
		for {
			typ, msg, err := conn.Read(r.Context())
			if err != nil {
				return
			}
			if err := conn.Write(r.Context(), typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	}))
	defer ws.Close()
	testbed.CreateRepl(t, c.Store, "r1", "alice", "chat", testbed.HostOf(ws.URL))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, "ws://"+c.Addr+"/socket", &websocket.DialOptions{Host: "chat.alice.repl.test"})
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	defer conn.CloseNow()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if n := openUpgrades(t, c); n != 1 {
		t.Errorf("open upgraded connections metric = %v, want 1", n)
	}
	conn.SetReadLimit(8 << 20)
	// Small messages, then a large one (the copier's bulk path).
	for i, msg := range []string{"hello 0", "hello 1", strings.Repeat("0123456789abcdef", 256<<10)} {
		if err := conn.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if string(got) != "echo: "+msg {
			t.Fatalf("message %d: got %d bytes, want %d", i, len(got), len("echo: "+msg))
		}
	}
	conn.Close(websocket.StatusNormalClosure, "")
	testbed.WaitFor(t, 5*time.Second, "the upgraded connection to be closed and logged", func() bool {
		return openUpgrades(t, c) == 0 && len(c.Logs.FilterMessage("upgraded connection closed").All()) == 1
	})
	f := c.Logs.FilterMessage("upgraded connection closed").All()[0].ContextMap()
	if up, down := f["bytes_up"].(int64), f["bytes_down"].(int64); up < 4<<20 || down < 4<<20 {
		t.Errorf("logged %d bytes up, %d down; want over 4 MiB each", up, down)
	}
}

func openUpgrades(t testing.TB, c *testCluster) float64 {
	t.Helper()
	mfs, err := c.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "replproxy_upgraded_connections" {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

func TestServerSentEventsAreFlushedAtOnce(t *testing.T) {
	c := oneCluster(t, clusterOpts{})
	release := make(chan struct{})
	sse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		fmt.Fprint(w, "data: last\n\n")
	}))
	defer sse.Close()
	defer close(release)
	testbed.CreateRepl(t, c.Store, "r1", "alice", "feed", testbed.HostOf(sse.URL))

	req, _ := http.NewRequest(http.MethodGet, c.URL("/events"), nil)
	req.Host = "feed.alice.repl.test"
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(resp.Body).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if l != "data: first\n" {
			t.Fatalf("first line %q", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first event did not arrive while the stream was open")
	}
}

// countingReader yields n bytes without holding them.
type zeroReader struct{ left int64 }

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), z.left)
	clear(p[:n])
	z.left -= n
	return int(n), nil
}

func TestLargeUploadIsStreamed(t *testing.T) {
	if testing.Short() {
		t.Skip("200 MB upload")
	}
	c := oneCluster(t, clusterOpts{})
	up := testbed.EchoServer(t, "upload")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "files", testbed.HostOf(up.URL))

	const size = 200 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	req, _ := http.NewRequest(http.MethodPut, c.URL("/upload"), &zeroReader{left: size})
	req.Host = "files.alice.repl.test"
	req.ContentLength = size
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	runtime.ReadMemStats(&after)
	if e := testbed.Decode(t, string(body)); e.BodyLen != size {
		t.Fatalf("container received %d bytes, want %d", e.BodyLen, size)
	}
	// Client, proxy and container all run in this process: everything
	// they allocated together stays far below the body's size.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 32<<20 {
		t.Fatalf("allocated %d MiB while streaming %d MiB: the body was buffered", alloc>>20, size>>20)
	}
	if after.HeapInuse > before.HeapInuse+32<<20 {
		t.Fatalf("heap grew from %d to %d MiB", before.HeapInuse>>20, after.HeapInuse>>20)
	}
}

func TestUpstreamFailures(t *testing.T) {
	c := oneCluster(t, clusterOpts{tweak: func(cfg *proxy.Config) { cfg.ResponseHeaderTimeout = 300 * time.Millisecond }})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer slow.Close()
	testbed.CreateRepl(t, c.Store, "r1", "alice", "down", freeAddr(t)) // nothing listens there
	testbed.CreateRepl(t, c.Store, "r2", "alice", "slow", testbed.HostOf(slow.URL))

	if resp, body := get(t, c, "down.alice.repl.test", "/", nil); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("refused: status %d %q, want 502", resp.StatusCode, body)
	}
	if resp, body := get(t, c, "slow.alice.repl.test", "/", nil); resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("timeout: status %d %q, want 504", resp.StatusCode, body)
	}

	// A client that goes away: 499 in the log, no upstream error counted.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL("/"), nil)
	req.Host = "slow.alice.repl.test"
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	if _, err := testClient.Do(req); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled request: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var found bool
		for _, l := range c.Logs.FilterMessage("request").All() {
			if l.ContextMap()["status"] == int64(proxy.StatusClientClosedRequest) {
				found = true
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no access-log line with status 499")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mfs, _ := c.Metrics.Gather()
	errs := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "replproxy_upstream_errors_total" {
			for _, m := range mf.GetMetric() {
				l := map[string]string{}
				for _, lp := range m.GetLabel() {
					l[lp.GetName()] = lp.GetValue()
				}
				errs[l["route"]+"/"+l["error"]] = m.GetCounter().GetValue()
			}
		}
	}
	if errs["local/refused"] != 1 || errs["local/timeout"] != 1 || len(errs) != 2 {
		t.Errorf("upstream errors %v, want one refused and one timeout (the client that left is not counted)", errs)
	}
}

func TestExpectContinueAndTrailers(t *testing.T) {
	c := oneCluster(t, clusterOpts{})
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Trailer", "X-Sum")
		w.WriteHeader(200)
		fmt.Fprintf(w, "%d bytes, expect=%q", n, r.Header.Get("Expect"))
		w.Header().Set("X-Sum", fmt.Sprint(n*2))
	}))
	defer backend.Close()
	testbed.CreateRepl(t, c.Store, "r1", "alice", "t", testbed.HostOf(backend.URL))

	tr := &http.Transport{ExpectContinueTimeout: 5 * time.Second, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, c.URL("/"), strings.NewReader("hello"))
	req.Host = "t.alice.repl.test"
	req.Header.Set("Expect", "100-continue")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(body), "5 bytes") {
		t.Errorf("body %q", body)
	}
	if got := resp.Trailer.Get("X-Sum"); got != "10" {
		t.Errorf("trailer X-Sum = %q, want 10", got)
	}
}

func TestHTTP2FromClients(t *testing.T) {
	certFile, keyFile, pool := testbed.SelfSigned(t, "*.alice.repl.test")
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) {
		s.TLSListen, s.TLSCertFile, s.TLSKeyFile = "127.0.0.1:0", certFile, keyFile
	}})
	blog := testbed.EchoServer(t, "blog")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(blog.URL))

	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, ServerName: "blog.alice.repl.test"},
		ForceAttemptHTTP2: true,
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, "https://"+c.Server.Addr("https")+"/h2", nil)
	req.Host = "blog.alice.repl.test"
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("client spoke %s, want HTTP/2", resp.Proto)
	}
	e := testbed.Decode(t, string(body))
	if e.Name != "blog" || e.Header.Get("X-Forwarded-Proto") != "https" || e.Header.Get("Via") != "2 replproxy" {
		t.Fatalf("reached %+v", e)
	}
}
