package ondemand

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/store"
)

// How a Manager gets a certificate it does not have. One goroutine per
// name at a time (a flight) does the work; handshakes wait for it at most
// HandshakeWait, and the flight goes on without them:
//
//  1. A name whose last order failed is refused until its backoff ends.
//  2. The store may have it (another proxy, or before a restart): load it.
//  3. Otherwise take the cluster's lease on the name. If another proxy has
//     it, wait for that proxy's certificate to appear in the store.
//  4. With the lease, look in the store once more, then order: DNS-01 for
//     wildcards, autocert for custom domains. The order gate checks the
//     name, the rate limit and the lease again as the order leaves.
//  5. Success stores the certificate (certCache.Put, which releases the
//     lease); failure keeps the lease for the backoff period, so the other
//     proxies of the cluster leave the name alone too.

// flight is the work on one name.
type flight struct {
	done chan struct{} // closed when cert and err are set
	cert *tls.Certificate
	err  error
}

// failure is a name's backoff.
type failure struct {
	n     int       // failures in a row
	until time.Time // no new order before
	err   error
}

var (
	errLeaseHeld   = errors.New("another proxy of the cluster is ordering this certificate")
	errRateLimited = errors.New("too many certificate orders: rate-limited")
	errNotOurs     = errors.New("not a name this proxy orders certificates for")
)

// obtain gets the certificate for name for a handshake, waiting at most
// HandshakeWait.
func (m *Manager) obtain(ctx context.Context, name string) (*tls.Certificate, error) {
	if err := m.backingOff(name); err != nil {
		m.metrics.backoffRefusal(kindOf(name))
		return nil, err
	}
	f := m.startFlight(name, false)
	t := time.NewTimer(m.cfg.HandshakeWait)
	defer t.Stop()
	select {
	case <-f.done:
		return f.cert, f.err
	case <-t.C:
		return nil, fmt.Errorf("certificate for %s is being obtained; try again in a moment", name)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// backingOff returns an error while name's last order failed recently.
func (m *Manager) backingOff(name string) error {
	m.mu.Lock()
	f, ok := m.failures[name]
	m.mu.Unlock()
	if ok && m.now().Before(f.until) {
		return fmt.Errorf("certificate for %s: the last order failed (%w); next attempt after %s",
			name, f.err, f.until.UTC().Format(time.RFC3339))
	}
	return nil
}

// startFlight returns the flight for name, starting one when none is on.
func (m *Manager) startFlight(name string, renew bool) *flight {
	m.mu.Lock()
	defer m.mu.Unlock()
	if f := m.flights[name]; f != nil {
		return f
	}
	f := &flight{done: make(chan struct{})}
	if m.base.Err() != nil {
		f.err = errStopped
		close(f.done)
		return f
	}
	m.flights[name] = f
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		ctx, cancel := context.WithTimeout(m.base, m.cfg.OrderTimeout)
		defer cancel()
		if renew {
			m.renew(ctx, name)
		} else {
			f.cert, f.err = m.get(ctx, name)
		}
		m.mu.Lock()
		delete(m.flights, name)
		m.mu.Unlock()
		close(f.done)
	}()
	return f
}

// get obtains name's certificate: from the store, or by ordering it.
func (m *Manager) get(ctx context.Context, name string) (*tls.Certificate, error) {
	if cert, err := m.load(ctx, name); err == nil || !errors.Is(err, store.ErrNotFound) {
		return cert, err
	}
	got, err := m.st.AcquireCertLease(ctx, name, m.cfg.Holder, m.cfg.LeaseTTL)
	if err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", name, err)
	}
	if !got {
		cert, err := m.await(ctx, name)
		if err != nil {
			// Whatever keeps the other proxy, handshakes here should not
			// each wait for it: back off too (the lease is not ours).
			m.failed(ctx, name, err, false)
		}
		return cert, err
	}
	// The proxy that had the lease before may have just stored it.
	if cert, err := m.load(ctx, name); err == nil || !errors.Is(err, store.ErrNotFound) {
		m.release(ctx, name)
		return cert, err
	}
	cert, err := m.order(ctx, name)
	if err != nil {
		m.failed(ctx, name, err, true)
		return nil, err
	}
	m.succeeded(ctx, name)
	return cert, nil
}

// load serves name from the store; ErrNotFound when the store has no
// usable certificate (none, expired, or not for the name).
func (m *Manager) load(ctx context.Context, name string) (*tls.Certificate, error) {
	data, err := m.st.GetCert(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("certificate for %s: %w", name, err)
	}
	host := name
	if kindOf(name) == kindWildcard {
		host = "x" + name[1:]
	}
	cert, err := parseCertPEM(data, host, m.now())
	if err != nil {
		m.logger.Info("stored certificate not usable; ordering a new one", zap.String("name", name), zap.Error(err))
		return nil, fmt.Errorf("certificate for %s: %w: %w", name, store.ErrNotFound, err)
	}
	kind := kindOf(name)
	if kind == kindDomain {
		// autocert serves custom domains, and renews them: hand it the
		// certificate (it reads it from the store itself).
		if err := m.account.loadKey(ctx); err != nil {
			return nil, err
		}
		if cert, err = m.auto.GetCertificate(ecdsaHello(name)); err != nil {
			return nil, fmt.Errorf("certificate for %s: %w", name, err)
		}
	}
	m.install(name, kind, cert)
	m.metrics.loadedFromStore(kind)
	return cert, nil
}

