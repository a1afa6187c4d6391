package ondemand_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// The helpers below are the proxy package's test helpers that the
// on-demand tests, which run whole proxies, need too.

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	testZone, _ = store.NewZone("repl.test")
	testSecret  = []byte("0123456789abcdef0123456789abcdef-test")
)

// registryFor writes a registry naming the clusters with their forward
// addresses and store addresses.
func registryFor(t testing.TB, clusters map[string][2]string) *cluster.Registry {
	t.Helper()
	var b strings.Builder
	b.WriteString("clusters:\n")
	i := 10
	for name, v := range clusters {
		fmt.Fprintf(&b, "  - name: %s\n    proxy_ipv4: [192.0.2.%d]\n    forward: %s\n    store: %q\n", name, i, v[0], v[1])
		i++
	}
	path := filepath.Join(t.TempDir(), "clusters.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, err := cluster.Load(path)
	if err != nil {
		t.Fatalf("registry:\n%s\n%v", b.String(), err)
	}
	return reg
}

func createRepl(t testing.TB, st store.Store, id, owner, slug string, endpoints ...string) {
	t.Helper()
	if _, err := st.CreateRepl(context.Background(), store.Repl{ID: id, Owner: owner, Slug: slug, Endpoints: endpoints}); err != nil {
		t.Fatal(err)
	}
}

// hostOf returns the host:port of a test server URL.
func hostOf(url string) string { return strings.TrimPrefix(url, "http://") }

// echoed is what echoServer answers: what it received, as JSON.
type echoed struct {
	Name   string      `json:"name"`
	Header http.Header `json:"header"`
}

// echoServer is a container that answers with its name and the headers it
// received.
func echoServer(t testing.TB, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echoed{Name: name, Header: r.Header})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func decode(t testing.TB, body string) echoed {
	t.Helper()
	var e echoed
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return e
}

func waitFor(t *testing.T, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// selfSigned writes a self-signed ECDSA certificate for name and returns
// the files and a pool that trusts it.
func selfSigned(t testing.TB, name string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
