package proxy

import (
	"bufio"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pool holds the lean path's idle upstream connections: per address the
// most recently used is handed out first (it is the likeliest to be
// alive), across all addresses the least recently used is closed first
// when the pool is full, and a timer closes those idle longer than
// idleTimeout, so that connections to containers nobody asks for any more
// do not stay open. Every connection is checked for life (and for bytes
// its server should not have sent) before it is handed out again.
type pool struct {
	idleTimeout time.Duration
	maxPerHost  int
	maxTotal    int
	now         func() time.Time

	mu     sync.Mutex
	byAddr map[string]*idleList // no empty lists: a key goes with its last connection
	all    idleList             // every idle connection, least recently used first
	total  int
	reaper *time.Timer // armed while the pool is not empty
}

// idleList is an intrusive doubly linked list of idle connections; a
// connection is on two of them at once (its address's, and the pool's),
// through the links at returns.
type idleList struct {
	head, tail *upConn
	n          int
	at         func(*upConn) *links
}

// links are a connection's place in one idleList.
type links struct{ prev, next *upConn }

func byAddr(c *upConn) *links { return &c.inAddr }
func inAll(c *upConn) *links  { return &c.inAll }

type upConn struct {
	conn      net.Conn
	rw        io.ReadWriter // conn's reads and writes: a sockIO when it is a TCP socket, else conn
	br        *bufio.Reader
	bw        *bufio.Writer
	addr      string
	idleSince time.Time
	readLimit int64 // bytes br may still read; math.MaxInt64 outside headers

	read     int64 // bytes of the current response read: a failure before any may be retried
	wrote    int64 // bytes of the current request written to the socket
	writeErr error // the first write error of the current request

	// interrupt ends the connection's pending reads and writes (a
	// deadline in the past): what a cancelled request does to it.
	interrupt func()

	// For quiet: the socket, and what its peek needs without allocating.
	raw     syscall.RawConn
	peekFn  func(fd uintptr) bool
	peekBuf [1]byte
	fit     bool

	// Its places in the address's list and in the pool's list.
	inAddr, inAll links
}

// newPool returns an empty pool; maxPerHost and maxTotal are at least 1.
func newPool(idleTimeout time.Duration, maxPerHost, maxTotal int, now func() time.Time) *pool {
	maxPerHost, maxTotal = max(maxPerHost, 1), max(maxTotal, 1)
	return &pool{idleTimeout: idleTimeout, maxPerHost: maxPerHost, maxTotal: maxTotal, now: now,
		byAddr: make(map[string]*idleList), all: idleList{at: inAll}}
}

// get returns a live idle connection to addr, or nil. Connections found
// expired, closed by their server, or holding bytes nobody asked for are
// closed on the way.
func (p *pool) get(addr string) *upConn {
	now := p.now()
	for {
		p.mu.Lock()
		l := p.byAddr[addr]
		if l == nil {
			p.mu.Unlock()
			return nil
		}
		c := l.tail
		p.removeLocked(c)
		p.mu.Unlock()
		if now.Sub(c.idleSince) < p.idleTimeout && quiet(c) {
			return c
		}
		c.conn.Close()
	}
}

// put returns c to the pool, or closes it when the pool cannot take it:
// it holds bytes beyond the response it carried, or its address has
// maxPerHost idle already. When the pool is full
// the least recently used connection of any address makes room.
func (p *pool) put(c *upConn) {
	if c.br.Buffered() > 0 {
		c.conn.Close() // the server sent more than the response: never reuse
		return
	}
	c.idleSince = p.now()
	p.mu.Lock()
	l := p.byAddr[c.addr]
	if l != nil && l.n >= p.maxPerHost {
		p.mu.Unlock()
		c.conn.Close()
		return
	}
	var evicted *upConn
	if p.total >= p.maxTotal {
		evicted = p.all.head
		p.removeLocked(evicted)
		l = p.byAddr[c.addr] // removing may have dropped the list
	}
	if l == nil {
		l = &idleList{at: byAddr}
		p.byAddr[c.addr] = l
	}
	l.pushBack(c)
	p.all.pushBack(c)
	p.total++
	if p.reaper == nil {
		p.reaper = time.AfterFunc(p.idleTimeout, p.reap)
	}
	p.mu.Unlock()
	if evicted != nil {
		evicted.conn.Close()
	}
}

// removeLocked takes c off both lists, dropping its address's list when it
// was the last.
func (p *pool) removeLocked(c *upConn) {
	l := p.byAddr[c.addr]
	l.remove(c)
	if l.n == 0 {
		delete(p.byAddr, c.addr)
	}
	p.all.remove(c)
	p.total--
}

// reap closes the connections idle for idleTimeout or longer, and arms
// the timer again for the oldest one left.
func (p *pool) reap() {
	now := p.now()
	var expired []*upConn
	p.mu.Lock()
	for c := p.all.head; c != nil && now.Sub(c.idleSince) >= p.idleTimeout; c = p.all.head {
		p.removeLocked(c)
		expired = append(expired, c)
	}
	p.reaper = nil
	if oldest := p.all.head; oldest != nil {
		p.reaper = time.AfterFunc(p.idleTimeout-now.Sub(oldest.idleSince), p.reap)
	}
	p.mu.Unlock()
	for _, c := range expired {
		c.conn.Close()
	}
}

// dropAddr closes every idle connection to addr: one of them was found
// dead, so its server has likely gone and taken the others with it.
func (p *pool) dropAddr(addr string) {
	var dead []*upConn
	p.mu.Lock()
	for l := p.byAddr[addr]; l != nil; l = p.byAddr[addr] {
		c := l.head
		p.removeLocked(c)
		dead = append(dead, c)
	}
	p.mu.Unlock()
	for _, c := range dead {
		c.conn.Close()
	}
}

// closeAll closes every idle connection.
func (p *pool) closeAll() {
	p.mu.Lock()
	var all []*upConn
	for c := p.all.head; c != nil; c = p.all.head {
		p.removeLocked(c)
		all = append(all, c)
	}
	if p.reaper != nil {
		p.reaper.Stop()
		p.reaper = nil
	}
	p.mu.Unlock()
	for _, c := range all {
		c.conn.Close()
	}
}

// idle returns how many connections are idle in all, and for how many
// addresses.
func (p *pool) idle() (conns, addrs int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total, len(p.byAddr)
}

func (l *idleList) pushBack(c *upConn) {
	at := l.at(c)
	at.prev, at.next = l.tail, nil
	if l.tail != nil {
		l.at(l.tail).next = c
	} else {
		l.head = c
	}
	l.tail = c
	l.n++
}

func (l *idleList) remove(c *upConn) {
	at := l.at(c)
	if at.prev != nil {
		l.at(at.prev).next = at.next
	} else {
		l.head = at.next
	}
	if at.next != nil {
		l.at(at.next).prev = at.prev
	} else {
		l.tail = at.prev
	}
	at.prev, at.next = nil, nil
	l.n--
}

// quiet reports whether an idle connection is fit for another request:
// still open, and with nothing to read (a server sends nothing unasked on
// an idle HTTP/1.1 connection; bytes there are an extra response or the
// end of the connection). It peeks without blocking: one recvfrom(2), and
// no allocation.
func quiet(c *upConn) bool {
	if c.raw == nil {
		return true // not a socket (tests): the exchange finds out
	}
	c.fit = false
	return c.raw.Read(c.peekFn) == nil && c.fit
}

// peek is quiet's look at the socket; it never waits for it.
func (c *upConn) peek(fd uintptr) bool {
	for {
		// recvfrom(2) without a source address: unix.Recvfrom would
		// allocate one for each call. It never waits (MSG_DONTWAIT), so
		// it needs none of the scheduler's system-call bookkeeping
		// (sockIO says what that costs).
		_, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.peekBuf[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		// EAGAIN: open, and nothing to read. Anything else: bytes nobody
		// asked for (n > 0), the end of the connection (n == 0), or an
		// error.
		c.fit = errno == unix.EAGAIN
		return true
	}
}

// watch prepares quiet for c's connection.
func (c *upConn) watch() {
	if sc, ok := c.conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			c.raw, c.peekFn = raw, c.peek
		}
	}
}
