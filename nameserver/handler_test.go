package nameserver

import (
	"encoding/hex"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"go.uber.org/zap/zaptest"
)

// dnsCase is one question and what the reply must be.
type dnsCase struct {
	name    string
	msg     func() *dns.Msg
	udpOnly bool // truncation: over TCP the reply is whole
	tcpOnly bool

	rcode  int
	aa, tc bool
	// Records in presentation form, compared without regard to order or
	// case; additional excludes the OPT and TSIG records.
	answer, ns, extra []string
	opt               bool // the reply carries an OPT record
	check             func(t *testing.T, req, resp *dns.Msg)
}

const (
	soaNeg = "repl.test. 60 IN SOA ns1.repl.test. hostmaster.repl.test. 2026010101 14400 3600 1209600 60"
	soaPos = "repl.test. 3600 IN SOA ns1.repl.test. hostmaster.repl.test. 2026010101 14400 3600 1209600 60"
)

func question(name string, t uint16) func() *dns.Msg {
	return func() *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, t)
		m.RecursionDesired = false
		return m
	}
}

func withEDNS(f func() *dns.Msg, size uint16, opts ...dns.EDNS0) func() *dns.Msg {
	return func() *dns.Msg {
		m := f()
		m.SetEdns0(size, false)
		o := m.IsEdns0()
		o.Option = append(o.Option, opts...)
		return m
	}
}

func modify(f func() *dns.Msg, change func(*dns.Msg)) func() *dns.Msg {
	return func() *dns.Msg {
		m := f()
		change(m)
		return m
	}
}

// tsigTime is the Time Signed of the tests' TSIG records.
const tsigTime = 1_800_000_000

// signed adds a TSIG record (key "key.", the algorithm given) as the last
// additional record. Its MAC is not a real one (replns has no keys): the
// client test signs for real.
func signed(f func() *dns.Msg, alg string) func() *dns.Msg {
	return func() *dns.Msg {
		m := f()
		m.Extra = append(m.Extra, tsigRR(m, alg))
		return m
	}
}

func tsigRR(m *dns.Msg, alg string) *dns.TSIG {
	return &dns.TSIG{
		Hdr:        dns.RR_Header{Name: "key.", Rrtype: dns.TypeTSIG, Class: dns.ClassANY},
		Algorithm:  alg,
		TimeSigned: tsigTime,
		Fudge:      300,
		MACSize:    32,
		MAC:        strings.Repeat("ab", 32),
		OrigId:     m.Id,
	}
}

// checkBadKey checks the TSIG of the reply to a query signed with a key
// replns does not have: unsigned, BADKEY, names and times echoed (RFC
// 8945, 5.2.1 and 5.3.2).
func checkBadKey(t *testing.T, req, r *dns.Msg) {
	t.Helper()
	q, rt := req.IsTsig(), r.IsTsig()
	if rt == nil {
		t.Fatalf("no TSIG as the last record of the reply: %v", r.Extra)
	}
	if !strings.EqualFold(rt.Hdr.Name, q.Hdr.Name) || !strings.EqualFold(rt.Algorithm, q.Algorithm) {
		t.Errorf("TSIG key %q algorithm %q, want %q and %q", rt.Hdr.Name, rt.Algorithm, q.Hdr.Name, q.Algorithm)
	}
	if rt.Hdr.Class != dns.ClassANY || rt.Hdr.Ttl != 0 {
		t.Errorf("TSIG class %d TTL %d, want ANY and 0", rt.Hdr.Class, rt.Hdr.Ttl)
	}
	if rt.Error != dns.RcodeBadKey || rt.MACSize != 0 || rt.MAC != "" || rt.OtherLen != 0 {
		t.Errorf("TSIG error %d MAC %d %q other %d; want BADKEY (17), no MAC, no other data", rt.Error, rt.MACSize, rt.MAC, rt.OtherLen)
	}
	if rt.OrigId != req.Id || rt.TimeSigned != q.TimeSigned || rt.Fudge != q.Fudge {
		t.Errorf("TSIG original id %d time %d fudge %d, want %d, %d, %d", rt.OrigId, rt.TimeSigned, rt.Fudge, req.Id, q.TimeSigned, q.Fudge)
	}
}

