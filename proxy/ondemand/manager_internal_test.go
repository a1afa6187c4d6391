package ondemand

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/embedded"
)

// routeSet is a Routes that knows a fixed set of keys.
type routeSet map[store.Key]bool

func (r routeSet) Lookup(_ context.Context, k store.Key) (store.Route, error) {
	if r[k] {
		return store.Route{Kind: store.RouteLocal, ReplID: "r1", Endpoints: []string{"127.0.0.1:1"}}, nil
	}
	return store.Route{}, store.ErrNotFound
}

// testManager returns a Manager over an empty embedded store that routes
// www.example.com. A nil now is time.Now.
func testManager(t *testing.T, now func() time.Time, tweak func(*Config)) (*Manager, *embedded.Store) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := embedded.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	zone, _ := store.NewZone("repl.test")
	cfg := Config{Zone: zone, Directory: "https://127.0.0.1:1/dir", Holder: "me"}
	if tweak != nil {
		tweak(&cfg)
	}
	m, err := New(cfg, st, routeSet{store.DomainKey("www.example.com"): true}, nil, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.stop)
	return m, st
}

func TestOrderGateAdmits(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name  string
		names []string
		setup func(*testing.T, *Manager, *embedded.Store)
		want  error
	}{
		{"an owner's wildcard", []string{"*.alice.repl.test"}, nil, nil},
		{"the ids' wildcard", []string{"*.id.repl.test"}, nil, nil},
		{"a linked domain", []string{"www.example.com"}, nil, nil},
		{"a domain not linked", []string{"evil.example.com"}, nil, errNotOurs},
		{"a repl's own name", []string{"blog.alice.repl.test"}, nil, errNotOurs},
		{"a wildcard too deep", []string{"*.blog.alice.repl.test"}, nil, errNotOurs},
		{"the apex wildcard", []string{"*.repl.test"}, nil, errNotOurs},
		{"one bad name spoils the order", []string{"*.alice.repl.test", "evil.example.com"}, nil, errNotOurs},
		{"another proxy holds the lease", []string{"*.alice.repl.test"}, func(t *testing.T, _ *Manager, st *embedded.Store) {
			if got, err := st.AcquireCertLease(ctx, "*.alice.repl.test", "other", time.Minute); err != nil || !got {
				t.Fatal(got, err)
			}
		}, errLeaseHeld},
		{"our own lease", []string{"*.alice.repl.test"}, func(t *testing.T, m *Manager, st *embedded.Store) {
			if got, err := st.AcquireCertLease(ctx, "*.alice.repl.test", m.cfg.Holder, time.Minute); err != nil || !got {
				t.Fatal(got, err)
			}
		}, nil},
		{"the rate limit", []string{"*.bob.repl.test"}, func(t *testing.T, m *Manager, _ *embedded.Store) {
			if err := m.admitOrder(ctx, []string{"*.alice.repl.test"}); err != nil {
				t.Fatal(err)
			}
		}, errRateLimited},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, st := testManager(t, nil, func(c *Config) { c.OrderBurst, c.OrdersPerHour = 1, 1 })
			if tc.setup != nil {
				tc.setup(t, m, st)
			}
			err := m.admitOrder(ctx, tc.names)
			if !errors.Is(err, tc.want) {
				t.Fatalf("admit %v = %v, want %v", tc.names, err, tc.want)
			}
			if err == nil {
				got, lerr := st.AcquireCertLease(ctx, tc.names[0], "someone else", time.Minute)
				if lerr != nil || got {
					t.Fatalf("an admitted order's lease is not held: %v %v", got, lerr)
				}
			}
		})
	}
}

