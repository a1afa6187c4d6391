// Package peertls is mutual TLS between the proxies of a platform's
// clusters: the forward listener and the forwarding client.
//
// Every cluster's proxies hold a certificate, signed by a CA the platform
// keeps for this alone, that names their cluster with a URI SAN
// spiffe://<zone>/cluster/<name> (the SPIFFE ID form). A proxy accepts a
// forwarding connection only from a peer whose certificate chains to that
// CA and names a cluster of the registry, and forwards only to a peer
// whose certificate names the cluster it meant to reach. The files are
// reread when they change (Watch), so certificates can be renewed and the
// CA rolled without a restart.
package peertls

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// Files name a proxy's certificate and key (PEM; the certificate may be
// followed by intermediates) and the CA certificates (PEM) that sign its
// peers'.
type Files struct {
	Cert, Key, CA string
}

// Peers is a proxy's side of mutual TLS with the other clusters' proxies.
type Peers struct {
	files    Files
	zone     store.Zone
	registry atomic.Pointer[cluster.Registry] // which clusters a peer may be (SetRegistry)
	cur      atomic.Pointer[material]
}

type material struct {
	cert  *tls.Certificate
	pool  *x509.CertPool
	files [3][]byte // what they were loaded from, to tell a change
}

// Load reads files for a proxy of the platform's zone; registry says which
// clusters a peer may be.
func Load(files Files, zone store.Zone, registry *cluster.Registry) (*Peers, error) {
	p := &Peers{files: files, zone: zone}
	p.registry.Store(registry)
	m, err := p.load(registry)
	if err != nil {
		return nil, err
	}
	p.cur.Store(m)
	return p, nil
}

func (p *Peers) load(reg *cluster.Registry) (*material, error) {
	var m material
	for i, f := range []struct{ flag, path string }{{"-forward-cert", p.files.Cert}, {"-forward-key", p.files.Key}, {"-forward-ca", p.files.CA}} {
		if f.path == "" {
			return nil, fmt.Errorf("%s is not set: mutual TLS between clusters needs a certificate, its key and the CA", f.flag)
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.flag, err)
		}
		m.files[i] = b
	}
	cert, err := tls.X509KeyPair(m.files[0], m.files[1])
	if err != nil {
		return nil, fmt.Errorf("-forward-cert %s and -forward-key %s: %w", p.files.Cert, p.files.Key, err)
	}
	m.cert = &cert
	m.pool = x509.NewCertPool()
	if !m.pool.AppendCertsFromPEM(m.files[2]) {
		return nil, fmt.Errorf("-forward-ca %s: no PEM certificate in it", p.files.CA)
	}
	leaf := cert.Leaf
	name := p.clusterIn(reg, leaf)
	if name == "" {
		return nil, fmt.Errorf("-forward-cert %s names no cluster of the registry: it needs a URI SAN %s (one of %v)",
			p.files.Cert, Identity(p.zone, "<cluster>"), reg.Names())
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: intermediates(&cert),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("-forward-cert %s does not verify against -forward-ca %s: %w", p.files.Cert, p.files.CA, err)
	}
	return &m, nil
}

// Identity is the URI a cluster's proxy certificate names.
func Identity(zone store.Zone, clusterName string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: zone.Name(), Path: "/cluster/" + clusterName}
}

// clusterOf returns the cluster of the registry in use a certificate
// names, or "".
func (p *Peers) clusterOf(c *x509.Certificate) string { return p.clusterIn(p.registry.Load(), c) }

// clusterIn returns the cluster of reg a certificate names, or "".
func (p *Peers) clusterIn(reg *cluster.Registry, c *x509.Certificate) string {
	for _, u := range c.URIs {
		name, ok := strings.CutPrefix(u.Path, "/cluster/")
		if u.Scheme != "spiffe" || u.Host != p.zone.Name() || !ok {
			continue
		}
		if _, known := reg.Cluster(name); known {
			return name
		}
	}
	return ""
}