func dnsCases() []dnsCase {
	long := strings.Repeat("x", 200)
	apexTXT := []string{
		`repl.test. 3600 IN TXT "v=spf1 -all"`,
		`repl.test. 3600 IN TXT "` + long + `"`,
		`repl.test. 3600 IN TXT "` + long + `y"`,
		`repl.test. 3600 IN TXT "` + long + `z"`,
	}
	return []dnsCase{
		// Repls by name and id.
		{name: "A repl", msg: question("blog.alice.repl.test.", dns.TypeA), aa: true,
			answer: []string{"blog.alice.repl.test. 60 IN A 192.0.2.10", "blog.alice.repl.test. 60 IN A 192.0.2.11"}},
		{name: "AAAA repl", msg: question("blog.alice.repl.test.", dns.TypeAAAA), aa: true,
			answer: []string{"blog.alice.repl.test. 60 IN AAAA 2001:db8::10"}},
		{name: "A repl by id", msg: question("r2.id.repl.test.", dns.TypeA), aa: true,
			answer: []string{"r2.id.repl.test. 60 IN A 192.0.2.10", "r2.id.repl.test. 60 IN A 192.0.2.11"}},
		{name: "moved repl: the tombstone is not an answer", msg: question("api.bob.repl.test.", dns.TypeA), aa: true,
			answer: []string{"api.bob.repl.test. 60 IN A 198.51.100.10"}},
		{name: "move in flight: highest generation wins", msg: question("app.carol.repl.test.", dns.TypeA), aa: true,
			answer: []string{"app.carol.repl.test. 60 IN A 198.51.100.10"}},
		{name: "move in flight by id", msg: question("r5.id.repl.test.", dns.TypeA), aa: true,
			answer: []string{"r5.id.repl.test. 60 IN A 198.51.100.10"}},
		{name: "AAAA where the cluster has none: NODATA", msg: question("api.bob.repl.test.", dns.TypeAAAA), aa: true,
			ns: []string{soaNeg}},
		{name: "CAA at a repl: NODATA", msg: question("blog.alice.repl.test.", dns.TypeCAA), aa: true,
			ns: []string{soaNeg}},
		{name: "MX at a repl: NODATA", msg: question("blog.alice.repl.test.", dns.TypeMX), aa: true,
			ns: []string{soaNeg}},
		{name: "ANY at a repl: RFC 8482", msg: question("blog.alice.repl.test.", dns.TypeANY), aa: true,
			answer: []string{`blog.alice.repl.test. 60 IN HINFO "RFC8482" ""`}},
		{name: "case is echoed exactly", msg: question("bLoG.ALICE.rePl.TeSt.", dns.TypeA), aa: true,
			answer: []string{"blog.alice.repl.test. 60 IN A 192.0.2.10", "blog.alice.repl.test. 60 IN A 192.0.2.11"}},

		// Names that do not exist, and empty non-terminals.
		{name: "unknown slug: NXDOMAIN", msg: question("nope.alice.repl.test.", dns.TypeA), rcode: dns.RcodeNameError, aa: true,
			ns: []string{soaNeg}},
		{name: "unknown owner: NXDOMAIN", msg: question("nobody.repl.test.", dns.TypeA), rcode: dns.RcodeNameError, aa: true,
			ns: []string{soaNeg}},
		{name: "unknown id: NXDOMAIN", msg: question("r404.id.repl.test.", dns.TypeAAAA), rcode: dns.RcodeNameError, aa: true,
			ns: []string{soaNeg}},
		{name: "owner with repls: empty non-terminal", msg: question("alice.repl.test.", dns.TypeA), aa: true,
			ns: []string{soaNeg}},
		{name: "owner whose repls all live elsewhere: ENT", msg: question("bob.repl.test.", dns.TypeTXT), aa: true,
			ns: []string{soaNeg}},
		{name: "id root: empty non-terminal", msg: question("id.repl.test.", dns.TypeA), aa: true,
			ns: []string{soaNeg}},
		{name: "ANY at an ENT: NODATA", msg: question("alice.repl.test.", dns.TypeANY), aa: true,
			ns: []string{soaNeg}},
		{name: "too deep: NXDOMAIN", msg: question("x.blog.alice.repl.test.", dns.TypeA), rcode: dns.RcodeNameError, aa: true,
			ns: []string{soaNeg}},
		{name: "underscore label: NXDOMAIN", msg: question("_foo.repl.test.", dns.TypeA), rcode: dns.RcodeNameError, aa: true,
			ns: []string{soaNeg}},
		{name: "escaped bytes: NXDOMAIN", msg: question(`a\.b.repl.test.`, dns.TypeA), rcode: dns.RcodeNameError, aa: true,
			ns: []string{soaNeg}},

		// DNS-01 challenges.
		{name: "challenge TXT merged from both clusters", msg: question("_acme-challenge.alice.repl.test.", dns.TypeTXT), aa: true,
			answer: []string{`_acme-challenge.alice.repl.test. 10 IN TXT "tok-east"`, `_acme-challenge.alice.repl.test. 10 IN TXT "tok-west"`}},
		{name: "challenge in upper case", msg: question("_ACME-CHALLENGE.Alice.Repl.Test.", dns.TypeTXT), aa: true,
			answer: []string{`_acme-challenge.alice.repl.test. 10 IN TXT "tok-east"`, `_acme-challenge.alice.repl.test. 10 IN TXT "tok-west"`}},
		{name: "challenge for an id", msg: question("_acme-challenge.r3.id.repl.test.", dns.TypeTXT), aa: true,
			answer: []string{`_acme-challenge.r3.id.repl.test. 10 IN TXT "tok-r3"`}},
		{name: "challenge name, other type: NODATA", msg: question("_acme-challenge.alice.repl.test.", dns.TypeA), aa: true,
			ns: []string{soaNeg}},
		{name: "no challenge for an existing name: NXDOMAIN", msg: question("_acme-challenge.bob.repl.test.", dns.TypeTXT),
			rcode: dns.RcodeNameError, aa: true, ns: []string{soaNeg}},
		{name: "challenge under a name that does not exist", msg: question("_acme-challenge.ghost.repl.test.", dns.TypeTXT),
			rcode: dns.RcodeNameError, aa: true, ns: []string{soaNeg}},

		// The apex.
		{name: "SOA", msg: question("repl.test.", dns.TypeSOA), aa: true, answer: []string{soaPos}},
		{name: "NS with glue", msg: question("repl.test.", dns.TypeNS), aa: true,
			answer: []string{"repl.test. 3600 IN NS ns1.repl.test.", "repl.test. 3600 IN NS ns2.example.net."},
			extra:  []string{"ns1.repl.test. 3600 IN A 192.0.2.53", "ns1.repl.test. 3600 IN AAAA 2001:db8::53"}},
		{name: "glue name A", msg: question("ns1.repl.test.", dns.TypeA), aa: true,
			answer: []string{"ns1.repl.test. 3600 IN A 192.0.2.53"}},
		{name: "glue name AAAA", msg: question("NS1.repl.test.", dns.TypeAAAA), aa: true,
			answer: []string{"ns1.repl.test. 3600 IN AAAA 2001:db8::53"}},
		{name: "glue name TXT: NODATA", msg: question("ns1.repl.test.", dns.TypeTXT), aa: true, ns: []string{soaNeg}},
		{name: "apex A", msg: question("repl.test.", dns.TypeA), aa: true, answer: []string{"repl.test. 3600 IN A 192.0.2.1"}},
		{name: "apex AAAA: NODATA", msg: question("repl.test.", dns.TypeAAAA), aa: true, ns: []string{soaNeg}},
		{name: "apex MX", msg: question("repl.test.", dns.TypeMX), aa: true, answer: []string{"repl.test. 3600 IN MX 10 mx.example.net."}},
		{name: "apex CAA", msg: question("repl.test.", dns.TypeCAA), aa: true,
			answer: []string{`repl.test. 3600 IN CAA 0 issue "letsencrypt.org"`}},
		{name: "apex DS: NODATA (the parent holds DS)", msg: question("repl.test.", dns.TypeDS), aa: true, ns: []string{soaNeg}},
		{name: "apex ANY: RFC 8482", msg: question("repl.test.", dns.TypeANY), aa: true,
			answer: []string{`repl.test. 60 IN HINFO "RFC8482" ""`}},
		{name: "apex TXT over EDNS", msg: withEDNS(question("repl.test.", dns.TypeTXT), 1232), aa: true, answer: apexTXT, opt: true},
		{name: "apex TXT without EDNS: truncated to 512", msg: question("repl.test.", dns.TypeTXT), udpOnly: true,
			aa: true, tc: true},
		{name: "apex TXT over TCP without EDNS: whole", msg: question("repl.test.", dns.TypeTXT), tcpOnly: true,
			aa: true, answer: apexTXT},
		{name: "small EDNS buffer respected: TC keeps the OPT", msg: withEDNS(question("repl.test.", dns.TypeTXT), 600),
			udpOnly: true, aa: true, tc: true, opt: true},

		// Refusals and errors.
		{name: "outside the zone: REFUSED", msg: question("www.example.com.", dns.TypeA), rcode: dns.RcodeRefused},
		{name: "the parent: REFUSED", msg: question("test.", dns.TypeNS), rcode: dns.RcodeRefused},
		{name: "the root: REFUSED", msg: question(".", dns.TypeNS), rcode: dns.RcodeRefused},
		{name: "a name ending like the zone: REFUSED", msg: question("notrepl.test.", dns.TypeA), rcode: dns.RcodeRefused},
		{name: "AXFR: REFUSED", msg: question("repl.test.", dns.TypeAXFR), rcode: dns.RcodeRefused},
		{name: "IXFR: REFUSED", msg: question("repl.test.", dns.TypeIXFR), rcode: dns.RcodeRefused},
		{name: "CHAOS class: REFUSED", msg: modify(question("version.bind.", dns.TypeTXT), func(m *dns.Msg) {
			m.Question[0].Qclass = dns.ClassCHAOS
		}), rcode: dns.RcodeRefused},
		{name: "NOTIFY: NOTIMP", msg: modify(question("repl.test.", dns.TypeSOA), func(m *dns.Msg) {
			m.Opcode = dns.OpcodeNotify
		}), rcode: dns.RcodeNotImplemented},
		{name: "UPDATE: NOTIMP", msg: modify(question("repl.test.", dns.TypeSOA), func(m *dns.Msg) {
			m.Opcode = dns.OpcodeUpdate
		}), rcode: dns.RcodeNotImplemented},
		{name: "two questions: FORMERR", msg: modify(question("repl.test.", dns.TypeSOA), func(m *dns.Msg) {
			m.Question = append(m.Question, m.Question[0])
		}), rcode: dns.RcodeFormatError},
		{name: "no question: FORMERR", msg: modify(question("repl.test.", dns.TypeSOA), func(m *dns.Msg) {
			m.Question = nil
		}), rcode: dns.RcodeFormatError},
		{name: "an answer in a query: FORMERR", msg: modify(question("repl.test.", dns.TypeSOA), func(m *dns.Msg) {
			rr, _ := dns.NewRR("repl.test. 60 IN A 192.0.2.1")
			m.Answer = []dns.RR{rr}
		}), rcode: dns.RcodeFormatError},

		// EDNS.
		{name: "EDNS version 1: BADVERS", msg: modify(withEDNS(question("blog.alice.repl.test.", dns.TypeA), 1232), func(m *dns.Msg) {
			m.IsEdns0().SetVersion(1)
		}), rcode: dns.RcodeBadVers, opt: true, check: func(t *testing.T, _, r *dns.Msg) {
			if v := r.IsEdns0().Version(); v != 0 {
				t.Errorf("OPT version %d, want 0", v)
			}
		}},
		{name: "unknown options ignored, not echoed", msg: withEDNS(question("blog.alice.repl.test.", dns.TypeA), 1232,
			&dns.EDNS0_LOCAL{Code: 65001, Data: []byte{1, 2, 3}}, &dns.EDNS0_NSID{Code: dns.EDNS0NSID}),
			aa: true, opt: true,
			answer: []string{"blog.alice.repl.test. 60 IN A 192.0.2.10", "blog.alice.repl.test. 60 IN A 192.0.2.11"},
			check: func(t *testing.T, _, r *dns.Msg) {
				if o := r.IsEdns0().Option; len(o) != 0 {
					t.Errorf("options echoed: %v", o)
				}
			}},
		{name: "DO bit echoed", msg: modify(withEDNS(question("repl.test.", dns.TypeSOA), 1232), func(m *dns.Msg) {
			m.IsEdns0().SetDo()
		}), aa: true, opt: true, answer: []string{soaPos}, check: func(t *testing.T, _, r *dns.Msg) {
			if !r.IsEdns0().Do() {
				t.Error("DO not echoed")
			}
		}},
		{name: "OPT advertises our size", msg: withEDNS(question("repl.test.", dns.TypeSOA), 4096), aa: true, opt: true,
			answer: []string{soaPos}, check: func(t *testing.T, _, r *dns.Msg) {
				if s := r.IsEdns0().UDPSize(); s != DefaultMaxUDPSize {
					t.Errorf("advertised %d, want %d", s, DefaultMaxUDPSize)
				}
			}},
		{name: "client cookie: server cookie added", msg: withEDNS(question("blog.alice.repl.test.", dns.TypeA), 1232,
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}), aa: true, opt: true,
			answer: []string{"blog.alice.repl.test. 60 IN A 192.0.2.10", "blog.alice.repl.test. 60 IN A 192.0.2.11"},
			check:  checkCookie},
		{name: "cookie of a bad length: FORMERR", msg: withEDNS(question("blog.alice.repl.test.", dns.TypeA), 1232,
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405"}), rcode: dns.RcodeFormatError, opt: true},
		{name: "cookie-only query without a question", msg: modify(withEDNS(question("repl.test.", dns.TypeSOA), 1232,
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}), func(m *dns.Msg) { m.Question = nil }),
			opt: true, check: checkCookie},
		// TSIG: replns has no keys, so every key is unknown.
		{name: "TSIG: NOTAUTH, BADKEY", msg: signed(question("blog.alice.repl.test.", dns.TypeA), dns.HmacSHA256),
			rcode: dns.RcodeNotAuth, check: checkBadKey},
		{name: "TSIG after OPT: NOTAUTH, BADKEY, OPT kept", msg: signed(withEDNS(question("blog.alice.repl.test.", dns.TypeA), 1232,
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}), dns.HmacSHA512),
			rcode: dns.RcodeNotAuth, opt: true, check: func(t *testing.T, req, r *dns.Msg) {
				checkBadKey(t, req, r)
				checkCookie(t, req, r)
				if n := len(r.Extra); n != 2 || r.Extra[0].Header().Rrtype != dns.TypeOPT {
					t.Errorf("additional %v, want OPT then TSIG", r.Extra)
				}
			}},
		{name: "TSIG of an unknown algorithm: BADKEY", msg: signed(question("repl.test.", dns.TypeSOA), "hmac-nope.example."),
			rcode: dns.RcodeNotAuth, check: checkBadKey},
		{name: "TSIG with EDNS version 1: NOTAUTH first", msg: signed(modify(withEDNS(question("repl.test.", dns.TypeSOA), 1232),
			func(m *dns.Msg) { m.IsEdns0().SetVersion(1) }), dns.HmacSHA256),
			rcode: dns.RcodeNotAuth, opt: true, check: checkBadKey},
		{name: "TSIG before OPT: FORMERR", msg: modify(withEDNS(question("repl.test.", dns.TypeSOA), 1232), func(m *dns.Msg) {
			m.Extra = append([]dns.RR{tsigRR(m, dns.HmacSHA256)}, m.Extra...)
		}), rcode: dns.RcodeFormatError},
		{name: "two TSIGs: FORMERR", msg: modify(question("repl.test.", dns.TypeSOA), func(m *dns.Msg) {
			m.Extra = append(m.Extra, tsigRR(m, dns.HmacSHA256), tsigRR(m, dns.HmacSHA256))
		}), rcode: dns.RcodeFormatError},
		{name: "TSIG of class IN: FORMERR", msg: modify(question("repl.test.", dns.TypeSOA), func(m *dns.Msg) {
			rr := tsigRR(m, dns.HmacSHA256)
			rr.Hdr.Class = dns.ClassINET
			m.Extra = append(m.Extra, rr)
		}), rcode: dns.RcodeFormatError},

		{name: "wrong server cookie: answered with a fresh one", msg: withEDNS(question("blog.alice.repl.test.", dns.TypeA), 1232,
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708" + "01000000" + "00000001" + "1122334455667788"}),
			aa: true, opt: true,
			answer: []string{"blog.alice.repl.test. 60 IN A 192.0.2.10", "blog.alice.repl.test. 60 IN A 192.0.2.11"},
			check:  checkCookie},
	}
}

