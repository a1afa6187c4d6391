package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/crypto/acme"
)

// ServerConfig says where a Server listens. Zero durations take the
// defaults named on each field.
type ServerConfig struct {
	// Listen is the plain HTTP address, e.g. ":80". Required unless
	// TLSListen is set.
	Listen string
	// TLSListen is the HTTPS address, e.g. ":443", served with the static
	// certificate in TLSCertFile and TLSKeyFile.
	TLSListen   string
	TLSCertFile string
	TLSKeyFile  string
	// OnDemand, when set, gives the HTTPS listener its certificates on
	// demand (TLS-ALPN-01 included), answers ACME HTTP-01 challenges on
	// Listen and redirects requests there to HTTPS for hosts that have a
	// certificate. The static certificate is then optional: it serves the
	// names OnDemand does not (no server name, the apex).
	OnDemand *CertManager
	// ForwardListen is where requests forwarded by other clusters' proxies
	// arrive (the cluster's forward address in the registry points here).
	// Empty means they arrive on Listen.
	ForwardListen string
	// AdminListen serves /metrics, /healthz, /readyz and /debug/pprof/.
	// Keep it off the public network. Empty means no admin listener.
	AdminListen string
	// H2C accepts HTTP/2 without TLS (prior knowledge) on the plain
	// listeners.
	H2C bool
	// ReadHeaderTimeout bounds reading a request's headers. Default 10 s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes idle client connections. Default 120 s.
	IdleTimeout time.Duration
	// ShutdownTimeout bounds the drain after the context is cancelled:
	// in-flight requests and upgraded connections get this long, then are
	// closed. Default 30 s.
	ShutdownTimeout time.Duration
}

// Server runs a Handler on its listeners, and the admin endpoints.
type Server struct {
	cfg     ServerConfig
	handler *Handler
	logger  *zap.Logger
	ready   func(context.Context) error
	gather  prometheus.Gatherer

	mu        sync.Mutex
	listeners map[string]net.Listener // by role: "http", "https", "forward", "admin"
	servers   map[string]*http.Server
}

// NewServer returns a Server for h. ready tells /readyz whether the proxy
// can route (nil: always ready); gather serves /metrics (nil: none).
func NewServer(cfg ServerConfig, h *Handler, ready func(context.Context) error, gather prometheus.Gatherer, logger *zap.Logger) (*Server, error) {
	if cfg.Listen == "" && cfg.TLSListen == "" {
		return nil, errors.New("no listen address: set -listen (HTTP) or -listen-tls (HTTPS)")
	}
	if cfg.TLSListen != "" && cfg.OnDemand == nil && (cfg.TLSCertFile == "" || cfg.TLSKeyFile == "") {
		return nil, errors.New("-listen-tls needs -tls-cert and -tls-key (PEM files), or -tls-on-demand")
	}
	if cfg.TLSListen != "" && (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 120 * time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 30 * time.Second
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Server{cfg: cfg, handler: h, logger: logger, ready: ready, gather: gather,
		listeners: map[string]net.Listener{}, servers: map[string]*http.Server{}}, nil
}

// Listen binds every configured address. After it returns, Addr reports
// the bound addresses (useful with port 0).
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var tlsConfig *tls.Config
	if s.cfg.TLSListen != "" {
		tlsConfig = &tls.Config{NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12}
		if s.cfg.TLSCertFile != "" || s.cfg.OnDemand == nil {
			cert, err := tls.LoadX509KeyPair(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
			if err != nil {
				return fmt.Errorf("load TLS certificate %s and key %s: %w", s.cfg.TLSCertFile, s.cfg.TLSKeyFile, err)
			}
			tlsConfig.Certificates = []tls.Certificate{cert}
		}
		if s.cfg.OnDemand != nil {
			tlsConfig.GetCertificate = s.cfg.OnDemand.GetCertificate
			tlsConfig.NextProtos = append(tlsConfig.NextProtos, acme.ALPNProto)
		}
	}
	for _, l := range []struct{ role, addr string }{
		{"http", s.cfg.Listen}, {"https", s.cfg.TLSListen}, {"forward", s.cfg.ForwardListen}, {"admin", s.cfg.AdminListen},
	} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listen for %s on %s: %w", l.role, l.addr, err)
		}
		if l.role == "https" {
			ln = tls.NewListener(ln, tlsConfig)
		}
		s.listeners[l.role] = ln
		s.servers[l.role] = s.httpServer(l.role, tlsConfig)
	}
	return nil
}

