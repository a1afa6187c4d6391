package nameserver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/replproxy/replproxy/internal/yamlline"
)

// ZoneFile is what a zone file holds: the static records at the zone's
// apex, and optionally its name servers.
type ZoneFile struct {
	// NameServers, when the file lists them (ns), are the zone's NS
	// records and glue, in place of replns's -ns. Nil: not listed.
	NameServers []NameServer
	Apex        Apex
}

// LoadZoneFile reads a zone file for zone:
//
//	# replns zone file (every field optional)
//	ns:                                   # the NS records, SOA primary first (instead of -ns)
//	  - {name: ns1.repl.co, glue: [192.0.2.53, "2001:db8::53"]}   # in the zone: its addresses
//	  - {name: ns2.example.net}           # outside it: none
//	a: [192.0.2.1]
//	aaaa: ["2001:db8::1"]                 # quote IPv6 addresses
//	txt:
//	  - "v=spf1 -all"                     # one record each; longer than 255
//	  - "google-site-verification=..."    # octets is split into strings
//	mx:
//	  - {preference: 10, exchange: mx.example.net}
//	caa:
//	  - {flag: 0, tag: issue, value: letsencrypt.org}
//	  - {tag: iodef, value: "mailto:security@example.com"}
//
// Unknown fields are errors; every problem is reported at once, each with
// the file, line and field.
func LoadZoneFile(path, zone string) (ZoneFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return ZoneFile{}, fmt.Errorf("zone file: %w", err)
	}
	return ParseZoneFile(path, zone, data)
}

type zoneFileYAML struct {
	NS   []zoneFileNS `yaml:"ns"`
	A    []yaml.Node  `yaml:"a"`
	AAAA []yaml.Node  `yaml:"aaaa"`
	TXT  []yaml.Node  `yaml:"txt"`
	MX   []struct {
		Preference uint16    `yaml:"preference"`
		Exchange   yaml.Node `yaml:"exchange"`
	} `yaml:"mx"`
	CAA []struct {
		Flag  uint8     `yaml:"flag"`
		Tag   yaml.Node `yaml:"tag"`
		Value string    `yaml:"value"`
	} `yaml:"caa"`
}

// zoneFileNS is one name server of a zone file, and its glue.
type zoneFileNS struct {
	Name yaml.Node   `yaml:"name"`
	Glue []yaml.Node `yaml:"glue"`
}

// ParseZoneFile is LoadZoneFile on data read from path (which names the
// file in errors). An empty zone checks no name servers' place in it.
func ParseZoneFile(path, zone string, data []byte) (ZoneFile, error) {
	var f zoneFileYAML
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return ZoneFile{}, fmt.Errorf("%s: %w", path, err) // "line N: ..." for each
		}
		line, msg := yamlline.SyntaxError(data, err)
		return ZoneFile{}, fmt.Errorf("%s:%d: %s", path, line, msg)
	}
	var errs []error
	bad := func(n *yaml.Node, field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: %s: %s", path, n.Line, field, fmt.Sprintf(format, args...)))
	}
	zf := ZoneFile{NameServers: zoneNameServers(f.NS, zone, bad)}
	a := &zf.Apex
	for i, n := range f.A {
		ip, err := netip.ParseAddr(n.Value)
		switch {
		case n.Kind != yaml.ScalarNode || err != nil:
			bad(&n, fmt.Sprintf("a[%d]", i), "%q is not an IPv4 address", n.Value)
		case !ip.Is4():
			bad(&n, fmt.Sprintf("a[%d]", i), "%q is not an IPv4 address; put IPv6 addresses under aaaa", n.Value)
		default:
			a.A = append(a.A, ip)
		}
	}
	for i, n := range f.AAAA {
		ip, err := netip.ParseAddr(n.Value)
		switch {
		case n.Kind != yaml.ScalarNode || err != nil:
			bad(&n, fmt.Sprintf("aaaa[%d]", i), "%q is not an IPv6 address (quote IPv6 addresses)", n.Value)
		case !ip.Is6() || ip.Is4In6():
			bad(&n, fmt.Sprintf("aaaa[%d]", i), "%q is not an IPv6 address; put IPv4 addresses under a", n.Value)
		default:
			a.AAAA = append(a.AAAA, ip)
		}
	}
	for i, n := range f.TXT {
		if n.Kind != yaml.ScalarNode || n.Value == "" {
			bad(&n, fmt.Sprintf("txt[%d]", i), "want a non-empty string")
			continue
		}
		var parts []string
		for s := n.Value; s != ""; {
			k := min(len(s), 255)
			parts = append(parts, s[:k])
			s = s[k:]
		}
		a.TXT = append(a.TXT, parts)
	}
	for i, mx := range f.MX {
		one := []MX{{Preference: mx.Preference, Exchange: mx.Exchange.Value}}
		if ok := lineChecked(func(bad func(string, ...any)) { checkApex(Apex{MX: one}, bad) }, func(msg string) {
			bad(&mx.Exchange, fmt.Sprintf("mx[%d].exchange", i), "%s", msg)
		}); ok {
			a.MX = append(a.MX, one[0])
		}
	}
	for i, caa := range f.CAA {
		one := CAA{Flag: caa.Flag, Tag: caa.Tag.Value, Value: caa.Value}
		if ok := lineChecked(func(bad func(string, ...any)) { checkApex(Apex{CAA: []CAA{one}}, bad) }, func(msg string) {
			bad(&caa.Tag, fmt.Sprintf("caa[%d]", i), "%s", msg)
		}); ok {
			a.CAA = append(a.CAA, one)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return ZoneFile{}, err
	}
	return zf, nil
}

// zoneNameServers reads a zone file's ns list, passing each problem to bad.
// A name server is checked against zone (checkNameServers) unless zone is
// empty.
func zoneNameServers(list []zoneFileNS, zone string, bad func(n *yaml.Node, field, format string, args ...any)) []NameServer {
	var out []NameServer
	seen := make(map[string]bool)
	for i, ns := range list {
		field := fmt.Sprintf("ns[%d]", i)
		n := &ns.Name
		name := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n.Value)), ".")
		if n.Kind != yaml.ScalarNode || name == "" {
			bad(n, field, "want a name: {name: ns1.<zone>, glue: [its addresses]}")
			continue
		}
		if seen[name] {
			bad(n, field, "name server %q is listed twice", name)
			continue
		}
		seen[name] = true
		server := NameServer{Name: name}
		for j, g := range ns.Glue {
			ip, err := netip.ParseAddr(g.Value)
			if g.Kind != yaml.ScalarNode || err != nil {
				bad(&g, fmt.Sprintf("%s.glue[%d]", field, j), "%q is not an IP address (quote IPv6 addresses)", g.Value)
				continue
			}
			server.Addrs = append(server.Addrs, ip)
		}
		if zone != "" {
			checkNameServers([]NameServer{server}, zone, func(format string, args ...any) {
				bad(n, field, format, args...)
			})
		}
		out = append(out, server)
	}
	return out
}

// lineChecked runs check, passing each problem it finds to fail, and
// reports whether it found none.
func lineChecked(check func(bad func(string, ...any)), fail func(msg string)) bool {
	ok := true
	check(func(format string, args ...any) {
		ok = false
		fail(fmt.Sprintf(format, args...))
	})
	return ok
}
