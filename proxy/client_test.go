package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

// The hostile client suite: every client is on the internet.

// TestSpoofedClientIPHeaders: headers in which a client claims to be
// someone else never reach a container; the proxy says who the client
// is, locally and through a tombstone.
func TestSpoofedClientIPHeaders(t *testing.T) {
	east, west, _ := twoClusters(t, clusterOpts{})
	app := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, east.Store, "r1", "alice", "blog", "127.0.0.1:1")
	moveTo(t, east, west, "r1", "alice", "blog", testbed.HostOf(app.URL), 2)
	spoof := http.Header{}
	for _, k := range []string{"X-Real-Ip", "True-Client-Ip", "X-Client-Ip", "Cf-Connecting-Ip", "Fastly-Client-Ip", "X-Forwarded-Port", "X-Forwarded-For"} {
		spoof.Set(k, "203.0.113.66")
	}
	spoof.Set("Forwarded", "for=203.0.113.66;proto=https")
	client := clientFrom("127.0.0.3")
	for _, pc := range []*testCluster{west, east} {
		_, body := do(t, client, pc.Addr, "blog.alice.repl.test", spoof)
		e := testbed.Decode(t, body)
		for k, vs := range e.Header {
			if strings.Contains(strings.Join(vs, ","), "203.0.113.66") {
				t.Errorf("via %s: the container got %s: %q from the client", pc.Name, k, vs)
			}
		}
		if got := e.Header.Get("X-Real-Ip"); got != "127.0.0.3" {
			t.Errorf("via %s: X-Real-Ip %q, want the client, 127.0.0.3", pc.Name, got)
		}
		if got := e.Header.Get("X-Forwarded-For"); got != "127.0.0.3" {
			t.Errorf("via %s: X-Forwarded-For %q, want 127.0.0.3", pc.Name, got)
		}
	}
}

// TestIDNHostOverHTTP2ThroughATombstone: a client that sends a U-label
// :authority over HTTP/2 (which, unlike HTTP/1.1, lets it) reaches the
// repl through a tombstone: the Host is signed and sent as the A-label
// ParseName read, so the next cluster verifies the mark and the container
// sees the client's address.
func TestIDNHostOverHTTP2ThroughATombstone(t *testing.T) {
	east, west, _ := twoClusters(t, clusterOpts{server: func(s *proxy.ServerConfig) { s.H2C = true }})
	app := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, east.Store, "r1", "alice", "blog", "127.0.0.1:1")
	if _, err := east.Store.LinkDomain(t.Context(), store.Domain{Name: "xn--bcher-kva.example", ReplID: "r1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := west.Store.CreateRepl(t.Context(), store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{testbed.HostOf(app.URL)}, Generation: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := west.Store.LinkDomain(t.Context(), store.Domain{Name: "xn--bcher-kva.example", ReplID: "r1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := east.Store.Retire(t.Context(), "r1", "west", 2); err != nil {
		t.Fatal(err)
	}
	testbed.WaitFor(t, 5*time.Second, "east to forward", func() bool {
		r, err := east.Cache.Lookup(t.Context(), store.DomainKey("xn--bcher-kva.example"))
		return err == nil && r.Kind == store.RouteTombstone
	})
	status, body := rawH2Get(t, east.Addr, "bücher.example")
	if status != "200" {
		t.Fatalf("status %s %q, want the repl", status, body)
	}
	e := testbed.Decode(t, body)
	if e.Host != "xn--bcher-kva.example" {
		t.Errorf("the container saw Host %q, want the A-label", e.Host)
	}
	if got := e.Header.Get("X-Forwarded-For"); got != "127.0.0.3" {
		t.Errorf("X-Forwarded-For %q, want the client, 127.0.0.3: west did not trust east's mark", got)
	}
}

// rawH2Get sends one GET over h2c with :authority exactly as given, which
// Go's own client would have turned into an A-label, and returns the
// response's :status and body. It connects from 127.0.0.3.
func rawH2Get(t *testing.T, addr, authority string) (string, string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return rawH2GetOn(t, conn, authority)
}

// rawH2GetOn is rawH2Get on conn, which it closes.
func rawH2GetOn(t *testing.T, conn net.Conn, authority string) (string, string) {
	t.Helper()
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", authority}, {":path", "/"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	var status string
	var body bytes.Buffer
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read frame: %v (status %q, body %q)", err, status, body.String())
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			status = f.PseudoValue("status")
			if f.StreamEnded() {
				return status, body.String()
			}
		case *http2.DataFrame:
			body.Write(f.Data())
			if f.StreamEnded() {
				return status, body.String()
			}
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v", f.ErrCode)
		case *http2.RSTStreamFrame:
			t.Fatalf("RST_STREAM %v", f.ErrCode)
		}
	}
}

