package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/acmetest"
	"github.com/replproxy/replproxy/platformtest"
)

// TestTLSOnDemandThroughReplns runs the real binaries: replproxy with
// -tls-on-demand on PostgreSQL, replns serving the cluster's challenge
// records, and Pebble validating DNS-01 through replns (-dnsserver). The
// first handshake for blog.alice.repl.test gets *.alice.repl.test; after a
// restart the proxy serves it from the database without ordering.
func TestTLSOnDemandThroughReplns(t *testing.T) {
	acmetest.NeedTool(t, "pebble", "pebble")
	// Options.TLS: Pebble validates DNS-01 through replns, and the proxy
	// runs with -tls-on-demand, ordering from it.
	p := start(t, platformtest.Options{Clusters: []string{"east"}, Store: platformtest.Postgres, TLS: true,
		ProxyFlags: []string{"-migrate"}})
	httpsAddr, roots := p.Cluster(t, "east").TLSAddr, p.TLSRoots()
	app := p.StartApp(t, "east", platformtest.AppOptions{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app saw %s over %s\n", r.Host, r.Header.Get("X-Forwarded-Proto"))
	})})
	p.CreateRepl(t, platformtest.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{app.Addr}})
	admin := p.Cluster(t, "east").AdminAddr

	began := time.Now()
	first := tlsLeaf(t, httpsAddr, "blog.alice.repl.test", roots)
	t.Logf("replproxy binary, first handshake to served certificate (DNS-01 through replns): %v", time.Since(began))
	if got := strings.Join(first.DNSNames, ","); got != "*.alice.repl.test" {
		t.Fatalf("served %s, want *.alice.repl.test", got)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, httpsAddr)
		},
	}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://blog.alice.repl.test/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "app saw blog.alice.repl.test over https\n" {
		t.Fatalf("GET over HTTPS: %s %q", resp.Status, body)
	}
	if got := adminMetric(t, admin, `replproxy_tls_orders_total{kind="wildcard"}`); got != 1 {
		t.Fatalf("orders = %v, want 1", got)
	}

	// A restart keeps the certificate: no new order.
	p.RestartProxy(t, "east")
	again := tlsLeaf(t, httpsAddr, "blog.alice.repl.test", roots)
	if again.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("after a restart: serial %x, want %x", again.SerialNumber, first.SerialNumber)
	}
	if got := adminMetric(t, admin, `replproxy_tls_orders_total{kind="wildcard"}`); got != 0 {
		t.Fatalf("orders after the restart = %v, want 0", got)
	}
}

func tlsLeaf(t *testing.T, addr, name string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 90 * time.Second}, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS handshake for %s: %v", name, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// adminMetric reads one sample from a /metrics page; absent is 0.
func adminMetric(t *testing.T, admin, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}
