package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/nameserver"
	"github.com/replproxy/replproxy/platformtest"
	"github.com/replproxy/replproxy/store"
)

// The DNS world of the e2e tests: two clusters with embedded stores.
const (
	dnsEast = `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001]}
  - {id: r5, owner: carol, slug: app, endpoints: [127.0.0.1:9005], generation: 1}
challenges:
  - {name: _acme-challenge.alice.repl.test, value: tok-east, expires_at: 2099-01-01T00:00:00Z}
`
	dnsWest = `
repls:
  - {id: r3, owner: bob, slug: api, endpoints: [127.0.0.1:9003]}
  - {id: r5, owner: carol, slug: app, endpoints: [127.0.0.1:9105], generation: 2}
challenges:
  - {name: _acme-challenge.alice.repl.test, value: tok-west, expires_at: 2099-01-01T00:00:00Z}
`
	dnsRegistry = `
clusters:
  - name: east
    proxy_ipv4: [192.0.2.10]
    proxy_ipv6: ["2001:db8::10"]
    forward: 10.0.0.10:8443
    store: %s
  - name: west
    proxy_ipv4: [198.51.100.10]
    forward: 10.1.0.10:8443
    store: %s
`
	dnsZoneFile = `
a: [192.0.2.1]
txt:
  - "v=spf1 -all"
  - "%s"
  - "%sy"
  - "%sz"
caa:
  - {tag: issue, value: letsencrypt.org}
`
)

const (
	soaNeg = "repl.test. 60 IN SOA ns1.repl.test. hostmaster.repl.test. 7 14400 3600 1209600 60"
	soaPos = "repl.test. 3600 IN SOA ns1.repl.test. hostmaster.repl.test. 7 14400 3600 1209600 60"
)

// replnsArgs are the flags of the zone of these tests.
func replnsArgs(registry, zoneFile string) []string {
	return append([]string{"-zone", "repl.test", "-registry", registry}, zoneArgs(zoneFile)...)
}

// zoneArgs are the flags of the zone of these tests but its name and
// registry.
func zoneArgs(zoneFile string) []string {
	return []string{"-zone-file", zoneFile,
		"-ns", "ns1.repl.test=192.0.2.53+2001:db8::53,ns2.example.net",
		"-soa-serial", "7", "-rrl-rate", "0",
	}
}

