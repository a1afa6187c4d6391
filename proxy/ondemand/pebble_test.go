package ondemand_test

import (
	"context"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/acmetest"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy/ondemand"
	"github.com/replproxy/replproxy/store"
)

// tlsEnv is a cluster database, Pebble and the DNS server Pebble asks
// (TXT from the store's challenge records, A for custom domains).
type tlsEnv struct {
	storeAddr   string
	st          store.Store   // a handle of the test's own: setup and the DNS servers
	dns         *acmetest.DNS // what Pebble asks
	check       *acmetest.DNS // what the proxies check DNS-01 records with (replns's role)
	pebble      *acmetest.Pebble
	roots       *x509.CertPool // what Pebble issues under
	http, https string         // where Pebble validates HTTP-01 and TLS-ALPN-01
	backend     string         // the repls' container
}

type tlsEnvOpts struct {
	storeAddr    string
	noTLSALPN    bool          // Pebble's TLS-ALPN-01 port is not the proxy's: only HTTP-01 can pass
	certValidity time.Duration // of what Pebble issues; zero: its default
}

func newTLSEnv(t testing.TB, o tlsEnvOpts) *tlsEnv {
	t.Helper()
	acmetest.NeedTool(t, "pebble", "pebble")
	st, err := cluster.Open(t.Context(), o.storeAddr, cluster.OpenOptions{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &tlsEnv{storeAddr: o.storeAddr, st: st}
	txt := func(ctx context.Context, name string) ([]string, error) {
		cs, err := st.Challenges(ctx, name)
		var values []string
		for _, c := range cs {
			values = append(values, c.Value)
		}
		return values, err
	}
	e.dns, e.check = acmetest.StartDNS(t, txt), acmetest.StartDNS(t, txt)
	httpPort, httpsPort := acmetest.FreePort(t), acmetest.FreePort(t)
	e.http, e.https = "127.0.0.1:"+strconv.Itoa(httpPort), "127.0.0.1:"+strconv.Itoa(httpsPort)
	pc := acmetest.PebbleConfig{DNSServer: e.dns.Addr, HTTPPort: httpPort, TLSPort: httpsPort, CertValidity: o.certValidity}
	if o.noTLSALPN {
		pc.TLSPort = 0
	}
	e.pebble = acmetest.StartPebble(t, pc)
	e.roots = e.pebble.IssuerRoots(t)
	e.backend = testbed.HostOf(testbed.EchoServer(t, "app").URL)
	return e
}

// proxy starts a proxy of the cluster; the first one takes the ports
// Pebble validates on.
func (e *tlsEnv) proxy(t testing.TB, validated bool, tweak func(*tlsProxyOpts)) *tlsProxy {
	o := tlsProxyOpts{storeAddr: e.storeAddr, pebble: e.pebble, dns: e.check, forward: e.http}
	if validated {
		o.http, o.https = e.http, e.https
	}
	if tweak != nil {
		tweak(&o)
	}
	return startTLSProxy(t, o)
}

func orders(t *testing.T, ps ...*tlsProxy) float64 {
	t.Helper()
	var n float64
	for _, p := range ps {
		n += metric(t, p.Metrics, "replproxy_tls_orders_total", nil)
	}
	return n
}

func sameCert(t *testing.T, what string, got, want *x509.Certificate) {
	t.Helper()
	if got.SerialNumber.Cmp(want.SerialNumber) != 0 {
		t.Fatalf("%s: serial %x, want the same certificate as before (%x)", what, got.SerialNumber, want.SerialNumber)
	}
}

func TestTLSOnDemand(t *testing.T) {
	srv := pgtest.Start(t)
	e := newTLSEnv(t, tlsEnvOpts{storeAddr: srv.NewDatabase(t)})
	ctx := t.Context()
	testbed.CreateRepl(t, e.st, "r1", "alice", "blog", e.backend)
	if _, err := e.st.LinkDomain(ctx, store.Domain{Name: "www.example.com", ReplID: "r1"}); err != nil {
		t.Fatal(err)
	}
	e.dns.SetHost("www.example.com", "127.0.0.1")

	outer := t // proxies outlive the subtests that start them
	a := e.proxy(t, true, nil)
	var wildcard, ids, domain *x509.Certificate

	t.Run("wildcard issued on the first handshake and served", func(t *testing.T) {
		start := time.Now()
		wildcard = mustHandshake(t, a.HTTPS, "blog.alice.repl.test", e.roots)
		took := time.Since(start)
		t.Logf("first handshake to served *.alice.repl.test: %v", took)
		if got := strings.Join(wildcard.DNSNames, ","); got != "*.alice.repl.test" {
			t.Fatalf("served names %s, want *.alice.repl.test", got)
		}
		resp, err := httpsClient(a.HTTPS, e.roots).Get("https://blog.alice.repl.test/hello")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := testbed.Decode(t, string(body)); resp.StatusCode != 200 || got.Name != "app" || got.Header.Get("X-Forwarded-Proto") != "https" {
			t.Fatalf("GET over the new certificate: %s %s", resp.Status, body)
		}
		if cs, _ := e.st.Challenges(ctx, "_acme-challenge.alice.repl.test"); len(cs) != 0 {
			t.Fatalf("challenge records left behind: %v", cs)
		}
		for name, want := range map[string]float64{
			"replproxy_tls_orders_total": 1, "replproxy_tls_certificates_issued_total": 1, "replproxy_tls_issue_seconds": 1,
		} {
			if got := metric(t, a.Metrics, name, map[string]string{"kind": "wildcard"}); got != want {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
		}
		// The next handshake comes from memory.
		sameCert(t, "second handshake", mustHandshake(t, a.HTTPS, "other.alice.repl.test", e.roots), wildcard)
		if got := metric(t, a.Metrics, "replproxy_tls_served_from_cache_total", map[string]string{"kind": "wildcard"}); got < 1 {
			t.Errorf("served from cache = %v, want at least 1", got)
		}
	})

	t.Run("ids wildcard", func(t *testing.T) {
		ids = mustHandshake(t, a.HTTPS, "r1.id.repl.test", e.roots)
		if got := strings.Join(ids.DNSNames, ","); got != "*.id.repl.test" {
			t.Fatalf("served names %s, want *.id.repl.test", got)
		}
	})

	t.Run("custom domain validated by TLS-ALPN-01 against the proxy", func(t *testing.T) {
		domain = mustHandshake(t, a.HTTPS, "www.example.com", e.roots)
		if got := strings.Join(domain.DNSNames, ","); got != "www.example.com" {
			t.Fatalf("served names %s, want www.example.com", got)
		}
		if got := metric(t, a.Metrics, "replproxy_tls_orders_total", map[string]string{"kind": "domain"}); got != 1 {
			t.Fatalf("domain orders = %v, want 1 (autocert tries TLS-ALPN-01 first, and a second order would follow a failure)", got)
		}
		sameCert(t, "second handshake", mustHandshake(t, a.HTTPS, "WWW.Example.COM", e.roots), domain)
	})

	t.Run("names that do not route are never ordered", func(t *testing.T) {
		before := orders(t, a)
		for _, name := range []string{"blog.carol.repl.test", "nope.example.com", "repl.test", "alice.repl.test"} {
			if _, err := handshake(t, a.HTTPS, name, e.roots); err == nil {
				t.Errorf("handshake for %s succeeded", name)
			}
		}
		if got := orders(t, a); got != before {
			t.Fatalf("orders went from %v to %v", before, got)
		}
	})

	var b *tlsProxy
	t.Run("a second proxy of the cluster serves them from the database without ordering", func(t *testing.T) {
		b = e.proxy(outer, false, nil)
		sameCert(t, "wildcard", mustHandshake(t, b.HTTPS, "blog.alice.repl.test", e.roots), wildcard)
		sameCert(t, "ids", mustHandshake(t, b.HTTPS, "r1.id.repl.test", e.roots), ids)
		sameCert(t, "domain", mustHandshake(t, b.HTTPS, "www.example.com", e.roots), domain)
		if got := orders(t, b); got != 0 {
			t.Fatalf("the second proxy sent %v orders, want none", got)
		}
		if got := metric(t, b.Metrics, "replproxy_tls_loaded_from_store_total", nil); got != 3 {
			t.Fatalf("loaded from the store: %v, want 3", got)
		}
	})

	t.Run("a restart keeps the certificates", func(t *testing.T) {
		a.stop()
		a = e.proxy(outer, true, nil)
		sameCert(t, "wildcard", mustHandshake(t, a.HTTPS, "blog.alice.repl.test", e.roots), wildcard)
		sameCert(t, "domain", mustHandshake(t, a.HTTPS, "www.example.com", e.roots), domain)
		if got := orders(t, a); got != 0 {
			t.Fatalf("the restarted proxy sent %v orders, want none", got)
		}
	})

	t.Run("concurrent first handshakes on two proxies make one order", func(t *testing.T) {
		testbed.CreateRepl(t, e.st, "r2", "dave", "shop", e.backend)
		before := orders(t, a, b)
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			certs []*x509.Certificate
			errs  []error
		)
		for i := range 8 {
			p := a
			if i%2 == 1 {
				p = b
			}
			wg.Go(func() {
				leaf, err := handshake(t, p.HTTPS, "shop.dave.repl.test", e.roots)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
				} else {
					certs = append(certs, leaf)
				}
			})
		}
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("handshakes failed: %v", errs)
		}
		for _, c := range certs[1:] {
			sameCert(t, "concurrent handshake", c, certs[0])
		}
		if got := orders(t, a, b) - before; got != 1 {
			t.Fatalf("%v orders for *.dave.repl.test across the two proxies, want 1", got)
		}
	})

	t.Run("a name whose validation fails backs off instead of retrying", func(t *testing.T) {
		testbed.CreateRepl(t, e.st, "r3", "bob", "app", e.backend)
		e.dns.HideTXT("_acme-challenge.bob.repl.test") // from Pebble only: the proxy's check passes
		if _, err := e.st.LinkDomain(ctx, store.Domain{Name: "broken.example.com", ReplID: "r3"}); err != nil {
			t.Fatal(err)
		}
		// broken.example.com has no address: TLS-ALPN-01 and HTTP-01 fail.
		before := orders(t, a)
		for _, name := range []string{"app.bob.repl.test", "broken.example.com"} {
			if _, err := handshake(t, a.HTTPS, name, e.roots); err == nil {
				t.Fatalf("handshake for %s succeeded", name)
			}
		}
		failures := metric(t, a.Metrics, "replproxy_tls_certificate_failures_total", nil)
		afterFirst := orders(t, a)
		if failures != 2 || afterFirst == before {
			t.Fatalf("after the first handshakes: %v failures, %v orders; want 2 failures and some orders", failures, afterFirst-before)
		}
		for range 5 {
			for _, name := range []string{"app.bob.repl.test", "broken.example.com"} {
				start := time.Now()
				if _, err := handshake(t, a.HTTPS, name, e.roots); err == nil {
					t.Fatalf("handshake for %s succeeded", name)
				}
				if took := time.Since(start); took > 2*time.Second {
					t.Fatalf("a handshake for %s backing off took %v, want it refused at once", name, took)
				}
			}
		}
		if got := orders(t, a); got != afterFirst {
			t.Fatalf("orders went from %v to %v while backing off", afterFirst, got)
		}
		if got := metric(t, a.Metrics, "replproxy_tls_backoff_refusals_total", nil); got != 10 {
			t.Fatalf("backoff refusals = %v, want 10", got)
		}
		// Another proxy finds the lease held for the backoff: it orders
		// nothing, and after its own wait fails at once too.
		c := e.proxy(t, false, func(o *tlsProxyOpts) {
			o.tweak = func(c *ondemand.Config) { c.HandshakeWait, c.OrderTimeout = time.Second, 2*time.Second }
		})
		if _, err := handshake(t, c.HTTPS, "app.bob.repl.test", e.roots); err == nil {
			t.Fatal("handshake on another proxy succeeded")
		}
		testbed.WaitFor(t, 30*time.Second, "the other proxy to give up waiting", func() bool {
			return metric(t, c.Metrics, "replproxy_tls_certificate_failures_total", nil) == 1
		})
		start := time.Now()
		if _, err := handshake(t, c.HTTPS, "app.bob.repl.test", e.roots); err == nil || time.Since(start) > 500*time.Millisecond {
			t.Fatalf("handshake on the other proxy after its wait: %v after %v, want a quick failure", err, time.Since(start))
		}
		if got := orders(t, c); got != 0 {
			t.Fatalf("the other proxy sent %v orders for a name the first is backing off", got)
		}
	})

	t.Run("HTTP redirects to HTTPS with HSTS for hosts with a certificate", func(t *testing.T) {
		plain := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		_, httpsPort, _ := strings.Cut(a.HTTPS, ":")
		for _, tc := range []struct {
			host, path string
			want       int
			location   string
		}{
			{"blog.alice.repl.test", "/x?y=1", http.StatusMovedPermanently, "https://blog.alice.repl.test:" + httpsPort + "/x?y=1"},
			{"www.example.com", "/", http.StatusMovedPermanently, "https://www.example.com:" + httpsPort + "/"},
			{"www.example.com", "/.well-known/acme-challenge/nope", http.StatusNotFound, ""},
			{"blog.alice.repl.test", "/.well-known/acme-challenge/nope", http.StatusMovedPermanently, "https://blog.alice.repl.test:" + httpsPort + "/.well-known/acme-challenge/nope"},
			{"app.bob.repl.test", "/", http.StatusOK, ""}, // no certificate: served over HTTP
		} {
			req, _ := http.NewRequest(http.MethodGet, "http://"+a.HTTP+tc.path, nil)
			req.Host = tc.host
			resp, err := plain.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want || resp.Header.Get("Location") != tc.location {
				t.Errorf("GET http://%s%s: %s, Location %q; want %d %q", tc.host, tc.path, resp.Status, resp.Header.Get("Location"), tc.want, tc.location)
			}
		}
		req, _ := http.NewRequest(http.MethodPost, "http://"+a.HTTP+"/form", strings.NewReader("a=1"))
		req.Host = "blog.alice.repl.test"
		resp, err := plain.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusPermanentRedirect {
			t.Errorf("POST: %s, want 308 (keeps the method)", resp.Status)
		}
		resp, err = httpsClient(a.HTTPS, e.roots).Get("https://blog.alice.repl.test/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Strict-Transport-Security"); got != "max-age=31536000" {
			t.Errorf("HTTPS response Strict-Transport-Security %q, want max-age=31536000", got)
		}
	})

	t.Run("no private key in the logs", func(t *testing.T) {
		for _, p := range []*tlsProxy{a, b} {
			for _, entry := range p.Logs.All() {
				for k, v := range entry.ContextMap() {
					if s, ok := v.(string); ok && strings.Contains(s, "PRIVATE KEY") {
						t.Errorf("log %q field %s holds a private key", entry.Message, k)
					}
				}
			}
		}
	})
}

