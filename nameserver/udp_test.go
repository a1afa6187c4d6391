package nameserver

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
)

// udpFixture is a server on addr with metrics, stopped by stop (or when
// the test ends).
type udpFixture struct {
	addr string
	m    *Metrics
	stop func() error
}

func startUDP(t *testing.T, addr string) *udpFixture {
	t.Helper()
	c := startClusters(t, defaultWorld(t), ClustersConfig{})
	cfg := testConfig()
	cfg.QueryLogEvery = 0
	m := NewMetrics(prometheus.NewRegistry())
	h, err := NewHandler(cfg, c, m, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{Addr: addr, UDPSockets: 1}, h, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Listen(ctx); err != nil {
		cancel()
		if errors.Is(err, os.ErrNotExist) || isNoIPv6(err) {
			t.Skipf("cannot listen on %s: %v", addr, err)
		}
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	stopped := false
	var serveErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case serveErr = <-done:
			case <-time.After(10 * time.Second):
				serveErr = errors.New("Serve did not return 10 s after its context ended")
			}
		}
		return serveErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	waitFor(t, 5*time.Second, "serving", srv.Serving)
	return &udpFixture{addr: srv.Addr().String(), m: m, stop: stop}
}

func isNoIPv6(err error) bool {
	var se *os.SyscallError
	return errors.As(err, &se) && (se.Err.Error() == "cannot assign requested address" || se.Err.Error() == "address family not supported by protocol")
}

func packedQuery(t *testing.T, name string, id uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = id
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return wire
}

// TestUDPBatchRepliesGoToTheirSenders has 8 clients send 40 queries each
// without waiting, so that the server reads them in full batches: every
// client gets exactly its own 40 replies, each answering its question.
func TestUDPBatchRepliesGoToTheirSenders(t *testing.T) {
	f := startUDP(t, "127.0.0.1:0")
	const clients, each = 8, 40
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		c, err := net.Dial("udp", f.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.(*net.UDPConn).SetReadBuffer(1 << 20)
		conns[i] = c.(*net.UDPConn)
	}
	for j := range each {
		for i, c := range conns {
			if _, err := c.Write(packedQuery(t, "blog.alice.repl.test.", uint16(i<<8|j))); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, c := range conns {
		seen := map[uint16]bool{}
		buf := make([]byte, 65535)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for len(seen) < each {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("client %d: %d of %d replies, then: %v", i, len(seen), each, err)
			}
			var r dns.Msg
			if err := r.Unpack(buf[:n]); err != nil {
				t.Fatalf("client %d: reply: %v", i, err)
			}
			if int(r.Id>>8) != i || seen[r.Id] {
				t.Fatalf("client %d got reply id %#04x: another client's, or twice", i, r.Id)
			}
			seen[r.Id] = true
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 || r.Question[0].Name != "blog.alice.repl.test." {
				t.Fatalf("client %d: reply %v", i, &r)
			}
		}
	}
}

// TestUDPOversizedQueryIsDropped: a datagram longer than the largest query
// read whole is not answered from its first part; it is counted as a query
// with no reply, and the next query is answered.
func TestUDPOversizedQueryIsDropped(t *testing.T) {
	f := startUDP(t, "127.0.0.1:0")
	c, err := net.Dial("udp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	none := func() float64 { return testutil.ToFloat64(f.m.queries[len(metricTypes)][metricNone]) }
	before := none()
	// A query, then padding past maxUDPQuery: cut at the buffer's end, what
	// was read would still parse as a query with trailing octets.
	big := append(packedQuery(t, "blog.alice.repl.test.", 1), make([]byte, 2*maxUDPQuery)...)
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the oversized datagram counted", func() bool { return none() > before })
	if _, err := c.Write(packedQuery(t, "blog.alice.repl.test.", 2)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var r dns.Msg
	if err := r.Unpack(buf[:n]); err != nil {
		t.Fatal(err)
	}
	if r.Id != 2 {
		t.Fatalf("first reply has id %d: the oversized query (id 1) was answered", r.Id)
	}
}

// TestUDPStopsUnderFlood: a server whose socket always holds a full batch
// still stops when asked.
func TestUDPStopsUnderFlood(t *testing.T) {
	f := startUDP(t, "127.0.0.1:0")
	c, err := net.Dial("udp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wire := packedQuery(t, "blog.alice.repl.test.", 7)
	flooding := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		deadline := time.Now().Add(20 * time.Second)
		for i := 0; i < 50_000_000 && time.Now().Before(deadline); i++ {
			select {
			case <-flooding:
				return
			default:
			}
			_, _ = c.Write(wire)
		}
	}()
	defer func() { close(flooding); <-done }()
	a := 0 // metricTypes' index of A
	for metricTypes[a].t != typeA {
		a++
	}
	answered := func() float64 { return testutil.ToFloat64(f.m.queries[a][rcodeSuccess]) }
	waitFor(t, 5*time.Second, "1,000 queries answered", func() bool { return answered() >= 1000 })
	if err := f.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestUDPOverIPv6 answers on an IPv6 socket, and on a dual-stack one to an
// IPv4 client (whose source address arrives IPv4-mapped).
func TestUDPOverIPv6(t *testing.T) {
	for _, tc := range []struct{ listen, dial string }{{"[::1]:0", "::1"}, {"[::]:0", "127.0.0.1"}} {
		t.Run(tc.listen, func(t *testing.T) {
			f := startUDP(t, tc.listen)
			_, port, _ := net.SplitHostPort(f.addr)
			m := new(dns.Msg)
			m.SetQuestion("blog.alice.repl.test.", dns.TypeA)
			r := exchange(t, "udp", net.JoinHostPort(tc.dial, port), m)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
				t.Fatalf("reply %v", r)
			}
		})
	}
}
