package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/peertls"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
)

// relay is a TCP relay between two clusters' proxies that keeps every
// byte it carries, as one on the networks between regions could.
type relay struct {
	ln    net.Listener
	mu    sync.Mutex
	seen  bytes.Buffer
	conns atomic.Int64
}

// startRelay listens on addr and relays every connection to to.
func startRelay(t *testing.T, addr, to string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.conns.Add(1)
			up, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			go r.pipe(up, c)
			go r.pipe(c, up)
		}
	}()
	return r
}

func (r *relay) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			r.mu.Lock()
			r.seen.Write(buf[:n])
			r.mu.Unlock()
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (r *relay) saw(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Contains(r.seen.Bytes(), []byte(s))
}

func (r *relay) first() byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen.Len() == 0 {
		return 0
	}
	return r.seen.Bytes()[0]
}

// mtlsClusters runs east and west on embedded stores, forwarding over
// mutual TLS with certificates from ca: west's registry forward address
// is a relay in front of its forward listener.
func mtlsClusters(t *testing.T) (east, west *testCluster, rel *relay, ca *peertls.CA, reg *cluster.Registry) {
	t.Helper()
	east, west, ca, reg = mtlsClustersVia(t, nil, func(t *testing.T, addr, to string) { rel = startRelay(t, addr, to) })
	return east, west, rel, ca, reg
}

