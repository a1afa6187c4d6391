package nameserver

import (
	"context"
	"encoding/hex"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
)

// benchHandler is the test world's handler, with rate limiting off.
func benchHandler(b *testing.B) *Handler {
	c := startClusters(b, defaultWorld(b), ClustersConfig{})
	cfg := testConfig()
	cfg.QueryLogEvery = 0
	h, err := NewHandler(cfg, c, nil, nil, zap.NewNop())
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// BenchmarkServeDNS measures a cache-hit A query through the dns.Handler
// interface (as TCP is served): pack, parse, index, cache, reply.
func BenchmarkServeDNS(b *testing.B) {
	h := benchHandler(b)
	for _, bc := range []struct {
		name string
		q    string
		t    uint16
	}{
		{"hit", "blog.alice.repl.test.", dns.TypeA},
		{"nxdomain", "random123.alice.repl.test.", dns.TypeA},
		{"apex", "repl.test.", dns.TypeSOA},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m := new(dns.Msg)
			m.SetQuestion(bc.q, bc.t)
			m.SetEdns0(1232, false)
			w := &recorder{udp: true, msg: make([]byte, 0, 512)}
			h.ServeDNS(w, m) // warm the cache
			b.ReportAllocs()
			for b.Loop() {
				h.ServeDNS(w, m)
			}
		})
	}
}

// BenchmarkRespond measures what the UDP path does per query: parse the
// packet, answer, write the reply into the reader's buffer; without a DNS
// cookie, with a client cookie only, and with a server cookie this server
// made (the case of a resolver that echoes it).
func BenchmarkRespond(b *testing.B) {
	h := benchHandler(b)
	client := netip.MustParseAddr("192.0.2.99")
	clientCookie := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	full := h.cookies.appendCookie(nil, clientCookie, client, time.Now())
	for _, bc := range []struct {
		name   string
		cookie []byte
	}{{"no-cookie", nil}, {"client-cookie", clientCookie}, {"server-cookie", full}} {
		b.Run(bc.name, func(b *testing.B) {
			m := new(dns.Msg)
			m.SetQuestion("blog.alice.repl.test.", dns.TypeA)
			m.SetEdns0(1232, false)
			if bc.cookie != nil {
				opt := m.IsEdns0()
				opt.Option = append(opt.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: hex.EncodeToString(bc.cookie)})
			}
			wire, err := m.Pack()
			if err != nil {
				b.Fatal(err)
			}
			sc := h.scratch.New().(*scratch)
			ctx := context.Background()
			if h.respond(ctx, sc, wire, client, false) == nil {
				b.Fatal("no reply")
			}
			b.ReportAllocs()
			for b.Loop() {
				h.respond(ctx, sc, wire, client, false)
			}
		})
	}
}

// BenchmarkUDP measures a query over a real loopback socket, both ends.
func BenchmarkUDP(b *testing.B) {
	h := benchHandler(b)
	addr := startServer(b, h)
	c, err := net.Dial("udp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion("blog.alice.repl.test.", dns.TypeA)
	wire, _ := m.Pack()
	buf := make([]byte, 1500)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(wire); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}
