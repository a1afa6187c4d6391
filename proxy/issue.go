package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/store"
)

// How a CertManager gets a certificate it does not have. One goroutine per
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
//  5. Success stores the certificate (CertCache.Put, which releases the
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
func (m *CertManager) obtain(ctx context.Context, name string) (*tls.Certificate, error) {
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
func (m *CertManager) backingOff(name string) error {
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
func (m *CertManager) startFlight(name string, renew bool) *flight {
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
func (m *CertManager) get(ctx context.Context, name string) (*tls.Certificate, error) {
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
func (m *CertManager) load(ctx context.Context, name string) (*tls.Certificate, error) {
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
func (m *CertManager) await(ctx context.Context, name string) (*tls.Certificate, error) {
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
func (m *CertManager) order(ctx context.Context, name string) (*tls.Certificate, error) {
	if kindOf(name) == kindDomain {
		if err := m.account.loadKey(ctx); err != nil {
			return nil, err
		}
		// autocert orders (TLS-ALPN-01, then HTTP-01), stores the result
		// through CertCache and starts renewing it.
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
func (m *CertManager) failed(ctx context.Context, name string, err error, holding bool) {
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

func (m *CertManager) succeeded(ctx context.Context, name string) {
	m.mu.Lock()
	delete(m.failures, name)
	m.mu.Unlock()
	m.release(ctx, name)
}

func (m *CertManager) release(ctx context.Context, name string) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := m.st.ReleaseCertLease(lctx, name, m.cfg.Holder); err != nil {
		m.logger.Warn("release lease", zap.String("name", name), zap.Error(err))
	}
}

// forgetOldFailures drops backoffs that ended long ago, so the map holds
// only recent trouble.
func (m *CertManager) forgetOldFailures() {
	cutoff := m.now().Add(-m.cfg.MaxBackoff)
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, f := range m.failures {
		if f.until.Before(cutoff) {
			delete(m.failures, name)
		}
	}
}

// renewSoon starts renewing a certificate a handshake found due.
func (m *CertManager) renewSoon(name string, sc *servedCert) {
	if sc.kind != kindWildcard {
		return // autocert renews custom domains
	}
	if m.backingOff(name) != nil {
		return
	}
	m.startFlight(name, true)
}

// renewDue starts renewing every wildcard this proxy serves that is due,
// and forgets those no handshake used for IdleEvict.
func (m *CertManager) renewDue() {
	now := m.now()
	idle := now.Add(-m.cfg.IdleEvict).UnixNano()
	var due []string
	m.certsMu.Lock()
	for name, sc := range m.certs {
		switch {
		case sc.kind != kindWildcard:
		case sc.lastUsed.Load() < idle:
			delete(m.certs, name)
		case sc.due(now):
			due = append(due, name)
		}
	}
	m.certsMu.Unlock()
	for _, name := range due {
		if m.backingOff(name) == nil {
			m.startFlight(name, true)
		}
	}
}

// renew replaces a wildcard that is due: with the one in the store when
// another proxy renewed it already, else by ordering a new one under the
// lease. While another proxy holds the lease it only tries again later.
func (m *CertManager) renew(ctx context.Context, name string) {
	m.certsMu.RLock()
	cur := m.certs[name]
	m.certsMu.RUnlock()
	if cur == nil {
		return
	}
	if m.adoptNewer(ctx, name, cur) {
		return
	}
	got, err := m.st.AcquireCertLease(ctx, name, m.cfg.Holder, m.cfg.LeaseTTL)
	if err != nil || !got {
		m.postpone(cur)
		return
	}
	if m.adoptNewer(ctx, name, cur) {
		m.release(ctx, name)
		return
	}
	if _, err := m.order(ctx, name); err != nil {
		m.failed(ctx, name, err, true)
		m.postpone(cur)
		return
	}
	m.succeeded(ctx, name)
}

// adoptNewer serves the stored certificate for name when it is newer than
// cur and not due itself.
func (m *CertManager) adoptNewer(ctx context.Context, name string, cur *servedCert) bool {
	data, err := m.st.GetCert(ctx, name)
	if err != nil {
		return false
	}
	now := m.now()
	cert, err := parseCertPEM(data, "x"+name[1:], now)
	if err != nil || !cert.Leaf.NotAfter.After(cur.notAfter) {
		return false
	}
	life := cert.Leaf.NotAfter.Sub(cert.Leaf.NotBefore)
	if !now.Before(cert.Leaf.NotAfter.Add(-life / 3)) {
		return false
	}
	m.install(name, kindWildcard, cert)
	m.logger.Info("serving a certificate renewed by another proxy", zap.String("name", name), zap.Time("not_after", cert.Leaf.NotAfter))
	return true
}

// postpone pushes a due certificate's next renewal attempt back by Backoff.
func (m *CertManager) postpone(cur *servedCert) {
	cur.renewAt.Store(m.now().Add(m.cfg.Backoff).UnixNano())
}

// admitOrder is the order gate's check (see orderGate): every name ours to
// order, the rate limit, and this proxy holding each name's lease.
func (m *CertManager) admitOrder(ctx context.Context, names []string) error {
	for _, name := range names {
		if err := m.ours(ctx, name); err != nil {
			m.metrics.refusal("not_ours")
			return fmt.Errorf("order for %s: %w: %w", name, errNotOurs, err)
		}
	}
	if !m.limiter.take(m.now()) {
		m.metrics.refusal("rate_limited")
		return fmt.Errorf("order for %v: %w (at most %g an hour)", names, errRateLimited, m.cfg.OrdersPerHour)
	}
	for _, name := range names {
		got, err := m.st.AcquireCertLease(ctx, name, m.cfg.Holder, m.cfg.LeaseTTL)
		if err != nil {
			return fmt.Errorf("order for %s: %w", name, err)
		}
		if !got {
			m.metrics.refusal("lease_held")
			return fmt.Errorf("order for %s: %w", name, errLeaseHeld)
		}
	}
	now := m.now()
	m.mu.Lock()
	for _, name := range names {
		if start, ok := m.orders[name]; !ok || now.Sub(start) > m.cfg.LeaseTTL {
			m.orders[name] = now
		}
	}
	m.mu.Unlock()
	for _, name := range names {
		m.metrics.order(kindOf(name))
		m.logger.Info("ordering certificate", zap.String("name", name), zap.String("directory", m.cfg.Directory))
	}
	return nil
}

// ours checks that name is a certificate this proxy may order: a wildcard
// of an owner or of the ids under the zone, or a linked custom domain.
func (m *CertManager) ours(ctx context.Context, name string) error {
	if rest, ok := cutWildcard(name); ok {
		key, err := m.cfg.Zone.ParseName(rest)
		if err != nil {
			return err
		}
		if key.Kind != store.KeyOwner && key.Kind != store.KeyIDRoot {
			return fmt.Errorf("%s is not an owner's or the ids' wildcard", name)
		}
		return nil
	}
	return m.hostPolicy(ctx, name)
}

func cutWildcard(name string) (string, bool) {
	if len(name) > 2 && name[0] == '*' && name[1] == '.' {
		return name[2:], true
	}
	return "", false
}

// stored is told by CertCache of every certificate stored, whoever
// ordered it (a flight of ours, or autocert renewing in the background):
// it counts it, times the order and releases the lease.
func (m *CertManager) stored(ctx context.Context, name string, data, previous []byte) {
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

// tokenBucket is the overall order rate limit.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // tokens a second
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate, burst float64, now time.Time) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, last: now}
}

func (b *tokenBucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
