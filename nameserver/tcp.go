package nameserver

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/internal/ratelog"
)

// tcpServer answers DNS over TCP (RFC 7766) with a Handler: one goroutine
// per connection reads length-prefixed queries (RFC 1035, 4.2.2) and writes
// each reply, in order, with its length in one write.
//
// No client, and no crowd of them, can hold every connection for long:
//
//   - a client (an IPv4 address, an IPv6 /64) has at most MaxTCPPerClient
//     connections open; one more is closed as soon as it is accepted;
//   - from 90% of MaxTCPConns, each new connection closes the one idle the
//     longest (idle: waiting for the first octet of its next query; never
//     one reading a query or writing a reply). At MaxTCPConns with none
//     idle, the new one is closed at once. Nothing waits in the accept
//     queue for a slot;
//   - the idle timeout shrinks with load, from TCPIdleTimeout below half
//     of MaxTCPConns to 1 s at it (as NSD does), and no connection lives
//     longer than TCPMaxLifetime, however often it asks: queries do not
//     keep a connection open for ever;
//   - a query must arrive whole, and its reply be taken, within
//     TCPMessageTimeout once its first octet came (slow loris).
type tcpServer struct {
	cfg    ServerConfig
	h      *Handler
	m      *Metrics
	ln     net.Listener
	ctx    context.Context // for respond: never canceled
	logger *zap.Logger
	warns  *ratelog.Limiter // accept errors: one line a second

	highWater int   // from this many open, a new connection sheds the longest idle
	maxLive   int64 // connection goroutines, shed ones still ending included
	live      atomic.Int64

	mu       sync.Mutex
	open     int
	byClient map[netip.Prefix]int
	conns    map[*tcpConn]struct{}
	idle     idleList
	closing  bool

	wg sync.WaitGroup // the connections' goroutines
}

// tcpConn is one admitted connection.
type tcpConn struct {
	c      net.Conn
	client netip.Addr
	net    netip.Prefix // what MaxTCPPerClient counts
	end    time.Time    // born + TCPMaxLifetime

	// Guarded by tcpServer.mu.
	idle       bool // in the idle list
	began      bool // its first query began
	gone       bool // released: shed, or closed by the shutdown
	prev, next *tcpConn
}

func newTCPServer(ctx context.Context, cfg ServerConfig, h *Handler, ln net.Listener, logger *zap.Logger) *tcpServer {
	return &tcpServer{
		cfg:       cfg,
		h:         h,
		m:         h.metrics,
		ln:        ln,
		ctx:       context.WithoutCancel(ctx),
		logger:    logger,
		warns:     ratelog.New(time.Second),
		highWater: max(1, cfg.MaxTCPConns-cfg.MaxTCPConns/10),
		maxLive:   int64(cfg.MaxTCPConns + cfg.MaxTCPConns/10 + 1),
		byClient:  make(map[netip.Prefix]int),
		conns:     make(map[*tcpConn]struct{}),
	}
}

// serve accepts connections until the listener is closed. It returns nil
// then, or the error that stopped it.
func (t *tcpServer) serve() error {
	var backoff time.Duration
	for {
		// A shed connection's goroutine ends as soon as it runs: let those
		// run before taking more, or a burst of connections (each shedding
		// one whose goroutine has not run yet) starts goroutines faster
		// than they end, up to the accept queue's length.
		for i := 0; t.live.Load() > t.maxLive; i++ {
			if i < 100 {
				runtime.Gosched()
			} else {
				time.Sleep(time.Millisecond)
			}
		}
		nc, err := t.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !acceptRetry(err) {
				return err
			}
			// Out of descriptors or memory: wait, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if ok, held := t.warns.Allow(time.Now()); ok {
				t.logger.Warn("tcp accept failed; retrying (logged at most once a second)",
					zap.Error(err), zap.Duration("backoff", backoff), zap.Int64("suppressed", held))
			}
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		t.admit(nc)
	}
}

