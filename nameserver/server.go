package nameserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/internal/handover"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ServerConfig says where and how a Server listens. The zero value is
// usable (port 53 on every address).
type ServerConfig struct {
	// Addr is the host:port to answer on, over UDP and TCP. Empty means
	// ":53". Port 0 picks a free port (the same one for UDP and TCP).
	// Bind to specific addresses on a host with several: replies to a
	// wildcard socket leave by the kernel's choice of source address.
	Addr string
	// UDPSockets is how many UDP sockets share the address through
	// SO_REUSEPORT, so the kernel spreads queries over them. Zero means
	// GOMAXPROCS.
	UDPSockets int
	// UDPReaders is how many goroutines read and answer on each UDP
	// socket, each taking up to 32 queries a read (udp.go). One keeps a
	// CPU busy, as the handler never waits for a store. Zero means 1.
	UDPReaders int
	// ReadBuffer is each UDP socket's receive buffer (SO_RCVBUF), which
	// absorbs bursts. Zero means 8 MiB.
	ReadBuffer int
	// MaxTCPConns bounds the TCP connections open at once. From 90% of
	// it, each new connection closes the one idle the longest (waiting for
	// its next query); at it with none idle, a new one is closed at once.
	// Zero means 1000.
	MaxTCPConns int
	// MaxTCPPerClient bounds the TCP connections open from one client (an
	// IPv4 address, an IPv6 /64); one more is closed at once. Zero means 16.
	MaxTCPPerClient int
	// TCPIdleTimeout closes a TCP connection that waited this long for its
	// next query: the full time while fewer than half of MaxTCPConns are
	// open, less in proportion above, down to 1 s at MaxTCPConns. Zero
	// means 10 s.
	TCPIdleTimeout time.Duration
	// TCPMaxLifetime closes a TCP connection open this long, after the
	// reply in hand, however often it asks. Zero means 2 min.
	TCPMaxLifetime time.Duration
	// TCPMessageTimeout bounds reading one TCP query from its first octet,
	// and writing its reply: a client trickling octets, or not reading, is
	// cut. Zero means 2 s.
	TCPMessageTimeout time.Duration
	// ShutdownTimeout bounds a graceful shutdown. Zero means 5 s.
	ShutdownTimeout time.Duration
	// Binder binds the sockets, named "udp 0", "udp 1", … and "tcp" (a
	// *handover.Sockets takes over those of the process being replaced,
	// which stops reading them: no query is lost). Nil binds them afresh
	// with SO_REUSEPORT.
	Binder Binder
}

// Binder binds a Server's sockets by name.
type Binder interface {
	Listen(ctx context.Context, name, network, addr string) (net.Listener, error)
	ListenPacket(ctx context.Context, name, network, addr string) (net.PacketConn, error)
}

func (c ServerConfig) withDefaults() (ServerConfig, error) {
	if c.Addr == "" {
		c.Addr = ":53"
	}
	if c.UDPSockets == 0 {
		c.UDPSockets = runtime.GOMAXPROCS(0)
	}
	if c.UDPReaders == 0 {
		c.UDPReaders = 1
	}
	if c.ReadBuffer == 0 {
		c.ReadBuffer = 8 << 20
	}
	if c.MaxTCPConns == 0 {
		c.MaxTCPConns = 1000
	}
	if c.MaxTCPPerClient == 0 {
		c.MaxTCPPerClient = 16
	}
	if c.TCPIdleTimeout == 0 {
		c.TCPIdleTimeout = 10 * time.Second
	}
	if c.TCPMaxLifetime == 0 {
		c.TCPMaxLifetime = 2 * time.Minute
	}
	if c.TCPMessageTimeout == 0 {
		c.TCPMessageTimeout = 2 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 5 * time.Second
	}
	var errs []error
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("listen address %q: %w (want host:port, e.g. 127.0.0.1:53 or [::1]:5353)", c.Addr, err))
	}
	if c.UDPSockets < 1 || c.UDPSockets > 256 {
		errs = append(errs, fmt.Errorf("UDP sockets %d: must be 1 to 256", c.UDPSockets))
	}
	if c.UDPReaders < 1 || c.UDPReaders > 4096 {
		errs = append(errs, fmt.Errorf("UDP readers %d: must be 1 to 4096", c.UDPReaders))
	}
	if c.ReadBuffer < 0 || c.MaxTCPConns < 1 || c.MaxTCPPerClient < 1 {
		errs = append(errs, fmt.Errorf("UDP read buffer %d, TCP connections %d, TCP connections per client %d: must be positive",
			c.ReadBuffer, c.MaxTCPConns, c.MaxTCPPerClient))
	}
	if c.TCPIdleTimeout < 0 || c.TCPMaxLifetime < 0 || c.TCPMessageTimeout < 0 || c.ShutdownTimeout < 0 {
		errs = append(errs, fmt.Errorf("TCP idle timeout %v, TCP lifetime %v, TCP message timeout %v, shutdown timeout %v: must be positive",
			c.TCPIdleTimeout, c.TCPMaxLifetime, c.TCPMessageTimeout, c.ShutdownTimeout))
	}
	return c, errors.Join(errs...)
}

