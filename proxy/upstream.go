package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"syscall"
	"time"
)

// upstream is the proxy's RoundTripper. Requests without a body or with a
// small one (most of them, upgrades included) take a lean HTTP/1.1 path:
// the request is written and the response read on the calling goroutine,
// over pooled keep-alive connections (whatever the method), so there is
// no hand-off to per-connection read and write goroutines as in
// http.Transport. Requests
// with a large or unsized body go through the tuned http.Transport.
//
// Every container runs a stranger's code, so the lean path trusts nothing
// it reads: response headers (1xx included) are bounded, 1xx responses are
// counted, a connection goes back to the pool only when its server sent
// exactly one response, and an idle connection is checked for life and
// for stray bytes before it is used again (pool).
type upstream struct {
	slow       *http.Transport
	dial       func(ctx context.Context, network, addr string) (net.Conn, error)
	headerWait time.Duration // ResponseHeaderTimeout
	maxHeader  int64         // MaxResponseHeaderBytes
	pool       *pool
	peers      *peerTransports // nil: forwarding in plaintext
}

// Bounds on what a container may send before its final response headers,
// as http.Transport has them.
const (
	maxResponseHeaderBytes = 1 << 20
	max1xxResponses        = 5
)

func newUpstream(cfg *Config, clusterAt func(addr string) (string, bool)) *upstream {
	t := newTransport(cfg)
	var peers *peerTransports
	if cfg.Peers != nil {
		peers = newPeerTransports(cfg, clusterAt)
	}
	return &upstream{
		peers:      peers,
		slow:       t,
		dial:       t.DialContext,
		headerWait: cfg.ResponseHeaderTimeout,
		maxHeader:  maxResponseHeaderBytes,
		pool:       newPool(cfg.IdleConnTimeout, cfg.MaxIdleConnsPerHost, cfg.MaxIdleConns, time.Now),
	}
}

// leanBody is the largest request body the lean path sends: one the
// kernel's buffers take whole, so that a container answering early (a 413
// before reading the body) is still heard. Larger and unsized bodies go
// through http.Transport, which writes and reads at once.
const leanBody = 64 << 10

// lean reports whether req can take the lean path.
func lean(req *http.Request) bool {
	return (req.Body == nil || req.Body == http.NoBody || req.ContentLength > 0 && req.ContentLength <= leanBody) &&
		req.URL.Scheme == "http" && req.Method != http.MethodConnect && req.Header.Get("Expect") == ""
}

// replayable requests may be sent again when the connection they were
// sent on turns out to have been closed by the server: idempotent methods
// (RFC 9110 §9.2.2), and requests that say they may be.
func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return req.Header.Get("Idempotency-Key") != "" || req.Header.Get("X-Idempotency-Key") != ""
}