// acceptRetry reports whether an accept error passes (resources short, or
// a connection gone before it was accepted).
func acceptRetry(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM,
		syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO, syscall.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// clientNet is the network a client's connections are counted in: its
// IPv4 address, or its IPv6 /64.
func clientNet(ip netip.Addr) netip.Prefix {
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// admit counts a new connection against the bounds and starts its
// goroutine, or closes it.
func (t *tcpServer) admit(nc net.Conn) {
	var client netip.Addr
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		client = a.AddrPort().Addr().Unmap()
	}
	c := &tcpConn{c: nc, client: client, net: clientNet(client), end: time.Now().Add(t.cfg.TCPMaxLifetime)}

	t.mu.Lock()
	var shed *tcpConn
	switch {
	case t.closing:
		t.mu.Unlock()
		_ = nc.Close()
		return
	case t.byClient[c.net] >= t.cfg.MaxTCPPerClient:
		t.mu.Unlock()
		t.m.tcpRefuse(refusedPerClient)
		_ = nc.Close()
		return
	case t.open >= t.highWater:
		if shed = t.idle.head; shed != nil {
			t.releaseLocked(shed)
		} else if t.open >= t.cfg.MaxTCPConns {
			t.mu.Unlock()
			t.m.tcpRefuse(refusedFull)
			_ = nc.Close()
			return
		}
	}
	t.open++
	t.byClient[c.net]++
	t.conns[c] = struct{}{}
	// Waiting for its first query: idle, and so the last to be shed.
	t.idle.pushBack(c)
	t.m.tcpConns(t.open)
	t.wg.Add(1)
	t.live.Add(1)
	t.mu.Unlock()

	if shed != nil {
		t.m.tcpClose(closedShed)
		_ = shed.c.Close()
	}
	t.m.tcpAccept()
	go t.handle(c)
}

// releaseLocked takes c out of the counts; its goroutine, woken by the
// close that follows, finds it gone and counts nothing more.
func (t *tcpServer) releaseLocked(c *tcpConn) {
	if c.gone {
		return
	}
	c.gone = true
	if c.idle {
		t.idle.remove(c)
	}
	delete(t.conns, c)
	t.open--
	if t.byClient[c.net]--; t.byClient[c.net] <= 0 {
		delete(t.byClient, c.net)
	}
	t.m.tcpConns(t.open)
}

// idleTimeout is how long a connection may wait for its next query with
// open connections open: TCPIdleTimeout up to half of MaxTCPConns, then
// less in proportion, down to 1 s (or TCPIdleTimeout when shorter) at
// MaxTCPConns.
func (t *tcpServer) idleTimeout(open int) time.Duration {
	full, most := t.cfg.TCPIdleTimeout, t.cfg.MaxTCPConns
	half := most / 2
	floor := min(full, time.Second)
	if open <= half || most <= half {
		return full
	}
	if open >= most {
		return floor
	}
	return full - time.Duration(float64(full-floor)*float64(open-half)/float64(most-half))
}

// goIdle puts c in the idle list (where it stays if already there), and
// returns when it must hear from the client by; false when c was released,
// or when the server is shutting down and c has had a query.
func (t *tcpServer) goIdle(c *tcpConn) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case c.gone, t.closing && c.began:
		return time.Time{}, false
	case t.closing: // its first query: see shutdown
		return time.Now().Add(t.cfg.TCPMessageTimeout), true
	}
	if !c.idle {
		t.idle.pushBack(c)
	}
	d := time.Now().Add(t.idleTimeout(t.open))
	if c.end.Before(d) {
		d = c.end
	}
	return d, true
}

// goBusy takes c out of the idle list once its client's query began (or
// its read failed); false when c was released meanwhile (shed, or closed
// by the shutdown).
func (t *tcpServer) goBusy(c *tcpConn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c.gone {
		return false
	}
	if c.idle {
		t.idle.remove(c)
	}
	c.began = true
	return true
}

// handle serves one connection until it is closed, and counts why.
func (t *tcpServer) handle(c *tcpConn) {
	defer t.wg.Done()
	defer t.live.Add(-1)
	why := t.converse(c)
	t.mu.Lock()
	counted := c.gone
	t.releaseLocked(c)
	t.mu.Unlock()
	_ = c.c.Close()
	if !counted {
		t.m.tcpClose(why)
	}
}