// Server answers DNS over UDP and TCP with a Handler. UDP is read
// straight from the sockets in batches by a fixed number of threads
// (udp.go), and answered without unpacking into a dns.Msg; TCP by a goroutine per connection,
// within the bounds of tcpServer (tcp.go).
type Server struct {
	cfg    ServerConfig
	h      *Handler
	logger *zap.Logger

	mu      sync.Mutex
	udp     []*net.UDPConn
	tcp     net.Listener
	tcpSrv  *tcpServer // while serving
	serving atomic.Bool
}

// NewServer checks cfg and returns a server answering with h.
func NewServer(cfg ServerConfig, h *Handler, logger *zap.Logger) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if h == nil {
		return nil, errors.New("server: no handler")
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Server{cfg: cfg, h: h, logger: logger.Named("server")}, nil
}

// Listen binds the UDP sockets and the TCP listener. Serve calls it when
// it has not been called.
func (s *Server) Listen(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp != nil {
		return nil
	}
	_, port, _ := net.SplitHostPort(s.cfg.Addr)
	tries := 1
	if port == "0" {
		tries = 20 // the UDP port picked may be taken for TCP
	}
	var (
		conns []*net.UDPConn
		ln    net.Listener
		err   error
	)
	for range tries {
		if conns, ln, err = s.listen(ctx); err == nil {
			break
		}
	}
	if err != nil {
		return err
	}
	s.udp, s.tcp = conns, ln
	s.logger.Info("listening", zap.Stringer("addr", ln.Addr()), zap.Int("udp_sockets", len(conns)))
	return nil
}

// listen binds the UDP sockets, then TCP on the same port.
func (s *Server) listen(ctx context.Context) ([]*net.UDPConn, net.Listener, error) {
	lc := net.ListenConfig{Control: handover.ReusePort}
	addr := s.cfg.Addr
	var conns []*net.UDPConn
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	listenPacket := func(i int, addr string) (net.PacketConn, error) { return lc.ListenPacket(ctx, "udp", addr) }
	listen := func(addr string) (net.Listener, error) { return lc.Listen(ctx, "tcp", addr) }
	if b := s.cfg.Binder; b != nil {
		listenPacket = func(i int, addr string) (net.PacketConn, error) {
			return b.ListenPacket(ctx, "udp "+strconv.Itoa(i), "udp", addr)
		}
		listen = func(addr string) (net.Listener, error) { return b.Listen(ctx, "tcp", "tcp", addr) }
	}
	for i := range s.cfg.UDPSockets {
		pc, err := listenPacket(i, addr)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		c := pc.(*net.UDPConn)
		setReadBuffer(c, s.cfg.ReadBuffer, s.logger, i == 0)
		conns = append(conns, c)
		if i == 0 {
			addr = c.LocalAddr().String() // the port picked, for the others
		}
	}
	ln, err := listen(addr)
	if err != nil {
		closeAll()
		return nil, nil, err
	}
	return conns, ln, nil
}

// Addr returns the address answered on (UDP and TCP share the port), or
// an invalid AddrPort before Listen.
func (s *Server) Addr() netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.udp) == 0 {
		return netip.AddrPort{}
	}
	return s.udp[0].LocalAddr().(*net.UDPAddr).AddrPort()
}

// Serving reports whether the server is answering.
func (s *Server) Serving() bool { return s.serving.Load() }

// Serve answers queries until ctx is done, then shuts down gracefully:
// it stops reading and accepting, closes the idle TCP connections, lets
// the queries in progress finish (up to ShutdownTimeout) and closes the
// sockets and the remaining connections. It returns nil after a shutdown
// asked for by ctx.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Listen(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	udp, ln := s.udp, s.tcp
	tcp := newTCPServer(ctx, s.cfg, s.h, ln, s.logger)
	s.tcpSrv = tcp
	s.mu.Unlock()

	var (
		wg     sync.WaitGroup
		tcpErr = make(chan error, 1)
		err    error
	)
	go func() { tcpErr <- tcp.serve() }()
	for i, c := range udp {
		for range s.cfg.UDPReaders {
			r := newUDPReader(s.h)
			wg.Go(func() {
				if err := r.serve(context.WithoutCancel(ctx), c); err != nil {
					s.logger.Error("udp socket stopped answering", zap.Int("socket", i), zap.Error(err))
				}
			})
		}
	}
	s.serving.Store(true)

	select {
	case <-ctx.Done():
	case err = <-tcpErr:
		if err == nil {
			err = errors.New("the TCP listener was closed")
		}
		err = fmt.Errorf("serve tcp: %w", err)
	}
	s.serving.Store(false)
	s.logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	_ = ln.Close()
	if err == nil {
		if serr := <-tcpErr; serr != nil {
			err = fmt.Errorf("serve tcp: %w", serr)
		}
	}
	tcp.shutdown(sctx)
	s.stopUDP(udp, &wg)
	return err
}

// stopUDP stops the readers (they finish the batch in hand: a read
// deadline in the past ends their next wait) and closes the sockets.
func (s *Server) stopUDP(conns []*net.UDPConn, wg *sync.WaitGroup) {
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
}

// setReadBuffer sets a UDP socket's receive buffer, past the system's
// rmem_max when allowed (SO_RCVBUFFORCE needs CAP_NET_ADMIN).
func setReadBuffer(c *net.UDPConn, size int, logger *zap.Logger, warn bool) {
	rc, err := c.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		})
		if err == nil && serr == nil {
			return
		}
	}
	if err := c.SetReadBuffer(size); err != nil && warn {
		logger.Warn("cannot set the UDP receive buffer", zap.Int("bytes", size), zap.Error(err))
	}
}
