package proxy

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	testKeyA = "0123456789abcdef0123456789abcdef"
	testKeyB = "another-secret-of-32-bytes......"
)

func testSigner(t testing.TB, file string, now time.Time) *hopSigner {
	t.Helper()
	keys, err := ParseHopKeys([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	s := &hopSigner{now: func() time.Time { return now }}
	s.keys.Store(keys)
	return s
}

func TestHopMark(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	signer := testSigner(t, testKeyA, now)
	f := hopFields{Source: "east", Gen: 7, Method: "GET", Target: "/a?b=1", Length: 0, Host: "blog.alice.repl.test", For: "203.0.113.7",
		Proto: "https", FHost: "blog.alice.repl.test", RequestID: "abc-1"}
	mark := signer.sign(f)

	// Each case verifies on a receiver of its own: a mark is good once.
	at := func(d time.Duration) *hopSigner { return testSigner(t, testKeyA, now.Add(d)) }
	tamper := func(change func(*hopFields)) hopFields {
		g := f
		change(&g)
		return g
	}
	for _, tc := range []struct {
		name    string
		signer  *hopSigner
		mark    string
		fields  hopFields
		wantErr string
	}{
		{"valid", at(0), mark, f, ""},
		{"valid at the skew limit", at(HopSkew), mark, f, ""},
		{"valid from a clock ahead", at(-HopSkew), mark, f, ""},
		{"valid during a rotation: the receiver knows the next key too", testSigner(t, testKeyB+"\n"+testKeyA, now), mark, f, ""},
		{"unknown: the receiver retired the key", testSigner(t, testKeyB, now), mark, f, "is not one of"},
		{"expired", at(HopSkew + time.Second), mark, f, "off by"},
		{"from the future", at(-HopSkew - time.Second), mark, f, "off by"},
		{"other method", at(0), mark, tamper(func(g *hopFields) { g.Method = "POST" }), "bad signature"},
		{"other target", at(0), mark, tamper(func(g *hopFields) { g.Target = "/admin/delete" }), "bad signature"},
		{"a body where there was none", at(0), mark, tamper(func(g *hopFields) { g.Length = 512 }), "bad signature"},
		{"other host", at(0), mark, tamper(func(g *hopFields) { g.Host = "shop.bob.repl.test" }), "bad signature"},
		{"other client", at(0), mark, tamper(func(g *hopFields) { g.For = "6.6.6.6" }), "bad signature"},
		{"other proto", at(0), mark, tamper(func(g *hopFields) { g.Proto = "http" }), "bad signature"},
		{"other forwarded host", at(0), mark, tamper(func(g *hopFields) { g.FHost = "x" }), "bad signature"},
		{"other request id", at(0), mark, tamper(func(g *hopFields) { g.RequestID = "abc-2" }), "bad signature"},
		{"other source", at(0), strings.Replace(mark, ";east;", ";west;", 1), f, "bad signature"},
		{"other key under the same id", testSigner(t, testKeyB, now), strings.Replace(mark, mark[3:11], testSigner(t, testKeyB, now).keys.Load().keys[0].id, 1), f, "bad signature"},
		{"no version", at(0), strings.TrimPrefix(mark, "v2;"), f, "want v2"},
		{"bad time", at(0), "v2;k;east;soon;2;sig", f, "bad timestamp"},
		{"bad generation", at(0), strings.Replace(mark, ";7;", ";x;", 1), f, "bad generation"},
		{"other generation", at(0), strings.Replace(mark, ";7;", ";8;", 1), f, "bad signature"},
		{"empty", at(0), "", f, "want v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := tc.signer.verify(tc.mark, tc.fields)
			if tc.wantErr == "" {
				if err != nil || src != "east" {
					t.Fatalf("verify = %q, %v; want east", src, err)
				}
				if _, err := tc.signer.verify(tc.mark, tc.fields); !errors.Is(err, errHop) || !strings.Contains(err.Error(), "seen before") {
					t.Fatalf("the same mark again: %v, want refused as a replay", err)
				}
				return
			}
			if !errors.Is(err, errHop) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("verify error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseHopKeys(t *testing.T) {
	for _, tc := range []struct {
		file, wantErr string
		ids           int
	}{
		{testKeyA + "\n", "", 1},
		{"# the next one first\n" + testKeyB + "\n\n" + testKeyA + "\n", "", 2},
		{"", "no hop secret", 0},
		{"short\n", "line 1 is 5 bytes", 0},
		{testKeyA + "\n" + testKeyA, "line 2 repeats line 1", 0},
		{"  " + testKeyA + " " + testKeyB + " \n", "", 1},
		{strings.Repeat("a", 32) + "\n" + strings.Repeat("b", 32) + "\n" + strings.Repeat("c", 32) + "\n" + strings.Repeat("d", 32), "at most 3", 0},
	} {
		keys, err := ParseHopKeys([]byte(tc.file))
		if tc.wantErr == "" {
			if err != nil || len(keys.IDs()) != tc.ids {
				t.Errorf("ParseHopKeys(%q) = %v, %v; want %d keys", tc.file, keys, err, tc.ids)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("ParseHopKeys(%q) error %v, want one containing %q", tc.file, err, tc.wantErr)
		}
	}
}

// TestReplayCacheForgets: a mark is refused while it could still verify,
// and its memory is given back once it has expired.
func TestReplayCacheForgets(t *testing.T) {
	var c replayCache
	now := time.Unix(1_800_000_000, 0)
	sig := "AAAAAAAAAAE" // 8 bytes
	if c.first(sig, now.Add(HopSkew), now) != seenFirst || c.first(sig, now.Add(HopSkew), now.Add(HopSkew)) != seenBefore {
		t.Fatal("a mark seen twice before its expiry was not refused the second time")
	}
	c.first("AAAAAAAAAAI", now.Add(3*HopSkew), now.Add(3*HopSkew))
	if c.n != 1 || len(c.sets) != 1 {
		t.Errorf("after expiry: %d marks in %d sets, want 1 in 1", c.n, len(c.sets))
	}
}

func BenchmarkHopSignVerify(b *testing.B) {
	s := testSigner(b, testKeyA, time.Now())
	s.now = time.Now
	f := hopFields{Source: "east", Method: "GET", Target: "/", Host: "blog.alice.repl.test", For: "203.0.113.7", Proto: "https", FHost: "blog.alice.repl.test"}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		f.RequestID = "abc-" + strconv.Itoa(i)
		if _, err := s.verify(s.sign(f), f); err != nil {
			b.Fatal(err)
		}
	}
}