// mtlsClustersVia is mtlsClusters with west's ServerConfig tweaked by
// westServer (when not nil), and the relay in front of west's forward
// listener started by relay.
func mtlsClustersVia(t *testing.T, westServer func(*proxy.ServerConfig), relay func(t *testing.T, addr, to string)) (east, west *testCluster, ca *peertls.CA, reg *cluster.Registry) {
	t.Helper()
	ca, err := peertls.NewCA(testZone, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	eastStore, eastPath := embeddedStore(t)
	westStore, westPath := embeddedStore(t)
	eastFwd, westFwd, relayAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	reg = testbed.Registry(t, map[string][2]string{"east": {eastFwd, eastPath}, "west": {relayAddr, westPath}})
	peers := func(name string) *peertls.Peers {
		files, err := ca.WriteFiles(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		p, err := peertls.Load(files, testZone, reg)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	eastPeers, westPeers := peers("east"), peers("west")
	east = startCluster(t, "east", freeAddr(t), eastStore, reg, clusterOpts{
		tweak:  func(c *proxy.Config) { c.Peers = eastPeers },
		server: func(s *proxy.ServerConfig) { s.ForwardListen = eastFwd },
	})
	west = startCluster(t, "west", freeAddr(t), westStore, reg, clusterOpts{
		tweak: func(c *proxy.Config) { c.Peers = westPeers },
		server: func(s *proxy.ServerConfig) {
			s.ForwardListen = westFwd
			if westServer != nil {
				westServer(s)
			}
		},
	})
	relay(t, relayAddr, westFwd)
	return east, west, ca, reg
}

// moveEmbedded puts repl id live in dst at endpoint and a tombstone in src.
func moveEmbedded(t *testing.T, src, dst *testCluster, id, owner, slug, endpoint string) {
	t.Helper()
	ctx := context.Background()
	if _, err := dst.Store.Activate(ctx, store.Repl{ID: id, Owner: owner, Slug: slug, Endpoints: []string{endpoint}, Generation: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Store.Activate(ctx, store.Repl{ID: id, Owner: owner, Slug: slug, Endpoints: []string{"127.0.0.1:1"}, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Store.Retire(ctx, id, dst.Name, 2); err != nil {
		t.Fatal(err)
	}
	testbed.WaitFor(t, 10*time.Second, "east to forward", func() bool {
		resp, _ := get(t, src, slug+"."+owner+".repl.test", "/", nil)
		return resp.StatusCode == http.StatusOK
	})
}

// TestForwardOverMutualTLS: a request a tombstone forwards crosses the
// network between clusters as TLS only (a relay on the way sees no
// header, cookie or body), over HTTP/2 connections few and reused;
// WebSockets are carried too (HTTP/1.1 over TLS); the container sees the
// client's forwarding headers (the mark verified, from the peer the
// certificate names).
func TestForwardOverMutualTLS(t *testing.T) {
	east, west, rel, _, _ := mtlsClusters(t)
	var protos sync.Map
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			typ, msg, err := c.Read(r.Context())
			if err == nil {
				_ = c.Write(r.Context(), typ, append([]byte("west: "), msg...))
			}
			return
		}
		protos.Store(strings.Join(r.Header.Values("Via"), ", "), true)
		body, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, "west saw "+r.Header.Get("X-Forwarded-For")+" "+r.Header.Get("Cookie")+" "+string(body))
	}))
	defer app.Close()
	moveEmbedded(t, east, west, "r1", "alice", "blog", testbed.HostOf(app.URL))

	client := clientFrom("127.0.0.3")
	req, _ := http.NewRequest("POST", east.URL("/private"), strings.NewReader("the-body-nobody-may-read"))
	req.Host = "blog.alice.repl.test"
	req.Header.Set("Cookie", "session=the-cookie-nobody-may-read")
	req.Header.Set("Authorization", "Bearer the-token-nobody-may-read")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := "west saw 127.0.0.3 session=the-cookie-nobody-may-read the-body-nobody-may-read"; string(b) != want {
		t.Fatalf("through the tombstone: %s %q, want %q", resp.Status, b, want)
	}
	for _, secret := range []string{"nobody-may-read", "blog.alice", "Replproxy-Hop", "replproxy-hop"} {
		if rel.saw(secret) {
			t.Errorf("the relay between the clusters read %q", secret)
		}
	}
	if rel.first() != 0x16 { // a TLS handshake record
		t.Errorf("the relay's first byte is %#x, want a TLS handshake (0x16)", rel.first())
	}

	// 200 requests, 20 at a time: a handful of multiplexed connections.
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 20 {
		wg.Go(func() {
			for range 10 {
				resp, body := get(t, east, "blog.alice.repl.test", "/", nil)
				if resp.StatusCode != 200 || !strings.HasPrefix(body, "west saw 127.0.0.1") {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d of 200 forwarded requests failed", failed.Load())
	}
	t.Logf("%d connections between the clusters for 201 requests and a WebSocket to come", rel.conns.Load())
	if n := rel.conns.Load(); n > 4 {
		t.Errorf("%d connections between the clusters for 201 requests, want at most 4 (HTTP/2)", n)
	}
	if _, ok := protos.Load("1.1 replproxy, 2 replproxy"); !ok {
		var vias []any
		protos.Range(func(k, _ any) bool { vias = append(vias, k); return true })
		t.Errorf("Via as the container saw it: %v, want the hop between clusters in HTTP/2", vias)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+east.Addr+"/ws", &websocket.DialOptions{Host: "blog.alice.repl.test"})
	if err != nil {
		t.Fatalf("WebSocket through the tombstone over mutual TLS: %v", err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := ws.Read(ctx); err != nil || string(msg) != "west: hi" {
		t.Fatalf("WebSocket echo: %q, %v", msg, err)
	}
}

// TestForwardListenerRefusesStrangers: the forward listener over mutual
// TLS refuses a client without a certificate, with one from another CA,
// and with one naming a cluster the registry does not have; a mark that
// names another cluster than the peer's certificate does is refused (and
// counted) though it verifies; plain HTTP gets nothing.
func TestForwardListenerRefusesStrangers(t *testing.T) {
	east, west, _, ca, _ := mtlsClusters(t)
	testbed.CreateRepl(t, west.Store, "r1", "alice", "blog", testbed.HostOf(testbed.EchoServer(t, "blog").URL))
	fwd := west.Server.Addr("forward")
	other, err := peertls.NewCA(testZone, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := func(ca *peertls.CA, name string, id ...*url.URL) []tls.Certificate {
		c, k, err := ca.Issue(name, time.Hour, id...)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{pair}
	}
	send := func(certs []tls.Certificate, header http.Header) (int, string, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: certs}, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "https://"+fwd+"/", nil)
		req.Host = "blog.alice.repl.test"
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	for name, certs := range map[string][]tls.Certificate{
		"no certificate":        nil,
		"another CA":            cert(other, "east"),
		"a cluster not known":   cert(ca, "north"),
		"another zone's east":   cert(ca, "east", &url.URL{Scheme: "spiffe", Host: "example.org", Path: "/cluster/east"}),
		"a name, not a cluster": cert(ca, "east", &url.URL{Scheme: "spiffe", Host: testZone.Name(), Path: "/user/east"}),
	} {
		if code, body, err := send(certs, nil); err == nil {
			t.Errorf("%s: the forward listener answered %d %q, want the handshake refused", name, code, body)
		}
	}
	// East's certificate, bearing a mark that says west forwarded it.
	mark := proxy.SignHop(testSecret, time.Now(), "west", "GET", "/", "blog.alice.repl.test", "203.0.113.7", "https", "blog.alice.repl.test", "id-1")
	code, body, err := send(cert(ca, "east"), http.Header{proxy.HopHeader: {mark}, "X-Forwarded-For": {"203.0.113.7"},
		"X-Forwarded-Proto": {"https"}, "X-Forwarded-Host": {"blog.alice.repl.test"}, "X-Request-Id": {"id-1"}})
	if err != nil || code != 200 {
		t.Fatalf("east's certificate: %d %v", code, err)
	}
	if e := testbed.Decode(t, body); e.Header.Get("X-Forwarded-For") == "203.0.113.7" {
		t.Errorf("a mark from west on east's connection was trusted: %v", e.Header)
	}
	if n := counterWith(t, west, "replproxy_hop_marks_refused_total", "peer"); n != 1 {
		t.Errorf("marks refused for their peer = %v, want 1", n)
	}
	// Plain HTTP to the forward listener.
	conn := dialFrom(t, "127.0.0.2", fwd)
	_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: blog.alice.repl.test\r\n\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(conn); strings.Contains(string(b), "blog") {
		t.Errorf("plain HTTP to the forward listener: %q", b)
	}
	_ = east
}

// counterWith returns a counter's value for a label value, from c's registry.
func counterWith(t *testing.T, c *testCluster, name, label string) float64 {
	t.Helper()
	mfs, err := c.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