// lookupCounter counts the route lookups that reach a store.
type lookupCounter struct {
	store.Store
	n atomic.Int64
}

func (s *lookupCounter) Lookup(ctx context.Context, k store.Key) (store.Route, error) {
	s.n.Add(1)
	return s.Store.Lookup(ctx, k)
}

// TestRandomNamesCostNoStoreQuery: a flood of names nobody hosts, under
// the zone and outside it, is answered 404 from the proxy's name index
// without one store lookup, on PostgreSQL; hosted names still route.
func TestRandomNamesCostNoStoreQuery(t *testing.T) {
	srv := pgtest.Start(t)
	st, err := cluster.Open(t.Context(), srv.NewDatabase(t), cluster.OpenOptions{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	counted := &lookupCounter{Store: st}
	addr := freeAddr(t)
	reg := testbed.Registry(t, map[string][2]string{"east": {addr, "east.yaml"}, "west": {"127.0.0.1:1", "west.yaml"}})
	c := startCluster(t, "east", addr, counted, reg, clusterOpts{})
	app := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
	testbed.WaitFor(t, 10*time.Second, "the index to know alice/blog", func() bool {
		return c.Cache.Index().Knows(store.ReplKey("alice", "blog")) == routecache.KnownYes
	})

	before := counted.n.Load()
	client := &http.Client{Timeout: 10 * time.Second}
	for i := range 1000 {
		for _, host := range []string{fmt.Sprintf("s%d.u%d.repl.test", i, i), fmt.Sprintf("x%d.id.repl.test", i), fmt.Sprintf("www%d.example.net", i)} {
			req, _ := http.NewRequest("GET", c.URL("/"), nil)
			req.Host = host
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Fatalf("%s: status %d, want 404", host, resp.StatusCode)
			}
		}
	}
	if n := counted.n.Load() - before; n != 0 {
		t.Errorf("3,000 requests for names nobody hosts made %d store lookups, want 0", n)
	}
	if resp, body := get(t, c, "blog.alice.repl.test", "/", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("a hosted name: %d %q", resp.StatusCode, body)
	}
}

// failingRoutes is a route cache whose store is down and knows nothing.
type failingRoutes struct{}

func (failingRoutes) Lookup(context.Context, store.Key) (store.Route, error) {
	return store.Route{}, store.ErrUnavailable
}
func (failingRoutes) Refresh(context.Context, store.Key) (store.Route, error) {
	return store.Route{}, store.ErrUnavailable
}

// TestWarningsCannotBeFlooded: while the store is down, every request
// for a name the cache does not know fails; its warning is written at
// most once a second, and the next one says how many were held back.
func TestWarningsCannotBeFlooded(t *testing.T) {
	reg := testbed.Registry(t, map[string][2]string{"east": {"127.0.0.1:1", "east.yaml"}})
	core, logs := observer.New(zap.DebugLevel)
	h, err := proxy.NewHandler(proxy.Config{Zone: testZone, Cluster: "east", Registry: reg, HopSecret: testSecret}, failingRoutes{}, nil, nil, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	start := time.Now()
	for i := range 200 {
		req, _ := http.NewRequest("GET", srv.URL+"/", nil)
		req.Host = fmt.Sprintf("r%d.u.repl.test", i)
		resp, body := doBody(t, req)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("status %d %q, want 503", resp.StatusCode, body)
		}
	}
	elapsed := time.Since(start)
	lines := logs.FilterMessage("route lookup failed").All()
	if len(lines) == 0 {
		t.Fatal("200 failing requests wrote no warning")
	}
	if max := int(elapsed/time.Second) + 1; len(lines) > max {
		t.Fatalf("200 failing requests in %v wrote %d warnings, want at most %d", elapsed, len(lines), max)
	}
	// The limiter's second starts at the warning it last let through;
	// the next request after it is written, with the count held back.
	time.Sleep(time.Until(lines[len(lines)-1].Time.Add(time.Second + 100*time.Millisecond)))
	req, _ := http.NewRequest("GET", srv.URL+"/", nil)
	req.Host = "last.u.repl.test"
	doBody(t, req)
	// Every failure is accounted for: written, or counted as held back
	// in the warning after it (on a slow machine the 200 may span
	// several seconds, each with a warning).
	lines = logs.FilterMessage("route lookup failed").All()
	held := int64(0)
	for _, l := range lines {
		n, _ := l.ContextMap()["suppressed"].(int64)
		held += n
	}
	if int64(len(lines))+held != 201 || held < 150 {
		t.Errorf("%d warnings saying %d were held back, want 201 failures accounted for, most of them held back", len(lines), held)
	}
}

// dialFrom opens a TCP connection to addr from the loopback address ip.
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedAtOnce reports whether the proxy closed c without a word.
func closedAtOnce(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := c.Read(make([]byte, 1))
	return n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// TestConnectionCaps: one client network cannot hold more than
// MaxConnsPerClient connections, nor all clients more than MaxConns; a
// connection over a bound is closed at once and counted, and the others
// are served.
func TestConnectionCaps(t *testing.T) {
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) { s.MaxConns, s.MaxConnsPerClient = 8, 3 }})
	app := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
	for range 3 {
		dialFrom(t, "127.0.0.2", c.Addr)
	}
	time.Sleep(50 * time.Millisecond)
	if !closedAtOnce(dialFrom(t, "127.0.0.2", c.Addr)) {
		t.Fatal("a fourth connection from one client was accepted")
	}
	for i := 3; i <= 7; i++ { // 3 + 5 = 8 in all
		dialFrom(t, fmt.Sprintf("127.0.0.%d", i), c.Addr)
	}
	time.Sleep(50 * time.Millisecond)
	if !closedAtOnce(dialFrom(t, "127.0.0.9", c.Addr)) {
		t.Fatal("a connection beyond the bound in all was accepted")
	}
	if n := gauge(t, c, "replproxy_client_connections_refused_total"); n != 2 {
		t.Errorf("refused connections counted %v, want 2", n)
	}
}

