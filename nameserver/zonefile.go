package nameserver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"

	"go.yaml.in/yaml/v3"
)

// LoadApex reads the static apex records of the zone from a YAML file:
//
//	# replns zone file: static records at the zone's apex (all optional)
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
func LoadApex(path string) (Apex, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Apex{}, fmt.Errorf("zone file: %w", err)
	}
	return ParseApex(path, data)
}

type apexFile struct {
	A    []yaml.Node `yaml:"a"`
	AAAA []yaml.Node `yaml:"aaaa"`
	TXT  []yaml.Node `yaml:"txt"`
	MX   []struct {
		Preference uint16 `yaml:"preference"`
		Exchange   string `yaml:"exchange"`
	} `yaml:"mx"`
	CAA []struct {
		Flag  uint8  `yaml:"flag"`
		Tag   string `yaml:"tag"`
		Value string `yaml:"value"`
	} `yaml:"caa"`
}

// ParseApex is LoadApex on data read from path (which names the file in
// errors).
func ParseApex(path string, data []byte) (Apex, error) {
	var f apexFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return Apex{}, fmt.Errorf("%s: %w", path, err)
	}
	var errs []error
	bad := func(n *yaml.Node, field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: %s: %s", path, n.Line, field, fmt.Sprintf(format, args...)))
	}
	var a Apex
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
	for _, mx := range f.MX {
		a.MX = append(a.MX, MX{Preference: mx.Preference, Exchange: mx.Exchange})
	}
	for _, caa := range f.CAA {
		a.CAA = append(a.CAA, CAA{Flag: caa.Flag, Tag: caa.Tag, Value: caa.Value})
	}
	// The remaining checks (names, tags) are Config's.
	var cerrs []error
	checkApex(a, func(format string, args ...any) {
		cerrs = append(cerrs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	})
	errs = append(errs, cerrs...)
	if err := errors.Join(errs...); err != nil {
		return Apex{}, err
	}
	return a, nil
}
