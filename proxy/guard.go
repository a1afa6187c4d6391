package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/acme"
)

// guardListener gives the HTTP server each client connection as a
// guardConn: in the clear, after TLS when tlsConfig is set (the HTTPS
// listener), so that an HTTP/2 client's frames can be counted over TLS
// too. net/http serves such a connection as HTTP/2 when it starts with
// the client preface (Protocols.UnencryptedHTTP2), which over TLS must be
// what ALPN chose, and withTLSState gives its requests Request.TLS.
type guardListener struct {
	net.Listener
	tlsConfig *tls.Config   // nil: no TLS
	handshake time.Duration // the most a TLS handshake may take
	cuts      *atomic.Uint64
	logger    *zap.Logger
	peers     bool // the forward listener over mutual TLS: no reset budget
}

func (gl *guardListener) Accept() (net.Conn, error) {
	c, err := gl.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if gl.tlsConfig == nil {
		return &guardConn{Conn: c, raw: c, cuts: gl.cuts}, nil
	}
	tc := tls.Server(c, gl.tlsConfig)
	return &tlsGuardConn{guardConn: guardConn{Conn: tc, raw: c, cuts: gl.cuts, peer: gl.peers}, tc: tc, handshake: gl.handshake, logger: gl.logger}, nil
}

// guardConn is a client connection as the HTTP server reads and writes
// it. Its first bytes tell an HTTP/2 client (the preface) from an HTTP/1
// one; on HTTP/2 it counts the client's stream resets (resetCounter) and,
// over budget, ends the connection with GOAWAY(ENHANCE_YOUR_CALM),
// written between two of the server's own frames, then a TCP FIN.
type guardConn struct {
	net.Conn          // what the server reads and writes: the TLS conn over raw, or raw
	raw      net.Conn // the client's TCP connection (an admittedConn)
	cuts     *atomic.Uint64
	peer     bool // a cluster's proxy over mutual TLS: its resets are its clients'

	// The reading goroutine's.
	first   [len(h2cSniff)]byte // the first bytes, until there are enough to tell
	nfirst  int
	sniffed bool
	h2      atomic.Bool // the client sent the HTTP/2 preface
	resets  *resetCounter
	reject  func(h2 bool) bool // for TLS: the protocol does not match ALPN's

	// The writing goroutine's, and the cut's.
	wmu    sync.Mutex
	out    frameEdge // the server's frames, on HTTP/2
	cut    bool      // GOAWAY sent (or not sendable): the server's writes are dropped
	closed sync.Once
}

// h2cSniff starts the HTTP/2 client preface, and no HTTP/1 request.
const h2cSniff = "PRI "

// Read passes the client's bytes on; on HTTP/2 it counts the client's
// stream resets and ends the connection over budget.
func (c *guardConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n == 0 {
		return n, err
	}
	if !c.sniffed {
		k := copy(c.first[c.nfirst:], p[:n])
		if c.nfirst += k; c.nfirst < len(c.first) {
			return n, err
		}
		c.sniffed = true
		h2 := string(c.first[:]) == h2cSniff
		if c.reject != nil && c.reject(h2) {
			_ = c.Close()
			return 0, errALPNMismatch
		}
		if h2 && !c.peer {
			c.resets = newResetCounter()
			// The bytes read before these are preface too.
			c.resets.saw(c.first[:len(c.first)-k], time.Now())
			c.h2.Store(true)
		}
	}
	if c.resets != nil && c.resets.saw(p[:n], time.Now()) {
		c.cutForResets()
		return 0, errTooManyResets
	}
	return n, err
}

// Write passes the server's bytes on, noting where its HTTP/2 frames end.
func (c *guardConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.cut {
		return 0, net.ErrClosed
	}
	n, err := c.Conn.Write(p)
	if c.h2.Load() {
		c.out.pass(p[:n], nil)
	}
	return n, err
}

// cutForResets ends a client over its reset budget: GOAWAY when the
// server is between frames (the client learns why, and which streams the
// server may have acted on), then a FIN; what the client still sends is
// read and dropped for a moment, so that the GOAWAY is not lost to a TCP
// reset, and the connection is closed.
func (c *guardConn) cutForResets() {
	c.cuts.Add(1)
	c.wmu.Lock()
	c.cut = true
	if c.out.between() {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Conn.Write(goAwayCalm(c.resets.lastStream)); err == nil {
			if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
		}
	}
	c.wmu.Unlock()
	c.closed.Do(func() {
		go func() {
			_ = c.raw.SetReadDeadline(time.Now().Add(cutLinger))
			_, _ = io.Copy(io.Discard, io.LimitReader(c.raw, 1<<20))
			_ = c.Conn.Close()
		}()
	})
}

// cutLinger is how long a connection cut with GOAWAY is drained before it
// is closed.
const cutLinger = 500 * time.Millisecond

// Close closes the connection (after the drain, when it was cut).
func (c *guardConn) Close() error {
	var err error
	c.closed.Do(func() { err = c.Conn.Close() })
	return err
}

// CloseWrite half-closes the connection when it can (for upgrades).
func (c *guardConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// tlsGuardConn is a guardConn over TLS. Its handshake runs (within the
// handshake timeout) before its first bytes are read; a connection that
// negotiated acme-tls/1 (a TLS-ALPN-01 validation, done once the
// handshake is) is then closed. Its state is Request.TLS of its requests
// (withTLSState): it must not offer net/http a ConnectionState method,
// which would make the server skip its HTTP/2 preface check.
type tlsGuardConn struct {
	guardConn
	tc        *tls.Conn
	handshake time.Duration
	logger    *zap.Logger
	once      sync.Once
	state     *tls.ConnectionState // once the handshake succeeded
}

func (c *tlsGuardConn) handshakeNow() {
	ctx, cancel := context.WithTimeout(context.Background(), c.handshake)
	defer cancel()
	if err := c.tc.HandshakeContext(ctx); err != nil {
		// What net/http answers plain HTTP sent to its TLS port.
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader[:]) {
			_, _ = io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
		}
		c.logger.Debug("TLS handshake failed", zap.Stringer("client", c.raw.RemoteAddr()), zap.Error(err))
		_ = c.raw.Close()
		return
	}
	state := c.tc.ConnectionState()
	c.state = &state
	proto := state.NegotiatedProtocol
	if proto == acme.ALPNProto {
		_ = c.Close()
		return
	}
	// HTTP/2 over TLS is what ALPN chose (RFC 9113 §3.2), and only that.
	c.reject = func(h2 bool) bool { return h2 != (proto == "h2") }
}

// looksLikeHTTP reports whether a TLS record header is the start of an
// HTTP/1 request instead.
func looksLikeHTTP(h []byte) bool {
	switch string(h) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}

// Read makes sure of the handshake (and the protocol check it sets up)
// before the first bytes are read.
func (c *tlsGuardConn) Read(p []byte) (int, error) {
	c.once.Do(c.handshakeNow)
	return c.guardConn.Read(p)
}

// errALPNMismatch ends a TLS connection whose first bytes are not of the
// protocol ALPN chose.
var errALPNMismatch = errorString("the client's first bytes are not of the protocol TLS ALPN chose")

type errorString string

func (e errorString) Error() string { return string(e) }

// withTLSState sets Request.TLS of the requests on a tlsGuardConn, as
// net/http does for its own TLS connections (one state per connection).
func withTLSState(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			if slot, ok := r.Context().Value(connSlotKey{}).(*connSlot); ok {
				if tc, ok := slot.conn.(*tlsGuardConn); ok {
					r.TLS = tc.state
				}
			}
		}
		h.ServeHTTP(w, r)
	})
}