// TestForwardListenerHasItsOwnCaps: connections to the forward listener,
// which anyone can open, count against its own bounds, in all and per
// client, and never against the public listeners': a flood of them
// leaves every public connection to be served.
func TestForwardListenerHasItsOwnCaps(t *testing.T) {
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) {
		s.MaxConns, s.MaxConnsPerClient = 8, 3
		s.MaxForwardConns, s.MaxForwardConnsPerClient = 4, 2
		s.ForwardListen = "127.0.0.1:0"
	}})
	app := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
	fwd := c.Server.Addr("forward")
	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		for range 8 {
			dialFrom(t, ip, fwd)
		}
	}
	testbed.WaitFor(t, 10*time.Second, "the proxy to see 16 connections", func() bool {
		n := 0.0
		for _, m := range []string{"replproxy_forward_connections", "replproxy_forward_connections_refused_total", "replproxy_client_connections", "replproxy_client_connections_refused_total"} {
			n += max(gauge(t, c, m), 0)
		}
		return n == 16
	})
	if open, refused := gauge(t, c, "replproxy_forward_connections"), gauge(t, c, "replproxy_forward_connections_refused_total"); open != 4 || refused != 12 {
		t.Errorf("16 forward connections from two clients: %v open, %v refused; want 4 (2 each) and 12", open, refused)
	}
	// The public listener holds as many connections as its own bound,
	// and serves them.
	var public []net.Conn
	for i := range 8 {
		public = append(public, dialFrom(t, fmt.Sprintf("127.0.0.%d", 4+i/3), c.Addr))
	}
	testbed.WaitFor(t, 10*time.Second, "the public listener to hold 8 connections", func() bool {
		return gauge(t, c, "replproxy_client_connections") == 8
	})
	if !closedAtOnce(dialFrom(t, "127.0.0.9", c.Addr)) {
		t.Fatal("a public connection beyond MaxConns was accepted")
	}
	for i, conn := range public {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("public connection %d, with the forward listener full: %v", i+1, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("public connection %d: status %d", i+1, resp.StatusCode)
		}
	}
	if n := gauge(t, c, "replproxy_client_connections_refused_total"); n != 1 {
		t.Errorf("public connections refused %v, want 1", n)
	}
}