func (u *upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	if u.peers != nil && req.URL.Scheme == "https" {
		return u.peers.RoundTrip(req)
	}
	if !lean(req) {
		// http.Transport reuses connections for every method and sends a
		// request that is not replayable again only when nothing of it
		// was written, as the lean path does.
		return u.slow.RoundTrip(req)
	}
	body, err := holdBody(req)
	if err != nil {
		return nil, err
	}
	addr := req.URL.Host
	// Any request, replayable or not, takes a pooled connection that
	// passes the liveness check (pool.get), as with http.Transport: a
	// connection each for POSTs would cost a dial and a TIME_WAIT each
	// and, off loopback, run out of ports at a few hundred a second.
	c, err := u.get(req.Context(), addr)
	if err != nil {
		return nil, err
	}
	resp, err := u.exchange(c, req)
	// The server closed the connection before answering (retryable says
	// which requests may then be sent again). It likely closed its other
	// connections too (a restart): drop them, and try again on a
	// connection of its own. A server shutting down may still accept
	// that one and close it unanswered (net/http does, for a request
	// read after Shutdown began), so a second fresh try is allowed; by
	// then the old listener is gone.
	for retry := 0; retry < maxRetries && u.retryable(c, req, err); retry++ {
		u.pool.dropAddr(addr)
		if c, err = u.dialFresh(req.Context(), addr); err != nil {
			return nil, err
		}
		if body != nil {
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		resp, err = u.exchange(c, req)
	}
	return resp, err
}

// maxRetries is how many times a request is sent again on a fresh
// connection after its connection was found closed (retryable).
const maxRetries = 2

// retryable reports whether req, which failed with err on c, may be sent
// again: c was closed before any of the response arrived, and either req
// is replayable (RFC 9110 §9.2.2) or not a byte of it was written.
//
// Nothing weaker proves that a request the server may not see twice was
// not acted on. A reset does not: it says that the server's socket was
// closed with bytes of the request unread (or that its process aborted
// the connection, SO_LINGER 0), not that it read none of them. A
// container that read the head of a POST, acted on it, and died before
// reading the body resets, and so does one that read the first 4 KiB
// and crashed. That the connection passed the liveness check just
// before the write does not help: it says nothing had arrived from the
// server then (no FIN, no bytes), not what the server did with the
// request afterwards. An end of stream proves no more (net/http's
// server reads a request and closes the connection unanswered when it
// is shutting down). So, as with http.Transport, a request that is not
// replayable is sent once; a server that closes an idle connection at
// the moment it is reused costs that request a 502 (the liveness check
// leaves microseconds for it).
func (u *upstream) retryable(c *upConn, req *http.Request, err error) bool {
	if err == nil || req.Context().Err() != nil {
		return false
	}
	if c.wrote == 0 && c.writeErr != nil {
		return true // the server cannot have read what never left
	}
	return staleConn(err) && c.read == 0 && replayable(req)
}

// holdBody reads a lean request's (small) body, so that it can be sent
// again, and gives req a reader of it.
func holdBody(req *http.Request) ([]byte, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, req.ContentLength+1))
	req.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("read the request body: %w", err)
	}
	if int64(len(body)) != req.ContentLength {
		return nil, fmt.Errorf("request body of %d bytes, Content-Length %d", len(body), req.ContentLength)
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	return body, nil
}

// staleConn reports whether err is what a request on a connection the
// server had already closed gets.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, errConnReset) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

var errConnReset = errors.New("connection reset")

// get returns a live pooled connection to addr, or a new one.
func (u *upstream) get(ctx context.Context, addr string) (*upConn, error) {
	if c := u.pool.get(addr); c != nil {
		return c, nil
	}
	return u.dialFresh(ctx, addr)
}

// dialFresh dials a new connection to addr (waiting for one that
// refuses for a moment: retryRefused).
func (u *upstream) dialFresh(ctx context.Context, addr string) (*upConn, error) {
	conn, err := u.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return newUpConn(conn, addr), nil
}

// newUpConn wraps a new connection to addr.
func newUpConn(conn net.Conn, addr string) *upConn {
	c := &upConn{conn: conn, rw: conn, addr: addr, readLimit: math.MaxInt64}
	if tc, ok := conn.(*net.TCPConn); ok {
		if s := newSockIO(tc); s != nil {
			c.rw = s
		}
	}
	c.br = bufio.NewReader(limitedConn{c})
	c.bw = bufio.NewWriter(countedConn{c})
	// Made once for the connection, not once for each request on it.
	c.interrupt = func() { _ = conn.SetDeadline(time.Unix(1, 0)) }
	c.watch()
	return c
}

// CloseIdleConnections closes every pooled connection.
func (u *upstream) CloseIdleConnections() {
	u.pool.closeAll()
	u.slow.CloseIdleConnections()
	if u.peers != nil {
		u.peers.CloseIdleConnections()
	}
}

// Errors of a container that broke the bounds.
var (
	errHeaderTooLarge = fmt.Errorf("upstream response headers exceed %d bytes (1xx responses included)", maxResponseHeaderBytes)
	errTooMany1xx     = fmt.Errorf("upstream sent more than %d informational (1xx) responses", max1xxResponses)
)

// limitedConn is what a connection's reader reads through: while
// c.readLimit is finite (response headers being read), reading past it is
// errHeaderTooLarge.
type limitedConn struct{ c *upConn }

