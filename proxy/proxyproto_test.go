package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
)

// The load balancer of these tests is 127.0.0.2; 127.0.0.3 is a client
// that reaches the proxy directly.
const (
	testLB     = "127.0.0.2"
	testDirect = "127.0.0.3"
)

// proxyProtoCluster runs east with the PROXY protocol trusted from testLB,
// and a repl blog.alice on an EchoServer.
func proxyProtoCluster(t *testing.T, tweak func(*proxy.ServerConfig)) *testCluster {
	t.Helper()
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) {
		s.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix(testLB + "/32")}
		if tweak != nil {
			tweak(s)
		}
	}})
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(testbed.EchoServer(t, "app").URL))
	return c
}

// proxyHeader is a PROXY header of version 1 or 2 naming client.
func proxyHeader(t *testing.T, version byte, client string) []byte {
	t.Helper()
	src := netip.MustParseAddrPort(client)
	dst := netip.MustParseAddrPort("192.0.2.1:80")
	if src.Addr().Is6() {
		dst = netip.MustParseAddrPort("[2001:db8::1]:80")
	}
	h := proxyproto.HeaderProxyFromAddrs(version, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// localHeader is a PROXY v2 header with the LOCAL command (a health check).
func localHeader(t *testing.T) []byte {
	t.Helper()
	b, err := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}).Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// exchange writes pre (a header, or nothing) and a GET for blog.alice on
// conn, and returns the response, or the error that ended the connection
// instead.
func exchange(t *testing.T, conn net.Conn, pre []byte, keepAlive bool) (*http.Response, string, error) {
	t.Helper()
	req := "GET /page HTTP/1.1\r\nHost: blog.alice.repl.test\r\n"
	if !keepAlive {
		req += "Connection: close\r\n"
	}
	if _, err := conn.Write(append(append([]byte(nil), pre...), req+"\r\n"...)); err != nil {
		return nil, "", err
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

// served sends a request on a new connection from ip and returns what the
// container saw of the client: X-Forwarded-For.
func served(t *testing.T, c *testCluster, ip string, pre []byte) string {
	t.Helper()
	resp, body, err := exchange(t, dialFrom(t, ip, c.Addr), pre, false)
	if err != nil {
		t.Fatalf("from %s with %q: %v", ip, pre, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("from %s with %q: %s %s", ip, pre, resp.Status, body)
	}
	return testbed.Decode(t, body).Header.Get("X-Forwarded-For")
}

// refused reports whether a connection from ip that sends pre and a
// request is closed with no answer.
func refused(t *testing.T, c *testCluster, ip string, pre []byte) bool {
	t.Helper()
	resp, _, err := exchange(t, dialFrom(t, ip, c.Addr), pre, false)
	if err == nil {
		t.Logf("from %s with %q: %s", ip, pre, resp.Status)
	}
	return err != nil
}

// accessLogged reports whether the access log has a request from remote.
func accessLogged(c *testCluster, remote string) bool {
	for _, e := range c.Logs.FilterMessage("request").All() {
		if e.ContextMap()["remote"] == remote {
			return true
		}
	}
	return false
}

// TestProxyProtocolNamesTheClient: a connection from the trusted load
// balancer that starts with a PROXY header, v1 or v2, is the client's for
// X-Forwarded-For, the access log and the per-client connection cap
// (counted against the client it names, not the load balancer); one
// without a header is the load balancer's.
func TestProxyProtocolNamesTheClient(t *testing.T) {
	c := proxyProtoCluster(t, func(s *proxy.ServerConfig) { s.MaxConnsPerClient = 2 })
	for _, v := range []byte{1, 2} {
		client := "203.0.113.7:4000"
		if v == 2 {
			client = "[2001:db8::7]:4000"
		}
		if got, want := served(t, c, testLB, proxyHeader(t, v, client)), netip.MustParseAddrPort(client).Addr().String(); got != want {
			t.Errorf("v%d: X-Forwarded-For %q, want the client the header names, %s", v, got, want)
		}
		if !accessLogged(c, client) {
			t.Errorf("v%d: no access-log line with remote %s", v, client)
		}
	}
	if got := served(t, c, testLB, nil); got != testLB {
		t.Errorf("no header: X-Forwarded-For %q, want the load balancer, %s", got, testLB)
	}

	// Two connections open for one client, from the load balancer: a
	// third for it is refused, one for another client is served.
	for range 2 {
		if resp, _, err := exchange(t, dialFrom(t, testLB, c.Addr), proxyHeader(t, 2, "203.0.113.8:1"), true); err != nil || resp.StatusCode != 200 {
			t.Fatalf("a connection for 203.0.113.8: %v", err)
		}
	}
	if !refused(t, c, testLB, proxyHeader(t, 2, "203.0.113.8:3")) {
		t.Error("a third connection for a client with two was served")
	}
	if got := served(t, c, testLB, proxyHeader(t, 2, "203.0.113.9:1")); got != "203.0.113.9" {
		t.Errorf("another client beside them: X-Forwarded-For %q", got)
	}
	if n := gauge(t, c, "replproxy_client_connections_refused_total"); n != 1 {
		t.Errorf("refused connections counted %v, want 1", n)
	}
}

// TestProxyProtocolRefusals: a header from a source not trusted to send
// one, a header that cannot be read (or names no TCP client), and, when
// required, no header from the load balancer: each connection is closed
// unanswered and counted by reason. A client without a header reaching the
// proxy directly is served as itself, required or not; a LOCAL header (the
// load balancer's health check) leaves the connection the load
// balancer's.
func TestProxyProtocolRefusals(t *testing.T) {
	udp := proxyproto.HeaderProxyFromAddrs(2, &net.UDPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 53}, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53})
	udpHeader, err := udp.Format()
	if err != nil {
		t.Fatal(err)
	}
	for _, required := range []bool{false, true} {
		t.Run(map[bool]string{false: "optional", true: "required"}[required], func(t *testing.T) {
			c := proxyProtoCluster(t, func(s *proxy.ServerConfig) { s.ProxyProtocolRequired = required })
			want := map[string]float64{}
			for _, tc := range []struct {
				name, from string
				pre        []byte
				reason     string
			}{
				{"v1 from an untrusted source", testDirect, proxyHeader(t, 1, "203.0.113.7:4000"), "untrusted_header"},
				{"v2 from an untrusted source", testDirect, proxyHeader(t, 2, "203.0.113.7:4000"), "untrusted_header"},
				{"v2 LOCAL from an untrusted source", testDirect, localHeader(t), "untrusted_header"},
				{"a malformed v1 from an untrusted source", testDirect, []byte("PROXY TCP4 1.2.3.4\r\n"), "untrusted_header"},
				{"a malformed v1", testLB, []byte("PROXY TCP4 203.0.113.300 192.0.2.1 4000 80\r\n"), "malformed"},
				{"a v1 without CRLF", testLB, []byte("PROXY TCP4 203.0.113.7 192.0.2.1 4000 80 GET / HTTP/1.1\r\n"), "malformed"},
				{"a v2 naming a UDP client", testLB, udpHeader, "malformed"},
			} {
				if !refused(t, c, tc.from, tc.pre) {
					t.Errorf("%s: served", tc.name)
				}
				want[tc.reason]++
			}
			if required {
				if !refused(t, c, testLB, nil) {
					t.Error("required: no header from the load balancer: served")
				}
				want["missing_header"]++
			} else if got := served(t, c, testLB, nil); got != testLB {
				t.Errorf("no header from the load balancer: X-Forwarded-For %q, want %s", got, testLB)
			}
			if got := served(t, c, testLB, localHeader(t)); got != testLB {
				t.Errorf("a LOCAL header from the load balancer: X-Forwarded-For %q, want the load balancer, %s", got, testLB)
			}
			if got := served(t, c, testDirect, nil); got != testDirect {
				t.Errorf("a direct client without a header: X-Forwarded-For %q, want %s", got, testDirect)
			}
			for _, reason := range []string{"untrusted_header", "missing_header", "malformed"} {
				if got := counterWith(t, c, "replproxy_proxy_protocol_refused_total", reason); got != want[reason] {
					t.Errorf("replproxy_proxy_protocol_refused_total{reason=%q} = %v, want %v", reason, got, want[reason])
				}
			}
		})
	}
}

// TestProxyProtocolSilentConnectionsWaitAlone: connections that send
// nothing, from the load balancer (whose header the proxy waits for) and
// from elsewhere (whose first bytes it peeks at), keep no other client
// waiting; the load balancer's, required to send a header, are closed
// after ReadHeaderTimeout.
func TestProxyProtocolSilentConnectionsWaitAlone(t *testing.T) {
	const timeout = 3 * time.Second
	c := proxyProtoCluster(t, func(s *proxy.ServerConfig) { s.ProxyProtocolRequired, s.ReadHeaderTimeout = true, timeout })
	var silent []net.Conn
	for range 3 {
		silent = append(silent, dialFrom(t, testLB, c.Addr), dialFrom(t, testDirect, c.Addr))
	}
	time.Sleep(100 * time.Millisecond) // accepted
	start := time.Now()
	if got := served(t, c, testLB, proxyHeader(t, 2, "203.0.113.7:4000")); got != "203.0.113.7" {
		t.Errorf("X-Forwarded-For %q", got)
	}
	if got := served(t, c, testDirect, nil); got != testDirect {
		t.Errorf("X-Forwarded-For %q", got)
	}
	if d := time.Since(start); d > timeout/3 {
		t.Errorf("two requests behind silent connections took %v (the header timeout is %v)", d, timeout)
	}
	_ = silent[0].SetReadDeadline(time.Now().Add(2 * timeout))
	if n, err := silent[0].Read(make([]byte, 1)); n != 0 || err == nil || time.Since(start) > timeout+time.Second {
		t.Errorf("the load balancer's silent connection: read %d, %v after %v; want it closed after %v", n, err, time.Since(start), timeout)
	}
	testbed.WaitFor(t, 2*time.Second, "the 3 silent connections of the load balancer counted as missing headers", func() bool {
		return counterWith(t, c, "replproxy_proxy_protocol_refused_total", "missing_header") == 3
	})
}

// TestProxyProtocolBeforeTLS: on the HTTPS listener the header comes
// before the TLS handshake, and names the client of the requests over it.
func TestProxyProtocolBeforeTLS(t *testing.T) {
	certFile, keyFile, pool := testbed.SelfSigned(t, "*.alice.repl.test")
	c := proxyProtoCluster(t, func(s *proxy.ServerConfig) {
		s.TLSListen, s.TLSCertFile, s.TLSKeyFile = "127.0.0.1:0", certFile, keyFile
	})
	for _, proto := range []string{"http/1.1", "h2"} {
		got := tlsXFF(t, c.Server.Addr("https"), pool, proto, proxyHeader(t, 1, "198.51.100.4:999"))
		if got != "198.51.100.4" {
			t.Errorf("%s: X-Forwarded-For %q, want the client the header names", proto, got)
		}
	}
}

// tlsXFF sends pre then a GET over TLS (ALPN proto) from the load
// balancer, and returns the X-Forwarded-For the container saw.
func tlsXFF(t *testing.T, addr string, pool *x509.CertPool, proto string, pre []byte) string {
	t.Helper()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(testLB)}}
			conn, err := d.DialContext(ctx, network, addr)
			if err == nil {
				_, err = conn.Write(pre)
			}
			return conn, err
		},
		TLSClientConfig:   &tls.Config{RootCAs: pool, NextProtos: []string{proto}},
		ForceAttemptHTTP2: proto == "h2",
	}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, "https://blog.alice.repl.test/", nil)
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s: %v", proto, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.ProtoMajor != map[string]int{"http/1.1": 1, "h2": 2}[proto] {
		t.Errorf("%s: served over %s", proto, resp.Proto)
	}
	return testbed.Decode(t, string(body)).Header.Get("X-Forwarded-For")
}

