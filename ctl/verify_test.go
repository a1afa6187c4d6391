package ctl_test

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// dnsServer is a tiny authoritative server for the tests' domains, on UDP
// and TCP of one loopback port. Its records can be changed while it runs.
type dnsServer struct {
	addr    string
	mu      sync.Mutex
	records []dns.RR
	rcode   int // answer this instead, when not 0
}

func startDNS(t *testing.T) *dnsServer {
	t.Helper()
	s := &dnsServer{}
	// The UDP port the kernel picks may be taken for TCP (an outgoing
	// connection of this machine, say): pick again.
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	s.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: ln, Handler: s}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() {
			if err := srv.Shutdown(); err != nil {
				t.Error(err)
			}
			<-done
		})
	}
	return s
}

// set replaces the records with those given in zone-file syntax.
func (s *dnsServer) set(t *testing.T, rcode int, rrs ...string) {
	t.Helper()
	var parsed []dns.RR
	for _, r := range rrs {
		rr, err := dns.NewRR(r)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, rr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records, s.rcode = parsed, rcode
}

// ServeDNS answers the records of the question's name and type, and the
// name's CNAME, as a resolver would (without chasing it).
func (s *dnsServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rcode != 0 {
		m.Rcode = s.rcode
		_ = w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	exists := false
	for _, rr := range s.records {
		h := rr.Header()
		if !strings.EqualFold(h.Name, q.Name) {
			continue
		}
		exists = true
		if h.Rrtype == q.Qtype || h.Rrtype == dns.TypeCNAME {
			m.Answer = append(m.Answer, rr)
		}
	}
	if !exists {
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

func TestDomainVerify(t *testing.T) {
	ns := startDNS(t)
	f := newFleet(t, "embedded", "east", "west")
	f.ok(t, "repl", "create", "alice/blog", "--cluster", "east", "--endpoint", "10.0.0.5:8080", "--id", "r1")
	token := jsonOf[domainOut](t, f, "domain", "link", "www.example.com", "r1").Token
	f.ok(t, "move", "r1", "--to", "west", "--endpoint", "10.1.0.5:8080") // the domain is in both clusters now
	proof := `"replproxy-verify=` + token + `"`
	verify := []string{"domain", "verify", "www.example.com", "--resolver", ns.addr, "--query-timeout", "2s"}

	for _, tc := range []struct {
		name    string
		rcode   int
		records []string
		code    int
		says    string // stdout when 0, stderr otherwise
	}{
		{"nothing published", 0, nil, 5, "not verified: found no TXT at www.example.com; no TXT at _replproxy.www.example.com; no CNAME at www.example.com"},
		{"wrong token", 0, []string{`www.example.com. 60 IN TXT "replproxy-verify=nope"`, `www.example.com. 60 IN TXT "v=spf1 -all"`}, 5,
			`TXT at www.example.com: "replproxy-verify=nope", "v=spf1 -all"`},
		{"CNAME elsewhere", 0, []string{`www.example.com. 60 IN CNAME blog.example.net.`}, 5, "CNAME at www.example.com to blog.example.net"},
		{"says what to publish", 0, nil, 5, `publish TXT "replproxy-verify=` + token + `" at www.example.com or _replproxy.www.example.com, or a CNAME from www.example.com to r1.id.repl.test`},
		{"resolver fails", dns.RcodeServerFailure, nil, 1, "it answered SERVFAIL"},
		{"TXT at the domain", 0, []string{`www.example.com. 60 IN TXT ` + proof}, 0, "verified by TXT at www.example.com; recorded in east, west"},
		{"TXT split in strings", 0, []string{`www.example.com. 60 IN TXT "replproxy-verify=" "` + token + `"`}, 0, "verified by TXT at www.example.com"},
		{"TXT under _replproxy", 0, []string{`_replproxy.www.example.com. 60 IN TXT ` + proof}, 0, "verified by TXT at _replproxy.www.example.com"},
		{"CNAME to the repl", 0, []string{`www.example.com. 60 IN CNAME R1.id.repl.test.`}, 0, "verified by CNAME at www.example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns.set(t, tc.rcode, tc.records...)
			r := f.run(t, verify...)
			out := r.stderr
			if tc.code == 0 {
				out = r.stdout
			}
			if r.code != tc.code || !strings.Contains(out, tc.says) {
				t.Errorf("want exit %d saying %q; %v", tc.code, tc.says, r)
			}
		})
	}

	ds := jsonOf[[]domainOut](t, f, "domain", "list")
	if len(ds) != 1 || ds[0].VerifiedAt == nil {
		t.Errorf("not recorded as verified: %+v", ds)
	}
	ns.set(t, 0, `www.example.com. 60 IN CNAME r1.id.repl.test.`)
	r := runCtl(t, append([]string{"-registry", f.registry, "-o", "json"}, verify...)...)
	if r.code != 5 || !strings.Contains(r.stderr, "checked only with -zone") {
		t.Errorf("a CNAME without -zone: %v", r)
	}
	f.fails(t, 3, []string{"not linked", "domain link"}, "domain", "verify", "other.example.com", "--resolver", ns.addr)
	f.fails(t, 2, []string{"want HOST:PORT"}, "domain", "verify", "www.example.com", "--resolver", "127.0.0.1")

	// A resolver that does not answer: an error naming it, in good time.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	f.fails(t, 1, []string{"ask resolver " + pc.LocalAddr().String()}, "domain", "verify", "www.example.com", "--resolver", pc.LocalAddr().String(), "--query-timeout", "100ms")
}
