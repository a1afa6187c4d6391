package nameserver

import (
	"context"
	"encoding/hex"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap/zaptest"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// emptySource has one cluster and no repls.
type emptySource struct{}

func (emptySource) Clusters() []cluster.Cluster {
	return []cluster.Cluster{{Name: "east", ProxyIPv4: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}}
}
func (emptySource) Host(context.Context, store.Key) (string, error) { return "", store.ErrNotFound }
func (emptySource) HasOwner(string) bool                            { return false }
func (emptySource) Challenges(_ context.Context, _ string, dst []string) ([]string, error) {
	return dst, nil
}

// clock is a settable clock.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestRateLimit(t *testing.T) {
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	cfg := testConfig()
	cfg.RRL = RRLConfig{Rate: 10, Slip: 2}
	h, err := NewHandler(cfg, emptySource{}, nil, clk.now, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	sc := h.scratch.New().(*scratch)
	query := func(edns ...dns.EDNS0) []byte {
		m := new(dns.Msg)
		m.SetQuestion("repl.test.", dns.TypeSOA)
		if edns != nil {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = edns
		}
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	plain := query()
	// send returns what happened to one query: "answer", "slip" or "drop".
	send := func(msg []byte, client string, tcp bool) string {
		out := h.respond(context.Background(), sc, msg, netip.MustParseAddr(client), tcp)
		if out == nil {
			return "drop"
		}
		r := new(dns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatal(err)
		}
		if r.Truncated {
			if len(r.Answer)+len(r.Ns) != 0 {
				t.Fatal("slipped reply with records")
			}
			return "slip"
		}
		return "answer"
	}
	count := func(msg []byte, client string, tcp bool, n int) map[string]int {
		got := map[string]int{}
		for range n {
			got[send(msg, client, tcp)]++
		}
		return got
	}

	// A burst of 31 at one instant: 10 (the burst) + 1 pass, 20 are over,
	// half of them slipped.
	if got := count(plain, "192.0.2.1", false, 31); got["answer"] != 11 || got["slip"] != 10 || got["drop"] != 10 {
		t.Errorf("burst from one address: %v", got)
	}
	// The same /24 shares the bucket; another /24 does not.
	if got := send(plain, "192.0.2.200", false); got == "answer" {
		t.Errorf("same /24: %s, want limited", got)
	}
	if got := send(plain, "192.0.3.1", false); got != "answer" {
		t.Errorf("another /24: %s", got)
	}
	// TCP is never limited.
	if got := count(plain, "192.0.2.1", true, 50); got["answer"] != 50 {
		t.Errorf("TCP: %v", got)
	}
	// IPv6 by /56.
	count(plain, "2001:db8:0:100::1", false, 11)
	if got := send(plain, "2001:db8:0:1ff::2", false); got == "answer" {
		t.Errorf("same /56: %s, want limited", got)
	}
	if got := send(plain, "2001:db8:0:200::1", false); got != "answer" {
		t.Errorf("another /56: %s", got)
	}
	// A client that returns a valid server cookie is exempt.
	withClient := query(&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	out := h.respond(context.Background(), sc, withClient, netip.MustParseAddr("192.0.2.1"), true)
	r := new(dns.Msg)
	if err := r.Unpack(out); err != nil {
		t.Fatal(err)
	}
	server := r.IsEdns0().Option[0].(*dns.EDNS0_COOKIE).Cookie
	if _, err := hex.DecodeString(server); err != nil || len(server) != 48 {
		t.Fatalf("server cookie %q", server)
	}
	withServer := query(&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: server})
	if got := count(withServer, "192.0.2.1", false, 20); got["answer"] != 20 {
		t.Errorf("valid cookie: %v", got)
	}
	if got := send(withServer, "192.0.2.2", false); got == "answer" {
		t.Errorf("another address's cookie: %s, want limited", got)
	}
	// A second later the bucket has refilled by the rate.
	clk.t = clk.t.Add(time.Second)
	if got := count(plain, "192.0.2.1", false, 10); got["answer"] != 10 {
		t.Errorf("after a second: %v", got)
	}
}

func TestRateLimitSlip(t *testing.T) {
	for _, tc := range []struct {
		name        string
		slip        int
		slips, drop int
	}{
		{"slip 1: every one truncated", 1, 10, 0},
		{"slip 3", 3, 3, 7},
		{"never", -1, 0, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := RRLConfig{Rate: 1, Burst: 1, Slip: tc.slip}.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			l := newLimiter(cfg)
			ip := netip.MustParseAddr("192.0.2.1")
			l.take(ip, 0)
			l.take(ip, 0)
			got := map[rrlAction]int{}
			for range 10 {
				got[l.take(ip, 0)]++
			}
			if got[rrlSlip] != tc.slips || got[rrlDrop] != tc.drop {
				t.Errorf("slips %d drops %d, want %d and %d", got[rrlSlip], got[rrlDrop], tc.slips, tc.drop)
			}
		})
	}
}

// netN is an address in the n-th test network of a family (n < 1<<24):
// x.y.z.1 in its own /24 from 10.0.0.0 on, or 2001:db8:xxxx:xx00::1 in
// its own /56.
func netN(n int, v6 bool) netip.Addr {
	if !v6 {
		return netip.AddrFrom4([4]byte{10 + byte(n>>16), byte(n >> 8), byte(n), 1})
	}
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(n >> 16), byte(n >> 8), byte(n), 15: 1})
}

