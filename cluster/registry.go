package cluster

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/replproxy/replproxy/internal/dsn"
	"github.com/replproxy/replproxy/internal/yamlline"
	"github.com/replproxy/replproxy/store"
	"go.yaml.in/yaml/v3"
)

// Cluster is one cluster of the registry.
type Cluster struct {
	// Name is a DNS label, unique in the registry; tombstones name
	// clusters by it.
	Name string
	// ProxyIPv4 and ProxyIPv6 are the public addresses of the cluster's
	// proxy load balancer: the A and AAAA records replns answers for the
	// repls the cluster hosts. At least one of them is set.
	ProxyIPv4 []netip.Addr
	ProxyIPv6 []netip.Addr
	// Forward is the host:port where the cluster's proxies accept
	// forwarded (tombstone) requests, in canonical form: a lower-case host
	// name or an IP address in its shortest form, brackets around IPv6,
	// and a decimal port. Unique in the registry.
	Forward string
	// Store is the address of the cluster's store: a postgres:// or
	// postgresql:// DSN (see dsn.IsPostgres), or the absolute path of an
	// embedded store file.
	Store string
}

// Registry is the set of clusters: one small YAML file shared by every
// binary (replproxy, replns, replctl).
//
// The file lists the clusters under "clusters":
//
//	# clusters.yaml
//	clusters:
//	  - name: east                             # a DNS label, unique
//	    proxy_ipv4: [192.0.2.10, 192.0.2.11]   # the proxy load balancer's public addresses (A records)
//	    proxy_ipv6: ["2001:db8::10"]           # ... and AAAA records; at least one of the two lists
//	    forward: 10.0.0.10:8443                # where this cluster's proxies accept forwarded requests
//	    store: postgres://replproxy@db-east/replproxy
//	  - name: west
//	    proxy_ipv4: [198.51.100.10]
//	    forward: 10.1.0.10:8443
//	    store: west.db                         # an embedded store file, relative to this file's folder
//
// The fields of a cluster:
//
//   - name: 1-63 of a-z, 0-9 and '-', not starting or ending with '-';
//     no two clusters share a name.
//   - proxy_ipv4, proxy_ipv6: lists of addresses of the right family,
//     neither unspecified (0.0.0.0, ::) nor multicast, with no zone and
//     no repeats. Quote IPv6 addresses: a plain ::1 is not valid YAML.
//   - forward: host:port, the host a DNS name or an IP address (IPv6 in
//     brackets), the port 1-65535; what other clusters' proxies dial, so
//     no two clusters share it and 0.0.0.0 is refused.
//   - store: a postgres:// or postgresql:// URL (libpq's syntax, several
//     hosts allowed), or the path of an embedded store file; a relative
//     path is taken from the folder of the registry file. Key=value DSNs
//     are refused: write them as URLs. A password in the DSN works but is
//     better kept out of a shared file (use ~/.pgpass or PGPASSWORD).
//
// Unknown fields are errors. Load reports every problem at once,
// one line each, naming the file, the line, the field and the fix:
//
//	clusters.yaml:7: clusters[1].proxy_ipv4[0]: "2001:db8::1" is not an IPv4 address; put IPv6 addresses under proxy_ipv6
//
// A Registry is not modified after loading, so it is safe for concurrent
// use; callers must not modify it or the slices of its clusters.
type Registry struct {
	Clusters []Cluster // in file order
}

// Problem is one problem in a registry file. Load and
// Parse return all problems joined (errors.Join); find them with
// errors.As. Every Problem wraps store.ErrInvalid.
type Problem struct {
	File  string // the path of the file, as given
	Line  int    // 1-based; 0 when unknown
	Field string // e.g. "clusters[1].proxy_ipv4[0]"; empty for the whole document
	Msg   string // what is wrong and how to fix it
}

func (e *Problem) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns store.ErrInvalid.
func (e *Problem) Unwrap() error { return store.ErrInvalid }

