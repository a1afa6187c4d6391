package cluster_test

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/dsn"
	"github.com/replproxy/replproxy/store"
)

func TestLoadRegistry(t *testing.T) {
	const path = "testdata/clusters.yaml"
	r, err := cluster.Load(path)
	if err != nil {
		t.Fatalf("LoadRegistry: %v", err)
	}
	westDB, err := filepath.Abs("testdata/west.db")
	if err != nil {
		t.Fatal(err)
	}
	want := &cluster.Registry{Clusters: []cluster.Cluster{
		{
			Name:      "east",
			ProxyIPv4: []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")},
			ProxyIPv6: []netip.Addr{netip.MustParseAddr("2001:db8::10")},
			Forward:   "10.0.0.10:8443",
			Store:     "postgres://replproxy@db-east/replproxy?sslmode=require",
		},
		{
			Name:      "west",
			ProxyIPv6: []netip.Addr{netip.MustParseAddr("2001:db8:1::10"), netip.MustParseAddr("2001:db8:1::11")},
			Forward:   "proxy.west.internal:8443",
			Store:     westDB,
		},
		{
			Name:      "demo-3",
			ProxyIPv4: []netip.Addr{netip.MustParseAddr("127.0.0.3")},
			Forward:   "[::1]:9443",
			Store:     "/var/lib/replproxy/demo-3.db",
		},
	}}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("LoadRegistry(%q) =\n%+v\nwant\n%+v", path, r, want)
	}

	if got, want := r.Names(), []string{"east", "west", "demo-3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Names() = %q, want %q", got, want)
	}
	for _, name := range []string{"west", "WEST"} {
		if c, ok := r.Cluster(name); !ok || c.Name != "west" {
			t.Errorf("Cluster(%q) = %+v, %v; want west", name, c, ok)
		}
	}
	if c, ok := r.Cluster("north"); ok {
		t.Errorf("Cluster(%q) = %+v, true; want false", "north", c)
	}
}

func TestLoadRegistryMissingFile(t *testing.T) {
	_, err := cluster.Load("testdata/nope.yaml")
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, store.ErrInvalid) {
		t.Fatalf("LoadRegistry(missing file) = %v; want fs.ErrNotExist, not ErrInvalid", err)
	}
	if !strings.Contains(err.Error(), "testdata/nope.yaml") {
		t.Errorf("error %q does not name the file", err)
	}
}

// TestParseRegistryRelativeStore checks that relative store paths are
// taken from the registry file's folder, not the current directory.
func TestParseRegistryRelativeStore(t *testing.T) {
	dir := t.TempDir()
	data := []byte("clusters:\n  - name: a\n    proxy_ipv4: [192.0.2.1]\n    forward: a:1\n    store: ../data/a.db\n")
	r, err := cluster.Parse(filepath.Join(dir, "conf", "clusters.yaml"), data)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Clusters[0].Store, filepath.Join(dir, "data", "a.db"); got != want {
		t.Errorf("Store = %q, want %q", got, want)
	}
}

// registryOK is a valid registry; invalid cases below are variations of it.
const registryOK = `clusters:
  - name: east
    proxy_ipv4: [192.0.2.10]
    forward: 10.0.0.10:8443
    store: east.db
  - name: west
    proxy_ipv6: ["2001:db8::20"]
    forward: 10.0.1.10:8443
    store: postgres://replproxy@db-west/replproxy
`

// registryCase is one invalid registry and the problem it must report.
type registryCase struct {
	name  string
	yaml  string
	line  int
	field string // "" for a problem of the whole document
	hint  string // part of the message: what is wrong and the fix
	// problems is how many problems the file has in all; 0 means 1.
	problems int
	// secret must not appear in the message.
	secret string
}

// registryEast returns a registry whose only cluster has the given body (the
// lines after "- name: east"), so that the body starts at line 3.
func registryEast(body string) string {
	return "clusters:\n  - name: east\n" + body
}

