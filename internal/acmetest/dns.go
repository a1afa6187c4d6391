package acmetest

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNS is a small authoritative-looking DNS server for Pebble: TXT records
// from a function (the store's challenge records), A records for the host
// names a test sets (custom domains pointing at the proxy under test), and
// NXDOMAIN for everything else. It counts the questions it gets.
type DNS struct {
	Addr string // host:port (UDP)

	txt func(ctx context.Context, name string) ([]string, error)
	srv *dns.Server

	mu      sync.Mutex
	hosts   map[string]net.IP // lower-case, no trailing dot
	hidden  map[string]bool   // TXT names answered NXDOMAIN whatever txt says
	queries map[string]int    // "TYPE name" → count
}

// StartDNS serves on a free UDP port of 127.0.0.1 until the test ends.
// txt returns the TXT values of a name (without trailing dot).
func StartDNS(t testing.TB, txt func(ctx context.Context, name string) ([]string, error)) *DNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &DNS{Addr: pc.LocalAddr().String(), txt: txt, hosts: map[string]net.IP{}, hidden: map[string]bool{}, queries: map[string]int{}}
	started := make(chan struct{})
	d.srv = &dns.Server{PacketConn: pc, Handler: d, NotifyStartedFunc: func() { close(started) }}
	done := make(chan error, 1)
	go func() { done <- d.srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("dns server: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = d.srv.ShutdownContext(ctx)
		<-done
	})
	return d
}

// SetHost makes name resolve to ip (A).
func (d *DNS) SetHost(name, ip string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hosts[strings.ToLower(name)] = net.ParseIP(ip).To4()
}

// HideTXT makes TXT questions for name get NXDOMAIN: its DNS-01
// validations fail.
func (d *DNS) HideTXT(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hidden[strings.ToLower(name)] = true
}

// Queries returns how many questions of type qtype ("A", "TXT", ...) for
// name it got.
func (d *DNS) Queries(qtype, name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[qtype+" "+strings.ToLower(name)]
}

// ServeDNS implements dns.Handler.
func (d *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
	d.mu.Lock()
	d.queries[dns.TypeToString[q.Qtype]+" "+name]++
	ip, isHost := d.hosts[name]
	hidden := d.hidden[name]
	d.mu.Unlock()

	switch {
	case isHost:
		if q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0}, A: ip})
		}
	case strings.HasPrefix(name, "_acme-challenge.") && !hidden:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		values, err := d.txt(ctx, name)
		cancel()
		if err != nil {
			m.Rcode = dns.RcodeServerFailure
			break
		}
		if q.Qtype == dns.TypeTXT {
			for _, v := range values {
				m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 0}, Txt: []string{v}})
			}
		}
	default:
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}
