package proxy_test

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
)

// fakeOnDemand has certificates for a fixed set of hosts (none it serves
// itself: the static certificate does) and answers every ACME HTTP-01
// challenge.
type fakeOnDemand map[string]bool

func (f fakeOnDemand) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, nil }
func (f fakeOnDemand) HasCertificate(host string) bool {
	host, _, _ = strings.Cut(strings.ToLower(host), ":")
	return f[strings.TrimSuffix(host, ".")]
}

func (f fakeOnDemand) HTTPHandler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			_, _ = io.WriteString(w, "challenge answer")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// TestHTTPSRedirectAndHSTS: with certificates on demand, plain HTTP for a
// host with a certificate is redirected to HTTPS, unless another cluster's
// proxy forwarded it (a hop mark that verifies; a spoofed one does not
// count), and HTTPS responses for it carry HSTS.
func TestHTTPSRedirectAndHSTS(t *testing.T) {
	certFile, keyFile, pool := testbed.SelfSigned(t, "*.alice.repl.test")
	c := oneCluster(t, clusterOpts{onDemand: fakeOnDemand{"blog.alice.repl.test": true}, server: func(s *proxy.ServerConfig) {
		s.TLSListen, s.TLSCertFile, s.TLSKeyFile, s.HSTSMaxAge = "127.0.0.1:0", certFile, keyFile, time.Hour
	}})
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(testbed.EchoServer(t, "blog").URL))
	testbed.CreateRepl(t, c.Store, "r2", "alice", "shop", testbed.HostOf(testbed.EchoServer(t, "shop").URL))
	_, httpsPort, _ := net.SplitHostPort(c.Server.Addr("https"))

	forwarded := func(mark string) http.Header {
		return http.Header{proxy.HopHeader: {mark}, "X-Forwarded-For": {"203.0.113.7"}, "X-Forwarded-Proto": {"http"},
			"X-Forwarded-Host": {"blog.alice.repl.test"}, "X-Request-Id": {"id-1"}}
	}
	valid := proxy.SignHop(testSecret, time.Now(), "west", "GET", "/", "blog.alice.repl.test", "203.0.113.7", "http", "blog.alice.repl.test", "id-1")
	forPOST := proxy.SignHop(testSecret, time.Now(), "west", "POST", "/", "blog.alice.repl.test", "203.0.113.7", "http", "blog.alice.repl.test", "id-1")
	noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		name, method, host, path string
		header                   http.Header
		status                   int
		location, body           string
	}{
		{"a host with a certificate", "GET", "blog.alice.repl.test", "/x?y=1", nil, http.StatusMovedPermanently, "https://blog.alice.repl.test:" + httpsPort + "/x?y=1", ""},
		{"its canonical name", "GET", "BLOG.Alice.repl.test.", "/", nil, http.StatusMovedPermanently, "https://blog.alice.repl.test:" + httpsPort + "/", ""},
		{"a POST keeps its method", "POST", "blog.alice.repl.test", "/form", nil, http.StatusPermanentRedirect, "https://blog.alice.repl.test:" + httpsPort + "/form", ""},
		{"an ACME challenge", "GET", "blog.alice.repl.test", "/.well-known/acme-challenge/tok", nil, http.StatusOK, "", "challenge answer"},
		{"a host without a certificate", "GET", "shop.alice.repl.test", "/", nil, http.StatusOK, "", `"name":"shop"`},
		{"forwarded by another cluster", "GET", "blog.alice.repl.test", "/", forwarded(valid), http.StatusOK, "", `"name":"blog"`},
		{"the same mark again (a replay)", "GET", "blog.alice.repl.test", "/", forwarded(valid), http.StatusMovedPermanently, "https://blog.alice.repl.test:" + httpsPort + "/", ""},
		{"a mark for another method", "GET", "blog.alice.repl.test", "/", forwarded(forPOST), http.StatusMovedPermanently, "https://blog.alice.repl.test:" + httpsPort + "/", ""},
		{"a spoofed hop mark", "GET", "blog.alice.repl.test", "/", forwarded("v2;00000000;west;1;2;forged"), http.StatusMovedPermanently, "https://blog.alice.repl.test:" + httpsPort + "/", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, c.URL(tc.path), nil)
			req.Host = tc.host
			for k, vs := range tc.header {
				req.Header[k] = vs
			}
			resp, err := noRedirect.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || resp.Header.Get("Location") != tc.location || !strings.Contains(string(body), tc.body) {
				t.Fatalf("%s http://%s%s: %s, Location %q, body %q; want %d %q %q",
					tc.method, tc.host, tc.path, resp.Status, resp.Header.Get("Location"), body, tc.status, tc.location, tc.body)
			}
		})
	}

	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	for host, want := range map[string]string{"blog.alice.repl.test": "max-age=3600", "shop.alice.repl.test": ""} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+c.Server.Addr("https")+"/", nil)
		req.Host = host
		tr.TLSClientConfig.ServerName = host
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Strict-Transport-Security"); resp.StatusCode != http.StatusOK || got != want {
			t.Errorf("https://%s/: %s, Strict-Transport-Security %q, want %q", host, resp.Status, got, want)
		}
	}
}