// jwsRequest is what acme.Client sends: a JWS whose payload is JSON.
func jwsRequest(t *testing.T, payload any) *http.Request {
	t.Helper()
	p, _ := json.Marshal(payload)
	body, _ := json.Marshal(map[string]string{"protected": "e30", "payload": base64.RawURLEncoding.EncodeToString(p), "signature": "x"})
	req, err := http.NewRequest(http.MethodPost, "https://ca.example/new-order", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestOrderNames(t *testing.T) {
	for _, tc := range []struct {
		name    string
		payload any
		want    []string
		wantErr bool
	}{
		{"new order", map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "*.Alice.repl.test"}}}, []string{"*.alice.repl.test"}, false},
		{"two names", map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": "a.example"}, {"type": "dns", "value": "b.example"}}}, []string{"a.example", "b.example"}, false},
		{"an IP", map[string]any{"identifiers": []map[string]string{{"type": "ip", "value": "192.0.2.1"}}}, nil, true},
		{"finalize", map[string]any{"csr": "MIIB"}, nil, false},
		{"new account", map[string]any{"termsOfServiceAgreed": true}, nil, false},
		{"post-as-get", "", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := orderNames(jwsRequest(t, tc.payload))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("names = %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("names = %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestOrderGateRefusesBeforeSending(t *testing.T) {
	sent := 0
	g := &orderGate{
		next: roundTripFunc(func(*http.Request) (*http.Response, error) {
			sent++
			return &http.Response{StatusCode: 201, Body: http.NoBody}, nil
		}),
		admit: func(_ context.Context, names []string) error {
			if names[0] == "no.example" {
				return errLeaseHeld
			}
			return nil
		},
	}
	order := func(name string) *http.Request {
		return jwsRequest(t, map[string]any{"identifiers": []map[string]string{{"type": "dns", "value": name}}})
	}
	if _, err := g.RoundTrip(order("no.example")); !errors.Is(err, errLeaseHeld) || sent != 0 {
		t.Fatalf("refused order: %v, %d sent", err, sent)
	}
	if resp, err := g.RoundTrip(order("yes.example")); err != nil || sent != 1 {
		t.Fatalf("admitted order: %v, %d sent", err, sent)
	} else {
		resp.Body.Close()
	}
	g.close()
	if _, err := g.RoundTrip(order("yes.example")); !errors.Is(err, errStopped) || sent != 1 {
		t.Fatalf("after close: %v, %d sent", err, sent)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestTokenBucket(t *testing.T) {
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	b := newTokenBucket(1, 3, now) // one a second, three at once
	for i := range 3 {
		if !b.take(now) {
			t.Fatalf("take %d of the burst refused", i)
		}
	}
	if b.take(now) {
		t.Fatal("a fourth at once was allowed")
	}
	if b.take(now.Add(500 * time.Millisecond)) {
		t.Fatal("allowed after half a token")
	}
	if !b.take(now.Add(1100 * time.Millisecond)) {
		t.Fatal("refused after a token came back")
	}
	later, n := now.Add(time.Hour), 0
	for b.take(later) {
		n++
	}
	if n != 3 {
		t.Fatalf("an hour later %d at once, want the burst (3), not more", n)
	}
}

func TestCertCacheMapsMisses(t *testing.T) {
	m, _ := testManager(t, nil, nil)
	c := m.cache
	ctx := t.Context()
	if _, err := c.Get(ctx, "www.example.com"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("get missing = %v, want autocert.ErrCacheMiss", err)
	}
	if _, err := c.Get(ctx, "a/b"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("get of a name the store cannot hold = %v, want autocert.ErrCacheMiss", err)
	}
	if err := c.Put(ctx, "tok+http-01", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, "tok+http-01"); err != nil || string(got) != "v" {
		t.Fatalf("get = %q, %v", got, err)
	}
	if err := c.Delete(ctx, "tok+http-01"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "tok+http-01"); !errors.Is(err, autocert.ErrCacheMiss) {
		t.Fatalf("get deleted = %v", err)
	}
}

func TestBackoffDoubles(t *testing.T) {
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	m, _ := testManager(t, func() time.Time { return now }, func(c *Config) {
		c.Backoff, c.MaxBackoff = time.Minute, 5*time.Minute
	})
	ctx := t.Context()
	for _, want := range []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute} {
		m.failed(ctx, "*.alice.repl.test", errors.New("boom"), false)
		if got := m.failures["*.alice.repl.test"].until.Sub(now); got != want {
			t.Fatalf("backoff %v, want %v", got, want)
		}
		if m.backingOff("*.alice.repl.test") == nil {
			t.Fatal("not backing off")
		}
	}
	m.succeeded(ctx, "*.alice.repl.test")
	if err := m.backingOff("*.alice.repl.test"); err != nil {
		t.Fatalf("after a success: %v", err)
	}
}

func TestIdleWildcardsAreForgotten(t *testing.T) {
	now := time.Now()
	m, _ := testManager(t, func() time.Time { return now }, func(c *Config) {
		c.IdleEvict = time.Hour
	})
	data := selfSignedPEM(t, "*.alice.repl.test", now.Add(-time.Hour), now.Add(89*24*time.Hour))
	cert, err := parseCertPEM(data, "x.alice.repl.test", now)
	if err != nil {
		t.Fatal(err)
	}
	m.install("*.alice.repl.test", kindWildcard, cert)
	hello := func() (*tls.Certificate, error) {
		return m.GetCertificate(&tls.ClientHelloInfo{ServerName: "blog.alice.repl.test"})
	}
	now = now.Add(50 * time.Minute)
	if got, err := hello(); err != nil || got != cert {
		t.Fatalf("served %v, %v; want the installed certificate", got, err)
	}
	now = now.Add(50 * time.Minute) // 50 min after the last use
	m.renewDue()
	if len(m.certs) != 1 {
		t.Fatal("forgotten while in use")
	}
	now = now.Add(11 * time.Minute)
	m.renewDue()
	if len(m.certs) != 0 {
		t.Fatal("kept after an idle hour")
	}
}

// selfSignedPEM returns autocert's format for a self-signed ECDSA certificate.
func selfSignedPEM(t *testing.T, name string, notBefore, notAfter time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{name}, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	data, err := encodeCertPEM(key, [][]byte{der})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// countingCerts counts the certificate lookups that reach the store.
type countingCerts struct {
	*embedded.Store
	gets atomic.Int64
}

func (c *countingCerts) GetCert(ctx context.Context, name string) ([]byte, error) {
	c.gets.Add(1)
	return c.Store.GetCert(ctx, name)
}

// TestALPNChallengesPassTheHostPolicy: a TLS-ALPN-01 handshake for a name
// that is not a linked custom domain is refused before the store is asked
// for its token.
func TestALPNChallengesPassTheHostPolicy(t *testing.T) {
	_, st := testManager(t, nil, nil)
	counted := &countingCerts{Store: st}
	zone, _ := store.NewZone("repl.test")
	m, err := New(Config{Zone: zone, Directory: "https://127.0.0.1:1/dir", Holder: "me"}, counted,
		routeSet{store.DomainKey("www.example.com"): true}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.stop()
	for i := range 100 {
		hello := &tls.ClientHelloInfo{ServerName: fmt.Sprintf("random%d.example.net", i), SupportedProtos: []string{acme.ALPNProto}}
		if cert, err := m.GetCertificate(hello); err == nil || cert != nil {
			t.Fatalf("acme-tls/1 for a name nobody linked: %v, %v; want refused", cert, err)
		}
	}
	if n := counted.gets.Load(); n != 0 {
		t.Errorf("100 challenge handshakes for unlinked names made %d store lookups, want 0", n)
	}
	hello := &tls.ClientHelloInfo{ServerName: "www.example.com", SupportedProtos: []string{acme.ALPNProto}}
	_, _ = m.GetCertificate(hello) // a linked one is looked up (and has no token)
	if n := counted.gets.Load(); n == 0 {
		t.Error("a linked domain's challenge handshake did not look its token up")
	}
}
