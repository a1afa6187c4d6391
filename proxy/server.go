package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/replproxy/replproxy/internal/handover"
	"go.uber.org/zap"
	"golang.org/x/crypto/acme"
)

// Server runs a Handler on its listeners, and the admin endpoints.
type Server struct {
	cfg      ServerConfig
	handler  *Handler
	onDemand OnDemand // nil: static certificates only
	hsts     string   // the Strict-Transport-Security value; "": none
	logger   *zap.Logger
	ready    func(context.Context) error
	gather   prometheus.Gatherer
	conns    *connLimits  // of the public listeners' (HTTP, HTTPS) client connections
	fwdConns *connLimits  // of the forward listener's
	metrics  *connMetrics // of both, and what every listener counts

	mu        sync.Mutex
	cert      *CertFile               // the static certificate, once Listen loaded it; nil: none
	listeners map[string]net.Listener // by role: "http", "https", "forward", "admin"
	servers   map[string]*http.Server
	gate      <-chan struct{} // AcceptAfter's; nil: accept at once

	// draining is set when the drain starts: every HTTP/1 response says
	// Connection: close from then on.
	draining atomic.Bool
}

// Binder binds a Server's listening sockets, named by role ("http",
// "https", "forward", "admin"): a *handover.Sockets takes them over from
// the process being replaced. Nil binds each afresh (SO_REUSEPORT).
type Binder interface {
	Listen(ctx context.Context, name, network, addr string) (net.Listener, error)
}

// NewServer returns a Server for h. onDemand, when not nil, gives the
// HTTPS listener its certificates (see OnDemand); ready tells /readyz
// whether the proxy can route (nil: always ready); gather serves /metrics
// (nil: none).
func NewServer(cfg ServerConfig, h *Handler, onDemand OnDemand, ready func(context.Context) error, gather prometheus.Gatherer, logger *zap.Logger) (*Server, error) {
	if cfg.TLSListen != "" && onDemand == nil && (cfg.TLSCertFile == "" || cfg.TLSKeyFile == "") {
		return nil, errors.New("-listen-tls needs -tls-cert and -tls-key (PEM files), or -tls-on-demand")
	}
	if onDemand != nil && cfg.TLSListen == "" {
		return nil, errors.New("-tls-on-demand needs -listen-tls")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	s := &Server{cfg: cfg, handler: h, onDemand: onDemand, logger: logger, ready: ready, gather: gather,
		conns:     newConnLimits(cfg.MaxConns, cfg.MaxConnsPerClient),
		fwdConns:  newConnLimits(cfg.MaxForwardConns, cfg.MaxForwardConnsPerClient),
		listeners: map[string]net.Listener{}, servers: map[string]*http.Server{}}
	s.metrics = &connMetrics{public: s.conns, forward: s.fwdConns}
	if cfg.HSTSMaxAge > 0 {
		s.hsts = "max-age=" + strconv.FormatInt(int64(cfg.HSTSMaxAge/time.Second), 10)
	}
	return s, nil
}

// Listen binds every configured address. After it returns, Addr reports
// the bound addresses (useful with port 0).
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tlsConfig, err := s.tlsConfig()
	if err != nil {
		return err
	}
	for _, l := range []struct{ role, addr string }{
		{"http", s.cfg.Listen}, {"https", s.cfg.TLSListen}, {"forward", s.cfg.ForwardListen}, {"admin", s.cfg.AdminListen},
	} {
		if l.addr == "" {
			continue
		}
		binder := s.cfg.Binder
		if binder == nil {
			binder = (*handover.Sockets)(nil) // binds afresh, with SO_REUSEPORT
		}
		ln, err := binder.Listen(context.Background(), l.role, "tcp", l.addr)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("listen for %s on %s: %w", l.role, l.addr, err)
		}
		if l.role != "admin" {
			ln = s.proxyProtocol(ln) // before the caps and TLS: they see the client it names
			gl := &guardListener{Listener: s.limits(l.role).listener(ln),
				handshake: s.cfg.ReadHeaderTimeout, cuts: &s.metrics.resetCuts, logger: s.logger.Named("tls")}
			switch {
			case l.role == "https":
				if s.cfg.HTTPSPort == 0 {
					s.cfg.HTTPSPort = ln.Addr().(*net.TCPAddr).Port
				}
				gl.tlsConfig = tlsConfig
			case l.role == "forward" && s.handler.cfg.Peers != nil:
				gl.tlsConfig, gl.peers = s.handler.cfg.Peers.ServerConfig(), true
			}
			ln = gl
		}
		s.listeners[l.role] = ln
	}
	for role := range s.listeners {
		s.servers[role] = s.httpServer(role)
	}
	return nil
}