// registryCases returns the invalid registries, one per rule.
func registryCases() []registryCase {
	return []registryCase{
		// The document.
		{name: "empty file", yaml: "", line: 1, field: "clusters", hint: `the file is empty: list the clusters under "clusters:"`},
		{name: "only comments", yaml: "# nothing yet\n", line: 1, field: "clusters", hint: "the file is empty"},
		{name: "not yaml", yaml: "clusters: [a,\n", line: 1, hint: "not valid YAML: did not find expected node content"},
		{name: "bad indentation", yaml: "clusters:\n  - name: east\n     store: x\n", line: 3, hint: "not valid YAML"},
		{name: "top level is a list", yaml: "- name: east\n", line: 1, hint: `the file must be a mapping with a "clusters" list`},
		{name: "two documents", yaml: registryOK + "---\nclusters: []\n", line: 10, hint: `a second YAML document; the registry is one document: remove this "---" and what follows`},
		{name: "unknown top-level field", yaml: "zone: repl.test\n" + registryOK, line: 1, field: "zone", hint: `unknown field; the top level has only "clusters"`},
		{name: "no clusters key", yaml: "# clusters are below\nclusters_list: []\n", line: 2, field: "clusters", hint: `missing; list the clusters under "clusters:"`, problems: 2},
		{name: "clusters empty", yaml: "clusters: []\n", line: 1, field: "clusters", hint: "no clusters; list at least one"},
		{name: "clusters null", yaml: "clusters:\n", line: 1, field: "clusters", hint: "no clusters; list at least one"},
		{name: "clusters not a list", yaml: "clusters:\n  east: {}\n", line: 2, field: "clusters", hint: "must be a list of clusters"},
		{name: "cluster not a mapping", yaml: "clusters:\n  - east\n", line: 2, field: "clusters[0]", hint: `must be a mapping with name, proxy_ipv4 and/or proxy_ipv6, forward and store, not the value "east"`},

		// Fields of a cluster.
		{name: "unknown field", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    proxy_ip6: [\"2001:db8::1\"]\n    forward: a:1\n    store: a.db\n"),
			line: 4, field: "clusters[0].proxy_ip6", hint: "unknown field; a cluster has name, proxy_ipv4, proxy_ipv6, forward and store"},
		{name: "field given twice", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: a.db\n    forward: b:1\n"),
			line: 6, field: "clusters[0].forward", hint: "given twice (first at line 4); keep one"},

		// name
		{name: "missing name", yaml: "clusters:\n  - proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: a.db\n",
			line: 2, field: "clusters[0].name", hint: `missing; give the cluster a name, a DNS label such as "east"`},
		{name: "empty name", yaml: "clusters:\n  - name: \"\"\n    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: a.db\n",
			line: 2, field: "clusters[0].name", hint: "missing; give the cluster a name"},
		{name: "name not a label", yaml: "clusters:\n  - name: east_1\n    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: a.db\n",
			line: 2, field: "clusters[0].name", hint: `"east_1" is not a DNS label; use 1-63 of a-z, 0-9 and '-', not starting or ending with '-'`},
		{name: "name starts with a dash", yaml: "clusters:\n  - name: -east\n    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: a.db\n",
			line: 2, field: "clusters[0].name", hint: "not starting or ending with '-'"},
		{name: "name too long", yaml: "clusters:\n  - name: " + strings.Repeat("a", 64) + "\n    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: a.db\n",
			line: 2, field: "clusters[0].name", hint: "use 1-63 of a-z"},
		{name: "name in upper case", yaml: "clusters:\n  - name: East\n    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: a.db\n",
			line: 2, field: "clusters[0].name", hint: `"East" is not a DNS label; write it in lower case: "east"`},
		{name: "name is a list", yaml: "clusters:\n  - name: [east]\n    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: a.db\n",
			line: 2, field: "clusters[0].name", hint: "must be a single value, not a list"},
		{name: "duplicate name", yaml: strings.Replace(registryOK, "name: west", "name: east", 1),
			line: 6, field: "clusters[1].name", hint: `"east" is already the name of clusters[0] (line 2); give each cluster its own name`},

		// proxy_ipv4, proxy_ipv6
		{name: "no addresses", yaml: registryEast("    forward: a:1\n    store: a.db\n"),
			line: 2, field: "clusters[0]", hint: "no proxy addresses; list the load balancer's public addresses under proxy_ipv4 and/or proxy_ipv6"},
		{name: "empty address lists", yaml: registryEast("    proxy_ipv4: []\n    proxy_ipv6:\n    forward: a:1\n    store: a.db\n"),
			line: 2, field: "clusters[0]", hint: "no proxy addresses"},
		{name: "bad IPv4", yaml: registryEast("    proxy_ipv4: [192.0.2.10, 192.0.2.300]\n    forward: a:1\n    store: a.db\n"),
			line: 3, field: "clusters[0].proxy_ipv4[1]", hint: `"192.0.2.300" is not an IPv4 address; write it like 192.0.2.10`},
		{name: "bad IPv6", yaml: registryEast("    proxy_ipv6:\n      - 2001:db8::1\n      - 2001:db8::g\n    forward: a:1\n    store: a.db\n"),
			line: 5, field: "clusters[0].proxy_ipv6[1]", hint: `"2001:db8::g" is not an IPv6 address; write it like "2001:db8::10"`},
		{name: "IPv6 under proxy_ipv4", yaml: "clusters:\n  - name: east\n    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: a.db\n  - name: west\n    proxy_ipv4:\n      - \"2001:db8::1\"\n    forward: b:1\n    store: b.db\n",
			line: 8, field: "clusters[1].proxy_ipv4[0]", hint: `"2001:db8::1" is not an IPv4 address; put IPv6 addresses under proxy_ipv6`},
		{name: "IPv4 under proxy_ipv6", yaml: registryEast("    proxy_ipv6: [192.0.2.10]\n    forward: a:1\n    store: a.db\n"),
			line: 3, field: "clusters[0].proxy_ipv6[0]", hint: `"192.0.2.10" is not an IPv6 address; put IPv4 addresses under proxy_ipv4`},
		{name: "IPv4-mapped under proxy_ipv6", yaml: registryEast("    proxy_ipv6: [\"::ffff:192.0.2.10\"]\n    forward: a:1\n    store: a.db\n"),
			line: 3, field: "clusters[0].proxy_ipv6[0]", hint: `is an IPv4-mapped address; put 192.0.2.10 under proxy_ipv4`},
		{name: "IPv4-mapped under proxy_ipv4", yaml: registryEast("    proxy_ipv4: [\"::ffff:192.0.2.10\"]\n    forward: a:1\n    store: a.db\n"),
			line: 3, field: "clusters[0].proxy_ipv4[0]", hint: `is not an IPv4 address; write it as 192.0.2.10`},
		{name: "address with a zone", yaml: registryEast("    proxy_ipv6: [\"fe80::1%eth0\"]\n    forward: a:1\n    store: a.db\n"),
			line: 3, field: "clusters[0].proxy_ipv6[0]", hint: `has a zone; remove "%eth0"`},
		{name: "unspecified IPv4", yaml: registryEast("    proxy_ipv4: [0.0.0.0]\n    forward: a:1\n    store: a.db\n"),
			line: 3, field: "clusters[0].proxy_ipv4[0]", hint: `"0.0.0.0" is the unspecified address; give the load balancer's public address`},
		{name: "unspecified IPv6", yaml: registryEast("    proxy_ipv6: [\"::\"]\n    forward: a:1\n    store: a.db\n"),
			line: 3, field: "clusters[0].proxy_ipv6[0]", hint: `"::" is the unspecified address`},
		{name: "multicast IPv4", yaml: registryEast("    proxy_ipv4: [224.0.0.1]\n    forward: a:1\n    store: a.db\n"),
			line: 3, field: "clusters[0].proxy_ipv4[0]", hint: `"224.0.0.1" is a multicast address; give the load balancer's unicast address`},
		{name: "multicast IPv6", yaml: registryEast("    proxy_ipv6: [\"ff02::1\"]\n    forward: a:1\n    store: a.db\n"),
			line: 3, field: "clusters[0].proxy_ipv6[0]", hint: `"ff02::1" is a multicast address`},
		{name: "address listed twice", yaml: registryEast("    proxy_ipv6:\n      - \"2001:db8::1\"\n      - \"2001:db8:0::1\"\n    forward: a:1\n    store: a.db\n"),
			line: 5, field: "clusters[0].proxy_ipv6[1]", hint: `"2001:db8:0::1" is listed twice (first at line 4); remove one`},
		{name: "addresses not a list", yaml: registryEast("    proxy_ipv4: 192.0.2.10\n    forward: a:1\n    store: a.db\n"),
			line: 3, field: "clusters[0].proxy_ipv4", hint: `must be a list, not the value "192.0.2.10"; write [192.0.2.10] or one "- address" line each`},
		{name: "address not a value", yaml: registryEast("    proxy_ipv6:\n      - [\"2001:db8::1\"]\n    forward: a:1\n    store: a.db\n"),
			line: 4, field: "clusters[0].proxy_ipv6[0]", hint: "must be an address, not a list"},

		// forward
		{name: "missing forward", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    store: a.db\n"),
			line: 2, field: "clusters[0].forward", hint: "missing; give the host:port where this cluster's proxies accept forwarded requests, e.g. 10.0.0.10:8443"},
		{name: "forward without port", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: 10.0.0.10\n    store: a.db\n"),
			line: 4, field: "clusters[0].forward", hint: `"10.0.0.10" is not host:port (missing port in address); write it like 10.0.0.10:8443 ([2001:db8::10]:8443 for IPv6)`},
		{name: "forward IPv6 without brackets", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: \"2001:db8::1:8443\"\n    store: a.db\n"),
			line: 4, field: "clusters[0].forward", hint: "([2001:db8::10]:8443 for IPv6)"},
		{name: "forward port 0", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: 10.0.0.10:0\n    store: a.db\n"),
			line: 4, field: "clusters[0].forward", hint: `"10.0.0.10:0" has port "0"; use a port number from 1 to 65535`},
		{name: "forward port too big", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: 10.0.0.10:65536\n    store: a.db\n"),
			line: 4, field: "clusters[0].forward", hint: "use a port number from 1 to 65535"},
		{name: "forward named port", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: 10.0.0.10:https\n    store: a.db\n"),
			line: 4, field: "clusters[0].forward", hint: "use a port number from 1 to 65535"},
		{name: "forward without host", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: :8443\n    store: a.db\n"),
			line: 4, field: "clusters[0].forward", hint: `":8443" has no host; give an address the other clusters' proxies can reach, e.g. 10.0.0.10:8443`},
		{name: "forward unspecified", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: 0.0.0.0:8443\n    store: a.db\n"),
			line: 4, field: "clusters[0].forward", hint: "is a listen address, not one to dial"},
		{name: "forward bad host", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: proxy_east:8443\n    store: a.db\n"),
			line: 4, field: "clusters[0].forward", hint: `"proxy_east" is not a host name or IP address`},
		{name: "forward numeric host", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: 10.0.0.300:8443\n    store: a.db\n"),
			line: 4, field: "clusters[0].forward", hint: `"10.0.0.300" is not a host name or IP address`},
		{name: "duplicate forward", yaml: strings.Replace(registryOK, "10.0.1.10:8443", "10.0.0.10:8443", 1),
			line: 8, field: "clusters[1].forward", hint: `"10.0.0.10:8443" is also the forward address of clusters[0] (line 4); give each cluster its own`},
		{name: "duplicate forward spelled otherwise", yaml: strings.NewReplacer("10.0.0.10:8443", "proxy.east:8443", "10.0.1.10:8443", "Proxy.East.:08443").Replace(registryOK),
			line: 8, field: "clusters[1].forward", hint: `"proxy.east:8443" is also the forward address of clusters[0] (line 4)`},

		// store
		{name: "missing store", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n"),
			line: 2, field: "clusters[0].store", hint: "missing; give a postgres:// DSN or the path of an embedded store file"},
		{name: "empty store", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: \"\"\n"),
			line: 5, field: "clusters[0].store", hint: "missing; give a postgres:// DSN"},
		{name: "DSN bad port", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: postgres://replproxy:hunter2@db:99999/replproxy\n"),
			line: 5, field: "clusters[0].store", secret: "hunter2",
			hint: `"postgres://replproxy:xxxxx@db:99999/replproxy" is not a valid DSN: the port "99999" is not a number from 1 to 65535 (the form is postgres://user@host:port/dbname?param=value)`},
		{name: "DSN bad escape in password", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: postgresql://replproxy:hun%zzter2@db/replproxy\n"),
			line: 5, field: "clusters[0].store", secret: "hun%zzter2", hint: `the password holds a '%' that starts no %XX escape; percent-encode it as %25`},
		{name: "DSN space in host", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: postgres://db east/replproxy\n"),
			line: 5, field: "clusters[0].store", hint: `the host "db east" holds a space; percent-encode it as %20`},
		{name: "DSN unclosed IPv6 host", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: postgres://[2001:db8::1/replproxy\n"),
			line: 5, field: "clusters[0].store", hint: `an IPv6 host opened with "[" has no "]"`},
		{name: "DSN parameter without value", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: postgres://db/replproxy?sslmode\n"),
			line: 5, field: "clusters[0].store", hint: `the parameter "sslmode" has no "="; write key=value`},
		{name: "DSN password parameter with &", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: postgres://db/replproxy?password=hun&ter2\n"),
			line: 5, field: "clusters[0].store", secret: "ter2", hint: `a password parameter holds "&"; percent-encode it as %26`},
		{name: "DSN scheme in upper case", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: Postgres://replproxy:hunter2@db/replproxy\n"),
			line: 5, field: "clusters[0].store", secret: "hunter2", hint: "write the scheme in lower case, postgres://"},
		{name: "DSN without slashes", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: postgres:db/replproxy\n"),
			line: 5, field: "clusters[0].store", hint: "a DSN starts with postgres:// (for a file, start the path with ./)"},
		{name: "unknown scheme", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: mysql://root:hunter2@db/replproxy\n"),
			line: 5, field: "clusters[0].store", secret: "hunter2", hint: `has the unknown scheme "mysql"; give a postgres:// DSN or the path of an embedded store file`},
		{name: "key=value DSN", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: host=db user=replproxy password=hunter2\n"),
			line: 5, field: "clusters[0].store", secret: "hunter2",
			hint: `"host=db user=replproxy password=xxxxx" looks like a key=value DSN; write it as a URL, postgres://user@host:port/dbname?param=value`},
		{name: "store under home", yaml: registryEast("    proxy_ipv4: [192.0.2.10]\n    forward: a:1\n    store: ~/east.db\n"),
			line: 5, field: "clusters[0].store", hint: "~ is not expanded; write the full path of the embedded store file"},
	}
}