// TestDNSWithDigAndKdig asks replns the questions of the nameserver
// package's table with dig and kdig.
func TestDNSWithDigAndKdig(t *testing.T) {
	long := strings.Repeat("x", 200)
	dir := writeFiles(t, map[string]string{
		"east.yaml":     dnsEast,
		"west.yaml":     dnsWest,
		"clusters.yaml": fmt.Sprintf(dnsRegistry, "east.yaml", "west.yaml"),
		"zone.yaml":     fmt.Sprintf(dnsZoneFile, long, long, long),
	})
	ns := startReplns(t, replnsArgs(filepath.Join(dir, "clusters.yaml"), filepath.Join(dir, "zone.yaml"))...)

	type tc struct {
		name   string
		args   []string // the question and options, for both tools
		dig    []string // options for dig only (nil: as args)
		kdig   []string // options for kdig only (nil: as args)
		status string
		flags  []string // must be set
		unset  []string // must not be set
		want   []string // every record (nil: do not compare)
		raw    string   // in the output, for dig
	}
	cases := []tc{
		{name: "A repl", args: []string{"blog.alice.repl.test", "A"}, status: "NOERROR", flags: []string{"aa"},
			want: []string{"blog.alice.repl.test. 60 IN A 192.0.2.10"}},
		{name: "AAAA repl", args: []string{"blog.alice.repl.test", "AAAA"}, status: "NOERROR", flags: []string{"aa"},
			want: []string{"blog.alice.repl.test. 60 IN AAAA 2001:db8::10"}},
		{name: "by id", args: []string{"r3.id.repl.test", "A"}, status: "NOERROR", flags: []string{"aa"},
			want: []string{"r3.id.repl.test. 60 IN A 198.51.100.10"}},
		{name: "move in flight: highest generation", args: []string{"app.carol.repl.test", "A"}, status: "NOERROR",
			want: []string{"app.carol.repl.test. 60 IN A 198.51.100.10"}},
		{name: "NODATA", args: []string{"api.bob.repl.test", "AAAA"}, status: "NOERROR", flags: []string{"aa"},
			want: []string{soaNeg}},
		{name: "CAA at a repl: NODATA", args: []string{"blog.alice.repl.test", "CAA"}, status: "NOERROR", want: []string{soaNeg}},
		{name: "NXDOMAIN", args: []string{"nope.alice.repl.test", "A"}, status: "NXDOMAIN", flags: []string{"aa"},
			want: []string{soaNeg}},
		{name: "empty non-terminal", args: []string{"alice.repl.test", "A"}, status: "NOERROR", want: []string{soaNeg}},
		{name: "id root", args: []string{"id.repl.test", "TXT"}, status: "NOERROR", want: []string{soaNeg}},
		{name: "challenge", args: []string{"_acme-challenge.alice.repl.test", "TXT"}, status: "NOERROR", flags: []string{"aa"},
			want: []string{`_acme-challenge.alice.repl.test. 10 IN TXT "tok-east"`, `_acme-challenge.alice.repl.test. 10 IN TXT "tok-west"`}},
		{name: "SOA", args: []string{"repl.test", "SOA"}, status: "NOERROR", want: []string{soaPos}},
		{name: "NS and glue", args: []string{"repl.test", "NS"}, status: "NOERROR", want: []string{
			"ns1.repl.test. 3600 IN A 192.0.2.53", "ns1.repl.test. 3600 IN AAAA 2001:db8::53",
			"repl.test. 3600 IN NS ns1.repl.test.", "repl.test. 3600 IN NS ns2.example.net."}},
		{name: "apex CAA", args: []string{"repl.test", "CAA"}, status: "NOERROR",
			want: []string{`repl.test. 3600 IN CAA 0 issue "letsencrypt.org"`}},
		{name: "ANY", args: []string{"blog.alice.repl.test", "ANY"}, status: "NOERROR",
			want: []string{`blog.alice.repl.test. 60 IN HINFO "RFC8482" ""`}},
		{name: "outside the zone", args: []string{"www.example.com", "A"}, status: "REFUSED", unset: []string{"aa"}, want: []string{}},
		{name: "case echoed", args: []string{"bLoG.ALICE.rePl.TeSt", "A"}, status: "NOERROR", raw: "bLoG.ALICE.rePl.TeSt.",
			want: []string{"blog.alice.repl.test. 60 IN A 192.0.2.10"}},
		{name: "truncated without EDNS", args: []string{"repl.test", "TXT"},
			dig: []string{"+noedns", "+ignore"}, kdig: []string{"+noedns", "+ignore"},
			status: "NOERROR", flags: []string{"aa", "tc"}, want: []string{}},
		{name: "truncated, retried over TCP", args: []string{"repl.test", "TXT"}, dig: []string{"+noedns"}, kdig: []string{"+noedns"},
			status: "NOERROR", unset: []string{"tc"}},
		{name: "BADVERS", args: []string{"blog.alice.repl.test", "A"}, dig: []string{"+edns=1", "+noednsneg"}, kdig: []string{"+edns=1"},
			status: "BADVERS"},
		{name: "over TCP", args: []string{"blog.alice.repl.test", "A", "+tcp"}, status: "NOERROR",
			want: []string{"blog.alice.repl.test. 60 IN A 192.0.2.10"}},
		{name: "cookie verified by dig", args: []string{"blog.alice.repl.test", "A"}, dig: []string{"+cookie"}, kdig: []string{"+cookie"},
			status: "NOERROR", raw: "(good)"},
	}
	for _, tool := range []struct{ name, pkg string }{{"dig", "dnsutils"}, {"kdig", "knot-dnsutils"}} {
		t.Run(tool.name, func(t *testing.T) {
			have(t, tool.name, tool.pkg)
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					args := slices.Clone(c.args)
					switch {
					case tool.name == "dig" && c.dig != nil:
						args = append(args, c.dig...)
					case tool.name == "kdig" && c.kdig != nil:
						args = append(args, c.kdig...)
					}
					r := query(t, tool.name, ns.addr, args...)
					if r.status != c.status {
						t.Errorf("status %q, want %q\n%s", r.status, c.status, r.raw)
					}
					for _, f := range c.flags {
						if !r.hasFlag(f) {
							t.Errorf("flag %s not set (%v)\n%s", f, r.flags, r.raw)
						}
					}
					for _, f := range c.unset {
						if r.hasFlag(f) {
							t.Errorf("flag %s set\n%s", f, r.raw)
						}
					}
					if c.want != nil {
						want := slices.Clone(c.want)
						slices.Sort(want)
						if !slices.Equal(r.records, want) {
							t.Errorf("records\n got %q\nwant %q\n%s", r.records, want, r.raw)
						}
					}
					if c.raw != "" && tool.name == "dig" && !strings.Contains(r.raw, c.raw) {
						t.Errorf("output lacks %q\n%s", c.raw, r.raw)
					}
				})
			}
		})
	}
}