// tlsConfig is the HTTPS listener's: the static certificate, certificates
// on demand, or both; nil without TLSListen.
func (s *Server) tlsConfig() (*tls.Config, error) {
	if s.cfg.TLSListen == "" {
		return nil, nil
	}
	tlsConfig := &tls.Config{NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12}
	if s.cfg.TLSCertFile != "" || s.onDemand == nil {
		var err error
		if s.cert, err = LoadCertFile(s.cfg.TLSCertFile, s.cfg.TLSKeyFile); err != nil {
			return nil, err
		}
	}
	tlsConfig.GetCertificate = chainCertificates(s.onDemand, s.cert) // certfile.go
	if s.onDemand != nil {
		tlsConfig.NextProtos = append(tlsConfig.NextProtos, acme.ALPNProto)
	}
	return tlsConfig, nil
}

func (s *Server) closeListeners() {
	for role, ln := range s.listeners {
		_ = ln.Close()
		delete(s.listeners, role)
	}
}

// maxConcurrentStreams bounds the open streams of one HTTP/2 client
// connection (Go's default is 250; browsers open at most about 100).
const maxConcurrentStreams = 100

// limits are the connection bounds of a listener's role: the forward
// listener's own, or the public listeners'.
func (s *Server) limits(role string) *connLimits {
	if role == "forward" {
		return s.fwdConns
	}
	return s.conns
}

// openConns is how many client connections are open, on every listener.
func (s *Server) openConns() int64 { return s.conns.open.Load() + s.fwdConns.open.Load() }

// Collector returns the client-connection metrics, to register where
// /metrics gathers: replproxy_client_connections,
// replproxy_client_connections_refused_total,
// replproxy_forward_connections,
// replproxy_forward_connections_refused_total,
// replproxy_connections_closed_for_resets_total and
// replproxy_proxy_protocol_refused_total{reason}.
func (s *Server) Collector() prometheus.Collector { return s.metrics }

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

// closeWhenDraining makes every HTTP/1 response during the drain close
// its connection (not an upgrade's: the 101 keeps it).
func (s *Server) closeWhenDraining(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.draining.Load() && r.ProtoMajor == 1 && r.Header.Get("Upgrade") == "" {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) httpServer(role string) *http.Server {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          serverErrorLog(s.logger.Named("http." + role)),
		ConnContext:       withConnSlot,
		ConnState:         s.limits(role).connState,
		// Streams a client may have open on one HTTP/2 connection, set
		// rather than left to the library: each is a request in flight
		// here and, most likely, a connection to a container.
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: maxConcurrentStreams},
	}
	switch role {
	case "https":
		if s.onDemand != nil {
			srv.Handler = s.withHSTS(s.handler)
		}
		srv.Handler = withTLSState(srv.Handler)
		// TLS is the listener's (guardListener): the server gets each
		// connection in the clear, and serves HTTP/2 on the ones that
		// start with its preface (which ALPN must have chosen).
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		srv.Protocols = &p
	case "forward":
		if s.handler.cfg.Peers != nil {
			// Mutual TLS (guardListener), HTTP/2 by its preface, as on the
			// HTTPS listener; no client budget of cancels (withPeerSlot).
			srv.Handler = withTLSState(s.handler)
			srv.ConnContext = withPeerSlot
			var p http.Protocols
			p.SetHTTP1(true)
			p.SetUnencryptedHTTP2(true)
			srv.Protocols = &p
		} else if s.cfg.H2C {
			var p http.Protocols
			p.SetHTTP1(true)
			p.SetUnencryptedHTTP2(true)
			srv.Protocols = &p
		}
	case "admin":
		srv.Handler = s.adminMux()
	default:
		if role == "http" && s.onDemand != nil {
			srv.Handler = s.onDemand.HTTPHandler(s.toHTTPS(s.handler))
		}
		if s.cfg.H2C {
			var p http.Protocols
			p.SetHTTP1(true)
			p.SetUnencryptedHTTP2(true)
			srv.Protocols = &p
		}
	}
	if role != "admin" {
		srv.Handler = s.closeWhenDraining(srv.Handler)
	}
	return srv
}

