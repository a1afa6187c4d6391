package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Protocol upgrades (WebSocket). httputil.ReverseProxy makes the upstream
// request and reads the 101 response; then, instead of its own copy loop
// (four goroutines per connection, one of them the handler's deep stack,
// and two 32 KiB buffers), modifyResponse takes the two connections over:
// two shallow goroutines and small buffers that grow only while data
// flows. The handler returns at once, and an idle WebSocket costs little.

// errUpgraded tells upstreamFailed that modifyResponse took the
// connection over: nothing is left to answer.
var errUpgraded = errors.New("protocol switched; connection taken over")

// closedBody replaces a taken-over 101 body, so that ReverseProxy's Close
// of it leaves the connection alone.
type closedBody struct{}

func (closedBody) Read([]byte) (int, error) { return 0, io.EOF }
func (closedBody) Close() error             { return nil }

// upgradeType returns the protocol an Upgrade header asks for, when the
// Connection header names it.
func upgradeType(h http.Header) string {
	for _, v := range h.Values("Connection") {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
				return h.Get("Upgrade")
			}
		}
	}
	return ""
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// takeOver answers the client with the upstream's 101 and joins the two
// connections.
func (h *Handler) takeOver(ex *exchange, resp *http.Response) error {
	reqUp, resUp := upgradeType(resp.Request.Header), upgradeType(resp.Header)
	if !printable(resUp) || !strings.EqualFold(reqUp, resUp) {
		return fmt.Errorf("upstream switched to protocol %q when %q was asked for", resUp, reqUp)
	}
	backend, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		return errors.New("101 response without a writable body")
	}
	client, brw, err := ex.rec.Hijack()
	if err != nil {
		return fmt.Errorf("take over the client connection: %w", err)
	}
	resp.Body = nil // Write sends the status line and headers only
	err = resp.Write(brw)
	if err == nil {
		err = brw.Flush()
	}
	if err != nil {
		client.Close()
		backend.Close()
		resp.Body = closedBody{}
		return fmt.Errorf("write the 101 response: %w", err)
	}
	resp.Body = closedBody{}
	ex.rec.status = http.StatusSwitchingProtocols

	// Bytes the client sent early are in the server's buffer: pass them on.
	var early []byte
	if n := brw.Reader.Buffered(); n > 0 {
		early, _ = brw.Reader.Peek(n)
		early = append([]byte(nil), early...)
	}
	j := &joined{h: h, client: client, backend: backend, id: ex.id, host: resp.Request.Host, replID: ex.replID, start: time.Now()}
	if h.activity != nil && ex.route == routeLocal {
		j.active = true
		h.activity.opened(j.replID)
	}
	toBackend, toClient := io.Writer(backend), io.Writer(client)
	if strings.EqualFold(resUp, "websocket") {
		// Followed frame by frame, to close it cleanly at a drain's end.
		j.wsUp, j.wsDown = newWSDirection(backend, true), newWSDirection(client, false)
		toBackend, toClient = j.wsUp, j.wsDown
		if tc, ok := client.(*trackedConn); ok {
			tc.setJoined(j)
		}
	}
	j.running.Store(2)
	j.touch()
	j.idle = time.AfterFunc(h.cfg.UpgradeIdleTimeout, j.checkIdle)
	go j.copy(toBackend, client, early, &j.up)
	go j.copy(toClient, backend, nil, &j.down)
	return errUpgraded
}

// joined is a pair of connections copying to each other.
type joined struct {
	h               *Handler
	client, backend io.ReadWriteCloser
	id, host        string
	replID          string
	active          bool // counted open in the handler's activity
	start           time.Time
	up, down        atomic.Int64 // bytes client→upstream, upstream→client
	running         atomic.Int32
	last            atomic.Int64 // unix nanoseconds of the last bytes either way
	idle            *time.Timer  // closes both when nothing passes for UpgradeIdleTimeout
	closeOnce       sync.Once
	wsUp, wsDown    *wsDirection // a WebSocket's directions (wsclose.go); nil for other upgrades
}

// copy copies src to dst. When src ends cleanly (the peer half-closed) it
// half-closes dst and leaves the other direction running, as TCP does;
// when src fails, or dst cannot be half-closed, it closes both. When both
// directions have ended, the last one out closes both and logs the
// connection.
func (j *joined) copy(dst io.Writer, src io.Reader, early []byte, count *atomic.Int64) {
	if len(early) > 0 {
		n, _ := dst.Write(early)
		count.Add(int64(n))
	}
	err := j.h.pipe(dst, src, count, j.touch)
	switch cw, ok := dst.(interface{ CloseWrite() error }); {
	case errors.Is(err, errGoneAway):
		// The proxy closed this direction with a close frame: the peer
		// answers with its own and hangs up, which ends the other one.
	case err != nil || !ok || cw.CloseWrite() != nil:
		j.close()
	}
	if j.running.Add(-1) > 0 {
		return
	}
	j.close()
	if ce := j.h.logger.Check(zapcore.InfoLevel, "upgraded connection closed"); ce != nil && j.h.cfg.AccessLog {
		ce.Write(zap.String("host", j.host), zap.String("repl_id", j.replID), zap.String("request_id", j.id),
			zap.Int64("bytes_up", j.up.Load()), zap.Int64("bytes_down", j.down.Load()),
			zap.Duration("duration", time.Since(j.start)))
	}
}