// registryProblems returns the problems joined in err.
func registryProblems(t *testing.T, err error) []*cluster.Problem {
	t.Helper()
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var problems []*cluster.Problem
	for _, e := range errs {
		var re *cluster.Problem
		if !errors.As(e, &re) {
			t.Fatalf("problem %q (%T) is not a *cluster.Problem", e, e)
		}
		problems = append(problems, re)
	}
	return problems
}

func TestParseRegistryErrors(t *testing.T) {
	const file = "conf/clusters.yaml"
	for _, tc := range registryCases() {
		t.Run(tc.name, func(t *testing.T) {
			r, err := cluster.Parse(file, []byte(tc.yaml))
			if err == nil {
				t.Fatalf("ParseRegistry = %+v, nil; want an error", r)
			}
			if r != nil {
				t.Errorf("ParseRegistry returned a registry with an error")
			}
			if !errors.Is(err, store.ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
			}
			msg := err.Error()
			if tc.secret != "" && strings.Contains(msg, tc.secret) {
				t.Errorf("message shows the secret %q:\n%s", tc.secret, msg)
			}

			prefix := fmt.Sprintf("%s:%d: ", file, tc.line)
			if tc.field != "" {
				prefix += tc.field + ": "
			}
			found := false
			for line := range strings.SplitSeq(msg, "\n") {
				if strings.HasPrefix(line, prefix) && strings.Contains(line, tc.hint) {
					found = true
				}
			}
			if !found {
				t.Errorf("no line starts with %q and contains %q; got:\n%s", prefix, tc.hint, msg)
			}

			problems := registryProblems(t, err)
			if want := max(tc.problems, 1); len(problems) != want {
				t.Errorf("got %d problems, want %d:\n%s", len(problems), want, msg)
			}
			for _, p := range problems {
				if p.File != file || p.Msg == "" {
					t.Errorf("problem %+v: want File %q and a message", p, file)
				}
			}
		})
	}
}

