package proxy

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// connLimits bounds the client connections a Server holds on some of its
// listeners: in all, and per client network (a /32 for IPv4, a /64 for
// IPv6: one host, or one customer's allocation), so that no client, and
// no crowd of them, can hold every file descriptor. The public listeners
// (HTTP, HTTPS) share one connLimits and the forward listener has its
// own: connections to the one never take room from the other. A connection beyond either bound is closed
// as soon as it is accepted (or, when a PROXY protocol header names its
// client, as soon as that is read) and counted. Near the bound in all,
// idle keep-alive connections are closed when they go idle, to make room.
type connLimits struct {
	max, perClient int
	open           atomic.Int64
	refused        atomic.Uint64
	mu             sync.Mutex
	byClient       map[netip.Prefix]int
}

func newConnLimits(max, perClient int) *connLimits {
	return &connLimits{max: max, perClient: perClient, byClient: make(map[netip.Prefix]int)}
}

// connMetrics are a Server's client-connection metrics: the public
// listeners' connections and the forward listener's, and what every
// listener counts.
type connMetrics struct {
	public, forward *connLimits
	resetCuts       atomic.Uint64 // HTTP/2 connections cut for resetting streams too fast
	proxyRefused    proxyRefusals // connections refused for the PROXY protocol
}

// clientNet is the network a client address counts against.
func clientNet(addr net.Addr) netip.Prefix {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Prefix{}
	}
	ip := ap.Addr().Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// admit counts a new connection c from addr, or reports that it is over a
// bound. A connection whose client is not known yet (late) is counted in
// all only, until move.
func (l *connLimits) admit(c *admittedConn, addr net.Addr, late bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if int(l.open.Load()) >= l.max {
		l.refused.Add(1)
		return false
	}
	if !late {
		p := clientNet(addr)
		if l.byClient[p] >= l.perClient {
			l.refused.Add(1)
			return false
		}
		l.byClient[p]++
		c.p, c.byClient = p, true
	}
	l.open.Add(1)
	return true
}

// move counts c, admitted late, against its client network, or reports
// that it is over that bound (or closed meanwhile).
func (l *connLimits) move(c *admittedConn, addr net.Addr) bool {
	p := clientNet(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.closed {
		return false
	}
	if l.byClient[p] >= l.perClient {
		l.refused.Add(1)
		return false
	}
	l.byClient[p]++
	c.p, c.byClient = p, true
	return true
}

// release uncounts c, once.
func (l *connLimits) release(c *admittedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	if c.byClient {
		if l.byClient[c.p]--; l.byClient[c.p] <= 0 {
			delete(l.byClient, c.p)
		}
	}
	l.open.Add(-1)
}

// crowded reports whether the connections in all are near the bound (3/4
// of it): idle keep-alive connections then make room.
func (l *connLimits) crowded() bool { return 4*l.open.Load() >= 3*int64(l.max) }

// listener wraps ln so that every connection it accepts is admitted.
func (l *connLimits) listener(ln net.Listener) net.Listener {
	return &limitedListener{Listener: ln, l: l}
}

type limitedListener struct {
	net.Listener
	l *connLimits
}

// lateConn is a connection whose client is known only once it has read
// its first bytes: one from a load balancer trusted to open it with a
// PROXY protocol header (proxyConn).
type lateConn interface {
	// late reports whether the client is not known yet.
	late() bool
	// client reads what names the client (within a bound of time) and
	// returns it.
	client() (net.Addr, error)
}

func (ll *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ac := &admittedConn{Conn: c, l: ll.l}
		if tc, ok := c.(*net.TCPConn); ok {
			ac.sock = newSockIO(tc)
		}
		// A connection whose client is not known yet is counted in all
		// now, and against its client by its first use, in its own
		// goroutine: reading the client here would keep every other
		// connection waiting for a silent one.
		var addr net.Addr
		if lc, ok := c.(lateConn); ok && lc.late() {
			ac.lateConn = lc
		} else {
			addr = c.RemoteAddr()
		}
		if !ll.l.admit(ac, addr, ac.lateConn != nil) {
			_ = c.Close()
			continue
		}
		return ac, nil
	}
}

// errClientOverBound ends a connection admitted late whose client is over
// MaxConnsPerClient (MaxForwardConnsPerClient on the forward listener).
var errClientOverBound = errorString("the client has as many connections as it may")

type admittedConn struct {
	net.Conn
	sock     *sockIO // reads and writes Conn when it is a TCP socket; nil: its own Read and Write
	l        *connLimits
	lateConn lateConn // the client is counted at first use; nil: at Accept
	lateOnce sync.Once
	lateErr  error

	// l.mu's
	p        netip.Prefix
	byClient bool // counted against p
	closed   bool
}

// admitLate counts a late connection against its client, once, before
// anything else is done with it; one refused is closed and uncounted at
// once.
func (c *admittedConn) admitLate() error {
	if c.lateConn == nil {
		return nil
	}
	c.lateOnce.Do(func() {
		addr, err := c.lateConn.client()
		switch {
		case err != nil:
			c.lateErr = err
		case !c.l.move(c, addr):
			c.lateErr = errClientOverBound
		default:
			return
		}
		_ = c.Close()
	})
	return c.lateErr
}

func (c *admittedConn) Read(p []byte) (int, error) {
	if err := c.admitLate(); err != nil {
		return 0, err
	}
	if c.sock != nil {
		return c.sock.Read(p)
	}
	return c.Conn.Read(p)
}