func TestTLSOnDemandEmbeddedHTTP01(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Pebble's TLS-ALPN-01 port is not the proxy's: custom domains can only
	// pass HTTP-01, answered on the proxy's plain listener.
	e := newTLSEnv(t, tlsEnvOpts{storeAddr: path, noTLSALPN: true})
	testbed.CreateRepl(t, e.st, "r1", "alice", "blog", e.backend)
	if _, err := e.st.LinkDomain(t.Context(), store.Domain{Name: "shop.example.org", ReplID: "r1"}); err != nil {
		t.Fatal(err)
	}
	e.dns.SetHost("shop.example.org", "127.0.0.1")

	certFile, keyFile, static := testbed.SelfSigned(t, "repl.test")
	withStatic := func(o *tlsProxyOpts) { o.staticCert, o.staticKey = certFile, keyFile }
	a := e.proxy(t, true, withStatic)
	// Names on-demand does not serve get the static certificate.
	if _, err := handshake(t, a.HTTPS, "repl.test", static); err != nil {
		t.Fatalf("handshake for the apex: %v; want the static certificate", err)
	}
	domain := mustHandshake(t, a.HTTPS, "shop.example.org", e.roots)
	if got := strings.Join(domain.DNSNames, ","); got != "shop.example.org" {
		t.Fatalf("served names %s", got)
	}
	if got := metric(t, a.Metrics, "replproxy_tls_orders_total", map[string]string{"kind": "domain"}); got != 2 {
		t.Fatalf("domain orders = %v, want 2: TLS-ALPN-01 failing, then HTTP-01", got)
	}
	wildcard := mustHandshake(t, a.HTTPS, "blog.alice.repl.test", e.roots)

	a.stop()
	a = e.proxy(t, true, withStatic)
	sameCert(t, "domain after a restart", mustHandshake(t, a.HTTPS, "shop.example.org", e.roots), domain)
	sameCert(t, "wildcard after a restart", mustHandshake(t, a.HTTPS, "blog.alice.repl.test", e.roots), wildcard)
	if got := orders(t, a); got != 0 {
		t.Fatalf("the restarted proxy sent %v orders", got)
	}
	certs, err := store.ListCertificates(t.Context(), e.st.(store.Certs))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, c := range certs {
		keys = append(keys, c.Key)
	}
	if got := strings.Join(keys, " "); got != "*.alice.repl.test shop.example.org" {
		t.Fatalf("stored certificates: %s", got)
	}
}