// AcceptAfter makes Serve accept on every listener but the admin one only
// once gate is closed: a process taking over another's sockets serves
// nobody before it can route (the other one does meanwhile). Call it
// before Serve.
func (s *Server) AcceptAfter(gate <-chan struct{}) {
	s.mu.Lock()
	s.gate = gate
	s.mu.Unlock()
}

// Serve serves on the bound listeners until ctx is cancelled, then drains
// (see drain) and returns nil. A listener failing returns its error.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	servers := make(map[string]*http.Server, len(s.servers))
	for role, srv := range s.servers {
		servers[role] = srv
	}
	listeners, gate := s.listeners, s.gate
	s.mu.Unlock()
	if len(servers) == 0 {
		return errors.New("serve: call Listen first")
	}

	// The repls' activity is flushed until the drain is over, and once
	// more then.
	actCtx, stopActivity := context.WithCancel(context.WithoutCancel(ctx))
	actDone := make(chan struct{})
	go func() { defer close(actDone); s.handler.RunActivity(actCtx) }()

	errc := make(chan error, len(servers))
	for role, srv := range servers {
		ln := listeners[role]
		s.logger.Info("listening", zap.String("role", role), zap.String("addr", ln.Addr().String()))
		go func() {
			if gate != nil && role != "admin" {
				select {
				case <-gate:
				case <-ctx.Done():
				}
			}
			err := srv.Serve(ln)
			switch {
			case err == nil, errors.Is(err, http.ErrServerClosed):
			case s.draining.Load() && errors.Is(err, net.ErrClosed): // drain closed it
			default:
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

	s.drain(ctx, servers, listeners)
	stopActivity()
	<-actDone
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

// drain shuts the servers down within ShutdownTimeout:
//
//   - Every listener but the admin one (metrics and health keep answering)
//     stops accepting. After a handover the successor accepts on the same
//     sockets; nothing is refused.
//   - For DrainGrace, keep-alive connections may bring one more request:
//     its response says Connection: close and the connection closes after
//     it. Closing an idle connection races with a client sending on it (a
//     request lost on the wire, which a client retries only when it is
//     idempotent), so it is done only to connections idle all that time.
//   - Then the servers shut down (HTTP/2 clients get GOAWAY, idle
//     connections close) and wait for their in-flight requests, then the
//     upgraded connections get what is left of the deadline; whatever is
//     still open then is closed, and the admin server last.
func (s *Server) drain(ctx context.Context, servers map[string]*http.Server, listeners map[string]net.Listener) {
	s.logger.Info("draining", zap.Duration("deadline", s.cfg.ShutdownTimeout),
		zap.Int("client_connections", int(s.openConns())),
		zap.Int("upgraded_connections", s.handler.UpgradedConns()))
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	s.draining.Store(true)
	for role, ln := range listeners {
		if role != "admin" {
			_ = ln.Close()
		}
	}
	grace := time.NewTimer(min(s.cfg.DrainGrace, s.cfg.ShutdownTimeout))
	defer grace.Stop()
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for s.openConns() > int64(s.handler.UpgradedConns()) {
		select {
		case <-grace.C:
		case <-poll.C:
			continue
		}
		break
	}
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
