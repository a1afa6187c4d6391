package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"

	"github.com/replproxy/replproxy/store"
)

// CertConfig configures certificates on demand. Zero values take the
// defaults named on each field.
type CertConfig struct {
	// Zone is the platform's zone. Required.
	Zone store.Zone
	// Directory is the ACME server's directory URL. Default: Let's
	// Encrypt's production server.
	Directory string
	// Email is the ACME account's contact address (optional).
	Email string
	// CARoots verifies the ACME server's HTTPS certificate. Nil means the
	// system's roots.
	CARoots *x509.CertPool
	// DNS01Check lists nameservers (host:port, normally replns) that must
	// answer a DNS-01 challenge record before the CA is asked to look at
	// it, within DNS01Wait (default 2 min). Empty means the CA is asked at
	// once.
	DNS01Check []string
	DNS01Wait  time.Duration

	// HandshakeWait bounds how long a TLS handshake for a name with no
	// certificate yet waits for one; the order goes on after it, and a
	// later handshake gets the certificate. Default 10 s.
	HandshakeWait time.Duration
	// OrderTimeout bounds one order, validation included. Default 5 min.
	OrderTimeout time.Duration
	// LeaseTTL is how long a proxy's lease on a name lasts if it dies
	// mid-order. Default 10 min; at least OrderTimeout.
	LeaseTTL time.Duration
	// Backoff is how long a name whose order failed is left alone; it
	// doubles with each failure in a row, up to MaxBackoff. The failing
	// proxy keeps the name's lease that long, so the other proxies of the
	// cluster wait too. Defaults 1 min and 6 h.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// OrdersPerHour and OrderBurst limit new orders overall (a token
	// bucket). Defaults 100 and 20 (Let's Encrypt allows an account 300
	// new orders per 3 hours).
	OrdersPerHour float64
	OrderBurst    int
	// RenewCheck is how often the certificates this proxy serves are
	// checked for renewal, which starts with a third of their lifetime
	// left. Default 10 min.
	RenewCheck time.Duration
	// IdleEvict drops from memory the wildcards no handshake used for this
	// long (they stay in the store). Default 24 h.
	IdleEvict time.Duration
	// IndexRefresh is how often the list of stored certificates, which
	// decides the HTTP → HTTPS redirects, is read again. Default 1 min.
	IndexRefresh time.Duration
	// HSTSMaxAge is the max-age of the Strict-Transport-Security header on
	// HTTPS responses for hosts with a certificate. Default 365 days;
	// negative: no header.
	HSTSMaxAge time.Duration
	// HTTPSPort is the port HTTP requests are redirected to. Default 443.
	HTTPSPort int
	// Holder names this proxy in the cluster's leases. Default
	// "<hostname>/<pid>/<random>".
	Holder string
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

func (c *CertConfig) setDefaults() error {
	if c.Zone.Name() == "" {
		return errors.New("certificates on demand: no zone")
	}
	if c.Directory == "" {
		c.Directory = autocert.DefaultACMEDirectory
	}
	defaults := []struct {
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
		{&c.HSTSMaxAge, 365 * 24 * time.Hour},
	}
	for _, d := range defaults {
		if *d.d == 0 {
			*d.d = d.def
		}
	}
	c.LeaseTTL = max(c.LeaseTTL, c.OrderTimeout)
	c.MaxBackoff = max(c.MaxBackoff, c.Backoff)
	if c.OrdersPerHour <= 0 {
		c.OrdersPerHour = 100
	}
	if c.OrderBurst <= 0 {
		c.OrderBurst = 20
	}
	if c.HTTPSPort == 0 {
		c.HTTPSPort = 443
	}
	if c.Holder == "" {
		host, _ := os.Hostname()
		var r [4]byte
		_, _ = rand.Read(r[:])
		c.Holder = fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(r[:]))
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// CertStore is what a CertManager needs of the cluster's store: the
// certificate storage, and the DNS-01 challenge records replns serves.
// Both store backends have it.
type CertStore interface {
	store.Certs
	PutChallenge(ctx context.Context, c store.Challenge) error
	DeleteChallenge(ctx context.Context, name, value string) error
}

// Kinds of certificates, as the "kind" label of the metrics says them.
const (
	kindWildcard = "wildcard" // *.<owner>.<zone>, *.id.<zone>: DNS-01
	kindDomain   = "domain"   // a linked custom domain: autocert
)

// CertManager obtains, stores, serves and renews the proxy's TLS
// certificates on demand (DESIGN.md, "The proxy", item 6):
//
//   - A handshake for <slug>.<owner>.<zone> or <id>.id.<zone> is served
//     with *.<owner>.<zone> or *.id.<zone>, ordered through DNS-01 with
//     golang.org/x/crypto/acme: the challenge records go into the store,
//     where replns finds them.
//   - A handshake for a custom domain is served by an autocert.Manager
//     (TLS-ALPN-01, or HTTP-01 through HTTPHandler) whose host policy
//     admits the domains linked in this cluster, from the route cache.
//
// Certificates live in the cluster's store (CertCache), so every proxy of
// the cluster serves what one of them obtained, and a restart keeps them.
// Only names that route are ordered; at most one proxy of the cluster
// orders a name at a time (a lease in the store); a handshake waits at
// most HandshakeWait; failures back off per name; orders are rate-limited
// overall. Private keys are never logged.
type CertManager struct {
	cfg     CertConfig
	st      CertStore
	routes  Routes
	metrics *CertMetrics
	logger  *zap.Logger

	cache     *CertCache
	account   *acmeAccount
	auto      *autocert.Manager
	gate      *orderGate
	transport *http.Transport
	limiter   *tokenBucket
	hsts      string

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

// NewCertManager returns a CertManager over the cluster's store st. routes
// (the route cache) decides which names may get a certificate. metrics may
// be nil. Call Run to start its background work.
func NewCertManager(cfg CertConfig, st CertStore, routes Routes, metrics *CertMetrics, logger *zap.Logger) (*CertManager, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if st == nil || routes == nil {
		return nil, errors.New("certificates on demand: no store or routes")
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	m := &CertManager{
		cfg:      cfg,
		st:       st,
		routes:   routes,
		metrics:  metrics,
		logger:   logger.Named("tls"),
		certs:    map[string]*servedCert{},
		flights:  map[string]*flight{},
		failures: map[string]failure{},
		orders:   map[string]time.Time{},
		index:    map[string]time.Time{},
		limiter:  newTokenBucket(cfg.OrdersPerHour/3600, float64(cfg.OrderBurst), cfg.Now()),
	}
	if cfg.HSTSMaxAge > 0 {
		m.hsts = "max-age=" + strconv.FormatInt(int64(cfg.HSTSMaxAge/time.Second), 10)
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
	m.cache = NewCertCache(st)
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
func (m *CertManager) Run(ctx context.Context) error {
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

func (m *CertManager) stop() {
	m.cancel()
	m.wg.Wait()
	m.gate.close()
	m.transport.CloseIdleConnections()
}

func (m *CertManager) now() time.Time { return m.cfg.Now() }

// GetCertificate is the HTTPS listener's tls.Config.GetCertificate. It
// answers TLS-ALPN-01 challenges, serves wildcards and custom domains, and
// returns nil, nil for names it does not serve (no server name, the apex,
// ...), so that the listener's static certificate, if any, is used.
func (m *CertManager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acme.ALPNProto {
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
func (m *CertManager) certName(k store.Key) string {
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
func (m *CertManager) hostPolicy(ctx context.Context, host string) error {
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
func (m *CertManager) install(name, kind string, cert *tls.Certificate) {
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

// hasCert reports whether host has a certificate (not expired) in this
// proxy or in the store's index, for the redirect to HTTPS and HSTS.
func (m *CertManager) hasCert(host string) bool {
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
func (m *CertManager) refreshIndex(ctx context.Context) {
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
// in the store), and redirects to HTTPS the requests for hosts that have a
// certificate. Requests forwarded by another cluster's proxy (with a hop
// mark) are never redirected: their client is that proxy.
func (m *CertManager) HTTPHandler(next http.Handler) http.Handler {
	m.httpOnce.Do(func() { m.acmeHandler = m.auto.HTTPHandler(http.NotFoundHandler()) })
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			if key, err := m.cfg.Zone.ParseName(r.Host); err == nil && key.Kind == store.KeyDomain {
				m.acmeHandler.ServeHTTP(w, r)
				return
			}
		}
		if r.Header.Get(HopHeader) == "" && m.hasCert(r.Host) {
			m.redirect(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (m *CertManager) redirect(w http.ResponseWriter, r *http.Request) {
	key, _ := m.cfg.Zone.ParseName(r.Host) // hasCert parsed it already
	host := m.cfg.Zone.Format(key)
	if m.cfg.HTTPSPort != 443 {
		host += ":" + strconv.Itoa(m.cfg.HTTPSPort)
	}
	code := http.StatusMovedPermanently
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		code = http.StatusPermanentRedirect // keeps the method and body
	}
	http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), code)
}

// HTTPSHandler wraps the HTTPS listener's handler: responses for hosts
// with a certificate carry Strict-Transport-Security (set before the repl
// answers, so it comes first and wins over one the repl sends).
func (m *CertManager) HTTPSHandler(next http.Handler) http.Handler {
	if m.hsts == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && m.hasCert(r.Host) {
			w.Header().Set("Strict-Transport-Security", m.hsts)
		}
		next.ServeHTTP(w, r)
	})
}
