package nameserver

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap/zaptest"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCookieRFC9018 checks the server cookie against RFC 9018, appendix
// A.1 ("Learning a New Server Cookie").
func TestCookieRFC9018(t *testing.T) {
	k := newCookieKey(unhex(t, "e5e973e5a6b2a43f48e7dc849e37bfcf"))
	client := unhex(t, "2464c4abcf10c957")
	ip := netip.MustParseAddr("198.51.100.100")
	now := time.Unix(1559731985, 0)
	got := hex.EncodeToString(k.appendCookie(nil, client, ip, now))
	const want = "2464c4abcf10c957" + "010000005cf79f111f8130c3eee29480"
	if got != want {
		t.Errorf("cookie %s, want %s", got, want)
	}
	if ok, _ := k.check(unhex(t, want), ip, now.Add(30*time.Minute)); !ok {
		t.Error("the RFC's cookie does not verify")
	}
}

func TestCookieValid(t *testing.T) {
	k := newCookieKey([]byte("0123456789abcdef"))
	other := newCookieKey([]byte("fedcba9876543210"))
	client := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	ip := netip.MustParseAddr("2001:db8::1")
	now := time.Unix(1_800_000_000, 0)
	c := k.appendCookie(nil, client, ip, now)
	for _, tc := range []struct {
		name   string
		cookie []byte
		key    cookieKey
		ip     string
		at     time.Duration
		want   bool
	}{
		{"fresh", c, k, "2001:db8::1", 0, true},
		{"an hour old", c, k, "2001:db8::1", time.Hour, true},
		{"too old", c, k, "2001:db8::1", time.Hour + time.Second, false},
		{"slightly from the future", c, k, "2001:db8::1", -5 * time.Minute, true},
		{"too far from the future", c, k, "2001:db8::1", -6 * time.Minute, false},
		{"another client address", c, k, "2001:db8::2", 0, false},
		{"another secret", c, other, "2001:db8::1", 0, false},
		{"client cookie only", c[:8], k, "2001:db8::1", 0, false},
		{"tampered", append(append([]byte(nil), c[:23]...), c[23]^1), k, "2001:db8::1", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, _ := tc.key.check(tc.cookie, netip.MustParseAddr(tc.ip), now.Add(tc.at)); got != tc.want {
				t.Errorf("valid = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestCookieReissue: a valid server cookie less than half an hour old
// comes back as it was sent (RFC 9018, section 4.3); an older one, or one
// not this server's, is replaced by a fresh one made now.
func TestCookieReissue(t *testing.T) {
	c := startClusters(t, defaultWorld(t), ClustersConfig{})
	cfg := testConfig()
	cfg.QueryLogEvery = 0
	now := time.Unix(1_800_000_000, 0)
	h, err := NewHandler(cfg, c, nil, func() time.Time { return now }, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("192.0.2.77")
	client := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	ask := func(cookie []byte) []byte {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion("blog.alice.repl.test.", dns.TypeA)
		m.SetEdns0(1232, false)
		opt := m.IsEdns0()
		opt.Option = append(opt.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: hex.EncodeToString(cookie)})
		wire, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		out := h.respond(context.Background(), h.scratch.New().(*scratch), wire, ip, false)
		var r dns.Msg
		if err := r.Unpack(out); err != nil {
			t.Fatal(err)
		}
		for _, o := range r.IsEdns0().Option {
			if c, ok := o.(*dns.EDNS0_COOKIE); ok {
				return unhex(t, c.Cookie)
			}
		}
		t.Fatal("no cookie in the reply")
		return nil
	}
	stamp := func(c []byte) int64 { return int64(binary.BigEndian.Uint32(c[12:16])) }
	key := newCookieKey(cfg.CookieSecret)
	for _, tc := range []struct {
		name  string
		made  time.Duration // before now
		key   cookieKey
		fresh bool
	}{
		{"10 minutes old: sent back", 10 * time.Minute, key, false},
		{"29 minutes old: sent back", 29 * time.Minute, key, false},
		{"31 minutes old: a new one", 31 * time.Minute, key, true},
		{"from the future: a new one", -time.Minute, key, true},
		{"another server's: a new one", 0, newCookieKey([]byte("fedcba9876543210")), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sent := tc.key.appendCookie(nil, client, ip, now.Add(-tc.made))
			got := ask(sent)
			if !tc.fresh {
				if !bytes.Equal(got, sent) {
					t.Fatalf("cookie %x, want the one sent, %x", got, sent)
				}
				return
			}
			if ok, _ := key.check(got, ip, now); stamp(got) != now.Unix() || !ok {
				t.Fatalf("cookie %x: want a valid one made now", got)
			}
		})
	}
}
