package ondemand

import (
	"context"

	"go.uber.org/zap"
)

// renewSoon starts renewing a certificate a handshake found due.
func (m *Manager) renewSoon(name string, sc *servedCert) {
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
func (m *Manager) renewDue() {
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
func (m *Manager) renew(ctx context.Context, name string) {
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
func (m *Manager) adoptNewer(ctx context.Context, name string, cur *servedCert) bool {
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
func (m *Manager) postpone(cur *servedCert) {
	cur.renewAt.Store(m.now().Add(m.cfg.Backoff).UnixNano())
}
