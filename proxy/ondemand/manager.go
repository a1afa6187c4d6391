package ondemand

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/replproxy/replproxy/store"
)

// Store is what a Manager needs of the cluster's store: the certificate
// storage, and the DNS-01 challenge records replns serves. Both store
// backends have it.
type Store interface {
	store.Certs
	PutChallenge(ctx context.Context, c store.Challenge) error
	DeleteChallenge(ctx context.Context, name, value string) error
}

// Routes tells which names are hosted here: the route cache
// (routecache.Cache) in production. Only names it finds get a
// certificate.
type Routes interface {
	Lookup(ctx context.Context, k store.Key) (store.Route, error)
}

// Kinds of certificates, as the "kind" label of the metrics says them.
const (
	kindWildcard = "wildcard" // *.<owner>.<zone>, *.id.<zone>: DNS-01
	kindDomain   = "domain"   // a linked custom domain: autocert
)

// Manager obtains, stores, serves and renews the proxy's TLS certificates
// on demand (DESIGN.md, "The proxy", item 6):
//
//   - A handshake for <slug>.<owner>.<zone> or <id>.id.<zone> is served
//     with *.<owner>.<zone> or *.id.<zone>, ordered through DNS-01 with
//     golang.org/x/crypto/acme: the challenge records go into the store,
//     where replns finds them.
//   - A handshake for a custom domain is served by an autocert.Manager
//     (TLS-ALPN-01, or HTTP-01 through HTTPHandler) whose host policy
//     admits the domains linked in this cluster, from the route cache.
//
// Certificates live in the cluster's store (certCache), so every proxy of
// the cluster serves what one of them obtained, and a restart keeps them.
// Only names that route are ordered; at most one proxy of the cluster
// orders a name at a time (a lease in the store); a handshake waits at
// most HandshakeWait; failures back off per name; orders are rate-limited
// overall. Private keys are never logged.
type Manager struct {
	cfg     Config
	st      Store
	routes  Routes
	clock   func() time.Time
	metrics *Metrics
	logger  *zap.Logger

	cache     *certCache
	account   *acmeAccount
	auto      *autocert.Manager
	gate      *orderGate
	transport *http.Transport
	limiter   *tokenBucket // nil: no limit

	base   context.Context // ends when Run does
	cancel context.CancelFunc
	wg     sync.WaitGroup // flights

	certsMu sync.RWMutex
	certs   map[string]*servedCert // by certificate name

	mu       sync.Mutex
	flights  map[string]*flight
	failures map[string]failure
	orders   map[string]time.Time // when the current order for a name began

	indexMu sync.RWMutex
	index   map[string]time.Time // stored certificate → expiry

	httpOnce    sync.Once
	acmeHandler http.Handler
}

// servedCert is a certificate this proxy serves.
type servedCert struct {
	kind     string
	cert     *tls.Certificate // wildcards; custom domains are served by autocert
	notAfter time.Time
	// renewAt is a third of the lifetime before notAfter, pushed back while
	// a renewal waits; lastUsed is when a handshake last used it, to the
	// minute. Both in Unix nanoseconds.
	renewAt, lastUsed atomic.Int64
}

// due reports whether renewal should start.
func (sc *servedCert) due(now time.Time) bool { return now.UnixNano() >= sc.renewAt.Load() }

// used records a handshake, writing at most once a minute.
func (sc *servedCert) used(now time.Time) {
	if n := now.UnixNano(); n-sc.lastUsed.Load() > int64(time.Minute) {
		sc.lastUsed.Store(n)
	}
}

