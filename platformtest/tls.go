package platformtest

import (
	"crypto/x509"
	"os"
	"path/filepath"

	"github.com/replproxy/replproxy/internal/acmetest"
)

// tlsOnDemand is the platform's ACME server (Pebble) and what the proxies
// need to use it.
type tlsOnDemand struct {
	pebble *acmetest.Pebble
	caFile string         // verifies Pebble's own HTTPS (the ACME API)
	roots  *x509.CertPool // verifies the certificates Pebble issues
}

// startTLS starts Pebble, resolving (DNS-01 records included) through
// replns at dnsAddr.
func startTLS(t TB, dir, dnsAddr string) *tlsOnDemand {
	t.Helper()
	pebble := acmetest.StartPebble(t, acmetest.PebbleConfig{DNSServer: dnsAddr})
	caFile := filepath.Join(dir, "pebble-listener-ca.pem")
	if err := os.WriteFile(caFile, pebble.CARootPEM, 0o644); err != nil {
		t.Fatalf("platformtest: %v", err)
	}
	return &tlsOnDemand{pebble: pebble, caFile: caFile, roots: pebble.IssuerRoots(t)}
}

func (x *tlsOnDemand) proxyFlags(tlsAddr, dnsAddr string) []string {
	return []string{"-listen-tls", tlsAddr, "-tls-on-demand", "-acme-directory", x.pebble.Directory,
		"-acme-ca-root", x.caFile, "-acme-dns01-check", dnsAddr, "-acme-handshake-wait", "60s"}
}

// TLSRoots returns the roots that verify the certificates the proxies
// serve (Pebble's issuer, new at every start), or nil without
// Options.TLS.
func (p *Platform) TLSRoots() *x509.CertPool {
	if p.tls == nil {
		return nil
	}
	return p.tls.roots
}
