package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"time"
)

// upstream is the proxy's RoundTripper. Requests without a body and
// without an upgrade (most of them) take a lean HTTP/1.1 path: the request
// is written and the response read on the calling goroutine, over pooled
// keep-alive connections, so there is no hand-off to per-connection read
// and write goroutines as in http.Transport. Everything else (bodies,
// upgrades) goes through the tuned http.Transport.
type upstream struct {
	slow        *http.Transport
	dial        func(ctx context.Context, network, addr string) (net.Conn, error)
	headerWait  time.Duration // ResponseHeaderTimeout
	idleTimeout time.Duration
	maxIdle     int // per address

	mu   sync.Mutex
	idle map[string][]*upConn // by host:port, most recently used last
}

type upConn struct {
	conn      net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	reused    bool
}

func newUpstream(cfg *Config) *upstream {
	t := newTransport(cfg)
	return &upstream{
		slow:        t,
		dial:        t.DialContext,
		headerWait:  cfg.ResponseHeaderTimeout,
		idleTimeout: cfg.IdleConnTimeout,
		maxIdle:     cfg.MaxIdleConnsPerHost,
		idle:        make(map[string][]*upConn),
	}
}

// lean reports whether req can take the lean path.
func lean(req *http.Request) bool {
	return (req.Body == nil || req.Body == http.NoBody) && req.URL.Scheme == "http" &&
		req.Method != http.MethodConnect && upgradeType(req.Header) == "" && req.Header.Get("Expect") == ""
}

// replayable requests may be sent again on a fresh connection when a
// pooled one turns out to have been closed by the server.
func replayable(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

func (u *upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	if !lean(req) {
		return u.slow.RoundTrip(req)
	}
	for attempt := 0; ; attempt++ {
		c, err := u.get(req.Context(), req.URL.Host)
		if err != nil {
			return nil, err
		}
		resp, err := u.exchange(c, req)
		if err != nil && c.reused && attempt == 0 && replayable(req) && req.Context().Err() == nil && staleConn(err) {
			continue // the server closed the pooled connection: once more on a new one
		}
		return resp, err
	}
}

// staleConn reports whether err is what a request on a connection the
// server had already closed gets.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, errConnReset)
}

var errConnReset = errors.New("connection reset")

func (u *upstream) get(ctx context.Context, addr string) (*upConn, error) {
	now := time.Now()
	u.mu.Lock()
	for list := u.idle[addr]; len(list) > 0; list = u.idle[addr] {
		c := list[len(list)-1]
		u.idle[addr] = list[:len(list)-1]
		if now.Sub(c.idleSince) < u.idleTimeout {
			u.mu.Unlock()
			c.reused = true
			return c, nil
		}
		c.conn.Close()
	}
	u.mu.Unlock()
	conn, err := u.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &upConn{conn: conn, br: bufio.NewReader(conn), bw: bufio.NewWriter(conn)}, nil
}

func (u *upstream) put(addr string, c *upConn) {
	c.idleSince = time.Now()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.idle[addr]) >= u.maxIdle {
		c.conn.Close()
		return
	}
	u.idle[addr] = append(u.idle[addr], c)
}

// CloseIdleConnections closes every pooled connection.
func (u *upstream) CloseIdleConnections() {
	u.mu.Lock()
	for addr, list := range u.idle {
		for _, c := range list {
			c.conn.Close()
		}
		delete(u.idle, addr)
	}
	u.mu.Unlock()
	u.slow.CloseIdleConnections()
}

// exchange writes req on c and reads the response headers.
func (u *upstream) exchange(c *upConn, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// A cancelled request interrupts the connection's reads and writes.
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*http.Response, error) {
		stop()
		c.conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var ne net.Error
		if errors.As(err, &ne) && !ne.Timeout() && isReset(err) {
			err = errors.Join(errConnReset, err)
		}
		return nil, err
	}
	if err := req.Write(c.bw); err != nil {
		return fail(err)
	}
	if err := c.bw.Flush(); err != nil {
		return fail(err)
	}
	if u.headerWait > 0 {
		_ = c.conn.SetReadDeadline(time.Now().Add(u.headerWait))
	}
	var resp *http.Response
	for {
		var err error
		resp, err = http.ReadResponse(c.br, req)
		if err != nil {
			return fail(err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		// An informational response (103 Early Hints): pass it on the way
		// http.Transport does, then read the final one.
		if trace := httptrace.ContextClientTrace(ctx); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				return fail(err)
			}
		}
	}
	if u.headerWait > 0 {
		_ = c.conn.SetReadDeadline(time.Time{})
	}
	b := &upBody{u: u, c: c, addr: req.URL.Host, body: resp.Body, stop: stop, reuse: !resp.Close && !req.Close}
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
	addr  string
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
// close; else it is closed.
func (b *upBody) finish(complete bool) {
	b.done = true
	if b.stop() && complete && b.reuse {
		b.u.put(b.addr, b.c)
		return
	}
	b.c.conn.Close()
}