// TestParseRegistryAllProblems checks that every problem of a file is
// reported at once, in line order, each line complete.
func TestParseRegistryAllProblems(t *testing.T) {
	const path = "testdata/broken.yaml"
	_, err := cluster.Load(path)
	if err == nil {
		t.Fatal("LoadRegistry: no error")
	}
	want := strings.Join([]string{
		`testdata/broken.yaml:3: clusters[0].name: "East" is not a DNS label; write it in lower case: "east"`,
		`testdata/broken.yaml:4: clusters[0].proxy_ipv4[0]: "2001:db8::1" is not an IPv4 address; put IPv6 addresses under proxy_ipv6`,
		`testdata/broken.yaml:4: clusters[0].proxy_ipv4[1]: "192.0.2.300" is not an IPv4 address; write it like 192.0.2.10`,
		`testdata/broken.yaml:5: clusters[0].forward: "10.0.0.10" is not host:port (missing port in address); write it like 10.0.0.10:8443 ([2001:db8::10]:8443 for IPv6)`,
		`testdata/broken.yaml:6: clusters[0].store: "postgres://replproxy:xxxxx@db-east:99999/replproxy" is not a valid DSN: the port "99999" is not a number from 1 to 65535 (the form is postgres://user@host:port/dbname?param=value)`,
		`testdata/broken.yaml:7: clusters[1]: no proxy addresses; list the load balancer's public addresses under proxy_ipv4 and/or proxy_ipv6`,
		`testdata/broken.yaml:7: clusters[1].store: missing; give a postgres:// DSN or the path of an embedded store file`,
		`testdata/broken.yaml:8: clusters[1].proxy_ip4: unknown field; a cluster has name, proxy_ipv4, proxy_ipv6, forward and store`,
		`testdata/broken.yaml:10: clusters[2].name: "west" is already the name of clusters[1] (line 7); give each cluster its own name`,
		`testdata/broken.yaml:11: clusters[2].proxy_ipv6[0]: "ff02::1" is a multicast address; give the load balancer's unicast address`,
		`testdata/broken.yaml:12: clusters[2].forward: "10.0.0.11:8443" is also the forward address of clusters[1] (line 9); give each cluster its own`,
		`testdata/broken.yaml:13: clusters[2].store: "host=db-west password=xxxxx" looks like a key=value DSN; write it as a URL, postgres://user@host:port/dbname?param=value (for a file, start the path with ./)`,
	}, "\n")
	if got := err.Error(); got != want {
		t.Errorf("LoadRegistry(%q) error:\n%s\nwant:\n%s", path, got, want)
	}
}

