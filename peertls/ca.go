package peertls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/replproxy/replproxy/store"
)

// CA is a throw-away certificate authority for clusters' proxies: what
// `make run` and tests use. A platform keeps its own CA (an offline one,
// or its PKI's), and gives each cluster's proxies a certificate naming
// Identity(zone, cluster), usable for server and client authentication.
type CA struct {
	zone store.Zone
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

// NewCA makes a CA for the platform's zone, valid for validity.
func NewCA(zone store.Zone, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "replproxy clusters of " + zone.Name()},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("make the CA certificate: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{zone: zone, cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// CertPEM is the CA's certificate, for -forward-ca.
func (ca *CA) CertPEM() []byte { return ca.pem }

// Issue returns a certificate and key (PEM) for the proxies of cluster,
// valid for validity but never past the CA's own end; the identity is spiffeID when given (tests make
// wrong ones), Identity(zone, cluster) otherwise.
func (ca *CA) Issue(cluster string, validity time.Duration, spiffeID ...*url.URL) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	uris := spiffeID
	if len(uris) == 0 {
		uris = []*url.URL{Identity(ca.zone, cluster)}
	}
	notAfter := time.Now().Add(validity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter // a certificate its issuer no longer vouches for fails anyway
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cluster},
		URIs:         uris,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue a certificate for %s: %w", cluster, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// WriteFiles issues a certificate for cluster (valid a year, or until the
// CA's end if that is sooner) and writes it,
// its key and the CA certificate into dir as <cluster>.crt, <cluster>.key
// and ca.crt.
func (ca *CA) WriteFiles(dir, cluster string) (Files, error) {
	certPEM, keyPEM, err := ca.Issue(cluster, 365*24*time.Hour)
	if err != nil {
		return Files{}, err
	}
	f := Files{Cert: filepath.Join(dir, cluster+".crt"), Key: filepath.Join(dir, cluster+".key"), CA: filepath.Join(dir, "ca.crt")}
	for path, b := range map[string][]byte{f.Cert: certPEM, f.Key: keyPEM, f.CA: ca.pem} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}