// New returns a Manager over the cluster's store st. routes (the route
// cache) decides which names may get a certificate. metrics may be nil;
// a nil now means time.Now, a nil logger logs nothing. Call Run to start
// its background work.
func New(cfg Config, st Store, routes Routes, metrics *Metrics, now func() time.Time, logger *zap.Logger) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if st == nil || routes == nil {
		return nil, errors.New("certificates on demand: no store or routes")
	}
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	m := &Manager{
		cfg:      cfg,
		st:       st,
		routes:   routes,
		clock:    now,
		metrics:  metrics,
		logger:   logger.Named("tls"),
		certs:    map[string]*servedCert{},
		flights:  map[string]*flight{},
		failures: map[string]failure{},
		orders:   map[string]time.Time{},
		index:    map[string]time.Time{},
	}
	if cfg.OrdersPerHour > 0 {
		m.limiter = newTokenBucket(cfg.OrdersPerHour/3600, float64(cfg.OrderBurst), now())
	}
	m.base, m.cancel = context.WithCancel(context.Background())
	m.transport = &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     &tls.Config{RootCAs: cfg.CARoots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     30 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	m.gate = &orderGate{next: m.transport, admit: m.admitOrder}
	client := &acme.Client{
		DirectoryURL: cfg.Directory,
		HTTPClient:   &http.Client{Transport: m.gate, Timeout: time.Minute},
		UserAgent:    "replproxy",
	}
	m.account = &acmeAccount{client: client, certs: st, holder: cfg.Holder, email: cfg.Email}
	m.cache = newCertCache(st)
	m.cache.stored = m.stored
	m.auto = &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      m.cache,
		HostPolicy: m.hostPolicy,
		Client:     client,
		Email:      cfg.Email,
	}
	metrics.attach(m)
	return m, nil
}

// Run does the background work until ctx is done: renewals and the index
// of stored certificates. Then it stops the orders in flight, waits for
// them, and returns nil.
func (m *Manager) Run(ctx context.Context) error {
	defer m.stop()
	m.refreshIndex(ctx)
	renew := time.NewTicker(m.cfg.RenewCheck)
	defer renew.Stop()
	index := time.NewTicker(m.cfg.IndexRefresh)
	defer index.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.base.Done():
			return nil
		case <-renew.C:
			m.renewDue()
			m.forgetOldFailures()
		case <-index.C:
			m.refreshIndex(ctx)
		}
	}
}

func (m *Manager) stop() {
	m.cancel()
	m.wg.Wait()
	m.gate.close()
	m.transport.CloseIdleConnections()
}

func (m *Manager) now() time.Time { return m.clock() }

// GetCertificate is the HTTPS listener's tls.Config.GetCertificate. It
// answers TLS-ALPN-01 challenges, serves wildcards and custom domains, and
// returns nil, nil for names it does not serve (no server name, the apex,
// ...), so that the listener's static certificate, if any, is used.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto {
		// A TLS-ALPN-01 challenge: only for a name the host policy admits
		// (autocert would look its token up in the store for any name).
		ctx := hello.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		if err := m.hostPolicy(ctx, hello.ServerName); err != nil {
			return nil, err
		}
		return m.auto.GetCertificate(hello) // autocert finds the token certificate, also in the store
	}
	if hello.ServerName == "" {
		return nil, nil
	}
	key, err := m.cfg.Zone.ParseName(hello.ServerName)
	if err != nil {
		return nil, nil // not a name anything routes to: the static certificate, if any
	}
	name := m.certName(key)
	if name == "" {
		return nil, nil
	}
	now := m.now()
	m.certsMu.RLock()
	sc := m.certs[name]
	m.certsMu.RUnlock()
	if sc != nil && now.Before(sc.notAfter) {
		sc.used(now)
		if sc.due(now) {
			m.renewSoon(name, sc)
		}
		if sc.kind == kindWildcard {
			m.metrics.servedFromCache(kindWildcard)
			return sc.cert, nil
		}
		cert, err := m.auto.GetCertificate(ecdsaHello(name))
		if err != nil {
			return nil, err
		}
		m.metrics.servedFromCache(kindDomain)
		if cert.Leaf != nil && !cert.Leaf.NotAfter.Equal(sc.notAfter) {
			m.install(name, kindDomain, cert) // renewed by autocert
		}
		return cert, nil
	}

	// No certificate yet: only for names that route here.
	ctx := hello.Context()
	if _, err := m.routes.Lookup(ctx, key); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("no certificate for %s: nothing is hosted there", hello.ServerName)
		}
		return nil, fmt.Errorf("no certificate for %s: %w", hello.ServerName, err)
	}
	return m.obtain(ctx, name)
}