// await waits for the proxy that holds name's lease to store it, looking
// after 100 ms at first, then less often, up to every 2 s.
func (m *Manager) await(ctx context.Context, name string) (*tls.Certificate, error) {
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		if err := sleepCtx(ctx, wait/2+rand.N(wait/2)); err != nil {
			return nil, fmt.Errorf("certificate for %s: %w (waited for another proxy: %w)", name, errLeaseHeld, err)
		}
		cert, err := m.load(ctx, name)
		if err == nil || !errors.Is(err, store.ErrNotFound) {
			return cert, err
		}
	}
}

// order orders name's certificate; the caller holds the lease.
func (m *Manager) order(ctx context.Context, name string) (*tls.Certificate, error) {
	if kindOf(name) == kindDomain {
		if err := m.account.loadKey(ctx); err != nil {
			return nil, err
		}
		// autocert orders (TLS-ALPN-01, then HTTP-01), stores the result
		// through certCache and starts renewing it.
		cert, err := m.auto.GetCertificate(ecdsaHello(name))
		if err != nil {
			return nil, err
		}
		m.install(name, kindDomain, cert)
		return cert, nil
	}
	data, err := m.orderDNS01(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := m.cache.Put(ctx, name, data); err != nil {
		return nil, err
	}
	cert, err := parseCertPEM(data, "x"+name[1:], m.now())
	if err != nil {
		return nil, err
	}
	m.install(name, kindWildcard, cert)
	return cert, nil
}

// failed remembers a failed attempt: no new one for name until the
// backoff ends. A proxy whose own order failed (holding the lease) keeps
// the lease as long, so that the whole cluster waits.
func (m *Manager) failed(ctx context.Context, name string, err error, holding bool) {
	m.mu.Lock()
	f := m.failures[name]
	f.n++
	wait := m.cfg.MaxBackoff
	if f.n < 32 {
		wait = min(m.cfg.Backoff<<(f.n-1), m.cfg.MaxBackoff)
	}
	f.until, f.err = m.now().Add(wait), err
	m.failures[name] = f
	delete(m.orders, name)
	m.mu.Unlock()

	m.metrics.failure(kindOf(name))
	m.logger.Warn("could not obtain certificate", zap.String("name", name), zap.Int("failures", f.n),
		zap.Duration("retry_in", wait), zap.Error(err))
	if !holding {
		return
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := m.st.AcquireCertLease(lctx, name, m.cfg.Holder, wait); err != nil {
		m.logger.Warn("keep lease for the backoff", zap.String("name", name), zap.Error(err))
	}
}

func (m *Manager) succeeded(ctx context.Context, name string) {
	m.mu.Lock()
	delete(m.failures, name)
	m.mu.Unlock()
	m.release(ctx, name)
}

func (m *Manager) release(ctx context.Context, name string) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := m.st.ReleaseCertLease(lctx, name, m.cfg.Holder); err != nil {
		m.logger.Warn("release lease", zap.String("name", name), zap.Error(err))
	}
}

// forgetOldFailures drops backoffs that ended long ago, so the map holds
// only recent trouble.
func (m *Manager) forgetOldFailures() {
	cutoff := m.now().Add(-m.cfg.MaxBackoff)
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, f := range m.failures {
		if f.until.Before(cutoff) {
			delete(m.failures, name)
		}
	}
}

// stored is told by certCache of every certificate stored, whoever
// ordered it (a flight of ours, or autocert renewing in the background):
// it counts it, times the order and releases the lease.
func (m *Manager) stored(ctx context.Context, name string, data, previous []byte) {
	kind := kindOf(name)
	notAfter := store.CertNotAfter(data)
	renewed := !store.CertNotAfter(previous).IsZero()
	m.mu.Lock()
	start, timed := m.orders[name]
	delete(m.orders, name)
	m.mu.Unlock()
	if renewed {
		m.metrics.renewal(kind)
	} else {
		m.metrics.issue(kind)
	}
	took := time.Duration(0)
	if timed {
		took = m.now().Sub(start)
		m.metrics.issueTime(kind, took)
	}
	m.indexMu.Lock()
	m.index[name] = notAfter
	m.indexMu.Unlock()
	m.release(ctx, name)
	m.logger.Info("certificate stored", zap.String("name", name), zap.String("kind", kind), zap.Bool("renewed", renewed),
		zap.Time("not_after", notAfter), zap.Duration("order_time", took))
}
