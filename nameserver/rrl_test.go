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
func (emptySource) Host(context.Context, store.Key) (int, error) { return -1, store.ErrNotFound }
func (emptySource) HasOwner(string) bool                         { return false }
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
	cfg.Now = clk.now
	h, err := NewHandler(cfg, emptySource{}, nil, zaptest.NewLogger(t))
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