func intermediates(c *tls.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, der := range c.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			pool.AddCert(ic)
		}
	}
	return pool
}

// Cluster returns the cluster this proxy's own certificate names.
func (p *Peers) Cluster() string { return p.clusterOf(p.cur.Load().cert.Leaf) }

// verify checks a peer's certificate chain against the CA for usage and
// returns the cluster it names; want, when set, is the one it must name.
func (p *Peers) verify(certs []*x509.Certificate, usage x509.ExtKeyUsage, want string) (string, error) {
	if len(certs) == 0 {
		return "", errors.New("the peer sent no certificate")
	}
	m := p.cur.Load()
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return "", fmt.Errorf("peer certificate: %w", err)
	}
	name := p.clusterOf(certs[0])
	switch {
	case name == "":
		return "", fmt.Errorf("the peer certificate (%v) names no cluster of the registry", certs[0].URIs)
	case want != "" && name != want:
		return "", fmt.Errorf("the peer certificate names cluster %s, not %s", name, want)
	}
	return name, nil
}

// ServerConfig is the forward listener's: it asks every client for a
// certificate and refuses one that does not name a registry cluster.
func (p *Peers) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		NextProtos:     []string{"h2", "http/1.1"},
		ClientAuth:     tls.RequireAnyClientCert, // verified below, against the CA as it is now
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.cur.Load().cert, nil },
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := p.verify(cs.PeerCertificates, x509.ExtKeyUsageClientAuth, "")
			return err
		},
	}
}

// ClientConfig is the forwarding client's for a connection to cluster's
// proxies: it presents this proxy's certificate and accepts only a server
// certificate naming that cluster. alpn is what it offers.
func (p *Peers) ClientConfig(clusterName string, alpn ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: alpn,
		// The chain and the name are checked in VerifyConnection, against
		// the CA as it is now and the cluster's identity (a URI SAN, which
		// Go's host name check does not read).
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return p.cur.Load().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := p.verify(cs.PeerCertificates, x509.ExtKeyUsageServerAuth, clusterName)
			return err
		},
	}
}

// PeerCluster returns the cluster a verified connection's peer is, or "".
func (p *Peers) PeerCluster(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return ""
	}
	return p.clusterOf(cs.PeerCertificates[0])
}

// Watch rereads the files every interval until ctx ends, and uses them
// when they changed and load; files that do not are logged and the ones in
// use kept.
func (p *Peers) Watch(ctx context.Context, interval time.Duration, logger *zap.Logger) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var refused [3][]byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var now [3][]byte
		for i, path := range []string{p.files.Cert, p.files.Key, p.files.CA} {
			now[i], _ = os.ReadFile(path)
		}
		if same(now, p.cur.Load().files) || same(now, refused) {
			continue
		}
		m, err := p.load(p.registry.Load())
		if err != nil {
			refused = now
			logger.Error("forward TLS files refused; keeping the ones in use", zap.Error(err))
			continue
		}
		p.cur.Store(m)
		logger.Info("forward TLS files reloaded", zap.String("cluster", p.clusterOf(m.cert.Leaf)),
			zap.Time("not_after", m.cert.Leaf.NotAfter))
	}
}

// Prepare rereads the files and checks them against reg, the registry
// that is to replace the one in use (nil: the one in use): the
// certificate must still name a cluster of it. It returns a commit that
// puts both in use: from then on a peer is accepted only when its
// certificate names a cluster of reg (connections established before
// are not touched). On an error nothing changes.
func (p *Peers) Prepare(reg *cluster.Registry) (commit func(), err error) {
	if reg == nil {
		reg = p.registry.Load()
	}
	m, err := p.load(reg)
	if err != nil {
		return nil, err
	}
	return func() {
		p.registry.Store(reg)
		if !same(m.files, p.cur.Load().files) {
			p.cur.Store(m)
		}
	}, nil
}

func same(a, b [3][]byte) bool {
	return bytes.Equal(a[0], b[0]) && bytes.Equal(a[1], b[1]) && bytes.Equal(a[2], b[2])
}