// checkCookie checks the reply's COOKIE: the client's 8 octets and a
// 16-octet server cookie of version 1.
func checkCookie(t *testing.T, req, r *dns.Msg) {
	t.Helper()
	var got string
	for _, o := range r.IsEdns0().Option {
		if c, ok := o.(*dns.EDNS0_COOKIE); ok {
			got = c.Cookie
		}
	}
	b, err := hex.DecodeString(got)
	if err != nil || len(b) != 24 {
		t.Fatalf("reply cookie %q: want 24 octets", got)
	}
	if hex.EncodeToString(b[:8]) != "0102030405060708" || b[8] != 1 {
		t.Errorf("reply cookie %q: want the client cookie and a version 1 server cookie", got)
	}
}

// norm puts records in one form for comparison.
func norm(t *testing.T, rrs []string) []string {
	t.Helper()
	out := make([]string, 0, len(rrs))
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("bad expectation %q: %v", s, err)
		}
		out = append(out, strings.ToLower(rr.String()))
	}
	slices.Sort(out)
	return out
}

func strs(rrs []dns.RR) []string {
	out := make([]string, 0, len(rrs))
	for _, rr := range rrs {
		if t := rr.Header().Rrtype; t == dns.TypeOPT || t == dns.TypeTSIG {
			continue // checked on their own
		}
		out = append(out, strings.ToLower(rr.String()))
	}
	slices.Sort(out)
	return out
}

