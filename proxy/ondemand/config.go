package ondemand

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/crypto/acme/autocert"

	"github.com/replproxy/replproxy/store"
)

// Config configures certificates on demand. A zero (or negative) field
// takes the default named on it; OrdersPerHour is the one that can be
// off, and zero turns it off.
type Config struct {
	// Zone is the platform's zone. Required.
	Zone store.Zone
	// Directory is the ACME server's directory URL. Empty means Let's
	// Encrypt's production server.
	Directory string
	// Email is the ACME account's contact address. Empty means none.
	Email string
	// CARoots verifies the ACME server's HTTPS certificate. Nil means the
	// system's roots.
	CARoots *x509.CertPool
	// DNS01Check lists nameservers (host:port, normally replns) that must
	// answer a DNS-01 challenge record before the CA is asked to look at
	// it, within DNS01Wait (zero means 2 min). Empty means the CA is asked
	// at once.
	DNS01Check []string
	DNS01Wait  time.Duration

	// HandshakeWait bounds how long a TLS handshake for a name with no
	// certificate yet waits for one; the order goes on after it, and a
	// later handshake gets the certificate. Zero means 10 s.
	HandshakeWait time.Duration
	// OrderTimeout bounds one order, validation included. Zero means
	// 5 min.
	OrderTimeout time.Duration
	// LeaseTTL is how long a proxy's lease on a name lasts if it dies
	// mid-order. Zero means 10 min; it is at least OrderTimeout.
	LeaseTTL time.Duration
	// Backoff is how long a name whose order failed is left alone; it
	// doubles with each failure in a row, up to MaxBackoff. The failing
	// proxy keeps the name's lease that long, so the other proxies of the
	// cluster wait too. Zero means 1 min and 6 h; MaxBackoff is at least
	// Backoff.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// OrdersPerHour and OrderBurst limit new orders overall (a token
	// bucket; Let's Encrypt allows an account 300 new orders per 3 hours).
	// Zero OrdersPerHour means no limit (replproxy's flag says 100); zero
	// OrderBurst means 20.
	OrdersPerHour float64
	OrderBurst    int
	// RenewCheck is how often the certificates this proxy serves are
	// checked for renewal, which starts with a third of their lifetime
	// left. Zero means 10 min.
	RenewCheck time.Duration
	// IdleEvict drops from memory the wildcards no handshake used for this
	// long (they stay in the store). Zero means 24 h.
	IdleEvict time.Duration
	// IndexRefresh is how often the list of stored certificates, which
	// answers HasCertificate, is read again. Zero means 1 min.
	IndexRefresh time.Duration
	// Holder names this proxy in the cluster's leases. Empty means
	// "<hostname>/<pid>/<random>".
	Holder string
}

// withDefaults checks c and returns it with the defaults filled in.
func (c Config) withDefaults() (Config, error) {
	if c.Zone.Name() == "" {
		return c, errors.New("certificates on demand: no zone")
	}
	if c.Directory == "" {
		c.Directory = autocert.DefaultACMEDirectory
	}
	for _, d := range []struct {
		d   *time.Duration
		def time.Duration
	}{
		{&c.HandshakeWait, 10 * time.Second},
		{&c.OrderTimeout, 5 * time.Minute},
		{&c.DNS01Wait, 2 * time.Minute},
		{&c.LeaseTTL, 10 * time.Minute},
		{&c.Backoff, time.Minute},
		{&c.MaxBackoff, 6 * time.Hour},
		{&c.RenewCheck, 10 * time.Minute},
		{&c.IndexRefresh, time.Minute},
		{&c.IdleEvict, 24 * time.Hour},
	} {
		if *d.d <= 0 {
			*d.d = d.def
		}
	}
	c.LeaseTTL = max(c.LeaseTTL, c.OrderTimeout)
	c.MaxBackoff = max(c.MaxBackoff, c.Backoff)
	if c.OrdersPerHour < 0 {
		c.OrdersPerHour = 0
	}
	if c.OrderBurst <= 0 {
		c.OrderBurst = 20
	}
	if c.Holder == "" {
		host, _ := os.Hostname()
		var r [4]byte
		_, _ = rand.Read(r[:])
		c.Holder = fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(r[:]))
	}
	return c, nil
}
