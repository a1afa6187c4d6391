package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// CertFile is the HTTPS listener's static certificate (-tls-cert and
// -tls-key), served to each new handshake through
// tls.Config.GetCertificate from what was loaded last: a reload (Prepare,
// Watch) is seen by the next handshake, and a connection already
// established keeps the certificate it was made with.
type CertFile struct {
	certPath, keyPath string
	cur               atomic.Pointer[certMaterial]
}

type certMaterial struct {
	cert            *tls.Certificate
	certPEM, keyPEM []byte // what it was loaded from, to tell a change
	notAfter        time.Time
	dnsNames        []string
}

// LoadCertFile loads a PEM certificate chain and its private key.
func LoadCertFile(certPath, keyPath string) (*CertFile, error) {
	c := &CertFile{certPath: certPath, keyPath: keyPath}
	m, err := c.load()
	if err != nil {
		return nil, err
	}
	c.cur.Store(m)
	return c, nil
}

func (c *CertFile) load() (*certMaterial, error) {
	certPEM, err := os.ReadFile(c.certPath)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(c.keyPath)
	if err != nil {
		return nil, fmt.Errorf("load TLS key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", c.certPath, c.keyPath, err)
	}
	return &certMaterial{cert: &cert, certPEM: certPEM, keyPEM: keyPEM, notAfter: cert.Leaf.NotAfter,
		dnsNames: cert.Leaf.DNSNames}, nil
}

// GetCertificate is the tls.Config's: the certificate loaded last.
func (c *CertFile) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load().cert, nil
}

// NotAfter returns when the certificate in use expires.
func (c *CertFile) NotAfter() time.Time { return c.cur.Load().notAfter }

// Prepare reads the files again and checks them (the chain parses, the
// key matches it); it returns a commit that puts them in use, and whether
// they differ from those in use. On an error nothing changes.
func (c *CertFile) Prepare() (commit func(), changed bool, err error) {
	m, err := c.load()
	if err != nil {
		return nil, false, err
	}
	old := c.cur.Load()
	if bytes.Equal(m.certPEM, old.certPEM) && bytes.Equal(m.keyPEM, old.keyPEM) {
		return func() {}, false, nil
	}
	return func() { c.cur.Store(m) }, true, nil
}

// Watch rereads the files every interval until ctx ends, and puts them in
// use when they changed and load: a renewal written by a certificate
// manager is served without a signal. Files that do not load (a
// certificate written before its key, say) are logged once and the ones
// in use kept; the next change is tried again.
func (c *CertFile) Watch(ctx context.Context, interval time.Duration, logger *zap.Logger) {
	var refused [2][]byte
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		certPEM, _ := os.ReadFile(c.certPath)
		keyPEM, _ := os.ReadFile(c.keyPath)
		cur := c.cur.Load()
		if bytes.Equal(certPEM, cur.certPEM) && bytes.Equal(keyPEM, cur.keyPEM) ||
			bytes.Equal(certPEM, refused[0]) && bytes.Equal(keyPEM, refused[1]) {
			continue
		}
		commit, _, err := c.Prepare()
		if err != nil {
			refused = [2][]byte{certPEM, keyPEM}
			logger.Error("TLS certificate refused; keeping the one in use", zap.String("cert_file", c.certPath),
				zap.String("key_file", c.keyPath), zap.Time("in_use_not_after", cur.notAfter), zap.Error(err))
			continue
		}
		commit()
		m := c.cur.Load()
		logger.Info("TLS certificate reloaded", zap.String("cert_file", c.certPath), zap.Strings("dns_names", m.dnsNames),
			zap.Time("not_after", m.notAfter))
	}
}

// chainCertificates is a GetCertificate trying onDemand first (nil
// certificate and error: a name it does not serve), then the static
// certificate (nil: none, and the handshake fails as with no
// certificate).
func chainCertificates(onDemand OnDemand, static *CertFile) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if onDemand != nil {
			if cert, err := onDemand.GetCertificate(hello); cert != nil || err != nil {
				return cert, err
			}
		}
		if static != nil {
			return static.GetCertificate(hello)
		}
		return nil, nil
	}
}

// CertFile returns the HTTPS listener's static certificate, once Listen
// has loaded it; nil without one.
func (s *Server) CertFile() *CertFile {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cert
}