// TestAnswers asks every question of the table over real UDP and TCP
// sockets.
func TestAnswers(t *testing.T) {
	c := startClusters(t, defaultWorld(t), ClustersConfig{})
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			for _, tc := range dnsCases() {
				if tc.udpOnly && network == "tcp" || tc.tcpOnly && network == "udp" {
					continue
				}
				t.Run(tc.name, func(t *testing.T) {
					req := tc.msg()
					r := exchange(t, network, addr, req)
					checkReply(t, tc, req, r)
				})
			}
		})
	}
}

func checkReply(t *testing.T, tc dnsCase, req, r *dns.Msg) {
	t.Helper()
	if r.Id != req.Id || !r.Response {
		t.Errorf("id %d response %v; want id %d, a response", r.Id, r.Response, req.Id)
	}
	if r.Rcode != tc.rcode {
		t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
	}
	if r.Authoritative != tc.aa || r.Truncated != tc.tc {
		t.Errorf("AA %v TC %v, want AA %v TC %v", r.Authoritative, r.Truncated, tc.aa, tc.tc)
	}
	if r.RecursionAvailable || r.Opcode != req.Opcode || r.RecursionDesired != req.RecursionDesired {
		t.Errorf("RA %v opcode %d RD %v; want RA off and opcode and RD copied", r.RecursionAvailable, r.Opcode, r.RecursionDesired)
	}
	if len(req.Question) == 1 && tc.rcode != dns.RcodeFormatError {
		if len(r.Question) != 1 || r.Question[0] != req.Question[0] {
			t.Errorf("question %v, want %v exactly", r.Question, req.Question)
		}
	}
	for _, s := range []struct {
		name      string
		got, want []string
	}{{"answer", strs(r.Answer), norm(t, tc.answer)}, {"authority", strs(r.Ns), norm(t, tc.ns)}, {"additional", strs(r.Extra), norm(t, tc.extra)}} {
		if !slices.Equal(s.got, s.want) {
			t.Errorf("%s:\n got %q\nwant %q", s.name, s.got, s.want)
		}
	}
	if (r.IsEdns0() != nil) != tc.opt {
		t.Errorf("OPT in reply: %v, want %v", r.IsEdns0() != nil, tc.opt)
	}
	if got, want := r.IsTsig() != nil, tc.rcode == dns.RcodeNotAuth; got != want {
		t.Errorf("TSIG in reply: %v, want %v", got, want)
	}
	if tc.check != nil {
		tc.check(t, req, r)
	}
}

