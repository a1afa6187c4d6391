package nameserver

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap/zaptest"
)

// TestTSIGClient signs queries for real with miekg/dns's client, over UDP
// and TCP: replns, which has no keys, answers NOTAUTH with an unsigned
// BADKEY TSIG, which the client then cannot verify.
func TestTSIGClient(t *testing.T) {
	h, err := NewHandler(testConfig(), emptySource{}, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			c := &dns.Client{Net: network, Timeout: 5 * time.Second,
				TsigSecret: map[string]string{"key.": "c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IQ=="}}
			m := new(dns.Msg)
			m.SetQuestion("blog.alice.repl.test.", dns.TypeA)
			m.SetEdns0(1232, false)
			m.SetTsig("key.", dns.HmacSHA256, 300, time.Now().Unix())
			req := m.Copy() // Exchange takes the TSIG off m
			r, _, err := c.Exchange(m, addr)
			if r == nil {
				t.Fatalf("no reply: %v", err)
			}
			if err == nil {
				t.Error("the client verified an unsigned TSIG")
			}
			if r.Rcode != dns.RcodeNotAuth || len(r.Answer)+len(r.Ns) != 0 || r.IsEdns0() == nil {
				t.Errorf("reply %v, want NOTAUTH, no records, an OPT", r)
			}
			if len(r.Question) != 1 || r.Question[0] != m.Question[0] {
				t.Errorf("question %v, want %v", r.Question, m.Question)
			}
			checkBadKey(t, req, r)
			t.Logf("the client says: %v", err)
		})
	}
}

// TestTSIGMalformed: a TSIG cut short anywhere, or whose RDATA is shorter
// than its fields, or whose names loop, is FORMERR over UDP and TCP.
func TestTSIGMalformed(t *testing.T) {
	h, err := NewHandler(testConfig(), emptySource{}, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	sc := h.scratch.New().(*scratch)
	check := func(t *testing.T, msg []byte, want int) {
		t.Helper()
		for _, tcp := range []bool{false, true} {
			out := h.respond(context.Background(), sc, msg, netip.MustParseAddr("192.0.2.1"), tcp)
			if out == nil {
				t.Fatal("no reply")
			}
			checkWellFormed(t, msg, out, tcp)
			r := new(dns.Msg)
			if err := r.Unpack(out); err != nil {
				t.Fatal(err)
			}
			if r.Rcode != want || want == dns.RcodeFormatError && r.IsTsig() != nil {
				t.Fatalf("rcode %s (TSIG %v), want %s\n% x", dns.RcodeToString[r.Rcode], r.IsTsig() != nil, dns.RcodeToString[want], msg)
			}
		}
	}
	for _, wire := range tsigSeeds(t) {
		check(t, wire.msg, dns.RcodeNotAuth)
		// Cut short anywhere in the TSIG record.
		for n := wire.at; n < len(wire.msg); n++ {
			check(t, wire.msg[:n], dns.RcodeFormatError)
		}
		// RDLENGTH shorter than the fields, the message cut there.
		rdlen := wire.at + 5 + 8 // owner "key." (5 octets), type, class, TTL
		full := int(binary.BigEndian.Uint16(wire.msg[rdlen:]))
		for k := range full {
			m := append([]byte(nil), wire.msg[:rdlen+2+k]...)
			binary.BigEndian.PutUint16(m[rdlen:], uint16(k))
			check(t, m, dns.RcodeFormatError)
		}
	}
	// An owner name that points to itself, and one that points forward.
	for _, ptr := range []uint16{0, 2} {
		w := tsigSeeds(t)[0]
		m := append([]byte(nil), w.msg[:w.at]...)
		m = binary.BigEndian.AppendUint16(m, 0xC000|uint16(w.at)+ptr)
		m = append(m, w.msg[w.at+5:]...)
		check(t, m, dns.RcodeFormatError)
	}
	// A key name compressed against the question is fine, and echoed whole.
	m := new(dns.Msg)
	m.SetQuestion("repl.test.", dns.TypeSOA)
	m.Compress = true
	rr := tsigRR(m, dns.HmacSHA256)
	rr.Hdr.Name = "key.repl.test."
	m.Extra = append(m.Extra, rr)
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	out := h.respond(context.Background(), sc, wire, netip.MustParseAddr("192.0.2.1"), true)
	r := new(dns.Msg)
	if err := r.Unpack(out); err != nil {
		t.Fatal(err)
	}
	if len(wire) >= 12+12+len("key.repl.test.")+1+len(dns.HmacSHA256)+1+26+32 {
		t.Fatalf("the key name was not compressed: % x", wire)
	}
	checkBadKey(t, m, r)
}

// tsigSeed is a query with a TSIG record, and where that record starts.
type tsigSeed struct {
	msg []byte
	at  int
}

// tsigSeeds are queries signed (with key "key.") with and without EDNS.
func tsigSeeds(t testing.TB) []tsigSeed {
	var out []tsigSeed
	for _, edns := range []bool{false, true} {
		m := new(dns.Msg)
		m.SetQuestion("blog.alice.repl.test.", dns.TypeA)
		if edns {
			m.SetEdns0(1232, false)
		}
		unsigned, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		m.Extra = append(m.Extra, tsigRR(m, dns.HmacSHA256))
		wire, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tsigSeed{wire, len(unsigned)})
	}
	return out
}

// TestTSIGNoAllocs: reading a TSIG and writing the BADKEY reply allocate
// nothing.
func TestTSIGNoAllocs(t *testing.T) {
	h, err := NewHandler(testConfig(), emptySource{}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.cfg.QueryLogEvery = 0
	sc := h.scratch.New().(*scratch)
	msg := tsigSeeds(t)[1].msg
	client := netip.MustParseAddr("192.0.2.1")
	if n := testing.AllocsPerRun(100, func() { h.respond(context.Background(), sc, msg, client, false) }); n != 0 {
		t.Errorf("%v allocations a query", n)
	}
}