// converse answers c's queries in order until one of the bounds, the
// client or an error closes it, and returns why. It holds a scratch only
// while a query is in hand: an idle connection costs its reader's 512
// octets and its goroutine.
func (t *tcpServer) converse(c *tcpConn) tcpClose {
	br := bufio.NewReaderSize(c.c, 512)
	var sc *scratch
	defer func() {
		if sc != nil {
			t.h.scratch.Put(sc)
		}
	}()
	for {
		if br.Buffered() == 0 {
			// Nothing pipelined: wait for the next query.
			if sc != nil {
				t.h.scratch.Put(sc)
				sc = nil
			}
			deadline, ok := t.goIdle(c)
			if !ok {
				return closedShutdown
			}
			_ = c.c.SetReadDeadline(deadline)
			_, err := br.Peek(1)
			if !t.goBusy(c) {
				return closedShed // counted by whoever released it
			}
			if err != nil {
				switch {
				case errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(c.end):
					return closedLifetime
				case errors.Is(err, os.ErrDeadlineExceeded):
					return closedIdle
				}
				return closeReason(err)
			}
		}

		// A query began: all of it within TCPMessageTimeout.
		if sc == nil {
			sc = t.h.scratch.Get().(*scratch)
		}
		_ = c.c.SetReadDeadline(time.Now().Add(t.cfg.TCPMessageTimeout))
		var hdr [2]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return closeReason(err)
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		if n == 0 {
			return closedError
		}
		if cap(sc.req) < n {
			sc.req = make([]byte, n)
		}
		msg := sc.req[:n]
		if _, err := io.ReadFull(br, msg); err != nil {
			return closeReason(err)
		}

		if out := t.h.respond(t.ctx, sc, msg, c.client, true); out != nil && len(out) <= 0xFFFF {
			// The length and the reply in one write (RFC 7766, 8).
			sc.wire = append(binary.BigEndian.AppendUint16(sc.wire[:0], uint16(len(out))), out...)
			_ = c.c.SetWriteDeadline(time.Now().Add(t.cfg.TCPMessageTimeout))
			if _, err := c.c.Write(sc.wire); err != nil {
				return closeReason(err)
			}
		}
		if !time.Now().Before(c.end) {
			return closedLifetime
		}
	}
}

// closeReason classes a read or write error: a deadline is a client too
// slow, an end of file or a reset the client's own close.
func closeReason(err error) tcpClose {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return closedSlow
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return closedClient
	}
	return closedError
}

// shutdown stops accepting (the caller closed the listener and waited for
// serve), closes the idle connections at once and lets the others finish
// the query in hand until ctx is done, then closes them too; it returns
// when every connection's goroutine has. A connection accepted but whose
// first query has not begun is not idle but new: its client is sending
// (after a handover, to the old process's last accepted connections), and
// it gets TCPMessageTimeout for that query, answered, then closed.
func (t *tcpServer) shutdown(ctx context.Context) {
	t.mu.Lock()
	t.closing = true
	var idle, fresh []*tcpConn
	for c := t.idle.head; c != nil; c = c.next {
		if c.began {
			idle = append(idle, c)
		} else {
			fresh = append(fresh, c)
		}
	}
	for _, c := range idle {
		t.releaseLocked(c)
	}
	t.mu.Unlock()
	for _, c := range fresh {
		_ = c.c.SetReadDeadline(time.Now().Add(t.cfg.TCPMessageTimeout))
	}
	for _, c := range idle {
		t.m.tcpClose(closedShutdown)
		_ = c.c.Close()
	}

	done := make(chan struct{})
	go func() {
		t.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	t.mu.Lock()
	var rest []*tcpConn
	for c := range t.conns {
		rest = append(rest, c)
	}
	for _, c := range rest {
		t.releaseLocked(c)
	}
	t.mu.Unlock()
	if len(rest) > 0 {
		t.logger.Warn("tcp connections still busy at the end of the shutdown timeout; closed", zap.Int("connections", len(rest)))
	}
	for _, c := range rest {
		t.m.tcpClose(closedShutdown)
		_ = c.c.Close()
	}
	<-done
}

// counts returns the connections open and idle (for tests).
func (t *tcpServer) counts() (open, idle int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open, t.idle.n
}

// idleList is the idle connections, the longest idle first, linked
// through the connections (no allocation per query).
type idleList struct {
	head, tail *tcpConn
	n          int
}

func (l *idleList) pushBack(c *tcpConn) {
	c.prev, c.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = c
	} else {
		l.head = c
	}
	l.tail = c
	c.idle = true
	l.n++
}

func (l *idleList) remove(c *tcpConn) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.tail = c.prev
	}
	c.prev, c.next = nil, nil
	c.idle = false
	l.n--
}