// sameNet reports whether a and b are in one /24 or /56.
func sameNet(a, b netip.Addr) bool {
	bits := 24
	if a.Is6() {
		bits = 56
	}
	p, _ := a.Prefix(bits)
	return p.Contains(b)
}

// collidingPairs finds n pairs of different networks that land in one
// bucket of l, by its own index function; no network is in two pairs.
func collidingPairs(t *testing.T, l *limiter, n int, v6 bool) [][2]netip.Addr {
	t.Helper()
	seen := make(map[int]netip.Addr)
	var pairs [][2]netip.Addr
	for i := range 1 << 24 {
		ip := netN(i, v6)
		b := l.index(ip)
		if other, ok := seen[b]; ok {
			pairs = append(pairs, [2]netip.Addr{other, ip})
			delete(seen, b)
			if len(pairs) == n {
				return pairs
			}
			continue
		}
		seen[b] = ip
	}
	t.Fatalf("found %d colliding pairs, want %d", len(pairs), n)
	return nil
}

// TestRateLimitCollision: two networks computed to collide in the
// limiter's table, alternating 2,000 queries each at one instant, share
// one bucket's budget (the burst) between them: neither resets it for the
// other, so together they get what one network gets.
func TestRateLimitCollision(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "IPv4", true: "IPv6"}[v6], func(t *testing.T) {
			clk := &clock{t: time.Unix(1_800_000_000, 0)}
			cfg := testConfig()
			cfg.RRL = RRLConfig{} // the defaults: 200 a second, a burst of 200, slip 2
			h, err := NewHandler(cfg, emptySource{}, nil, clk.now, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			pair := collidingPairs(t, h.rrl, 1, v6)[0]
			if sameNet(pair[0], pair[1]) || h.rrl.index(pair[0]) != h.rrl.index(pair[1]) {
				t.Fatalf("not a colliding pair: %v", pair)
			}
			m := new(dns.Msg)
			m.SetQuestion("repl.test.", dns.TypeSOA)
			msg, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			sc := h.scratch.New().(*scratch)
			got := map[netip.Addr]map[string]int{pair[0]: {}, pair[1]: {}}
			for range 2000 {
				for _, ip := range pair {
					out := h.respond(context.Background(), sc, msg, ip, false)
					r := new(dns.Msg)
					switch {
					case out == nil:
						got[ip]["drop"]++
					case r.Unpack(out) != nil:
						t.Fatal("reply does not unpack")
					case r.Truncated:
						got[ip]["slip"]++
					default:
						got[ip]["answer"]++
					}
				}
			}
			// One bucket at one instant: the burst of 200, and the one
			// reply the rate allows at any instant.
			answers := got[pair[0]]["answer"] + got[pair[1]]["answer"]
			slips := got[pair[0]]["slip"] + got[pair[1]]["slip"]
			if answers != 201 || slips != (4000-201)/2 {
				t.Errorf("%v and %v in one bucket: %v and %v; want 201 answers and %d slipped between them",
					pair[0], pair[1], got[pair[0]], got[pair[1]], (4000-201)/2)
			}
		})
	}
}

// TestRateLimitKeyed: the hash of a network is keyed per limiter, so pairs
// of networks that collide in one limiter do not collide in another.
func TestRateLimitKeyed(t *testing.T) {
	cfg, err := RRLConfig{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	a, b := newLimiter(cfg), newLimiter(cfg)
	for _, v6 := range []bool{false, true} {
		pairs := collidingPairs(t, a, 50, v6)
		again := 0
		for _, p := range pairs {
			if sameNet(p[0], p[1]) || a.index(p[0]) != a.index(p[1]) {
				t.Fatalf("%v: not a colliding pair in the limiter it was found in", p)
			}
			if b.index(p[0]) == b.index(p[1]) {
				again++
			}
		}
		// With 65,536 buckets a pair collides by chance once in 65,536.
		if again > 2 {
			t.Errorf("IPv6 %v: %d of %d pairs colliding in one limiter collide in another", v6, again, len(pairs))
		}
	}
}

// BenchmarkRRL charges replies to 4,096 networks (half IPv4, half IPv6)
// in turn, from parallel goroutines.
func BenchmarkRRL(b *testing.B) {
	cfg, err := RRLConfig{}.withDefaults()
	if err != nil {
		b.Fatal(err)
	}
	l := newLimiter(cfg)
	ips := make([]netip.Addr, 4096)
	for i := range ips {
		ips[i] = netN(i*7919, i%2 == 1)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			l.take(ips[i%len(ips)], int64(i)*1000)
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				l.take(ips[i%len(ips)], int64(i)*1000)
				i++
			}
		})
	})
}
