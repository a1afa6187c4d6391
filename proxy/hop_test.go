package proxy

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestHopMark(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	secret := []byte("0123456789abcdef0123456789abcdef")
	signer := &hopSigner{secret: secret, now: func() time.Time { return now }}
	f := hopFields{Source: "east", Host: "blog.alice.repl.test", For: "203.0.113.7", Proto: "https", FHost: "blog.alice.repl.test", RequestID: "abc-1"}
	mark := signer.sign(f)

	at := func(d time.Duration) *hopSigner {
		return &hopSigner{secret: secret, now: func() time.Time { return now.Add(d) }}
	}
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
		{"valid", signer, mark, f, ""},
		{"valid at the skew limit", at(HopSkew), mark, f, ""},
		{"valid from a clock ahead", at(-HopSkew), mark, f, ""},
		{"expired", at(HopSkew + time.Second), mark, f, "off by"},
		{"from the future", at(-HopSkew - time.Second), mark, f, "off by"},
		{"other host", signer, mark, tamper(func(g *hopFields) { g.Host = "shop.bob.repl.test" }), "bad signature"},
		{"other client", signer, mark, tamper(func(g *hopFields) { g.For = "6.6.6.6" }), "bad signature"},
		{"other proto", signer, mark, tamper(func(g *hopFields) { g.Proto = "http" }), "bad signature"},
		{"other forwarded host", signer, mark, tamper(func(g *hopFields) { g.FHost = "x" }), "bad signature"},
		{"other request id", signer, mark, tamper(func(g *hopFields) { g.RequestID = "abc-2" }), "bad signature"},
		{"other source", signer, strings.Replace(mark, ";east;", ";west;", 1), f, "bad signature"},
		{"other secret", &hopSigner{secret: []byte("another secret of 32 bytes......"), now: signer.now}, mark, f, "bad signature"},
		{"no version", signer, strings.TrimPrefix(mark, "v1;"), f, "want v1"},
		{"bad time", signer, "v1;east;soon;sig", f, "bad timestamp"},
		{"empty", signer, "", f, "want v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := tc.signer.verify(tc.mark, tc.fields)
			if tc.wantErr == "" {
				if err != nil || src != "east" {
					t.Fatalf("verify = %q, %v; want east", src, err)
				}
				return
			}
			if !errors.Is(err, errHop) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("verify error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func BenchmarkHopSignVerify(b *testing.B) {
	s := &hopSigner{secret: []byte("0123456789abcdef0123456789abcdef"), now: time.Now}
	f := hopFields{Source: "east", Host: "blog.alice.repl.test", For: "203.0.113.7", Proto: "https", FHost: "blog.alice.repl.test", RequestID: "abc-1"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.verify(s.sign(f), f); err != nil {
			b.Fatal(err)
		}
	}
}
