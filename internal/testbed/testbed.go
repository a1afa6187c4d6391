// Package testbed holds the pieces the project's tests build a small
// platform from: a registry file, repls, an echoing container, waiting for
// a condition, and certificates (self-signed files for a listener, and the
// key-and-certificate PEM a proxy stores).
package testbed

import (
	"bytes"
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

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// Registry writes a registry naming the clusters with their forward
// addresses and store addresses.
func Registry(t testing.TB, clusters map[string][2]string) *cluster.Registry {
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

// CreateRepl adds a live repl to st, failing t when it cannot.
func CreateRepl(t testing.TB, st store.Store, id, owner, slug string, endpoints ...string) {
	t.Helper()
	if _, err := st.CreateRepl(context.Background(), store.Repl{ID: id, Owner: owner, Slug: slug, Endpoints: endpoints}); err != nil {
		t.Fatal(err)
	}
}

// HostOf returns the host:port of a test server URL.
func HostOf(url string) string { return strings.TrimPrefix(url, "http://") }

// Echoed is what EchoServer answers: what it received, as JSON.
type Echoed struct {
	Name    string      `json:"name"`
	Method  string      `json:"method"`
	Host    string      `json:"host"`
	Path    string      `json:"path"`
	Header  http.Header `json:"header"`
	BodyLen int64       `json:"body_len"`
}

// EchoServer is a container named name that answers every request with
// an Echoed (and the header X-Backend: name); it stops when t ends.
func EchoServer(t testing.TB, name string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Backend", name)
		_ = json.NewEncoder(w).Encode(Echoed{Name: name, Method: r.Method, Host: r.Host, Path: r.URL.RequestURI(), Header: r.Header, BodyLen: n})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Decode reads an EchoServer answer.
func Decode(t testing.TB, body string) Echoed {
	t.Helper()
	var e Echoed
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("decode %q: %v", body, err)
	}
	return e
}

// WaitFor polls ok every 20 ms until it holds, failing t after limit.
func WaitFor(t testing.TB, limit time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SelfSigned writes a self-signed ECDSA certificate for name and returns
// the files and a pool that trusts it.
func SelfSigned(t testing.TB, name string) (certFile, keyFile string, pool *x509.CertPool) {
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

// CertPEM returns autocert's format: an EC private key, then a
// self-signed certificate for names valid until notAfter.
func CertPEM(t testing.TB, notAfter time.Time, names ...string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    notAfter.Add(-90 * 24 * time.Hour),
		NotAfter:     notAfter,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	_ = pem.Encode(&b, &pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	return b.Bytes()
}