// TestProxyProtocolOnTheForwardListener: a load balancer in front of a
// cluster's forward listener sends its header before the mutual TLS of
// the clusters' proxies; the header names the peer connection's source
// (its access-log line), while the client the container sees is still the
// one the hop mark names, trusted for the peer's certificate.
func TestProxyProtocolOnTheForwardListener(t *testing.T) {
	east, west, _, _ := mtlsClustersVia(t, func(s *proxy.ServerConfig) {
		s.ProxyProtocolFrom, s.ProxyProtocolRequired = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, true
	}, func(t *testing.T, addr, to string) { startProxyRelay(t, addr, to, "198.51.100.20:7000") })
	app := testbed.EchoServer(t, "app")
	moveEmbedded(t, east, west, "r1", "alice", "blog", testbed.HostOf(app.URL))
	_, body := do(t, clientFrom(testDirect), east.Addr, "blog.alice.repl.test", nil)
	if got := testbed.Decode(t, body).Header.Get("X-Forwarded-For"); got != testDirect {
		t.Errorf("X-Forwarded-For %q, want the client, %s (from the mark)", got, testDirect)
	}
	if !accessLogged(west, "198.51.100.20:7000") {
		t.Error("west's access log has no request from the source the header names")
	}
}

// startProxyRelay relays every connection on addr to to, from 127.0.0.1,
// after a PROXY v2 header naming client: a load balancer.
func startProxyRelay(t *testing.T, addr, to, client string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	header := proxyHeader(t, 2, client)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", to)
			if err == nil {
				_, err = up.Write(header)
			}
			if err != nil {
				c.Close()
				continue
			}
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
}

