package nameserver

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
)

// tcpFixture is a server of the test world on 127.0.0.1 with its
// metrics, for the TCP tests.
type tcpFixture struct {
	addr string
	srv  *Server
	m    *Metrics
	stop func() error // shuts the server down (once) and returns Serve's error
}

// startTCP serves the test world with cfg (its address and UDP sockets
// set here) until the test ends or stop is called.
func startTCP(t *testing.T, cfg ServerConfig) *tcpFixture {
	t.Helper()
	c := startClusters(t, defaultWorld(t), ClustersConfig{})
	hcfg := testConfig()
	hcfg.QueryLogEvery = 0
	m := NewMetrics(prometheus.NewRegistry())
	h, err := NewHandler(hcfg, c, m, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr, cfg.UDPSockets, cfg.UDPReaders = "127.0.0.1:0", 1, 2
	srv, err := NewServer(cfg, h, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Listen(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var (
		once    sync.Once
		serveEr error
	)
	stop := func() error {
		once.Do(func() {
			cancel()
			serveEr = <-done
		})
		return serveEr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitFor(t, 5*time.Second, "server answering", srv.Serving)
	return &tcpFixture{addr: srv.Addr().String(), srv: srv, m: m, stop: stop}
}

// counts returns the TCP connections the server has open, and how many
// of them are idle.
func (f *tcpFixture) counts() (open, idle int) {
	f.srv.mu.Lock()
	ts := f.srv.tcpSrv
	f.srv.mu.Unlock()
	return ts.counts()
}

func (f *tcpFixture) closed(r tcpClose) int    { return int(testutil.ToFloat64(f.m.tcpClosed[r])) }
func (f *tcpFixture) refused(r tcpRefusal) int { return int(testutil.ToFloat64(f.m.tcpRefused[r])) }
func (f *tcpFixture) accepted() int            { return int(testutil.ToFloat64(f.m.tcpAccepted)) }

// dialFrom opens a TCP connection to addr from the loopback address src
// (127.0.0.0/8 is all loopback on Linux), closed when the test ends.
func dialFrom(t testing.TB, addr, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// tcpExchangeFrom asks name's A records over TCP with miekg/dns's client,
// from the loopback address src.
func tcpExchangeFrom(src, addr, name string) (*dns.Msg, error) {
	client := &dns.Client{Net: "tcp", Timeout: 5 * time.Second,
		Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, _, err := client.Exchange(m, addr)
	return r, err
}

// tcpQuery is a query for name's A records, with its length prefix.
func tcpQuery(t testing.TB, name string, id uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = id
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(wire))), wire...)
}

// readReply reads one length-prefixed message from c (5 s at most).
func readReply(c net.Conn) (*dns.Msg, error) {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(c, buf); err != nil {
		return nil, err
	}
	r := new(dns.Msg)
	return r, r.Unpack(buf)
}

// tcpAsk asks blog.alice over c and wants its answer.
func tcpAsk(t testing.TB, c net.Conn, what string) {
	t.Helper()
	id := dns.Id()
	if _, err := c.Write(tcpQuery(t, "blog.alice.repl.test.", id)); err != nil {
		t.Fatalf("%s: write: %v", what, err)
	}
	r, err := readReply(c)
	if err != nil {
		t.Fatalf("%s: no reply: %v", what, err)
	}
	if r.Id != id || answerA(r) != "192.0.2.10,192.0.2.11" {
		t.Fatalf("%s: reply %d %s, want %d with blog's addresses", what, r.Id, answerA(r), id)
	}
}

// wantClosed fails unless the server has closed c: a read gets the end of
// the stream (or a reset), not data and not a timeout (5 s).
func wantClosed(t testing.TB, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var buf [1]byte
	for {
		_, err := c.Read(buf[:])
		switch {
		case err == nil:
			continue // a reply sent before the close
		case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
			return
		case errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("%s: still open after 5 s", what)
		default:
			t.Fatalf("%s: %v, want the end of the stream", what, err)
		}
	}
}

// raiseNoFile makes sure the process may open n descriptors (Go raises
// the soft limit to the hard one at start; this is for a hard one set
// low), or skips the test saying so.
func raiseNoFile(t *testing.T, n uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= n {
		return
	}
	lim.Cur = min(n, lim.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < n {
		t.Skipf("needs %d open files; RLIMIT_NOFILE allows %d (%v)", n, lim.Cur, err)
	}
}

// TestTCPFreshClientDespiteHeldConnections is the measurement: one
// client holds 1,100 idle TCP connections (each asked one query), and a
// fresh client from another address is answered at once: with the
// defaults the per-client cap refuses all but 16 of them; with no
// per-client cap, they fill the server to its high-water mark and the
// fresh connection sheds the one idle the longest. Before, with 1,000
// slots and the rest in the accept queue, it waited for an idle timeout.
func TestTCPFreshClientDespiteHeldConnections(t *testing.T) {
	const held = 1100
	raiseNoFile(t, 3*held)
	for _, tc := range []struct {
		name                string
		cfg                 ServerConfig
		accepted, perClient int
		shed                int
	}{
		{"defaults", ServerConfig{}, 16, held - 16, 0},
		{"no per-client cap", ServerConfig{MaxTCPPerClient: 1000}, held, 0, held - 900},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startTCP(t, tc.cfg)
			if got := answerA(ask(t, f.addr, "blog.alice.repl.test.", dns.TypeA)); got != "192.0.2.10,192.0.2.11" {
				t.Fatalf("blog over UDP: %s", got) // and now cached
			}
			q := tcpQuery(t, "blog.alice.repl.test.", 1)
			for range held {
				c := dialFrom(t, f.addr, "127.0.0.1")
				_, _ = c.Write(q) // the reply is left unread; refused ones may fail
			}
			waitFor(t, 30*time.Second, "the server to take every connection and answer them", func() bool {
				open, idle := f.counts()
				return f.accepted()+f.refused(refusedPerClient)+f.refused(refusedFull) == held && open == idle
			})
			if f.accepted() != tc.accepted || f.refused(refusedPerClient) != tc.perClient || f.closed(closedShed) != tc.shed || f.refused(refusedFull) != 0 {
				t.Errorf("accepted %d, refused per client %d, full %d, shed %d; want %d, %d, 0, %d", f.accepted(),
					f.refused(refusedPerClient), f.refused(refusedFull), f.closed(closedShed), tc.accepted, tc.perClient, tc.shed)
			}

			start := time.Now()
			r, err := tcpExchangeFrom("127.0.0.2", f.addr, "blog.alice.repl.test.")
			took := time.Since(start)
			if err != nil {
				t.Fatalf("fresh client from 127.0.0.2: %v (after %v)", err, took)
			}
			if got := answerA(r); got != "192.0.2.10,192.0.2.11" {
				t.Fatalf("fresh client: %s", got)
			}
			t.Logf("fresh client answered over TCP in %v beside %d connections from 127.0.0.1", took, held)
			if took >= 100*time.Millisecond {
				t.Errorf("fresh client answered in %v; want < 100 ms", took)
			}
			if want := tc.shed + min(tc.shed, 1); f.closed(closedShed) != want {
				t.Errorf("shed %d, want %d", f.closed(closedShed), want)
			}
		})
	}
}

// TestTCPPerClientCap: the connection past MaxTCPPerClient from one
// address is closed at once, while those it has keep answering and
// another address is served; a connection closed frees its place.
func TestTCPPerClientCap(t *testing.T) {
	f := startTCP(t, ServerConfig{MaxTCPPerClient: 3, MaxTCPConns: 100})
	var held []net.Conn
	for i := range 3 {
		c := dialFrom(t, f.addr, "127.0.0.1")
		tcpAsk(t, c, "connection "+string(rune('1'+i)))
		held = append(held, c)
	}
	wantClosed(t, dialFrom(t, f.addr, "127.0.0.1"), "the fourth connection from 127.0.0.1")
	if n := f.refused(refusedPerClient); n != 1 {
		t.Errorf("refused per client: %d, want 1", n)
	}
	for i, c := range held {
		tcpAsk(t, c, "held connection "+string(rune('1'+i)))
	}
	if r, err := tcpExchangeFrom("127.0.0.2", f.addr, "blog.alice.repl.test."); err != nil || answerA(r) != "192.0.2.10,192.0.2.11" {
		t.Fatalf("a client from 127.0.0.2: %v %v", r, err)
	}

	held[0].Close()
	// That one, and miekg/dns's client's from 127.0.0.2.
	waitFor(t, 5*time.Second, "the server to see the clients' closes", func() bool { return f.closed(closedClient) == 2 })
	tcpAsk(t, dialFrom(t, f.addr, "127.0.0.1"), "a new connection from 127.0.0.1 after one closed")
	if n := f.refused(refusedPerClient); n != 1 {
		t.Errorf("refused per client: %d, want still 1", n)
	}
}

// TestTCPClientNet: connections are counted per IPv4 address and per IPv6
// /64.
func TestTCPClientNet(t *testing.T) {
	p := func(s string) netip.Prefix { return clientNet(netip.MustParseAddr(s)) }
	if p("192.0.2.1") == p("192.0.2.2") {
		t.Error("two IPv4 addresses counted as one client")
	}
	if p("2001:db8::1") != p("2001:db8::ffff:1") || p("2001:db8::1") == p("2001:db8:0:1::1") {
		t.Error("IPv6 not counted per /64")
	}
}

// TestTCPShedsOldestIdle: a full server sheds the connection idle the
// longest for a new one, never one with a query in progress (though
// older); full with none idle, it closes the new one at once.
func TestTCPShedsOldestIdle(t *testing.T) {
	f := startTCP(t, ServerConfig{MaxTCPConns: 4, MaxTCPPerClient: 100})
	q := tcpQuery(t, "blog.alice.repl.test.", 7)
	waitCounts := func(open, idle int) {
		t.Helper()
		waitFor(t, 5*time.Second, "the server's connection counts", func() bool {
			o, i := f.counts()
			return o == open && i == idle
		})
	}

	// The oldest connection has begun a query (one octet of it).
	busy := dialFrom(t, f.addr, "127.0.0.1")
	if _, err := busy.Write(q[:1]); err != nil {
		t.Fatal(err)
	}
	waitCounts(1, 0)
	a := dialFrom(t, f.addr, "127.0.0.1")
	waitCounts(2, 1)
	b := dialFrom(t, f.addr, "127.0.0.1")
	tcpAsk(t, b, "b")
	c := dialFrom(t, f.addr, "127.0.0.1")
	tcpAsk(t, c, "c")
	waitCounts(4, 3)

	e := dialFrom(t, f.addr, "127.0.0.1")
	wantClosed(t, a, "a, idle the longest")
	tcpAsk(t, e, "the new connection")
	tcpAsk(t, b, "b")
	tcpAsk(t, c, "c")
	if _, err := busy.Write(q[1:]); err != nil {
		t.Fatal(err)
	}
	if r, err := readReply(busy); err != nil || answerA(r) != "192.0.2.10,192.0.2.11" {
		t.Fatalf("the connection with a query in progress: %v %v", r, err)
	}
	if n := f.closed(closedShed); n != 1 {
		t.Errorf("shed %d, want 1", n)
	}

	// Every connection in a query: the next is closed at once.
	for _, c := range []net.Conn{busy, b, c, e} {
		if _, err := c.Write(q[:3]); err != nil {
			t.Fatal(err)
		}
	}
	waitCounts(4, 0)
	wantClosed(t, dialFrom(t, f.addr, "127.0.0.1"), "a new connection to a full server with none idle")
	if n := f.refused(refusedFull); n != 1 {
		t.Errorf("refused full %d, want 1", n)
	}
	for i, c := range []net.Conn{busy, b, c, e} {
		if _, err := c.Write(q[3:]); err != nil {
			t.Fatal(err)
		}
		if r, err := readReply(c); err != nil || answerA(r) != "192.0.2.10,192.0.2.11" {
			t.Fatalf("connection %d, its query finished: %v %v", i, r, err)
		}
	}
	if n := f.closed(closedShed); n != 1 {
		t.Errorf("shed %d, want still 1", n)
	}
}

// TestTCPIdleTimeout: a connection waiting for its next query is closed
// after TCPIdleTimeout.
func TestTCPIdleTimeout(t *testing.T) {
	// The message timeout long: the idle one must do it.
	f := startTCP(t, ServerConfig{TCPIdleTimeout: 100 * time.Millisecond, TCPMessageTimeout: time.Minute})
	c := dialFrom(t, f.addr, "127.0.0.1")
	tcpAsk(t, c, "first query")
	wantClosed(t, c, "an idle connection")
	waitFor(t, 5*time.Second, "the close counted", func() bool { return f.closed(closedIdle) == 1 })
}

// TestTCPIdleTimeoutShrinks: the idle timeout is TCPIdleTimeout up to half
// of MaxTCPConns open, then less in proportion, to 1 s at MaxTCPConns.
func TestTCPIdleTimeoutShrinks(t *testing.T) {
	ts := &tcpServer{cfg: ServerConfig{MaxTCPConns: 1000, TCPIdleTimeout: 10 * time.Second}}
	for _, tc := range []struct {
		open int
		want time.Duration
	}{{0, 10 * time.Second}, {500, 10 * time.Second}, {750, 5500 * time.Millisecond}, {900, 2800 * time.Millisecond}, {1000, time.Second}, {1200, time.Second}} {
		if got := ts.idleTimeout(tc.open); got != tc.want {
			t.Errorf("%d open: idle timeout %v, want %v", tc.open, got, tc.want)
		}
	}
	ts.cfg.TCPIdleTimeout = 500 * time.Millisecond
	if got := ts.idleTimeout(1000); got != 500*time.Millisecond {
		t.Errorf("short idle timeout at the cap: %v, want it kept", got)
	}
}

// TestTCPLifetime: a connection asking more often than the idle timeout
// is still closed once TCPMaxLifetime has passed.
func TestTCPLifetime(t *testing.T) {
	f := startTCP(t, ServerConfig{TCPIdleTimeout: 5 * time.Second, TCPMaxLifetime: 300 * time.Millisecond})
	c := dialFrom(t, f.addr, "127.0.0.1")
	answered := 0
	for range 60 { // 3 s, ten lifetimes
		id := dns.Id()
		_, err := c.Write(tcpQuery(t, "blog.alice.repl.test.", id))
		if err == nil {
			var r *dns.Msg
			if r, err = readReply(c); err == nil && r.Id == id {
				answered++
			}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("no reply in 5 s: %v", err)
		}
		if err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if answered == 0 || answered == 60 {
		t.Fatalf("%d queries answered, 50 ms apart; want some, then the close", answered)
	}
	waitFor(t, 5*time.Second, "the close counted", func() bool { return f.closed(closedLifetime) == 1 })
	if n := f.closed(closedIdle); n != 0 {
		t.Errorf("closed idle %d, want 0", n)
	}
	t.Logf("%d queries answered before the lifetime closed the connection", answered)
}

// TestTCPSlowLoris: a query trickling in an octet at a time is cut once
// TCPMessageTimeout has passed since its first octet.
func TestTCPSlowLoris(t *testing.T) {
	f := startTCP(t, ServerConfig{TCPMessageTimeout: 200 * time.Millisecond})
	c := dialFrom(t, f.addr, "127.0.0.1")
	q := tcpQuery(t, "blog.alice.repl.test.", 9)
	for i := range q {
		if _, err := c.Write(q[i : i+1]); err != nil {
			break // cut
		}
		time.Sleep(30 * time.Millisecond) // the whole query: 30 ms × 40 octets
	}
	if r, err := readReply(c); err == nil {
		t.Fatalf("the slow query was answered: %v", r)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("not closed: %v", err)
	}
	waitFor(t, 5*time.Second, "the close counted", func() bool { return f.closed(closedSlow) == 1 })
}

// TestTCPPipelining: queries in one write get their replies in order; a
// message of length 0 closes the connection.
func TestTCPPipelining(t *testing.T) {
	f := startTCP(t, ServerConfig{})
	c := dialFrom(t, f.addr, "127.0.0.1")
	var batch []byte
	batch = append(batch, tcpQuery(t, "blog.alice.repl.test.", 1)...)
	batch = append(batch, tcpQuery(t, "api.bob.repl.test.", 2)...)
	batch = append(batch, tcpQuery(t, "nope.alice.repl.test.", 3)...)
	batch = append(batch, 0, 0)
	if _, err := c.Write(batch); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		id     uint16
		answer string
	}{{1, "192.0.2.10,192.0.2.11"}, {2, "198.51.100.10"}, {3, "NXDOMAIN"}} {
		r, err := readReply(c)
		if err != nil {
			t.Fatalf("reply %d: %v", want.id, err)
		}
		if r.Id != want.id || answerA(r) != want.answer {
			t.Fatalf("reply %d %s, want %d %s", r.Id, answerA(r), want.id, want.answer)
		}
	}
	wantClosed(t, c, "after a message of length 0")
	waitFor(t, 5*time.Second, "the close counted", func() bool { return f.closed(closedError) == 1 })
}

// TestTCPShutdown: at shutdown an idle connection is closed at once, one
// in a query gets its reply and is closed, one whose query never ends is
// closed at ShutdownTimeout; nothing is accepted meanwhile, and Serve
// returns (goleak checks its goroutines ended).
func TestTCPShutdown(t *testing.T) {
	f := startTCP(t, ServerConfig{ShutdownTimeout: time.Second, TCPMessageTimeout: time.Minute})
	q := tcpQuery(t, "blog.alice.repl.test.", 5)
	idle := dialFrom(t, f.addr, "127.0.0.1")
	tcpAsk(t, idle, "before the shutdown")
	busy := dialFrom(t, f.addr, "127.0.0.1")
	stuck := dialFrom(t, f.addr, "127.0.0.1")
	for _, c := range []net.Conn{busy, stuck} {
		if _, err := c.Write(q[:3]); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "two connections in a query", func() bool {
		open, idle := f.counts()
		return open == 3 && idle == 1
	})

	stopped := make(chan error, 1)
	go func() { stopped <- f.stop() }()
	wantClosed(t, idle, "the idle connection")
	if c, err := net.Dial("tcp", f.addr); err == nil {
		c.Close()
		t.Error("a connection accepted during the shutdown")
	}
	if _, err := busy.Write(q[3:]); err != nil {
		t.Fatal(err)
	}
	if r, err := readReply(busy); err != nil || answerA(r) != "192.0.2.10,192.0.2.11" {
		t.Fatalf("the query in progress at the shutdown: %v %v", r, err)
	}
	wantClosed(t, busy, "the connection once its reply was written")
	wantClosed(t, stuck, "the connection whose query never ended")
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if n := f.closed(closedShutdown); n != 3 {
		t.Errorf("closed at shutdown %d, want 3", n)
	}
	if n := testutil.ToFloat64(f.m.tcpOpen); n != 0 {
		t.Errorf("open connections %v after the shutdown", n)
	}
}

// TestTCPShutdownAnswersNewConnections: a connection accepted before the
// shutdown whose first query has not begun is its client sending (after a
// handover, the old process's last accepted connections): it gets its
// answer, then is closed; one that sends nothing is closed after
// TCPMessageTimeout.
func TestTCPShutdownAnswersNewConnections(t *testing.T) {
	f := startTCP(t, ServerConfig{ShutdownTimeout: 5 * time.Second, TCPMessageTimeout: time.Second})
	fresh := dialFrom(t, f.addr, "127.0.0.1")
	silent := dialFrom(t, f.addr, "127.0.0.1")
	waitFor(t, 5*time.Second, "two connections accepted", func() bool {
		open, _ := f.counts()
		return open == 2
	})
	stopped := make(chan error, 1)
	go func() { stopped <- f.stop() }()
	waitFor(t, 5*time.Second, "the listener closed", func() bool {
		c, err := net.DialTimeout("tcp", f.addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	if _, err := fresh.Write(tcpQuery(t, "blog.alice.repl.test.", 7)); err != nil {
		t.Fatal(err)
	}
	if r, err := readReply(fresh); err != nil || answerA(r) != "192.0.2.10,192.0.2.11" {
		t.Fatalf("the first query of a connection accepted before the shutdown: %v %v", r, err)
	}
	wantClosed(t, fresh, "the new connection once its reply was written")
	start := time.Now()
	wantClosed(t, silent, "the new connection that sent nothing")
	if waited := time.Since(start); waited > 4*time.Second {
		t.Errorf("the silent connection was closed after %v, not at TCPMessageTimeout (1 s)", waited)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}