// TestParseRegistryManyProblems checks that a file with very many problems
// (aliases can multiply them) yields a bounded message.
func TestParseRegistryManyProblems(t *testing.T) {
	data := "bad: &bad [" + strings.Repeat("0.0.0.0, ", 149) + "0.0.0.0]\n" +
		"clusters:\n  - name: east\n    proxy_ipv4: *bad\n    forward: a:1\n    store: a.db\n" +
		"  - name: west\n    proxy_ipv4: *bad\n    forward: b:1\n    store: b.db\n"
	_, err := cluster.Parse("clusters.yaml", []byte(data))
	problems := registryProblems(t, err)
	if len(problems) != 101 {
		t.Fatalf("got %d problems, want 100 and a summary", len(problems))
	}
	if got, want := problems[100].Error(), "clusters.yaml: 201 more problems not shown; fix the ones above first"; got != want {
		t.Errorf("last problem = %q, want %q", got, want)
	}
}

func FuzzParseRegistry(f *testing.F) {
	f.Add(registryOK)
	if data, err := os.ReadFile("testdata/clusters.yaml"); err == nil {
		f.Add(string(data))
	}
	for _, tc := range registryCases() {
		f.Add(tc.yaml)
	}
	f.Fuzz(func(t *testing.T, data string) {
		const file = "clusters.yaml"
		r, err := cluster.Parse(file, []byte(data))
		if err != nil {
			if r != nil {
				t.Fatal("a registry and an error")
			}
			for _, p := range registryProblems(t, err) {
				if p.File != file || p.Msg == "" || strings.Contains(p.Msg, "\n") {
					t.Fatalf("bad problem %+v", p)
				}
			}
			return
		}
		if len(r.Clusters) == 0 {
			t.Fatal("no clusters and no error")
		}
		names := make(map[string]bool)
		forwards := make(map[string]bool)
		for _, c := range r.Clusters {
			if c.Name == "" || names[c.Name] || c.Forward == "" || forwards[c.Forward] || c.Store == "" {
				t.Fatalf("bad cluster %+v", c)
			}
			names[c.Name], forwards[c.Forward] = true, true
			if len(c.ProxyIPv4)+len(c.ProxyIPv6) == 0 {
				t.Fatalf("cluster %q has no addresses", c.Name)
			}
			for _, a := range c.ProxyIPv4 {
				if !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
					t.Fatalf("cluster %q: bad IPv4 %v", c.Name, a)
				}
			}
			for _, a := range c.ProxyIPv6 {
				if !a.Is6() || a.Is4In6() || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
					t.Fatalf("cluster %q: bad IPv6 %v", c.Name, a)
				}
			}
			if !dsn.IsPostgres(c.Store) && !filepath.IsAbs(c.Store) {
				t.Fatalf("cluster %q: store %q is neither a DSN nor an absolute path", c.Name, c.Store)
			}
		}
	})
}