// TestSlowBodyIsCut: a request body that brings less than 1 KiB per
// BodyWindow is cut, with its connection, and its upstream connection.
func TestSlowBodyIsCut(t *testing.T) {
	c := oneCluster(t, clusterOpts{tweak: func(cfg *proxy.Config) { cfg.BodyWindow = 300 * time.Millisecond }})
	app := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
	conn := dialFrom(t, "127.0.0.2", c.Addr)
	_, _ = io.WriteString(conn, "POST / HTTP/1.1\r\nHost: blog.alice.repl.test\r\nContent-Length: 100000\r\n\r\n")
	start := time.Now()
	cut := make(chan time.Duration, 1)
	var got bytes.Buffer
	go func() {
		_, _ = io.Copy(&got, conn)
		cut <- time.Since(start)
	}()
	for range 50 { // a byte every 100 ms: 10 B/s
		if _, err := io.WriteString(conn, "x"); err != nil {
			break
		}
		select {
		case d := <-cut:
			if d > 2*time.Second {
				t.Fatalf("cut after %v, want about 300 ms", d)
			}
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("a body sending 10 B/s was not cut in 5 s (the client got %q)", got.String())
}

// TestBodyFloorSparesASlowContainer: the body-rate floor counts only the
// time the proxy waits for the client. A client sending 64 MiB at full
// speed to a container that waits longer than BodyWindow before it
// reads, and again midway, is served, over HTTP/1 and HTTP/2.
func TestBodyFloorSparesASlowContainer(t *testing.T) {
	const size = 64 << 20
	c := oneCluster(t, clusterOpts{
		tweak:  func(cfg *proxy.Config) { cfg.BodyWindow = 300 * time.Millisecond },
		server: func(s *proxy.ServerConfig) { s.H2C = true },
	})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Second) // back-pressure: the container is busy
		n, err := io.CopyN(io.Discard, r.Body, size/2)
		if err == nil {
			time.Sleep(time.Second)
			var m int64
			m, err = io.Copy(io.Discard, r.Body)
			n += m
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprint(w, n)
	}))
	defer app.Close()
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "http1", true: "h2c"}[h2], func(t *testing.T) {
			tr := &http.Transport{}
			if h2 {
				var p http.Protocols
				p.SetUnencryptedHTTP2(true)
				tr.Protocols = &p
			}
			defer tr.CloseIdleConnections()
			req, _ := http.NewRequest(http.MethodPost, c.URL("/"), io.LimitReader(zeros{}, size))
			req.Host, req.ContentLength = "blog.alice.repl.test", size
			resp, err := (&http.Client{Transport: tr, Timeout: time.Minute}).Do(req)
			if err != nil {
				t.Fatalf("a fast upload to a slow container: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Logf("%s: %d", resp.Proto, resp.StatusCode)
			if resp.StatusCode != http.StatusOK || string(body) != fmt.Sprint(size) {
				t.Fatalf("a fast upload to a slow container: %d %q (%s), want 200 and the whole body", resp.StatusCode, body, resp.Proto)
			}
		})
	}
}