// TestDNSMoveAndOutage runs replns over two PostgreSQL clusters on servers
// of their own: a move shows once replns's move hold has passed, within a
// second more, and stopping a cluster's
// database keeps its known repls answered.
func TestDNSMoveAndOutage(t *testing.T) {
	have(t, "dig", "dnsutils")
	ctx := context.Background()
	zone := writeFiles(t, map[string]string{"zone.yaml": "a: [192.0.2.1]\n"})
	p := start(t, platformtest.Options{Store: platformtest.Postgres, DNSFlags: zoneArgs(filepath.Join(zone, "zone.yaml"))})
	east, west := p.Cluster(t, "east").Store, p.Cluster(t, "west").Store
	eastIP, westIP := p.Cluster(t, "east").IP, p.Cluster(t, "west").IP
	for _, r := range []store.Repl{
		{ID: "r1", Owner: "alice", Slug: "blog"},
		{ID: "r2", Owner: "alice", Slug: "shop"},
	} {
		r.Endpoints = []string{"127.0.0.1:9000"}
		if _, err := east.CreateRepl(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	ns := p.DNSAddr()

	a := func(name string) string {
		r := query(t, "dig", ns, name, "A")
		if r.status != "NOERROR" || len(r.records) == 0 {
			return r.status
		}
		f := strings.Fields(r.records[0])
		return f[len(f)-1]
	}
	// Created a moment ago: replns learns of them by NOTIFY.
	for deadline := time.Now().Add(time.Second); a("blog.alice.repl.test") != eastIP && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := a("blog.alice.repl.test"); got != eastIP {
		t.Fatalf("before the move: %s", got)
	}

	// Move blog.alice from east to west (replctl move's steps 1 and 2).
	r, err := east.GetRepl(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	r.Generation++
	start := time.Now()
	if _, err := west.Activate(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := east.Retire(ctx, r.ID, "west", r.Generation); err != nil {
		t.Fatal(err)
	}
	// replns holds the destination back for its move hold (west's proxies
	// may not know the repl yet: README, "Moves and DNS"), then answers it.
	hold := nameserver.DefaultMoveHold
	for a("blog.alice.repl.test") != westIP {
		if time.Since(start) > hold+time.Second {
			t.Fatalf("the move did not show within %v", hold+time.Second)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if took := time.Since(start); took < hold {
		t.Fatalf("the move showed after %v, before replns's %v move hold", took, hold)
	}
	t.Logf("the move showed after %v (the hold: %v)", time.Since(start), hold)

	// East's database goes down: shop.alice (never asked, known to the
	// index) and blog.alice (west) still resolve.
	p.StopDatabase(t, "east")
	for name, want := range map[string]string{
		"shop.alice.repl.test": eastIP,
		"r2.id.repl.test":      eastIP,
		"blog.alice.repl.test": westIP,
		"nope.alice.repl.test": "NXDOMAIN",
	} {
		if got := a(name); got != want {
			t.Errorf("with east down, %s: %s, want %s", name, got, want)
		}
	}
}