// touch records that bytes passed.
func (j *joined) touch() { j.last.Store(time.Now().UnixNano()) }

// checkIdle closes both connections when nothing passed for
// UpgradeIdleTimeout, and otherwise looks again when it would be.
func (j *joined) checkIdle() {
	quiet := time.Since(time.Unix(0, j.last.Load()))
	if left := j.h.cfg.UpgradeIdleTimeout - quiet; left > 0 {
		j.idle.Reset(left)
		return
	}
	j.close()
}

// close closes both connections, once.
func (j *joined) close() {
	j.closeOnce.Do(func() {
		j.idle.Stop()
		_ = j.client.Close()
		_ = j.backend.Close()
		if j.active {
			j.h.activity.closed(j.replID, time.Now())
		}
	})
}

// smallCopy is the buffer an idle direction holds.
const smallCopy = 512

// pipe copies with a small buffer, and borrows a pooled 32 KiB one while
// reads keep filling the small one (a bulk transfer).
func (h *Handler) pipe(dst io.Writer, src io.Reader, count *atomic.Int64, touch func()) error {
	small := make([]byte, smallCopy)
	var big []byte
	defer func() {
		if big != nil {
			h.buffers.Put(big)
		}
	}()
	for {
		buf := small
		if big != nil {
			buf = big
		}
		n, err := src.Read(buf)
		if n > 0 {
			touch()
			w, werr := dst.Write(buf[:n])
			count.Add(int64(w))
			if werr != nil {
				return werr
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		switch {
		case big == nil && n == len(small):
			big = h.buffers.Get()
		case big != nil && n < len(big)/2:
			h.buffers.Put(big)
			big = nil
		}
	}
}

// UpgradedConns returns the number of open upgraded (WebSocket)
// connections.
func (h *Handler) UpgradedConns() int { return h.upgrades.Len() }

// DrainUpgraded waits until every upgraded connection has closed or ctx is
// nearly done, then closes those still open and returns how many it
// closed: http.Server.Shutdown does not wait for hijacked connections. A
// WebSocket gets close frames (status 1001, going away) both ways, from a
// second before ctx's deadline (or halfway through what is left, when
// that is shorter), and is closed when its peers have answered.
func (h *Handler) DrainUpgraded(ctx context.Context) int {
	goAwayCtx := ctx
	var grace time.Duration
	if dl, ok := ctx.Deadline(); ok {
		grace = min(time.Second, time.Until(dl)/2)
		var cancel context.CancelFunc
		goAwayCtx, cancel = context.WithDeadline(ctx, dl.Add(-grace))
		defer cancel()
	}
	for h.upgrades.Len() > 0 {
		select {
		case <-goAwayCtx.Done():
		case <-time.After(50 * time.Millisecond):
			continue
		}
		break
	}
	n := h.upgrades.Len()
	if n > 0 {
		h.upgrades.goAway(grace)
		h.upgrades.closeAll()
	}
	return n
}

// upgrades tracks the connections handed over to protocol upgrades
// (WebSocket): http.Server.Shutdown does not wait for them.
type upgrades struct {
	mu       sync.Mutex
	conns    map[*trackedConn]struct{}
	onChange func(delta int)
}

func newUpgrades(onChange func(delta int)) *upgrades {
	return &upgrades{conns: make(map[*trackedConn]struct{}), onChange: onChange}
}

func (u *upgrades) track(c net.Conn) net.Conn {
	tc := &trackedConn{Conn: c, u: u}
	u.mu.Lock()
	u.conns[tc] = struct{}{}
	u.mu.Unlock()
	if u.onChange != nil {
		u.onChange(1)
	}
	return tc
}

func (u *upgrades) done(tc *trackedConn) {
	u.mu.Lock()
	_, ok := u.conns[tc]
	delete(u.conns, tc)
	u.mu.Unlock()
	if ok && u.onChange != nil {
		u.onChange(-1)
	}
}

// Len returns the number of open upgraded connections.
func (u *upgrades) Len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.conns)
}

// goAway closes the WebSockets among the upgraded connections with close
// frames, waiting up to wait for their peers (wsclose.go).
func (u *upgrades) goAway(wait time.Duration) {
	u.mu.Lock()
	var js []*joined
	for tc := range u.conns {
		if j := tc.getJoined(); j != nil {
			js = append(js, j)
		}
	}
	u.mu.Unlock()
	var wg sync.WaitGroup
	for _, j := range js {
		wg.Go(func() { j.goAway(wait) })
	}
	wg.Wait()
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

	mu     sync.Mutex
	joined *joined // a WebSocket's pair, for goAway
}

func (tc *trackedConn) setJoined(j *joined) {
	tc.mu.Lock()
	tc.joined = j
	tc.mu.Unlock()
}

func (tc *trackedConn) getJoined() *joined {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.joined
}

// CloseWrite half-closes the client connection when it can (TCP, TLS).
func (tc *trackedConn) CloseWrite() error {
	if cw, ok := tc.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (tc *trackedConn) Close() error {
	err := tc.Conn.Close()
	tc.once.Do(func() { tc.u.done(tc) })
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
