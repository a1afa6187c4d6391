package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// PROXY protocol (v1 and v2, github.com/pires/go-proxyproto) on the client
// listeners: a load balancer in front of the cluster's proxies that opens
// each connection with a header naming its client makes that client the
// connection's remote address, for everything that reads one (the access
// log, X-Forwarded-For and X-Real-IP, MaxConnsPerClient).
//
// Only the networks of ServerConfig.ProxyProtocolFrom may send a header;
// one from anywhere else is refused (go-proxyproto's REJECT, which peeks
// at the first bytes, within the first Read's deadline: net/http's). From
// a trusted network the header is taken (USE) or, with
// ProxyProtocolRequired, must be there (REQUIRE); its v2 LOCAL command
// (the load balancer's health checks) and v1 UNKNOWN leave the connection
// the load balancer's own.
//
// go-proxyproto reads the header lazily, and its Conn.RemoteAddr blocks
// until it has, up to ReadHeaderTimeout: a trusted connection's client is
// not known at Accept. Such a connection is admitted in all at Accept and
// per client by its first use in its own goroutine (admittedConn), so a
// silent one holds a file descriptor and a goroutine for the timeout at
// most, and keeps nobody else waiting.

// proxyProtocol wraps ln, a listener's raw one, to read PROXY headers as
// the config says; without ProxyProtocolFrom it returns ln.
func (s *Server) proxyProtocol(ln net.Listener) net.Listener {
	if len(s.cfg.ProxyProtocolFrom) == 0 {
		return ln
	}
	return &proxyListener{Listener: ln, trusted: s.cfg.ProxyProtocolFrom, required: s.cfg.ProxyProtocolRequired,
		timeout: s.cfg.ReadHeaderTimeout, refused: &s.metrics.proxyRefused, logger: s.logger.Named("proxyproto")}
}

type proxyListener struct {
	net.Listener
	trusted  []netip.Prefix
	required bool
	timeout  time.Duration // for the header
	refused  *proxyRefusals
	logger   *zap.Logger
}

// Accept decides each connection's policy by its source address, without
// reading from it.
func (pl *proxyListener) Accept() (net.Conn, error) {
	c, err := pl.Listener.Accept()
	if err != nil {
		return nil, err
	}
	trusted := pl.trusts(c.RemoteAddr())
	policy := proxyproto.REJECT
	switch {
	case trusted && pl.required:
		policy = proxyproto.REQUIRE
	case trusted:
		policy = proxyproto.USE
	}
	pc := proxyproto.NewConn(c, proxyproto.WithPolicy(policy), proxyproto.SetReadHeaderTimeout(pl.timeout),
		proxyproto.ValidateHeader(validateProxyHeader))
	return &proxyConn{pc: pc, raw: c, trusted: trusted, l: pl}, nil
}