// TestServeDNS runs the table through ServeDNS with a recorder, as a
// dns.Handler is used by miekg/dns's own server.
func TestServeDNS(t *testing.T) {
	c := startClusters(t, defaultWorld(t), ClustersConfig{})
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range dnsCases() {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.msg()
			wire, err := req.Pack()
			if err != nil {
				t.Fatal(err)
			}
			in := new(dns.Msg)
			if err := in.Unpack(wire); err != nil {
				t.Skipf("miekg/dns cannot unpack it: %v", err)
			}
			w := &recorder{udp: !tc.tcpOnly}
			h.ServeDNS(w, in)
			if w.msg == nil {
				t.Fatal("no reply")
			}
			r := new(dns.Msg)
			if err := r.Unpack(w.msg); err != nil {
				t.Fatalf("reply does not unpack: %v", err)
			}
			checkReply(t, tc, req, r)
		})
	}
}

// recorder is a dns.ResponseWriter that keeps what is written.
type recorder struct {
	udp bool
	msg []byte
}

var (
	recorderUDP = [2]net.Addr{&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 99), Port: 40000}}
	recorderTCP = [2]net.Addr{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 99), Port: 40000}}
)

func (r *recorder) LocalAddr() net.Addr {
	if r.udp {
		return recorderUDP[0]
	}
	return recorderTCP[0]
}

func (r *recorder) RemoteAddr() net.Addr {
	if r.udp {
		return recorderUDP[1]
	}
	return recorderTCP[1]
}

func (r *recorder) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	r.msg = b
	return err
}

func (r *recorder) Write(b []byte) (int, error) {
	r.msg = append(r.msg[:0], b...)
	return len(b), nil
}

func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

var _ dns.ResponseWriter = (*recorder)(nil)