// BenchmarkUpload: a 16 MiB request body through the proxy, which sets
// and clears its read deadline around each Read (the body-rate floor).
func BenchmarkUpload(b *testing.B) {
	const size = 16 << 20
	c := oneCluster(b, clusterOpts{server: func(s *proxy.ServerConfig) { s.H2C = true }})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	defer app.Close()
	testbed.CreateRepl(b, c.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
	for _, h2 := range []bool{false, true} {
		b.Run(map[bool]string{false: "http1", true: "h2c"}[h2], func(b *testing.B) {
			tr := &http.Transport{}
			if h2 {
				var p http.Protocols
				p.SetUnencryptedHTTP2(true)
				tr.Protocols = &p
			}
			defer tr.CloseIdleConnections()
			b.SetBytes(size)
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodPost, c.URL("/"), io.LimitReader(zeros{}, size))
				req.Host, req.ContentLength = "blog.alice.repl.test", size
				resp, err := tr.RoundTrip(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatal(resp.Status)
				}
			}
		})
	}
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// gauge returns a metric's value from c's registry.
func gauge(t *testing.T, c *testCluster, name string) float64 {
	t.Helper()
	mfs, err := c.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// TestHTTP2RapidReset: an HTTP/2 client, in the clear (h2c) or over TLS,
// that opens streams and resets them at once, without end, loses its
// connection within the budget (200 resets at once, 20 a second after),
// counted below the HTTP/2 server, with GOAWAY(ENHANCE_YOUR_CALM) naming
// the last stream it opened; few of its requests reach the container or
// the access log.
func TestHTTP2RapidReset(t *testing.T) {
	certFile, keyFile, pool := testbed.SelfSigned(t, "*.alice.repl.test")
	for _, overTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "h2c", true: "tls"}[overTLS], func(t *testing.T) {
			c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) {
				s.H2C = true
				s.TLSListen, s.TLSCertFile, s.TLSKeyFile = "127.0.0.1:0", certFile, keyFile
			}})
			var reached atomic.Int64
			app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reached.Add(1)
				_, _ = io.WriteString(w, "ok")
			}))
			defer app.Close()
			testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
			var conn net.Conn = dialFrom(t, "127.0.0.2", c.Addr)
			if overTLS {
				tc := tls.Client(dialFrom(t, "127.0.0.2", c.Server.Addr("https")),
					&tls.Config{RootCAs: pool, ServerName: "blog.alice.repl.test", NextProtos: []string{"h2"}})
				if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol != "h2" {
					t.Fatalf("TLS handshake: %v, ALPN %q", err, tc.ConnectionState().NegotiatedProtocol)
				}
				conn = tc
			}
			sent, goAway := rapidReset(t, conn)
			if got := gauge(t, c, "replproxy_connections_closed_for_resets_total"); got != 1 {
				t.Errorf("connections closed for resets = %v, want 1", got)
			}
			// The client's count includes what it wrote after the cut
			// (drained and dropped); the GOAWAY names the last stream the
			// server read.
			if goAway == nil {
				t.Fatal("no GOAWAY before the connection ended")
			}
			t.Logf("the client wrote %d HEADERS+RST_STREAM pairs before the connection ended; %d requests reached the container; GOAWAY %v, last stream %d", sent, reached.Load(), goAway.ErrCode, goAway.LastStreamID)
			if goAway.ErrCode != http2.ErrCodeEnhanceYourCalm || goAway.LastStreamID == 0 || goAway.LastStreamID > uint32(2*sent+1) {
				t.Fatalf("GOAWAY %v naming stream %d, want ENHANCE_YOUR_CALM naming a stream the client opened (it opened %d)", goAway.ErrCode, goAway.LastStreamID, sent)
			}
			if read := (goAway.LastStreamID + 1) / 2; read > 1000 {
				t.Errorf("the connection was cut after %d reset streams, want within 1,000", read)
			}
			// Streams reset before their handler ran cost no route and no
			// log line, only a count; the cancels that reached handlers
			// count against the connection's budget too, which may have
			// closed it as well, once at most.
			early := gauge(t, c, "replproxy_requests_cancelled_early_total")
			lines := len(c.Logs.FilterMessage("request").All())
			t.Logf("%v streams cancelled before their handler; %d access-log lines", early, lines)
			if read := float64(goAway.LastStreamID+1) / 2; early < 1 || early+float64(lines) > read {
				t.Errorf("replproxy_requests_cancelled_early_total = %v (and %d access-log lines), want at least 1, and with the lines at most the %v streams read", early, lines, read)
			}
			if n := gauge(t, c, "replproxy_connections_closed_for_cancels_total"); n != 0 && n != 1 {
				t.Errorf("replproxy_connections_closed_for_cancels_total = %v, want 0 or 1 (one connection)", n)
			}
			if n := reached.Load(); n > resetBudgetForTest {
				t.Errorf("%d requests reached the container, want at most %d", n, resetBudgetForTest)
			}
			if n := len(c.Logs.FilterMessage("request").All()); n > resetBudgetForTest {
				t.Errorf("%d access-log lines for reset streams, want at most %d", n, resetBudgetForTest)
			}
		})
	}
}