// certName is the certificate that serves a key: the owner's or the id
// wildcard, or the custom domain; "" for names we do not serve.
func (m *Manager) certName(k store.Key) string {
	switch k.Kind {
	case store.KeyRepl:
		return "*." + k.Owner + "." + m.cfg.Zone.Name()
	case store.KeyReplID:
		return "*.id." + m.cfg.Zone.Name()
	case store.KeyDomain:
		return k.Name
	}
	return ""
}

func kindOf(name string) string {
	if strings.HasPrefix(name, "*.") {
		return kindWildcard
	}
	return kindDomain
}

// ecdsaHello is what autocert is asked with: a client that takes ECDSA
// P-256, so that it always serves and orders the P-256 certificate (it
// would order RSA ones for TLS 1.3-only hellos, which list no ECDSA suite).
func ecdsaHello(name string) *tls.ClientHelloInfo {
	return &tls.ClientHelloInfo{
		ServerName:       name,
		SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
		SupportedCurves:  []tls.CurveID{tls.CurveP256},
		CipherSuites:     []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
	}
}

// hostPolicy is autocert's HostPolicy, called on every handshake for a
// custom domain and every HTTP-01 request: linked domains only, answered
// by the route cache.
func (m *Manager) hostPolicy(ctx context.Context, host string) error {
	key, err := m.cfg.Zone.ParseName(host)
	if err != nil {
		return err
	}
	if key.Kind != store.KeyDomain {
		return fmt.Errorf("%s is not a custom domain", host)
	}
	if _, err := m.routes.Lookup(ctx, key); err != nil {
		return fmt.Errorf("custom domain %s: %w", host, err)
	}
	return nil
}

// install records a certificate this proxy serves.
func (m *Manager) install(name, kind string, cert *tls.Certificate) {
	leaf := cert.Leaf
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	sc := &servedCert{kind: kind, notAfter: leaf.NotAfter}
	sc.renewAt.Store(leaf.NotAfter.Add(-life / 3).UnixNano())
	sc.lastUsed.Store(m.now().UnixNano())
	if kind == kindWildcard {
		sc.cert = cert
	}
	m.certsMu.Lock()
	m.certs[name] = sc
	m.certsMu.Unlock()
	m.indexMu.Lock()
	m.index[name] = leaf.NotAfter
	m.indexMu.Unlock()
}

// HasCertificate reports whether host has a certificate (not expired) in
// this proxy or in the store's index: the proxy redirects such hosts from
// HTTP to HTTPS and sends them HSTS.
func (m *Manager) HasCertificate(host string) bool {
	key, err := m.cfg.Zone.ParseName(host)
	if err != nil {
		return false
	}
	name := m.certName(key)
	if name == "" {
		return false
	}
	now := m.now()
	m.certsMu.RLock()
	sc := m.certs[name]
	m.certsMu.RUnlock()
	if sc != nil && now.Before(sc.notAfter) {
		return true
	}
	m.indexMu.RLock()
	exp, ok := m.index[name]
	m.indexMu.RUnlock()
	return ok && now.Before(exp)
}

// refreshIndex reads the list of stored certificates.
func (m *Manager) refreshIndex(ctx context.Context) {
	entries, err := m.st.ListCerts(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.logger.Warn("list stored certificates", zap.Error(err))
		}
		return
	}
	index := make(map[string]time.Time, len(entries))
	for _, e := range entries {
		if !e.NotAfter.IsZero() && isCertName(e.Name) {
			index[e.Name] = e.NotAfter
		}
	}
	m.indexMu.Lock()
	m.index = index
	m.indexMu.Unlock()
}

// HTTPHandler wraps the plain listener's handler: it answers ACME HTTP-01
// challenges for custom domains (from any proxy's order: the answers are
// in the store) and hands every other request to next.
func (m *Manager) HTTPHandler(next http.Handler) http.Handler {
	m.httpOnce.Do(func() { m.acmeHandler = m.auto.HTTPHandler(http.NotFoundHandler()) })
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			if key, err := m.cfg.Zone.ParseName(r.Host); err == nil && key.Kind == store.KeyDomain {
				m.acmeHandler.ServeHTTP(w, r)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