// Load reads and checks the registry file at path.
func Load(path string) (*Registry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load clusters %q: %w", path, err)
	}
	return Parse(path, data)
}

// Parse checks a registry read from path. The path names the file
// in error messages ("registry" when it is empty) and its folder is the
// base of relative store paths (the current directory when it is empty).
// Values are taken with surrounding spaces trimmed.
func Parse(path string, data []byte) (*Registry, error) {
	p := &parser{file: path}
	if p.file == "" {
		p.file = "registry"
	}
	r := p.parse(path, data)
	if p.failed() > 0 {
		slices.SortStableFunc(p.errs, func(a, b *Problem) int { return cmp.Compare(a.Line, b.Line) })
		errs := make([]error, 0, len(p.errs)+1)
		for _, e := range p.errs {
			errs = append(errs, e)
		}
		if p.more > 0 {
			errs = append(errs, &Problem{File: p.file, Msg: fmt.Sprintf("%d more problems not shown; fix the ones above first", p.more)})
		}
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// Cluster returns the cluster with the given name (compared without
// regard to case).
func (r *Registry) Cluster(name string) (Cluster, bool) {
	for _, c := range r.Clusters {
		if strings.EqualFold(c.Name, name) {
			return c, true
		}
	}
	return Cluster{}, false
}

// Names returns the names of the clusters in file order.
func (r *Registry) Names() []string {
	names := make([]string, len(r.Clusters))
	for i, c := range r.Clusters {
		names[i] = c.Name
	}
	return names
}

// maxProblems bounds the problems Parse reports: enough
// for any real file, and a bound on what an alias-amplified one can cost.
const maxProblems = 100

// parser walks the YAML nodes of a registry file and collects
// every problem.
type parser struct {
	file string
	errs []*Problem
	more int // problems found beyond maxProblems
}

func (p *parser) fail(line int, field, format string, args ...any) {
	if len(p.errs) >= maxProblems {
		p.more++
		return
	}
	p.errs = append(p.errs, &Problem{File: p.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// failed returns how many problems have been found so far.
func (p *parser) failed() int { return len(p.errs) + p.more }

// parsedCluster is a cluster with the lines that cross-cluster checks name.
type parsedCluster struct {
	Cluster
	nameLine, forwardLine int
}

func (p *parser) parse(path string, data []byte) *Registry {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.fail(1, "clusters", "missing; the file is empty: list the clusters under \"clusters:\"")
		} else {
			p.yamlError(data, err)
		}
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.fail(extra.Line, "", "a second YAML document; the registry is one document: remove this \"---\" and what follows")
		return nil
	} else if !errors.Is(err, io.EOF) {
		p.yamlError(data, err)
		return nil
	}

	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = yamlline.Deref(root.Content[0])
	}
	if yamlline.IsNull(root) || root.Kind == yaml.DocumentNode {
		p.fail(1, "clusters", "missing; the file is empty: list the clusters under \"clusters:\"")
		return nil
	}
	if root.Kind != yaml.MappingNode {
		p.fail(root.Line, "", "the file must be a mapping with a \"clusters\" list, not %s", describe(root))
		return nil
	}

	fields := p.mapping(root, "", []string{"clusters"}, "the top level has only \"clusters\"")
	list, ok := fields["clusters"]
	if !ok {
		p.fail(root.Line, "clusters", "missing; list the clusters under \"clusters:\"")
		return nil
	}
	if yamlline.IsNull(list) || list.Kind == yaml.SequenceNode && len(list.Content) == 0 {
		p.fail(list.Line, "clusters", "no clusters; list at least one, each with name, proxy_ipv4 and/or proxy_ipv6, forward and store")
		return nil
	}
	if list.Kind != yaml.SequenceNode {
		p.fail(list.Line, "clusters", "must be a list of clusters, one \"- name: ...\" entry each, not %s", describe(list))
		return nil
	}

	dir := filepath.Dir(path)
	r := &Registry{}
	var seen []parsedCluster
	for i, item := range list.Content {
		c, ok := p.cluster(fmt.Sprintf("clusters[%d]", i), yamlline.Deref(item), dir)
		for j, s := range seen {
			if c.Name != "" && s.Name == c.Name {
				ok = false
				p.fail(c.nameLine, fmt.Sprintf("clusters[%d].name", i),
					"%q is already the name of clusters[%d] (line %d); give each cluster its own name", c.Name, j, s.nameLine)
			}
			if c.Forward != "" && s.Forward == c.Forward {
				ok = false
				p.fail(c.forwardLine, fmt.Sprintf("clusters[%d].forward", i),
					"%q is also the forward address of clusters[%d] (line %d); give each cluster its own", c.Forward, j, s.forwardLine)
			}
		}
		seen = append(seen, c)
		if ok {
			r.Clusters = append(r.Clusters, c.Cluster)
		}
	}
	return r
}

// cluster checks one entry of the clusters list. The Cluster it returns
// holds whatever was valid; ok reports whether all of it was.
func (p *parser) cluster(path string, n *yaml.Node, dir string) (c parsedCluster, ok bool) {
	if n.Kind != yaml.MappingNode {
		p.fail(n.Line, path, "must be a mapping with name, proxy_ipv4 and/or proxy_ipv6, forward and store, not %s", describe(n))
		return c, false
	}
	failed := p.failed()
	fields := p.mapping(n, path, []string{"name", "proxy_ipv4", "proxy_ipv6", "forward", "store"},
		"a cluster has name, proxy_ipv4, proxy_ipv6, forward and store")

	if v, ok := p.scalar(fields, "name", path, n.Line,
		`missing; give the cluster a name, a DNS label such as "east"`); ok {
		c.nameLine = v.Line
		name := strings.TrimSpace(v.Value)
		switch {
		case validClusterName(name):
			c.Name = name
		case validClusterName(strings.ToLower(name)):
			p.fail(v.Line, path+".name", "%q is not a DNS label; write it in lower case: %q", name, strings.ToLower(name))
		default:
			p.fail(v.Line, path+".name", "%q is not a DNS label; use 1-63 of a-z, 0-9 and '-', not starting or ending with '-'", name)
		}
	}

	c.ProxyIPv4 = p.addrs(fields["proxy_ipv4"], path+".proxy_ipv4", false)
	c.ProxyIPv6 = p.addrs(fields["proxy_ipv6"], path+".proxy_ipv6", true)
	if isEmptyList(fields["proxy_ipv4"]) && isEmptyList(fields["proxy_ipv6"]) {
		p.fail(n.Line, path, "no proxy addresses; list the load balancer's public addresses under proxy_ipv4 and/or proxy_ipv6")
	}

	if v, ok := p.scalar(fields, "forward", path, n.Line,
		"missing; give the host:port where this cluster's proxies accept forwarded requests, e.g. 10.0.0.10:8443"); ok {
		c.forwardLine = v.Line
		forward, problem := checkForward(strings.TrimSpace(v.Value))
		if problem != "" {
			p.fail(v.Line, path+".forward", "%s", problem)
		}
		c.Forward = forward
	}

	if v, ok := p.scalar(fields, "store", path, n.Line,
		"missing; give a postgres:// DSN or the path of an embedded store file"); ok {
		st, problem := checkStore(strings.TrimSpace(v.Value), dir)
		if problem != "" {
			p.fail(v.Line, path+".store", "%s", problem)
		}
		c.Store = st
	}
	return c, p.failed() == failed
}

// scalar returns the non-empty scalar value of a field, reporting a
// missing or null one (at line, the cluster's) and a list or mapping.
func (p *parser) scalar(fields map[string]*yaml.Node, key, path string, line int, missing string) (*yaml.Node, bool) {
	v, ok := fields[key]
	if !ok {
		p.fail(line, path+"."+key, "%s", missing)
		return nil, false
	}
	if yamlline.IsNull(v) || v.Kind == yaml.ScalarNode && strings.TrimSpace(v.Value) == "" {
		p.fail(v.Line, path+"."+key, "%s", missing)
		return nil, false
	}
	if v.Kind != yaml.ScalarNode {
		p.fail(v.Line, path+"."+key, "must be a single value, not %s", describe(v))
		return nil, false
	}
	return v, true
}

// addrs checks a list of load balancer addresses of one family.
func (p *parser) addrs(n *yaml.Node, path string, want6 bool) []netip.Addr {
	family, other, otherField, example := "IPv4", "IPv6", "proxy_ipv6", "192.0.2.10"
	if want6 {
		family, other, otherField, example = "IPv6", "IPv4", "proxy_ipv4", `"2001:db8::10"`
	}
	if n == nil || yamlline.IsNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		p.fail(n.Line, path, "must be a list, not %s; write [%s] or one \"- address\" line each", describe(n), example)
		return nil
	}
	var addrs []netip.Addr
	lines := make(map[netip.Addr]int)
	for i, item := range n.Content {
		item = yamlline.Deref(item)
		field := fmt.Sprintf("%s[%d]", path, i)
		if item.Kind != yaml.ScalarNode {
			p.fail(item.Line, field, "must be an address, not %s; quote IPv6 addresses, e.g. %s", describe(item), `"2001:db8::10"`)
			continue
		}
		s := strings.TrimSpace(item.Value)
		a, err := netip.ParseAddr(s)
		switch {
		case err != nil:
			p.fail(item.Line, field, "%q is not an %s address; write it like %s", s, family, example)
		case a.Zone() != "":
			p.fail(item.Line, field, "%q has a zone; remove %q (DNS records carry no zone)", s, "%"+a.Zone())
		case !want6 && a.Is4In6():
			p.fail(item.Line, field, "%q is not an IPv4 address; write it as %s", s, a.Unmap())
		case want6 && a.Is4In6():
			p.fail(item.Line, field, "%q is an IPv4-mapped address; put %s under proxy_ipv4", s, a.Unmap())
		case a.Is6() != want6:
			p.fail(item.Line, field, "%q is not an %s address; put %s addresses under %s", s, family, other, otherField)
		case a.IsUnspecified():
			p.fail(item.Line, field, "%q is the unspecified address; give the load balancer's public address", s)
		case a.IsMulticast():
			p.fail(item.Line, field, "%q is a multicast address; give the load balancer's unicast address", s)
		default:
			if prev, dup := lines[a]; dup {
				p.fail(item.Line, field, "%q is listed twice (first at line %d); remove one", s, prev)
				continue
			}
			lines[a] = item.Line
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// checkForward checks a forward address and returns it in canonical
// form, or a problem with its fix.
func checkForward(s string) (string, string) {
	const hint = "write it like 10.0.0.10:8443 ([2001:db8::10]:8443 for IPv6)"
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		msg := err.Error()
		var aerr *net.AddrError
		if errors.As(err, &aerr) {
			msg = aerr.Err
		}
		return "", fmt.Sprintf("%q is not host:port (%s); %s", s, msg, hint)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return "", fmt.Sprintf("%q has port %q; use a port number from 1 to 65535", s, port)
	}
	port = strconv.FormatUint(n, 10)
	if host == "" {
		return "", fmt.Sprintf("%q has no host; give an address the other clusters' proxies can reach, e.g. 10.0.0.10:%s", s, port)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		switch {
		case a.Zone() != "":
			return "", fmt.Sprintf("%q has a zone; give an address the other clusters' proxies can reach, without %q", s, "%"+a.Zone())
		case a.IsUnspecified():
			return "", fmt.Sprintf("%q is a listen address, not one to dial; give an address the other clusters' proxies can reach", s)
		case a.IsMulticast():
			return "", fmt.Sprintf("%q has a multicast address; give the proxies' unicast address", s)
		}
		return netip.AddrPortFrom(a.Unmap(), uint16(n)).String(), ""
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	if !validForwardHost(name) {
		return "", fmt.Sprintf("%q: %q is not a host name or IP address; %s", s, host, hint)
	}
	return net.JoinHostPort(name, port), ""
}

// checkStore checks a store address and returns it with a relative file
// path made absolute against dir, or a problem with its fix.
func checkStore(s, dir string) (string, string) {
	const urlHint = "postgres://user@host:port/dbname?param=value"
	if strings.IndexByte(s, 0) >= 0 {
		return "", "contains a NUL byte; give a postgres:// DSN or the path of an embedded store file"
	}
	if dsn.IsPostgres(s) {
		if err := dsn.CheckURL(s); err != "" {
			return "", fmt.Sprintf("%q is not a valid DSN: %s (the form is %s)", dsn.Redact(s), err, urlHint)
		}
		return s, ""
	}
	if scheme, _, ok := strings.Cut(s, "://"); ok && dsn.IsScheme(scheme) {
		if l := strings.ToLower(scheme); l == "postgres" || l == "postgresql" {
			return "", fmt.Sprintf("%q: write the scheme in lower case, %s://", dsn.Redact(s), l)
		}
		return "", fmt.Sprintf("%q has the unknown scheme %q; give a postgres:// DSN or the path of an embedded store file", dsn.Redact(s), scheme)
	}
	if l := strings.ToLower(s); strings.HasPrefix(l, "postgres:") || strings.HasPrefix(l, "postgresql:") {
		return "", fmt.Sprintf("%q: a DSN starts with postgres:// (for a file, start the path with ./)", dsn.Redact(s))
	}
	if dsn.LooksLikeKeywords(s) {
		return "", fmt.Sprintf("%q looks like a key=value DSN; write it as a URL, %s (for a file, start the path with ./)", dsn.Redact(s), urlHint)
	}
	if s == "~" || strings.HasPrefix(s, "~/") {
		return "", fmt.Sprintf("%q: ~ is not expanded; write the full path of the embedded store file", s)
	}
	if !filepath.IsAbs(s) {
		s = filepath.Join(dir, s)
	}
	abs, err := filepath.Abs(s)
	if err != nil {
		return "", fmt.Sprintf("cannot make %q absolute (%v); write the full path of the embedded store file", s, err)
	}
	return abs, ""
}

// validClusterName reports whether s is a DNS label in lower case.
func validClusterName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validForwardHost reports whether s (in lower case, without a trailing dot)
// is a DNS host name: labels of a-z, 0-9 and '-', the last one not all
// digits.
func validForwardHost(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for _, label := range labels {
		if !validClusterName(label) {
			return false
		}
	}
	// A name whose last label is all digits would read as an IPv4 address.
	_, err := strconv.Atoi(labels[len(labels)-1])
	return err != nil
}

// isEmptyList reports whether an address list is absent, null or empty.
func isEmptyList(n *yaml.Node) bool {
	return n == nil || yamlline.IsNull(n) || n.Kind == yaml.SequenceNode && len(n.Content) == 0
}

// mapping returns the fields of a mapping node, reporting unknown and
// repeated ones.
func (p *parser) mapping(n *yaml.Node, path string, known []string, hint string) map[string]*yaml.Node {
	return yamlline.Fields(n, path, known, hint, func(line int, field, msg string) {
		p.fail(line, field, "%s", msg)
	})
}

// yamlError reports a YAML syntax error in data, at its real line.
func (p *parser) yamlError(data []byte, err error) {
	line, msg := yamlline.SyntaxError(data, err)
	p.fail(line, "", "not valid YAML: %s; check the indentation, and quote values that hold \": \", \" #\" or start with a special character", msg)
}

// describe names a node for a message, passwords masked.
func describe(n *yaml.Node) string { return yamlline.Describe(n, dsn.Redact) }
