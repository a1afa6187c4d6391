package nameserver

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/replproxy/replproxy/cluster"
	"go.uber.org/zap/zaptest"
)

// The test world: two clusters with embedded stores.
//
//	east: alice/blog (r1), alice/shop (r2), carol/app (r5, generation 1:
//	      a move to west in flight), a tombstone for bob/api (r3) -> west,
//	      a challenge for alice
//	west: bob/api (r3, gen 2), carol/app (r5, gen 2), a challenge for alice
//	      and one for r3.id
const (
	eastStore = `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001]}
  - {id: r2, owner: alice, slug: shop, endpoints: [127.0.0.1:9002]}
  - {id: r5, owner: carol, slug: app, endpoints: [127.0.0.1:9005], generation: 1}
tombstones:
  - {repl_id: r3, owner: bob, slug: api, cluster: west, generation: 2, moved_at: 2026-01-01T00:00:00Z}
challenges:
  - {name: _acme-challenge.alice.repl.test, value: tok-east, expires_at: 2099-01-01T00:00:00Z}
`
	westStore = `
repls:
  - {id: r3, owner: bob, slug: api, endpoints: [127.0.0.1:9003], generation: 2}
  - {id: r5, owner: carol, slug: app, endpoints: [127.0.0.1:9105], generation: 2}
challenges:
  - {name: _acme-challenge.alice.repl.test, value: tok-west, expires_at: 2099-01-01T00:00:00Z}
  - {name: _acme-challenge.r3.id.repl.test, value: tok-r3, expires_at: 2099-01-01T00:00:00Z}
`
	testRegistry = `
clusters:
  - name: east
    proxy_ipv4: [192.0.2.10, 192.0.2.11]
    proxy_ipv6: ["2001:db8::10"]
    forward: 10.0.0.10:8443
    store: east.yaml
  - name: west
    proxy_ipv4: [198.51.100.10]
    forward: 10.1.0.10:8443
    store: west.yaml
`
)

// writeWorld writes the stores and the registry into a temporary folder
// and returns the registry's path.
func writeWorld(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "clusters.yaml")
}

func defaultWorld(t testing.TB) string {
	return writeWorld(t, map[string]string{"east.yaml": eastStore, "west.yaml": westStore, "clusters.yaml": testRegistry})
}

// testConfig is the zone of the tests.
func testConfig() Config {
	long := strings.Repeat("x", 200)
	return Config{
		Zone: "repl.test",
		NameServers: []NameServer{
			{Name: "ns1.repl.test", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8::53")}},
			{Name: "ns2.example.net"},
		},
		SOA: SOA{Serial: 2026010101, Minimum: time.Minute, TTL: time.Hour},
		Apex: Apex{
			A: []netip.Addr{netip.MustParseAddr("192.0.2.1")},
			// The long ones make the apex TXT RRset (about 660 octets)
			// too big for 512-octet UDP replies.
			TXT: [][]string{{"v=spf1 -all"}, {long}, {long + "y"}, {long + "z"}},
			MX:  []MX{{Preference: 10, Exchange: "mx.example.net"}},
			CAA: []CAA{{Tag: "issue", Value: "letsencrypt.org"}},
		},
		// No apex AAAA: NODATA.
		RRL:           RRLConfig{Rate: -1},
		CookieSecret:  []byte("0123456789abcdef"),
		QueryLogEvery: 1,
	}
}

// startClusters runs Clusters over the registry at path until the test
// ends, and waits until every cluster is synced.
func startClusters(t testing.TB, path string, cfg ClustersConfig) *Clusters {
	t.Helper()
	return startClustersAt(t, path, cfg, nil)
}

// startClustersAt is startClusters with the clock now.
func startClustersAt(t testing.TB, path string, cfg ClustersConfig, now func() time.Time) *Clusters {
	t.Helper()
	reg, err := cluster.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewClusters(reg, cfg, now, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitFor(t, 10*time.Second, "clusters synced", func() bool {
		for _, s := range c.Status() {
			if !s.Synced || !s.Current {
				return false
			}
		}
		return true
	})
	return c
}

// startServer serves h on a free port of 127.0.0.1 until the test ends.
func startServer(t testing.TB, h *Handler) string {
	t.Helper()
	srv, err := NewServer(ServerConfig{Addr: "127.0.0.1:0", UDPSockets: 2, UDPReaders: 2}, h, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := srv.Listen(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitFor(t, 5*time.Second, "server answering", srv.Serving)
	return srv.Addr().String()
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// exchange sends m over network ("udp" or "tcp") to addr. A message with
// a TSIG is sent as it is (its MAC unchecked by replns), and its reply is
// not verified: replns's TSIGs are unsigned errors.
func exchange(t testing.TB, network, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, UDPSize: 65535}
	if m.IsTsig() != nil || len(m.Extra) > 0 && m.Extra[0].Header().Rrtype == dns.TypeTSIG {
		wire, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		co, err := c.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer co.Close()
		_ = co.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := co.Write(wire); err != nil {
			t.Fatal(err)
		}
		r, err := co.ReadMsg()
		if r == nil || r.Id == 0 && err != nil {
			t.Fatalf("exchange %v over %s: %v", m.Question, network, err)
		}
		return r
	}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("exchange %v over %s: %v", m.Question, network, err)
	}
	return r
}