func (c *admittedConn) Write(p []byte) (int, error) {
	if err := c.admitLate(); err != nil {
		return 0, err
	}
	if c.sock != nil {
		return c.sock.Write(p)
	}
	return c.Conn.Write(p)
}

// RemoteAddr is the client's address; for a late connection it waits for
// the client to be known.
func (c *admittedConn) RemoteAddr() net.Addr {
	_ = c.admitLate()
	return c.Conn.RemoteAddr()
}

func (c *admittedConn) Close() error {
	err := c.Conn.Close()
	c.l.release(c)
	return err
}

// CloseWrite half-closes the connection when it can (for upgrades).
func (c *admittedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// connState closes a connection that goes idle while the server is
// crowded: the client reconnects when it has something to send.
func (l *connLimits) connState(c net.Conn, s http.ConnState) {
	if s == http.StateIdle && l.crowded() {
		_ = c.Close()
	}
}

// minBodyBytes is the least of a request body that must arrive in each
// Config.BodyWindow, or the read fails and the connection is cut: a
// client sending a byte every few seconds would otherwise hold a
// connection here, and one to the container, for ever.
const minBodyBytes = 1024

// floorBody enforces minBodyBytes per window on a request body: each
// minBodyBytes must arrive within a window of time spent waiting for the
// client. Only the time inside Read counts: while the proxy is not
// reading (the container is slow to take the body, and the Transport
// waits to write it upstream) the client is not late, and no deadline is
// set. Each Read sets the request's read deadline to what is left of the
// window when it starts, and clears it when it returns.
//
// The Transport may still be reading the body (writing it upstream) after
// the handler has returned, when the response came first: from finish on,
// the deadlines are left alone — the ResponseWriter is no longer the
// request's (the handler's recorder goes back to its pool, and the
// connection may carry the next request).
type floorBody struct {
	body   interface{ Read([]byte) (int, error) }
	closer func() error
	rc     *http.ResponseController
	cancel func() // ends the request
	window time.Duration

	// The reading goroutine's.
	got   int           // bytes since the last minBodyBytes
	spent time.Duration // in Read since then

	mu   sync.Mutex
	done bool // the handler returned
}

// finish marks the handler returned; the caller does it before the
// ResponseWriter goes.
func (b *floorBody) finish() {
	b.mu.Lock()
	b.done = true
	b.mu.Unlock()
}

// deadline sets the request's read deadline while the handler runs.
func (b *floorBody) deadline(t time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done {
		_ = b.rc.SetReadDeadline(t)
	}
}

func newFloorBody(w http.ResponseWriter, r *http.Request, window time.Duration, cancel func()) *floorBody {
	return &floorBody{body: r.Body, closer: r.Body.Close, rc: http.NewResponseController(w), window: window, cancel: cancel}
}

func (b *floorBody) Read(p []byte) (int, error) {
	start := time.Now()
	b.deadline(start.Add(b.window - b.spent))
	n, err := b.body.Read(p)
	b.spent += time.Since(start)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// Too slow: the whole request goes, upstream included (a
		// container waiting for the rest of the body would hold it).
		b.cancel()
		return n, err
	}
	// Until the next Read, the client is not waited for. When the body
	// is over (or failed), the connection's reads are net/http's again,
	// which takes a read deadline for a client gone.
	b.deadline(time.Time{})
	if b.got += n; b.got >= minBodyBytes {
		b.got, b.spent = 0, 0
	}
	return n, err
}

func (b *floorBody) Close() error { return b.closer() }

// Describe implements prometheus.Collector.
func (m *connMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- descClientConns
	ch <- descRefusedConns
	ch <- descForwardConns
	ch <- descForwardRefused
	ch <- descResetCuts
	ch <- descProxyRefused
}

// Collect implements prometheus.Collector.
func (m *connMetrics) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descClientConns, prometheus.GaugeValue, float64(m.public.open.Load()))
	ch <- prometheus.MustNewConstMetric(descRefusedConns, prometheus.CounterValue, float64(m.public.refused.Load()))
	ch <- prometheus.MustNewConstMetric(descForwardConns, prometheus.GaugeValue, float64(m.forward.open.Load()))
	ch <- prometheus.MustNewConstMetric(descForwardRefused, prometheus.CounterValue, float64(m.forward.refused.Load()))
	ch <- prometheus.MustNewConstMetric(descResetCuts, prometheus.CounterValue, float64(m.resetCuts.Load()))
	m.proxyRefused.collect(ch)
}

var (
	descResetCuts = prometheus.NewDesc("replproxy_connections_closed_for_resets_total",
		"HTTP/2 client connections closed, below the HTTP/2 server, for sending RST_STREAM faster than the budget (rapid reset).", nil, nil)
	descClientConns  = prometheus.NewDesc("replproxy_client_connections", "Client connections open on the public listeners (HTTP, HTTPS).", nil, nil)
	descRefusedConns = prometheus.NewDesc("replproxy_client_connections_refused_total",
		"Public-listener connections closed at once for being over MaxConns, or MaxConnsPerClient from one /32 (IPv4) or /64 (IPv6).", nil, nil)
	descForwardConns   = prometheus.NewDesc("replproxy_forward_connections", "Connections open on the forward listener (other clusters' proxies).", nil, nil)
	descForwardRefused = prometheus.NewDesc("replproxy_forward_connections_refused_total",
		"Forward-listener connections closed at once for being over MaxForwardConns, or MaxForwardConnsPerClient from one /32 (IPv4) or /64 (IPv6).", nil, nil)
)
