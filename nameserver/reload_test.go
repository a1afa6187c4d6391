package nameserver

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap/zaptest"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// closingStore records that its store was closed.
type closingStore struct {
	store.Store
	addr   string
	closed func(addr string)
}

func (s *closingStore) Close() error {
	s.closed(s.addr)
	return s.Store.Close()
}

// TestClustersSetRegistry: a registry reload adds a cluster (its repls
// are answered once its store is open), moves one to another store (that
// cluster's part restarts: the old store closes, the new one answers),
// and removes one (its store is closed before SetRegistry returns, its
// repls are no longer answered), while the other clusters keep answering;
// goleak (TestMain) checks that nothing is left running.
func TestClustersSetRegistry(t *testing.T) {
	path := writeWorld(t, map[string]string{
		"east.yaml": eastStore, "west.yaml": westStore, "clusters.yaml": testRegistry,
		"north.yaml":  "repls:\n  - {id: r7, owner: dave, slug: new, endpoints: [127.0.0.1:9007]}\n",
		"west2.yaml":  "repls:\n  - {id: r8, owner: erin, slug: moved, endpoints: [127.0.0.1:9008]}\n",
		"three.yaml":  testRegistry + "  - {name: north, proxy_ipv4: [203.0.113.7], forward: \"10.2.0.10:8443\", store: north.yaml}\n",
		"west2-.yaml": strings.Replace(testRegistry, "store: west.yaml", "store: west2.yaml", 1),
	})
	dir := filepath.Dir(path)
	var mu sync.Mutex
	var closed []string
	cfg := ClustersConfig{Open: func(ctx context.Context, addr string) (store.Store, error) {
		st, err := cluster.Open(ctx, addr, cluster.OpenOptions{})
		if err != nil {
			return nil, err
		}
		return &closingStore{Store: st, addr: filepath.Base(addr), closed: func(a string) {
			mu.Lock()
			defer mu.Unlock()
			closed = append(closed, a)
		}}, nil
	}}
	closedStores := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(closed)
	}
	c := startClusters(t, path, cfg)
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	setRegistry := func(file string) (added, removed, restarted []string) {
		t.Helper()
		reg, err := cluster.Load(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		added, removed, restarted, err = c.SetRegistry(reg)
		if err != nil {
			t.Fatal(err)
		}
		h.SetClusters(reg.Clusters)
		return added, removed, restarted
	}
	if got := answerA(ask(t, addr, "new.dave.repl.test.", dns.TypeA)); got != "NXDOMAIN" {
		t.Fatalf("north's repl before north is in the registry: %s", got)
	}

	if added, removed, restarted := setRegistry("three.yaml"); !slices.Equal(added, []string{"north"}) || removed != nil || restarted != nil {
		t.Fatalf("adding north: added %v removed %v restarted %v", added, removed, restarted)
	}
	waitAnswer(t, addr, "new.dave.repl.test.", "203.0.113.7", 10*time.Second)
	if got := answerA(ask(t, addr, "blog.alice.repl.test.", dns.TypeA)); got != "192.0.2.10,192.0.2.11" {
		t.Errorf("east's repl after north was added: %s", got)
	}
	if n := len(c.Status()); n != 3 {
		t.Errorf("Status has %d clusters, want 3", n)
	}
	if got := closedStores(); len(got) != 0 {
		t.Errorf("stores closed by adding a cluster: %v", got)
	}

	if added, removed, restarted := setRegistry("west2-.yaml"); added != nil || !slices.Equal(removed, []string{"north"}) || !slices.Equal(restarted, []string{"west"}) {
		t.Fatalf("west to another store, north out: added %v removed %v restarted %v", added, removed, restarted)
	}
	if got := closedStores(); !slices.Contains(got, "north.yaml") || !slices.Contains(got, "west.yaml") || slices.Contains(got, "east.yaml") {
		t.Fatalf("stores closed when SetRegistry returned: %v, want north's and west's old one only", got)
	}
	// West's new store answers once it is open (until then its names are
	// SERVFAIL: it cannot tell); north's repl is then nobody's.
	waitAnswer(t, addr, "moved.erin.repl.test.", "198.51.100.10", 10*time.Second)
	if got := answerA(ask(t, addr, "new.dave.repl.test.", dns.TypeA)); got != "NXDOMAIN" {
		t.Errorf("north's repl after north was removed: %s", got)
	}
	if got := answerA(ask(t, addr, "blog.alice.repl.test.", dns.TypeA)); got != "192.0.2.10,192.0.2.11" {
		t.Errorf("east's repl after the reload: %s", got)
	}

	if _, _, _, err := c.SetRegistry(&cluster.Registry{}); err == nil {
		t.Error("an empty registry was taken")
	}
}

