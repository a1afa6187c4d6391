package nameserver

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap/zaptest"
)

func TestConfigErrors(t *testing.T) {
	good := testConfig
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string // in the error; "" for none
	}{
		{"good", func(*Config) {}, ""},
		{"no zone", func(c *Config) { c.Zone = "" }, "zone"},
		{"no name servers", func(c *Config) { c.NameServers = nil }, "at least one NS record"},
		{"in-zone NS without glue", func(c *Config) { c.NameServers[0].Addrs = nil }, "give its addresses (glue)"},
		{"out-of-zone NS with glue", func(c *Config) {
			c.NameServers[1].Addrs = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
		}, "takes no addresses"},
		{"NS two labels deep", func(c *Config) { c.NameServers[0].Name = "a.ns1.repl.test" }, "one label under the zone"},
		{"NS named id", func(c *Config) { c.NameServers[0].Name = "id.repl.test" }, "names repls by id"},
		{"bad NS name", func(c *Config) { c.NameServers[1].Name = "ns_2.example.net" }, "label"},
		{"apex AAAA under A", func(c *Config) { c.Apex.A = []netip.Addr{netip.MustParseAddr("2001:db8::1")} }, "put IPv6 addresses under AAAA"},
		{"TTL too short", func(c *Config) { c.TTL = time.Millisecond }, "TTL"},
		{"cookie secret size", func(c *Config) { c.CookieSecret = []byte("short") }, "must be 16"},
		{"UDP size", func(c *Config) { c.MaxUDPSize = 100 }, "512 to 4096"},
		{"validation zone inside", func(c *Config) { c.ValidationZone = "acme.repl.test" }, "outside the zone"},
		{"bad mailbox", func(c *Config) { c.SOA.Mbox = "me@example.com" }, "user.example.com"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.change(&c)
			_, err := NewHandler(c, emptySource{}, nil, nil, nil)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// parseApex is the apex of ParseZoneFile for no zone in particular.
func parseApex(path string, data []byte) (Apex, error) {
	f, err := ParseZoneFile(path, "", data)
	return f.Apex, err
}

func TestParseApex(t *testing.T) {
	a, err := parseApex("zone.yaml", []byte(`
a: [192.0.2.1]
aaaa: ["2001:db8::1"]
txt:
  - "v=spf1 -all"
  - "`+strings.Repeat("k", 300)+`"
mx:
  - {preference: 10, exchange: mx.example.net}
caa:
  - {tag: issue, value: letsencrypt.org}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(a.A) != 1 || len(a.AAAA) != 1 || len(a.TXT) != 2 || len(a.TXT[1]) != 2 || len(a.MX) != 1 || len(a.CAA) != 1 {
		t.Errorf("parsed %+v", a)
	}

	_, err = parseApex("zone.yaml", []byte(`
a: ["2001:db8::1"]
aaaa: [192.0.2.1]
mx:
  - {preference: 10, exchange: "mx_bad"}
bogus: 1
`))
	if err == nil {
		t.Fatal("no error")
	}
	_, err = parseApex("zone.yaml", []byte(`
a: ["2001:db8::1"]
aaaa: [192.0.2.1]
caa:
  - {tag: "is sue", value: x}
`))
	for _, want := range []string{"zone.yaml:2: a[0]", "put IPv6 addresses under aaaa", "zone.yaml:3: aaaa[0]", "CAA tag"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to say %q", err, want)
		}
	}
}

// TestValidationZone: with a validation zone, challenge names are CNAMEs
// into it, for names that exist.
func TestValidationZone(t *testing.T) {
	c := startClusters(t, defaultWorld(t), ClustersConfig{})
	cfg := testConfig()
	cfg.ValidationZone = "acme.example.net"
	h, err := NewHandler(cfg, c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	for _, tc := range []struct {
		q     string
		t     uint16
		rcode int
		want  string
	}{
		{"_acme-challenge.alice.repl.test.", dns.TypeTXT, dns.RcodeSuccess, "_acme-challenge.alice.repl.test.\t10\tIN\tCNAME\t_acme-challenge.alice.acme.example.net."},
		{"_acme-challenge.r1.id.repl.test.", dns.TypeA, dns.RcodeSuccess, "_acme-challenge.r1.id.repl.test.\t10\tIN\tCNAME\t_acme-challenge.r1.id.acme.example.net."},
		{"_acme-challenge.repl.test.", dns.TypeTXT, dns.RcodeSuccess, "_acme-challenge.repl.test.\t10\tIN\tCNAME\t_acme-challenge.acme.example.net."},
		{"_acme-challenge.ghost.repl.test.", dns.TypeTXT, dns.RcodeNameError, ""},
	} {
		r := ask(t, addr, tc.q, tc.t)
		got := ""
		if len(r.Answer) == 1 {
			got = r.Answer[0].String()
		}
		if r.Rcode != tc.rcode || got != tc.want {
			t.Errorf("%s: %s %q, want %s %q", tc.q, dns.RcodeToString[r.Rcode], got, dns.RcodeToString[tc.rcode], tc.want)
		}
	}
}