// TestCancelBudgetClosesTheConnection: requests their client cancelled
// before their handler ran are counted, each, and against their
// connection's budget (resetBudgetForTest at once): the one over it
// closes the connection, counted once.
func TestCancelBudgetClosesTheConnection(t *testing.T) {
	reg := testbed.Registry(t, map[string][2]string{"east": {"127.0.0.1:1", "east.yaml"}})
	metrics := prometheus.NewRegistry()
	h, err := proxy.NewHandler(proxy.Config{Zone: testZone, Cluster: "east", Registry: reg, HopSecret: testSecret},
		failingRoutes{}, proxy.NewMetrics(metrics, "east", nil), nil, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	client, server := net.Pipe()
	defer client.Close()
	closed := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, client); close(closed) }()
	ctx, cancel := context.WithCancel(proxy.WithConnSlot(t.Context(), server))
	cancel()
	c := &testCluster{Metrics: metrics}
	calls := 0
	for ; calls < 5*resetBudgetForTest; calls++ {
		select {
		case <-closed:
		default:
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, "http://blog.alice.repl.test/", nil)
			h.ServeHTTP(httptest.NewRecorder(), req)
			continue
		}
		break
	}
	if calls <= resetBudgetForTest {
		t.Errorf("the connection was closed after %d cancelled requests, want more than the budget, %d", calls, resetBudgetForTest)
	}
	if calls == 5*resetBudgetForTest {
		t.Fatalf("the connection is still open after %d cancelled requests", calls)
	}
	if n := gauge(t, c, "replproxy_requests_cancelled_early_total"); n != float64(calls) {
		t.Errorf("replproxy_requests_cancelled_early_total = %v, want %d", n, calls)
	}
	if n := gauge(t, c, "replproxy_connections_closed_for_cancels_total"); n != 1 {
		t.Errorf("replproxy_connections_closed_for_cancels_total = %v, want 1", n)
	}
}