// TestSetStatic: the NS set, its glue and the apex records change with
// SetStatic, seen by the next query; the SOA serial grows by one when they
// change and not otherwise; records that do not check are refused and the
// ones in use keep being answered.
func TestSetStatic(t *testing.T) {
	c := startClusters(t, defaultWorld(t), ClustersConfig{})
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	serial := func() uint32 {
		t.Helper()
		r := exchange(t, "tcp", addr, new(dns.Msg).SetQuestion("repl.test.", dns.TypeSOA))
		if len(r.Answer) != 1 {
			t.Fatalf("SOA: %v", r)
		}
		return r.Answer[0].(*dns.SOA).Serial
	}
	txt := func() string {
		t.Helper()
		r := exchange(t, "tcp", addr, new(dns.Msg).SetQuestion("repl.test.", dns.TypeTXT))
		var out []string
		for _, rr := range r.Answer {
			out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
		}
		return strings.Join(out, "|")
	}
	ns := func() (names, glue []string) {
		t.Helper()
		r := exchange(t, "tcp", addr, new(dns.Msg).SetQuestion("repl.test.", dns.TypeNS))
		for _, rr := range r.Answer {
			names = append(names, rr.(*dns.NS).Ns)
		}
		for _, rr := range r.Extra {
			if a, ok := rr.(*dns.A); ok {
				glue = append(glue, a.Hdr.Name+"="+a.A.String())
			}
		}
		return names, glue
	}
	first := serial()

	nss := []NameServer{{Name: "ns3.repl.test", Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.99")}}}
	apex := Apex{TXT: [][]string{{"v=spf1 include:example.net -all"}}}
	got, changed, err := h.SetStatic(nss, apex)
	if err != nil || !changed || got != first+1 {
		t.Fatalf("SetStatic: serial %d changed %v, %v; want %d", got, changed, err, first+1)
	}
	if s := serial(); s != first+1 {
		t.Errorf("SOA serial after the change: %d, want %d", s, first+1)
	}
	if got := txt(); got != "v=spf1 include:example.net -all" {
		t.Errorf("apex TXT after the change: %q", got)
	}
	if names, glue := ns(); !slices.Equal(names, []string{"ns3.repl.test."}) || !slices.Equal(glue, []string{"ns3.repl.test.=192.0.2.99"}) {
		t.Errorf("NS after the change: %v, glue %v", names, glue)
	}
	if got, changed, err := h.SetStatic(nss, apex); err != nil || changed || got != first+1 {
		t.Errorf("SetStatic with the same records: serial %d changed %v, %v; want %d, unchanged", got, changed, err, first+1)
	}

	// An in-zone name server without glue, an MX that is no name: refused.
	_, _, err = h.SetStatic([]NameServer{{Name: "ns4.repl.test"}}, Apex{MX: []MX{{Exchange: "not a name"}}})
	if err == nil || !strings.Contains(err.Error(), "glue") || !strings.Contains(err.Error(), "MX") {
		t.Fatalf("bad records: %v, want a refusal naming the glue and the MX", err)
	}
	if s, txtNow := serial(), txt(); s != first+1 || txtNow != "v=spf1 include:example.net -all" {
		t.Errorf("after the refusal: serial %d, TXT %q; want the records in use", s, txtNow)
	}
}

// TestParseZoneFile: the zone file's name servers, and errors that say
// which line is wrong.
func TestParseZoneFile(t *testing.T) {
	zf, err := ParseZoneFile("zone.yaml", "repl.test", []byte(`
ns:
  - {name: ns1.repl.test, glue: [192.0.2.53, "2001:db8::53"]}
  - name: ns2.example.net
txt: ["hello"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(zf.NameServers) != 2 || len(zf.NameServers[0].Addrs) != 2 || zf.NameServers[1].Name != "ns2.example.net" || len(zf.Apex.TXT) != 1 {
		t.Fatalf("parsed %+v", zf)
	}
	if zf, err := ParseZoneFile("zone.yaml", "repl.test", []byte("a: [192.0.2.1]\n")); err != nil || zf.NameServers != nil {
		t.Fatalf("a file without ns: %+v, %v; want no name servers (-ns then)", zf, err)
	}

	for _, tc := range []struct{ name, file, want string }{
		{"glue missing", "a: [192.0.2.1]\nns:\n  - {name: ns1.repl.test}\n", "zone.yaml:3: ns[0]: "},
		{"glue outside the zone", "ns:\n  - name: ns1.repl.test\n    glue: [192.0.2.1]\n  - {name: ns2.example.net, glue: [192.0.2.2]}\n", "zone.yaml:4: ns[1]: "},
		{"glue not an address", "ns:\n  - {name: ns1.repl.test, glue: [nope]}\n", "zone.yaml:2: ns[0].glue[0]: \"nope\" is not an IP address"},
		{"twice", "ns:\n  - {name: ns2.example.net}\n  - {name: NS2.example.net.}\n", "zone.yaml:3: ns[1]: name server \"ns2.example.net\" is listed twice"},
		{"bad MX", "mx:\n  - {preference: 1, exchange: mx.example.net}\n  - {preference: 2, exchange: \"bad name\"}\n", "zone.yaml:3: mx[1].exchange: "},
		{"syntax", "a: [192.0.2.1]\ntxt:\n  - \"ok\"\n  - [unclosed\n", "zone.yaml:4: "},
		{"unknown field", "a: [192.0.2.1]\nnameservers: []\n", "line 2: field nameservers not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseZoneFile("zone.yaml", "repl.test", []byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}