func (l limitedConn) Read(p []byte) (int, error) {
	c := l.c
	if c.readLimit <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > c.readLimit {
		p = p[:c.readLimit]
	}
	n, err := c.rw.Read(p)
	c.read += int64(n)
	if c.readLimit != math.MaxInt64 {
		c.readLimit -= int64(n)
	}
	return n, err
}

// countedConn is what a connection's writer writes through: it counts
// the bytes of the current request that reached the socket, and keeps
// the first write error (req.Write reports one met while copying the body
// as a body read error, which unwraps to nothing).
type countedConn struct{ c *upConn }

func (w countedConn) Write(p []byte) (int, error) {
	c := w.c
	n, err := c.rw.Write(p)
	c.wrote += int64(n)
	if err != nil && c.writeErr == nil {
		c.writeErr = err
	}
	return n, err
}

// exchange writes req on c and reads the response headers.
func (u *upstream) exchange(c *upConn, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// A cancelled request interrupts the connection's reads and writes.
	stop := context.AfterFunc(ctx, c.interrupt)
	fail := func(err error) (*http.Response, error) {
		stop()
		c.conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if c.writeErr != nil {
			err = c.writeErr // the socket's error, not req.Write's wrapping of it
		}
		var ne net.Error
		if errors.As(err, &ne) && !ne.Timeout() && isReset(err) {
			err = errors.Join(errConnReset, err)
		}
		return nil, err
	}
	c.read, c.wrote, c.writeErr = 0, 0, nil
	if err := req.Write(c.bw); err != nil {
		return fail(err)
	}
	if err := c.bw.Flush(); err != nil {
		return fail(err)
	}
	if u.headerWait > 0 {
		_ = c.conn.SetReadDeadline(time.Now().Add(u.headerWait))
	}
	c.readLimit = u.maxHeader
	var resp *http.Response
	for informational := 0; ; informational++ {
		var err error
		resp, err = http.ReadResponse(c.br, req)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if informational == max1xxResponses {
			return fail(errTooMany1xx)
		}
		// An informational response (103 Early Hints): pass it on the way
		// http.Transport does, then read the final one.
		if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				return fail(err)
			}
		}
	}
	c.readLimit = math.MaxInt64
	if u.headerWait > 0 {
		_ = c.conn.SetReadDeadline(time.Time{})
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		stop()
		resp.Body = &switchedConn{c: c}
		return resp, nil
	}
	b := &upBody{u: u, c: c, body: resp.Body, stop: stop, reuse: !resp.Close && !req.Close}
	if resp.Body == http.NoBody {
		b.finish(true)
		return resp, nil
	}
	resp.Body = b
	return resp, nil
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && (oe.Op == "read" || oe.Op == "write")
}

// upBody returns its connection to the pool once read to the end, and
// closes it when abandoned early.
type upBody struct {
	u     *upstream
	c     *upConn
	body  io.ReadCloser
	stop  func() bool
	reuse bool
	done  bool
}

func (b *upBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *upBody) Close() error {
	if !b.done {
		b.finish(false)
		return b.body.Close()
	}
	return nil
}

// finish ends the exchange: the connection goes back to the pool when the
// body was read whole, no cancellation fired, and neither side asked to
// close (the pool still refuses it when more bytes came than the
// response); else it is closed.
func (b *upBody) finish(complete bool) {
	b.done = true
	if b.stop() && complete && b.reuse {
		b.u.pool.put(b.c)
		return
	}
	b.c.conn.Close()
}

// switchedConn is the body of a 101 response: the connection itself, for
// the upgraded protocol, reading first what the reader holds already.
// It is never pooled.
type switchedConn struct{ c *upConn }

func (s *switchedConn) Read(p []byte) (int, error)  { return s.c.br.Read(p) }
func (s *switchedConn) Write(p []byte) (int, error) { return s.c.rw.Write(p) }
func (s *switchedConn) Close() error                { return s.c.conn.Close() }

// CloseWrite half-closes the connection, when it is TCP: the container
// reads the end of what the client sent and may still answer.
func (s *switchedConn) CloseWrite() error {
	if cw, ok := s.c.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return s.c.conn.Close()
}