// trusts reports whether addr is in a trusted network.
func (pl *proxyListener) trusts(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip := ta.AddrPort().Addr().Unmap()
	for _, p := range pl.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// errProxyHeaderNotTCP refuses a header naming a client that is not a TCP
// one over IPv4 or IPv6 (a UDP or Unix socket, an unspecified family under
// the PROXY command): no client of ours.
var errProxyHeaderNotTCP = errors.New("proxyproto: the header names no TCP client over IPv4 or IPv6")

func validateProxyHeader(h *proxyproto.Header) error {
	if h.Command.IsLocal() {
		return nil
	}
	if tp := h.TransportProtocol; !tp.IsStream() || !tp.IsIPv4() && !tp.IsIPv6() {
		return errProxyHeaderNotTCP
	}
	return nil
}

// proxyConn is a client connection that may start with a PROXY header.
// Nothing is read before its first Read, Write or (from a trusted
// network) RemoteAddr, made by the connection's own goroutine.
type proxyConn struct {
	pc      *proxyproto.Conn
	raw     net.Conn // the TCP connection
	trusted bool     // from a trusted network: the header may name the client
	l       *proxyListener

	once sync.Once
	err  error // the header's refusal
}

// header reads the PROXY header (or makes sure there is none), once, and
// returns the reason the connection is refused, if it is; then the
// connection is closed.
func (c *proxyConn) header() error {
	c.once.Do(func() {
		// A read of nothing has go-proxyproto read the header (within
		// its timeout, or the read deadline set when earlier) and report
		// how that went; on a TCP connection it reads nothing more.
		_, err := c.pc.Read(nil)
		if err == nil {
			return
		}
		reason := proxyRefusalReason(err)
		if reason == refusedMalformed && !c.trusted {
			reason = refusedUntrusted // whatever it was, it was not theirs to send
		}
		name := "gone" // the client went away before its header was whole
		if reason >= 0 {
			c.l.refused[reason].Add(1)
			name = proxyRefusalNames[reason]
		}
		// Refusals come from the internet all day, as failed TLS
		// handshakes do: debug, and the metric.
		if ce := c.l.logger.Check(zap.DebugLevel, "PROXY protocol: connection closed"); ce != nil {
			ce.Write(zap.Stringer("source", c.raw.RemoteAddr()), zap.Bool("trusted", c.trusted), zap.String("reason", name), zap.Error(err))
		}
		_ = c.raw.Close()
		c.err = fmt.Errorf("PROXY protocol: %w", err)
	})
	return c.err
}

// The connection limits count a proxyConn's client once it is known.
var _ lateConn = (*proxyConn)(nil)

// late reports whether the client is known only once the header is read
// (lateConn).
func (c *proxyConn) late() bool { return c.trusted }

// client reads the header and returns the client it names, or the
// connection's source without one (lateConn).
func (c *proxyConn) client() (net.Addr, error) {
	if err := c.header(); err != nil {
		return nil, err
	}
	return c.pc.RemoteAddr(), nil
}

func (c *proxyConn) Read(p []byte) (int, error) {
	if err := c.header(); err != nil {
		return 0, err
	}
	return c.pc.Read(p)
}

func (c *proxyConn) Write(p []byte) (int, error) {
	if err := c.header(); err != nil {
		return 0, err
	}
	return c.pc.Write(p)
}

// RemoteAddr is the client the header names, once it is read (from a
// trusted network), or the connection's source.
func (c *proxyConn) RemoteAddr() net.Addr {
	if !c.trusted || c.header() != nil {
		return c.raw.RemoteAddr()
	}
	return c.pc.RemoteAddr()
}

// LocalAddr is the listener's address (not the one the client connected
// to, which the header may name: the load balancer's).
func (c *proxyConn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *proxyConn) Close() error                       { return c.raw.Close() }
func (c *proxyConn) SetDeadline(t time.Time) error      { return c.pc.SetDeadline(t) }
func (c *proxyConn) SetReadDeadline(t time.Time) error  { return c.pc.SetReadDeadline(t) }
func (c *proxyConn) SetWriteDeadline(t time.Time) error { return c.pc.SetWriteDeadline(t) }

// CloseWrite half-closes the connection (for upgrades).
func (c *proxyConn) CloseWrite() error {
	if cw, ok := c.raw.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.raw.Close()
}

// The reasons a connection is refused for the PROXY protocol, the values of
// replproxy_proxy_protocol_refused_total's label.
const (
	refusedUntrusted = iota // a header from a network not trusted to send one
	refusedMissing          // none from a trusted network, with ProxyProtocolRequired
	refusedMalformed        // a header go-proxyproto cannot read, or one naming no TCP client
	numProxyRefusals
)

var proxyRefusalNames = [numProxyRefusals]string{"untrusted_header", "missing_header", "malformed"}

// proxyRefusalReason returns the reason for err, a failed header read, or
// -1 when the client only went away (or reset) before its header was
// whole: no reason of the protocol's.
func proxyRefusalReason(err error) int {
	var ne net.Error
	switch {
	case errors.Is(err, proxyproto.ErrSuperfluousProxyHeader):
		return refusedUntrusted
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		return refusedMissing
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.As(err, &ne):
		return -1
	}
	return refusedMalformed
}

// proxyRefusals counts the connections refused, by reason; it is a part
// of connLimits's collector.
type proxyRefusals [numProxyRefusals]atomic.Uint64

var descProxyRefused = prometheus.NewDesc("replproxy_proxy_protocol_refused_total",
	"Client connections closed for the PROXY protocol: a header from a network not trusted to send one (untrusted_header), none from a trusted one that must (missing_header), or one that cannot be read (malformed).",
	[]string{"reason"}, nil)

func (r *proxyRefusals) collect(ch chan<- prometheus.Metric) {
	for i := range r {
		ch <- prometheus.MustNewConstMetric(descProxyRefused, prometheus.CounterValue, float64(r[i].Load()), proxyRefusalNames[i])
	}
}
