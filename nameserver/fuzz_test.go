package nameserver

import (
	"bytes"
	"context"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"go.uber.org/zap"
)

// FuzzRespond feeds arbitrary packets to the handler, as the UDP and TCP
// paths get them: it must not panic, and every reply must be a
// well-formed DNS message answering the query's id, with its question
// echoed when it has one. The seeds are the questions of the table test.
func FuzzRespond(f *testing.F) {
	for _, tc := range dnsCases() {
		b, err := tc.msg().Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add(make([]byte, 12))
	for _, s := range tsigSeeds(f) {
		f.Add(s.msg)
		f.Add(s.msg[:len(s.msg)-3]) // a TSIG cut short
	}
	c := startClusters(f, defaultWorld(f), ClustersConfig{})
	cfg := testConfig()
	cfg.QueryLogEvery = 0
	cfg.RRL = RRLConfig{Rate: 5} // let the limiter run too
	h, err := NewHandler(cfg, c, nil, nil, zap.NewNop())
	if err != nil {
		f.Fatal(err)
	}
	client := netip.MustParseAddr("192.0.2.1")
	f.Fuzz(func(t *testing.T, msg []byte) {
		sc := h.scratch.Get().(*scratch)
		defer h.scratch.Put(sc)
		for _, tcp := range []bool{false, true} {
			out := h.respond(context.Background(), sc, msg, client, tcp)
			if out == nil {
				continue
			}
			checkWellFormed(t, msg, out, tcp)
		}
		// And through ServeDNS, when miekg/dns can unpack the packet.
		in := new(dns.Msg)
		if in.Unpack(msg) != nil {
			return
		}
		w := &recorder{}
		h.ServeDNS(w, in)
		if w.msg != nil {
			r := new(dns.Msg)
			if err := r.Unpack(w.msg); err != nil {
				t.Fatalf("ServeDNS reply does not unpack: %v", err)
			}
		}
	})
}

func checkWellFormed(t *testing.T, msg, out []byte, tcp bool) {
	t.Helper()
	r := new(dns.Msg)
	if err := r.Unpack(out); err != nil {
		t.Fatalf("reply does not unpack: %v\nquery % x\nreply % x", err, msg, out)
	}
	if !r.Response || r.Id != uint16(msg[0])<<8|uint16(msg[1]) {
		t.Fatalf("reply is not a response to the query's id")
	}
	if !tcp && len(out) > 4096 {
		t.Fatalf("UDP reply of %d octets", len(out))
	}
	if len(r.Question) == 1 {
		// The question's wire form must be the query's, octet for octet.
		end := 12
		for out[end] != 0 {
			end += int(out[end]) + 1
		}
		end += 5
		if !bytes.Equal(out[12:end], msg[12:end]) {
			t.Fatalf("question not echoed exactly")
		}
	}
	n := len(r.Extra)
	if r.IsTsig() != nil {
		n-- // a TSIG goes last of all
	}
	if n > 0 && r.IsEdns0() != nil && r.Extra[n-1].Header().Rrtype != dns.TypeOPT {
		t.Fatalf("OPT is not the last record (but for a TSIG)")
	}
}