// rapidReset sends HEADERS+RST_STREAM pairs on conn until the server
// closes it, failing t when it does not within 10 s; it returns how many
// pairs were written, and the GOAWAY frame the server sent, if any.
func rapidReset(t *testing.T, conn net.Conn) (int, *http2.GoAwayFrame) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	var goAway *http2.GoAwayFrame
	go func() { // read what the server sends until it closes
		defer close(closed)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				goAway = &http2.GoAwayFrame{LastStreamID: g.LastStreamID, ErrCode: g.ErrCode}
			}
		}
	}()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "blog.alice.repl.test"}, {":path", "/"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := hb.Bytes()
	sent := 0
	for id := uint32(1); sent < 100_000; id += 2 {
		if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}) != nil ||
			fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break
		}
		sent++
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("the connection is still open after %d reset streams", sent)
	}
	return sent, goAway
}

// resetBudgetForTest is the proxy's reset budget (resetBurst), and so the
// most a rapid-reset client can make happen before it is cut.
const resetBudgetForTest = 200

// TestSlowHeadersAreCut: a client that sends its request headers a byte
// at a time (slowloris) is cut after ReadHeaderTimeout, without an
// upstream connection.
func TestSlowHeadersAreCut(t *testing.T) {
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) { s.ReadHeaderTimeout = 300 * time.Millisecond }})
	conn := dialFrom(t, "127.0.0.2", c.Addr)
	start := time.Now()
	for _, b := range []byte("GET / HTTP/1.1\r\nHost: blog.alice.repl.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa") {
		if _, err := conn.Write([]byte{b}); err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
		if time.Since(start) > 5*time.Second {
			t.Fatal("a client sending headers at 20 B/s was not cut in 5 s")
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(conn); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("cut after %v, want about 300 ms", d)
	}
}

// TestTLSProtocolIsALPNs: on the HTTPS listener HTTP/2 is served only
// where ALPN chose it, and HTTP/1 only where it did not; plain HTTP sent
// to it gets net/http's 400, and a good client is served both ways.
func TestTLSProtocolIsALPNs(t *testing.T) {
	certFile, keyFile, pool := testbed.SelfSigned(t, "*.alice.repl.test")
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) {
		s.TLSListen, s.TLSCertFile, s.TLSKeyFile = "127.0.0.1:0", certFile, keyFile
	}})
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(testbed.EchoServer(t, "blog").URL))
	addr := c.Server.Addr("https")
	dial := func(alpn string) *tls.Conn {
		tc := tls.Client(dialFrom(t, "127.0.0.2", addr), &tls.Config{RootCAs: pool, ServerName: "blog.alice.repl.test", NextProtos: []string{alpn}})
		if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol != alpn {
			t.Fatalf("TLS handshake for %s: %v, ALPN %q", alpn, err, tc.ConnectionState().NegotiatedProtocol)
		}
		return tc
	}
	get := "GET / HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n"
	for _, tc := range []struct{ alpn, send string }{{"h2", get}, {"http/1.1", http2.ClientPreface}} {
		conn := dial(tc.alpn)
		_, _ = io.WriteString(conn, tc.send)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(conn); len(b) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("ALPN %s, then %.20q: got %q (%v), want the connection closed unanswered", tc.alpn, tc.send, b, err)
		}
	}
	// The same requests, each on the protocol it belongs to, are served.
	conn := dial("http/1.1")
	_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: blog.alice.repl.test\r\nConnection: close\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(conn); !strings.HasPrefix(string(b), "HTTP/1.1 200 ") {
		t.Errorf("HTTP/1.1 over TLS: %.40q", b)
	}
	if status, _ := rawH2GetOn(t, dial("h2"), "blog.alice.repl.test"); status != "200" {
		t.Errorf("HTTP/2 over TLS: status %s", status)
	}
	plain := dialFrom(t, "127.0.0.2", addr)
	_, _ = io.WriteString(plain, get)
	_ = plain.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(plain); !strings.Contains(string(b), "400 Bad Request") || !strings.Contains(string(b), "HTTPS server") {
		t.Errorf("plain HTTP to the HTTPS listener: %q", b)
	}
}
