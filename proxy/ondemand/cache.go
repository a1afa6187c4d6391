package ondemand

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/crypto/acme/autocert"

	"github.com/replproxy/replproxy/store"
)

// certCache is an autocert.Cache over the cluster's certificate storage,
// so that every proxy of the cluster finds what one of them stored: the
// ACME account key, certificates with their keys, and autocert's
// challenge answers (a TLS-ALPN-01 or HTTP-01 validation may reach any
// proxy behind the load balancer).
type certCache struct {
	certs store.Certs
	// stored, when set, is told of every certificate stored: the
	// Manager counts it and releases the order's lease.
	stored func(ctx context.Context, name string, data, previous []byte)
}

var _ autocert.Cache = (*certCache)(nil)

// newCertCache returns an autocert.Cache over certs.
func newCertCache(certs store.Certs) *certCache { return &certCache{certs: certs} }

// Get implements autocert.Cache: autocert.ErrCacheMiss when nothing is
// stored under name.
func (c *certCache) Get(ctx context.Context, name string) ([]byte, error) {
	data, err := c.certs.GetCert(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, autocert.ErrCacheMiss
	}
	if errors.Is(err, store.ErrInvalid) {
		// A name the storage cannot hold (e.g. the "+token" of a 253-byte
		// domain) was never stored.
		return nil, autocert.ErrCacheMiss
	}
	return data, err
}

// Put implements autocert.Cache.
func (c *certCache) Put(ctx context.Context, name string, data []byte) error {
	var previous []byte
	isCert := c.stored != nil && isCertName(name)
	if isCert {
		previous, _ = c.certs.GetCert(ctx, name) // for "issued" or "renewed"; none is fine
	}
	if err := c.certs.PutCert(ctx, name, data); err != nil {
		return fmt.Errorf("store %s: %w", name, err)
	}
	if isCert {
		c.stored(ctx, name, data, previous)
	}
	return nil
}

// Delete implements autocert.Cache.
func (c *certCache) Delete(ctx context.Context, name string) error {
	return c.certs.DeleteCert(ctx, name)
}

// isCertName reports whether a storage name is that of a certificate a
// TLS handshake is served with: not the account key ("acme_account+key"),
// a challenge answer ("+token", "+http-01") or autocert's RSA variant.
func isCertName(name string) bool {
	for i := 0; i < len(name); i++ {
		if name[i] == '+' {
			return false
		}
	}
	return true
}
