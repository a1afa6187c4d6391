package proxy

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"sync"
)

// recorder wraps the client's ResponseWriter to learn the status and the
// bytes written, and to track hijacked (upgraded) connections. It passes
// flushes and hijacks through, and Unwrap lets http.ResponseController
// reach the rest.
type recorder struct {
	http.ResponseWriter
	status   int
	bytes    int64
	upgrades *upgrades
}

var recorderPool = sync.Pool{New: func() any { return new(recorder) }}

func newRecorder(w http.ResponseWriter, u *upgrades) *recorder {
	rec := recorderPool.Get().(*recorder)
	*rec = recorder{ResponseWriter: w, upgrades: u}
	return rec
}

func (rec *recorder) release() {
	*rec = recorder{}
	recorderPool.Put(rec)
}

func (rec *recorder) WriteHeader(code int) {
	if rec.status == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		rec.status = code
	}
	rec.ResponseWriter.WriteHeader(code)
}

func (rec *recorder) Write(b []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	n, err := rec.ResponseWriter.Write(b)
	rec.bytes += int64(n)
	return n, err
}

func (rec *recorder) Flush() {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	_ = http.NewResponseController(rec.ResponseWriter).Flush()
}

// Hijack hands the connection over (a protocol upgrade) and tracks it
// until it is closed, so shutdown can wait for it and metrics count it.
func (rec *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(rec.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	return rec.upgrades.track(conn), brw, nil
}

func (rec *recorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }

// upgrades tracks the connections handed over to protocol upgrades
// (WebSocket): http.Server.Shutdown does not wait for them.
type upgrades struct {
	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	onOpen func(delta int)
}

func newUpgrades(onChange func(delta int)) *upgrades {
	return &upgrades{conns: make(map[*trackedConn]struct{}), onOpen: onChange}
}

func (u *upgrades) track(c net.Conn) net.Conn {
	tc := &trackedConn{Conn: c, u: u}
	u.mu.Lock()
	u.conns[tc] = struct{}{}
	u.mu.Unlock()
	if u.onOpen != nil {
		u.onOpen(1)
	}
	return tc
}

func (u *upgrades) done(tc *trackedConn) {
	u.mu.Lock()
	_, ok := u.conns[tc]
	delete(u.conns, tc)
	u.mu.Unlock()
	if ok && u.onOpen != nil {
		u.onOpen(-1)
	}
}

// Len returns the number of open upgraded connections.
func (u *upgrades) Len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.conns)
}

// closeAll closes every upgraded connection (at the end of a drain).
func (u *upgrades) closeAll() {
	u.mu.Lock()
	conns := make([]*trackedConn, 0, len(u.conns))
	for tc := range u.conns {
		conns = append(conns, tc)
	}
	u.mu.Unlock()
	for _, tc := range conns {
		_ = tc.Close()
	}
}

type trackedConn struct {
	net.Conn
	u    *upgrades
	once sync.Once
}

func (tc *trackedConn) Close() error {
	err := tc.Conn.Close()
	tc.once.Do(func() { tc.u.done(tc) })
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
