package proxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
)

// TestRegistryReload: a proxy's registry changes while it runs
// (SetRegistry, as SIGHUP does): a tombstone naming a cluster it did not
// know is answered 502 until the cluster is added, then forwarded there;
// once the cluster is removed again, 502 again; a registry without the
// proxy's own cluster is refused and the one in use kept.
func TestRegistryReload(t *testing.T) {
	eastStore, eastPath := embeddedStore(t)
	westStore, westPath := embeddedStore(t)
	eastAddr, westAddr := freeAddr(t), freeAddr(t)
	alone := testbed.Registry(t, map[string][2]string{"east": {eastAddr, eastPath}})
	both := testbed.Registry(t, map[string][2]string{"east": {eastAddr, eastPath}, "west": {westAddr, westPath}})
	east := startCluster(t, "east", eastAddr, eastStore, alone, clusterOpts{})
	west := startCluster(t, "west", westAddr, westStore, both, clusterOpts{})
	app := testbed.EchoServer(t, "west-app")
	moveTo(t, east, west, "r1", "alice", "blog", testbed.HostOf(app.URL), 2)
	const host = "blog.alice.repl.test"
	client := clientFrom("127.0.0.1")

	if resp, body := do(t, client, east.Addr, host, nil); resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "does not know") {
		t.Fatalf("before west is in east's registry: %d %q, want 502 naming a cluster it does not know", resp.StatusCode, body)
	}

	added, removed, err := east.Handler.SetRegistry(both)
	if err != nil || len(added) != 1 || added[0] != "west" || len(removed) != 0 {
		t.Fatalf("SetRegistry(east, west): added %v removed %v, %v", added, removed, err)
	}
	resp, body := do(t, client, east.Addr, host, nil)
	if resp.StatusCode != http.StatusOK || testbed.Decode(t, body).Name != "west-app" {
		t.Fatalf("after west was added: %d %q, want west's container", resp.StatusCode, body)
	}

	if _, _, err := east.Handler.SetRegistry(testbed.Registry(t, map[string][2]string{"west": {westAddr, westPath}})); err == nil ||
		!strings.Contains(err.Error(), "own cluster east") {
		t.Fatalf("a registry without east: %v, want a refusal naming the proxy's own cluster", err)
	}
	if resp, _ := do(t, client, east.Addr, host, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("after the refused registry: %d, want the registry in use (west forwarded to)", resp.StatusCode)
	}
	if got := east.Handler.Registry().Names(); len(got) != 2 {
		t.Fatalf("registry in use after the refusal: %v", got)
	}

	if _, removed, err := east.Handler.SetRegistry(alone); err != nil || len(removed) != 1 || removed[0] != "west" {
		t.Fatalf("SetRegistry(east): removed %v, %v", removed, err)
	}
	if resp, body := do(t, client, east.Addr, host, nil); resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "does not know") {
		t.Fatalf("after west was removed: %d %q, want 502", resp.StatusCode, body)
	}
}

// TestCertFileReload: the static HTTPS certificate is reloaded while the
// proxy runs: a new handshake gets the new certificate, a connection
// established before keeps the old one and keeps working, and files that
// do not load (a key that does not match) are refused, the certificate in
// use kept.
func TestCertFileReload(t *testing.T) {
	certFile, keyFile, _ := testbed.SelfSigned(t, "*.alice.repl.test")
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) {
		s.TLSListen, s.TLSCertFile, s.TLSKeyFile = "127.0.0.1:0", certFile, keyFile
	}})
	app := testbed.EchoServer(t, "app")
	testbed.CreateRepl(t, c.Store, "r1", "alice", "blog", testbed.HostOf(app.URL))
	addr := c.Server.Addr("https")
	cf := c.Server.CertFile()
	if cf == nil {
		t.Fatal("no CertFile with -tls-cert")
	}

	// One client, one connection kept alive across the reload.
	var seen [][]byte
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "blog.alice.repl.test",
		VerifyConnection: func(cs tls.ConnectionState) error { seen = append(seen, cs.PeerCertificates[0].Raw); return nil }}}
	defer tr.CloseIdleConnections()
	old := &http.Client{Transport: tr}
	get := func(client *http.Client) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/", nil)
		req.Host = "blog.alice.repl.test"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	get(old)
	first := derOf(t, certFile)
	if len(seen) != 1 || !bytes.Equal(seen[0], first) {
		t.Fatal("the first handshake did not get the certificate of -tls-cert")
	}

	// A key that does not match the certificate: refused.
	otherCert, otherKey, _ := testbed.SelfSigned(t, "*.alice.repl.test")
	copyFile(t, otherCert, certFile)
	if _, _, err := cf.Prepare(); err == nil {
		t.Fatal("a certificate with another's key was not refused")
	}
	copyFile(t, otherKey, keyFile)
	commit, changed, err := cf.Prepare()
	if err != nil || !changed {
		t.Fatalf("Prepare: changed %v, %v", changed, err)
	}
	commit()

	get(old) // the established connection: no new handshake
	if len(seen) != 1 {
		t.Fatalf("the kept-alive connection made %d handshakes, want 1: it was closed by the reload", len(seen))
	}
	fresh := &http.Client{Transport: &http.Transport{TLSClientConfig: tr.TLSClientConfig.Clone()}}
	defer fresh.CloseIdleConnections()
	get(fresh)
	if len(seen) != 2 || !bytes.Equal(seen[1], derOf(t, otherCert)) {
		t.Fatal("a new handshake after the reload did not get the new certificate")
	}
}

// TestCertFileWatch: the certificate files are reread when they change,
// without a signal.
func TestCertFileWatch(t *testing.T) {
	certFile, keyFile, _ := testbed.SelfSigned(t, "a.test")
	cf, err := proxy.LoadCertFile(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); cf.Watch(ctx, time.Millisecond, zap.NewNop()) }()
	defer func() { cancel(); <-done }()
	otherCert, otherKey, _ := testbed.SelfSigned(t, "a.test")
	copyFile(t, otherKey, keyFile)
	copyFile(t, otherCert, certFile)
	want := derOf(t, otherCert)
	testbed.WaitFor(t, 10*time.Second, "the new certificate served", func() bool {
		c, _ := cf.GetCertificate(nil)
		return bytes.Equal(c.Certificate[0], want)
	})
}

// TestLogLevelEndpoint: /loglevel on the admin listener reads and sets
// the level of ServerConfig.LogLevel.
func TestLogLevelEndpoint(t *testing.T) {
	level := zap.NewAtomicLevelAt(zap.InfoLevel)
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) {
		s.AdminListen, s.LogLevel = "127.0.0.1:0", level
	}})
	url := "http://" + c.Server.Addr("admin") + "/loglevel"
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(`{"level":"debug"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || level.Level() != zap.DebugLevel {
		t.Fatalf("PUT /loglevel: %d, level %v", resp.StatusCode, level.Level())
	}
	resp, err = http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"level":"debug"`) {
		t.Fatalf("GET /loglevel: %q", body)
	}
}

func derOf(t *testing.T, certFile string) []byte {
	t.Helper()
	data, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if _, err := x509.ParseCertificate(b.Bytes); err != nil {
		t.Fatal(err)
	}
	return b.Bytes
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