func TestTLSRenewal(t *testing.T) {
	srv := pgtest.Start(t)
	// Certificates that live 30 s are due for renewal after 20 s.
	e := newTLSEnv(t, tlsEnvOpts{storeAddr: srv.NewDatabase(t), certValidity: 30 * time.Second})
	testbed.CreateRepl(t, e.st, "r1", "alice", "blog", e.backend)
	if _, err := e.st.LinkDomain(t.Context(), store.Domain{Name: "www.example.com", ReplID: "r1"}); err != nil {
		t.Fatal(err)
	}
	e.dns.SetHost("www.example.com", "127.0.0.1")
	fast := func(o *tlsProxyOpts) {
		o.tweak = func(c *ondemand.Config) { c.RenewCheck, c.Backoff = 200*time.Millisecond, time.Second }
	}
	a := e.proxy(t, true, fast)
	b := e.proxy(t, false, fast)
	first := mustHandshake(t, a.HTTPS, "blog.alice.repl.test", e.roots)
	sameCert(t, "second proxy", mustHandshake(t, b.HTTPS, "blog.alice.repl.test", e.roots), first)
	domain := mustHandshake(t, a.HTTPS, "www.example.com", e.roots)

	renewed := func(p *tlsProxy, name string, old *x509.Certificate) func() bool {
		return func() bool {
			leaf, err := handshake(t, p.HTTPS, name, e.roots)
			return err == nil && leaf.SerialNumber.Cmp(old.SerialNumber) != 0 && leaf.NotAfter.After(old.NotAfter)
		}
	}
	testbed.WaitFor(t, time.Until(first.NotAfter), "both proxies to serve a renewed wildcard before the old one expires", func() bool {
		return renewed(a, "blog.alice.repl.test", first)() && renewed(b, "blog.alice.repl.test", first)()
	})
	testbed.WaitFor(t, time.Until(domain.NotAfter), "autocert to renew the custom domain before it expires", renewed(a, "www.example.com", domain))
	next := mustHandshake(t, a.HTTPS, "blog.alice.repl.test", e.roots)
	sameCert(t, "the other proxy's renewed wildcard", mustHandshake(t, b.HTTPS, "blog.alice.repl.test", e.roots), next)
	wildcardOrders := metric(t, a.Metrics, "replproxy_tls_orders_total", map[string]string{"kind": "wildcard"}) +
		metric(t, b.Metrics, "replproxy_tls_orders_total", map[string]string{"kind": "wildcard"})
	renewals := metric(t, a.Metrics, "replproxy_tls_certificates_renewed_total", map[string]string{"kind": "wildcard"}) +
		metric(t, b.Metrics, "replproxy_tls_certificates_renewed_total", map[string]string{"kind": "wildcard"})
	if wildcardOrders != 2 || renewals != 1 {
		t.Fatalf("wildcard: %v orders and %v renewals across the two proxies; want 2 orders (issue, renew) and 1 renewal", wildcardOrders, renewals)
	}
	if got := metric(t, a.Metrics, "replproxy_tls_certificates_renewed_total", map[string]string{"kind": "domain"}); got < 1 {
		t.Fatalf("domain renewals = %v, want at least 1", got)
	}
}
