package nameserver

import (
	"context"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap/zaptest"
)

// TestOverloadBounded floods the server over UDP and opens more TCP
// connections than it takes: the number of goroutines stays bounded, and
// it still answers afterwards.
func TestOverloadBounded(t *testing.T) {
	c := startClusters(t, defaultWorld(t), ClustersConfig{})
	cfg := testConfig()
	cfg.QueryLogEvery = 0
	h, err := NewHandler(cfg, c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{Addr: "127.0.0.1:0", UDPSockets: 2, UDPReaders: 4, MaxTCPConns: 8}, h, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor(t, 5*time.Second, "serving", srv.Serving)
	addr := srv.Addr().String()

	base := runtime.NumGoroutine()
	var peak atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n := int64(runtime.NumGoroutine()); n > peak.Load() {
				peak.Store(n)
			}
			time.Sleep(time.Millisecond)
		}
	})

	// 200 TCP connections held open against a limit of 8.
	var conns []net.Conn
	for range 200 {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	// 8 senders firing UDP queries without waiting for replies.
	m := new(dns.Msg)
	m.SetQuestion("blog.alice.repl.test.", dns.TypeA)
	wire, _ := m.Pack()
	var senders sync.WaitGroup
	for range 8 {
		senders.Go(func() {
			conn, err := net.Dial("udp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			for range 5000 {
				_, _ = conn.Write(wire)
			}
		})
	}
	senders.Wait()
	close(stop)
	sampler.Wait()
	for _, conn := range conns {
		conn.Close()
	}

	// Readers are already counted in base; allow the senders, the sampler,
	// the connection goroutines (at most MaxTCPConns and a tenth, plus
	// one: 9 for 8, shed ones still ending counted) and a few to spare.
	t.Logf("goroutines peaked at %d (from %d)", peak.Load(), base)
	if limit := int64(base + 8 + 1 + 9 + 4); peak.Load() > limit {
		t.Errorf("goroutines peaked at %d (from %d); want at most %d", peak.Load(), base, limit)
	}
	// The server still answers once the flood has drained from its socket
	// buffers (up to 40,000 queued queries: seconds under -race).
	m.Id = dns.Id()
	client := &dns.Client{Timeout: time.Second}
	waitFor(t, 60*time.Second, "blog's addresses after the flood", func() bool {
		r, _, err := client.Exchange(m, addr)
		return err == nil && answerA(r) == "192.0.2.10,192.0.2.11"
	})
}