func (s *Server) closeListeners() {
	for role, ln := range s.listeners {
		_ = ln.Close()
		delete(s.listeners, role)
	}
}

// Addr returns the bound address of a listener ("http", "https",
// "forward", "admin"), or "" when it is not configured.
func (s *Server) Addr(role string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ln, ok := s.listeners[role]; ok {
		return ln.Addr().String()
	}
	return ""
}

func (s *Server) httpServer(role string, tlsConfig *tls.Config) *http.Server {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          serverErrorLog(s.logger.Named("http." + role)),
		ConnContext:       withConnSlot,
	}
	switch role {
	case "https":
		if s.cfg.OnDemand != nil {
			srv.Handler = s.cfg.OnDemand.HTTPSHandler(s.handler)
		}
		srv.TLSConfig = tlsConfig
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetHTTP2(true)
		srv.Protocols = &p
	case "admin":
		srv.Handler = s.adminMux()
	default:
		if role == "http" && s.cfg.OnDemand != nil {
			srv.Handler = s.cfg.OnDemand.HTTPHandler(s.handler)
		}
		if s.cfg.H2C {
			var p http.Protocols
			p.SetHTTP1(true)
			p.SetUnencryptedHTTP2(true)
			srv.Protocols = &p
		}
	}
	return srv
}

// Serve serves on the bound listeners until ctx is cancelled, then drains:
// it stops accepting, waits up to ShutdownTimeout for in-flight requests
// and upgraded connections, closes what is left, and returns nil. A
// listener failing returns its error.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	servers := make(map[string]*http.Server, len(s.servers))
	for role, srv := range s.servers {
		servers[role] = srv
	}
	listeners := s.listeners
	s.mu.Unlock()
	if len(servers) == 0 {
		return errors.New("serve: call Listen first")
	}

	errc := make(chan error, len(servers))
	for role, srv := range servers {
		ln := listeners[role]
		s.logger.Info("listening", zap.String("role", role), zap.String("addr", ln.Addr().String()))
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s on %s: %w", role, ln.Addr(), err)
				return
			}
			errc <- nil
		}()
	}

	var serveErr error
	pending := len(servers)
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		pending--
	}

	s.drain(ctx, servers)
	// Collect the serve goroutines.
	for ; pending > 0; pending-- {
		if err := <-errc; err != nil && serveErr == nil {
			serveErr = err
		}
	}
	s.handler.CloseIdleConnections()
	s.logger.Info("stopped")
	return serveErr
}

// drain shuts the servers down within ShutdownTimeout: every listener but
// the admin one (metrics and health keep answering) stops accepting and
// waits for its in-flight requests, then the upgraded connections get what
// is left of the deadline; whatever is still open then is closed, and the
// admin server last.
func (s *Server) drain(ctx context.Context, servers map[string]*http.Server) {
	s.logger.Info("draining", zap.Duration("deadline", s.cfg.ShutdownTimeout),
		zap.Int("upgraded_connections", s.handler.UpgradedConns()))
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for role, srv := range servers {
		if role == "admin" {
			continue // keep metrics and health answering during the drain
		}
		wg.Go(func() {
			if err := srv.Shutdown(drainCtx); err != nil {
				s.logger.Warn("drain deadline passed; closing connections", zap.String("role", role), zap.Error(err))
				_ = srv.Close()
			}
		})
	}
	wg.Wait()
	if n := s.handler.DrainUpgraded(drainCtx); n > 0 {
		s.logger.Warn("drain deadline passed; closing upgraded connections", zap.Int("count", n))
	}
	if admin := servers["admin"]; admin != nil {
		_ = admin.Close()
	}
}