// TestProxyProtocolOff: without ProxyProtocolFrom a header is not read:
// it is the start of a malformed request.
func TestProxyProtocolOff(t *testing.T) {
	c := oneCluster(t, clusterOpts{})
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(testbed.EchoServer(t, "app").URL))
	resp, _, err := exchange(t, dialFrom(t, testLB, c.Addr), proxyHeader(t, 1, "203.0.113.7:4000"), false)
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a v1 header with the PROXY protocol off: %v %v, want 400", resp, err)
	}
}

// TestProxyProtocolUpgradeHalfClose: an upgraded connection that came
// with a PROXY header passes the container's half-close on to the client
// as a half-close, and the client's last words still reach the container.
func TestProxyProtocolUpgradeHalfClose(t *testing.T) {
	heard := make(chan string, 1)
	c := newRawContainer(t, func(_ int64, req *http.Request, conn net.Conn) bool {
		_, _ = io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\nbye")
		_ = conn.(interface{ CloseWrite() error }).CloseWrite()
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(conn)
		heard <- string(got)
		return true
	})
	pc := hostileCluster(t, c, clusterOpts{server: func(s *proxy.ServerConfig) {
		s.ProxyProtocolFrom = []netip.Prefix{netip.MustParsePrefix(testLB + "/32")}
	}})
	conn := dialFrom(t, testLB, pc.Addr)
	req := "GET / HTTP/1.1\r\nHost: " + evilHost + "\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n"
	_, _ = conn.Write(append(proxyHeader(t, 2, "203.0.113.7:4000"), req...))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if rest, err := io.ReadAll(br); err != nil || string(rest) != "bye" {
		t.Fatalf("the client read %q, %v; want the container's bye, then its half-close", rest, err)
	}
	_, _ = io.WriteString(conn, "still here")
	_ = conn.(*net.TCPConn).CloseWrite()
	select {
	case got := <-heard:
		if got != "still here" {
			t.Fatalf("the container heard %q after its half-close, want the client's last words", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the container heard nothing after its half-close")
	}
}
