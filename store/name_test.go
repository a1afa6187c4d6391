package store

import (
	"errors"
	"strings"
	"testing"
)

const testZone = "repl.test"

// nameTests is the table for ParseName under testZone; FuzzParseName uses
// its inputs as seeds. A case wants either key or an error containing err.
var nameTests = []struct {
	name string
	in   string
	key  Key
	err  string
}{
	// Every kind of key.
	{name: "apex", in: "repl.test", key: Key{Kind: KeyApex}},
	{name: "owner", in: "alice.repl.test", key: Key{Kind: KeyOwner, Owner: "alice"}},
	{name: "id root", in: "id.repl.test", key: Key{Kind: KeyIDRoot}},
	{name: "repl", in: "blog.alice.repl.test", key: ReplKey("alice", "blog")},
	{name: "repl id", in: "r123.id.repl.test", key: ReplIDKey("r123")},
	{name: "challenge apex", in: "_acme-challenge.repl.test", key: Key{Kind: KeyChallenge, Name: "_acme-challenge.repl.test"}},
	{name: "challenge owner", in: "_acme-challenge.alice.repl.test", key: Key{Kind: KeyChallenge, Name: "_acme-challenge.alice.repl.test"}},
	{name: "challenge id root", in: "_acme-challenge.id.repl.test", key: Key{Kind: KeyChallenge, Name: "_acme-challenge.id.repl.test"}},
	{name: "challenge repl", in: "_acme-challenge.blog.alice.repl.test", key: Key{Kind: KeyChallenge, Name: "_acme-challenge.blog.alice.repl.test"}},
	{name: "challenge repl id", in: "_acme-challenge.r1.id.repl.test", key: Key{Kind: KeyChallenge, Name: "_acme-challenge.r1.id.repl.test"}},
	{name: "domain", in: "www.example.com", key: DomainKey("www.example.com")},
	{name: "domain two labels", in: "example.com", key: DomainKey("example.com")},

	// Case, ports and trailing dots.
	{name: "apex upper with dot", in: "REPL.TEST.", key: Key{Kind: KeyApex}},
	{name: "apex port", in: "repl.test:443", key: Key{Kind: KeyApex}},
	{name: "repl mixed case port", in: "Blog.ALICE.Repl.Test:8443", key: ReplKey("alice", "blog")},
	{name: "repl trailing dot", in: "blog.alice.repl.test.", key: ReplKey("alice", "blog")},
	{name: "repl trailing dot and port", in: "blog.alice.repl.test.:80", key: ReplKey("alice", "blog")},
	{name: "repl id upper", in: "R123.ID.Repl.Test", key: ReplIDKey("r123")},
	{name: "port with leading zeros", in: "blog.alice.repl.test:0080", key: ReplKey("alice", "blog")},
	{name: "port 1", in: "blog.alice.repl.test:1", key: ReplKey("alice", "blog")},
	{name: "port 65535", in: "blog.alice.repl.test:65535", key: ReplKey("alice", "blog")},
	{name: "challenge mixed case", in: "_ACME-Challenge.Blog.Alice.REPL.test.:443", key: Key{Kind: KeyChallenge, Name: "_acme-challenge.blog.alice.repl.test"}},
	{name: "domain upper with port", in: "WWW.Example.COM:443", key: DomainKey("www.example.com")},
	{name: "domain trailing dot", in: "www.example.com.", key: DomainKey("www.example.com")},

	// Labels.
	{name: "numeric slug", in: "2024.alice.repl.test", key: ReplKey("alice", "2024")},
	{name: "inner hyphens", in: "my--app.a-b.repl.test", key: ReplKey("a-b", "my--app")},
	{name: "numeric first label of domain", in: "123.example.com", key: DomainKey("123.example.com")},
	{name: "63 octet label", in: strings.Repeat("a", 63) + ".example.com", key: DomainKey(strings.Repeat("a", 63) + ".example.com")},
	{name: "253 octet name", in: name253, key: DomainKey(name253)},
	{name: "253 octet name with dot and port", in: name253 + ".:443", key: DomainKey(name253)},
	{name: "64 octet label", in: strings.Repeat("a", 64) + ".example.com", err: "64 octets long; the limit is 63"},
	{name: "254 octet name", in: "a" + name253, err: "254 octets long; the limit is 253"},
	{name: "very long input", in: strings.Repeat("a.", 5000) + "com", err: "10003 octets long; the limit is 253"},
	{name: "empty label", in: "a..b", err: "empty label"},
	{name: "leading dot", in: ".repl.test", err: "empty label"},
	{name: "two trailing dots", in: "repl.test..", err: "empty label"},
	{name: "dot", in: ".", err: "empty name"},
	{name: "two dots", in: "..", err: "empty label"},
	{name: "leading hyphen", in: "-blog.alice.repl.test", err: `label "-blog": starts with '-'`},
	{name: "trailing hyphen", in: "blog-.alice.repl.test", err: `label "blog-": ends with '-'`},
	{name: "underscore", in: "foo_bar.repl.test", err: `label "foo_bar": character '_' is not allowed`},
	{name: "underscore in domain", in: "_dmarc.example.com", err: `character '_' is not allowed`},
	{name: "space", in: "a b.example.com", err: `label "a b": character ' ' is not allowed`},
	{name: "star", in: "*.alice.repl.test", err: `label "*": character '*' is not allowed`},
	{name: "slash", in: "a/b.example.com", err: `character '/' is not allowed`},
	{name: "percent", in: "a%2e.example.com", err: `character '%' is not allowed`},
	{name: "at", in: "user@example.com", err: `character '@' is not allowed`},
	{name: "nul", in: "a\x00.example.com", err: `character '\x00' is not allowed`},
	{name: "newline", in: "example.com\n", err: `character '\n' is not allowed`},
	{name: "backslash", in: `a\.example.com`, err: `character '\\' is not allowed`},

	// Internationalised names.
	{name: "u-label domain", in: "Bücher.example", key: DomainKey("xn--bcher-kva.example")},
	{name: "u-label owner", in: "blog.müller.repl.test", key: ReplKey("xn--mller-kva", "blog")},
	{name: "u-label cjk", in: "例え.テスト", key: DomainKey("xn--r8jz45g.xn--zckzah")},
	{name: "ideographic full stop", in: "www。example.com", key: DomainKey("www.example.com")},
	{name: "sharp s is not mapped to ss", in: "straße.example", key: DomainKey("xn--strae-oqa.example")},
	{name: "fullwidth letters", in: "ＡＢＣ.example", key: DomainKey("abc.example")},
	{name: "fullwidth dots", in: "Bücher．Repl．Test", key: Key{Kind: KeyOwner, Owner: "xn--bcher-kva"}},
	{name: "right to left", in: "שלום.example", key: DomainKey("xn--9dbne9b.example")},
	{name: "zero width joiner", in: "a\u200db.example", err: "not a valid internationalised label"},
	{name: "a-label", in: "xn--bcher-kva.example", key: DomainKey("xn--bcher-kva.example")},
	{name: "a-label upper", in: "XN--BCHER-KVA.Example", key: DomainKey("xn--bcher-kva.example")},
	{name: "a-label slug", in: "xn--bcher-kva.alice.repl.test", key: ReplKey("alice", "xn--bcher-kva")},
	{name: "bad punycode", in: "xn--bcher-k.example", err: `label "xn--bcher-k": not a valid A-label`},
	{name: "punycode overflow", in: "xn--99999999999.alice.repl.test", err: "not a valid A-label"},
	{name: "punycode of ascii", in: "xn--abc-.alice.repl.test", err: `label "xn--abc-": ends with '-'`},
	{name: "punycode of disallowed rune", in: "xn--a-ecp.example", err: "not a valid A-label"},
	{name: "punycode of replacement char", in: "xn--zn7c.example", err: "not a valid A-label"},
	{name: "punycode of control", in: "xn--a.example", err: "not a valid A-label"},
	{name: "bare ace prefix", in: "xn--.example", err: "ends with '-'"},
	{name: "invalid utf-8", in: "\xff.example", err: "invalid UTF-8"},
	{name: "invalid utf-8 after u-label", in: "ü\xc3.example", err: "invalid UTF-8"},
	{name: "disallowed rune in u-label", in: "bü_cher.example", err: "not a valid internationalised label"},
	{name: "hyphens in u-label", in: "ab--ü.example", err: "not a valid internationalised label"},
	{name: "soft hyphen only", in: "\u00ad.example", err: "empty label"},

	// Ports and IP addresses.
	{name: "empty", in: "", err: "empty name"},
	{name: "colon", in: ":", err: "empty port"},
	{name: "empty port", in: "blog.alice.repl.test:", err: "empty port"},
	{name: "port out of range", in: "blog.alice.repl.test:99999", err: `port "99999" is out of range`},
	{name: "port zero", in: "blog.alice.repl.test:0", err: `port "0" is out of range`},
	{name: "port not a number", in: "blog.alice.repl.test:80x", err: `port "80x" is not a number`},
	{name: "negative port", in: "blog.alice.repl.test:-1", err: "not a number"},
	{name: "port only", in: ":80", err: "empty name"},
	{name: "two colons", in: "a:b:c", err: "more than one ':'"},
	{name: "ipv4", in: "127.0.0.1", err: "host is an IP address, not a name"},
	{name: "ipv4 port", in: "127.0.0.1:80", err: "host is an IP address"},
	{name: "ipv4 dot", in: "127.0.0.1.", err: "host is an IP address"},
	{name: "ipv6 bracketed port", in: "[::1]:8080", err: "host is an IP address"},
	{name: "ipv6 bracketed", in: "[::1]", err: "host is an IP address"},
	{name: "ipv6 bare", in: "::1", err: "host is an IP address"},
	{name: "ipv6 long", in: "2001:db8::1", err: "host is an IP address"},
	{name: "ipv6 zone", in: "[fe80::1%25eth0]:80", err: "host is an IP address"},
	{name: "ipv4 bracketed", in: "[127.0.0.1]", err: "host is an IP address"},
	{name: "brackets around a name", in: "[repl.test]", err: "not an IPv6 address"},
	{name: "open bracket", in: "[::1", err: "'[' without ']'"},
	{name: "junk after bracket", in: "[::1]x", err: `"x" after ']'`},
	{name: "bracketed bad port", in: "[::1]:99999", err: "out of range"},
	{name: "short ipv4", in: "127.1", err: `top-level label "1" is a number`},
	{name: "numeric tld", in: "example.123", err: `top-level label "123" is a number`},
	{name: "hex tld", in: "example.0x1f", err: `top-level label "0x1f" is a number`},

	// The zone and what lies around it.
	{name: "single label", in: "localhost", err: "at least two labels"},
	{name: "zone suffix", in: "test", err: "at least two labels"},
	{name: "label boundary", in: "xrepl.test", key: DomainKey("xrepl.test")},
	{name: "zone as prefix", in: "repl.test.example", key: DomainKey("repl.test.example")},
	{name: "longer tld", in: "alice.repl.testing", key: DomainKey("alice.repl.testing")},
	{name: "too deep", in: "a.b.c.repl.test", err: "too many labels under the zone"},
	{name: "too deep under id", in: "a.b.id.repl.test", err: "too many labels under the zone"},
	{name: "challenge too deep", in: "_acme-challenge.a.b.c.repl.test", err: "too many labels under the zone"},
	{name: "challenge outside zone", in: "_acme-challenge.example.com", err: "_acme-challenge is only served for names under the zone repl.test"},
	{name: "challenge alone", in: "_acme-challenge", err: "must be followed by a name under the zone"},
	{name: "challenge alone with dot", in: "_acme-challenge.", err: "must be followed by a name under the zone"},
	{name: "challenge twice", in: "_acme-challenge._acme-challenge.repl.test", err: `label "_acme-challenge": character '_' is not allowed`},
	{name: "challenge not first", in: "a._acme-challenge.repl.test", err: `label "_acme-challenge": character '_' is not allowed`},
	{name: "challenge prefix of label", in: "_acme-challengex.repl.test", err: `character '_' is not allowed`},
	{name: "challenge with bad name", in: "_acme-challenge.a..repl.test", err: "empty label"},
}

// name253 is a custom domain of exactly 253 octets.
var name253 = strings.Repeat(strings.Repeat("a", 62)+".", 4)[:248] + ".test"

func mustZone(tb testing.TB, name string) Zone {
	tb.Helper()
	z, err := NewZone(name)
	if err != nil {
		tb.Fatal(err)
	}
	return z
}

func TestParseName(t *testing.T) {
	if len(name253) != 253 {
		t.Fatalf("name253 is %d octets", len(name253))
	}
	z := mustZone(t, testZone)
	for _, tt := range nameTests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := z.ParseName(tt.in)
			if tt.err != "" {
				if err == nil {
					t.Fatalf("ParseName(%q) = %v, want an error containing %q", tt.in, k, tt.err)
				}
				if !strings.Contains(err.Error(), tt.err) {
					t.Errorf("ParseName(%q) error = %q, want it to contain %q", tt.in, err, tt.err)
				}
				checkNameError(t, err)
				if k != (Key{}) {
					t.Errorf("ParseName(%q) = %v with an error, want the zero Key", tt.in, k)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseName(%q): %v", tt.in, err)
			}
			if k != tt.key {
				t.Errorf("ParseName(%q) = %#v, want %#v", tt.in, k, tt.key)
			}
		})
	}
}

func checkNameError(t *testing.T, err error) {
	t.Helper()
	var ne *NameError
	if !errors.As(err, &ne) {
		t.Errorf("error %q is a %T, want a *NameError", err, err)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("error %q is not ErrInvalid", err)
	}
}

func TestNameErrorMessage(t *testing.T) {
	z := mustZone(t, testZone)
	_, err := z.ParseName("a..b")
	if got, want := err.Error(), `invalid name "a..b": empty label`; got != want {
		t.Errorf("error = %q, want %q", got, want)
	}

	long := strings.Repeat("\xff", 5000)
	_, err = z.ParseName(long)
	var ne *NameError
	if !errors.As(err, &ne) {
		t.Fatalf("error %v is not a *NameError", err)
	}
	if ne.Name != long[:maxErrNameLen]+"..." {
		t.Errorf("NameError.Name is %d octets, want the input cut to %d and marked", len(ne.Name), maxErrNameLen)
	}
	if strings.Contains(err.Error(), "\xff") {
		t.Errorf("error %q holds the raw input; want it quoted", err)
	}
}

func TestParseNameZeroZone(t *testing.T) {
	_, err := Zone{}.ParseName("blog.alice.repl.test")
	if err == nil || !strings.Contains(err.Error(), "NewZone") {
		t.Errorf("zero Zone: error = %v, want one naming NewZone", err)
	}
	checkNameError(t, err)
}

func TestParseNameAllocs(t *testing.T) {
	z := mustZone(t, testZone)
	for _, tt := range []struct {
		in     string
		allocs float64
	}{
		{"blog.alice.repl.test", 0},
		{"blog.alice.repl.test.", 0},
		{"blog.alice.repl.test:443", 0},
		{"r123.id.repl.test", 0},
		{"_acme-challenge.alice.repl.test", 0},
		{"www.example.com", 0},
		{"Blog.Alice.Repl.Test:8443", 1},
	} {
		got := testing.AllocsPerRun(100, func() {
			if _, err := z.ParseName(tt.in); err != nil {
				t.Fatal(err)
			}
		})
		if got > tt.allocs {
			t.Errorf("ParseName(%q) makes %v allocations, want %v", tt.in, got, tt.allocs)
		}
	}
}

func TestFormat(t *testing.T) {
	z := mustZone(t, testZone)
	for _, tt := range []struct {
		key  Key
		want string
	}{
		{Key{Kind: KeyApex}, "repl.test"},
		{Key{Kind: KeyOwner, Owner: "alice"}, "alice.repl.test"},
		{Key{Kind: KeyIDRoot}, "id.repl.test"},
		{ReplKey("alice", "blog"), "blog.alice.repl.test"},
		{ReplIDKey("r123"), "r123.id.repl.test"},
		{Key{Kind: KeyChallenge, Name: "_acme-challenge.alice.repl.test"}, "_acme-challenge.alice.repl.test"},
		{DomainKey("www.example.com"), "www.example.com"},
		{Key{}, ""},
		{Key{Kind: 200}, ""},
	} {
		t.Run(tt.key.String(), func(t *testing.T) {
			if got := z.Format(tt.key); got != tt.want {
				t.Errorf("Format(%v) = %q, want %q", tt.key, got, tt.want)
			}
		})
	}
}

// TestFormatRoundTrip checks that Format inverts ParseName for every key
// the table parses.
func TestFormatRoundTrip(t *testing.T) {
	z := mustZone(t, testZone)
	for _, tt := range nameTests {
		if tt.err != "" {
			continue
		}
		t.Run(tt.name, func(t *testing.T) {
			s := z.Format(tt.key)
			k, err := z.ParseName(s)
			if err != nil {
				t.Fatalf("ParseName(Format(%v) = %q): %v", tt.key, s, err)
			}
			if k != tt.key {
				t.Errorf("ParseName(Format(%v) = %q) = %v", tt.key, s, k)
			}
		})
	}
}

func TestNewZone(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   string
		want string
		err  string
	}{
		{name: "plain", in: "repl.test", want: "repl.test"},
		{name: "upper with dot", in: "Repl.Co.", want: "repl.co"},
		{name: "single label", in: "test", want: "test"},
		{name: "u-label", in: "bücher.example", want: "xn--bcher-kva.example"},
		{name: "empty", in: "", err: "empty name"},
		{name: "dot", in: ".", err: "empty name"},
		{name: "two dots", in: "repl.test..", err: "empty label"},
		{name: "empty label", in: "repl..test", err: "empty label"},
		{name: "port", in: "repl.test:53", err: `label "test:53": character ':' is not allowed`},
		{name: "ipv4", in: "127.0.0.1", err: "is a number"},
		{name: "ipv6", in: "::1", err: "character ':' is not allowed"},
		{name: "underscore", in: "_x.test", err: `character '_' is not allowed`},
		{name: "long label", in: strings.Repeat("a", 64) + ".test", err: "the limit is 63"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			z, err := NewZone(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("NewZone(%q) = %q, %v; want an error containing %q", tt.in, z.Name(), err, tt.err)
				}
				if !strings.HasPrefix(err.Error(), "invalid zone ") {
					t.Errorf("error %q does not start with %q", err, "invalid zone ")
				}
				checkNameError(t, err)
				return
			}
			if err != nil {
				t.Fatalf("NewZone(%q): %v", tt.in, err)
			}
			if z.Name() != tt.want {
				t.Errorf("NewZone(%q).Name() = %q, want %q", tt.in, z.Name(), tt.want)
			}
		})
	}
}

func TestParseNameSingleLabelZone(t *testing.T) {
	z := mustZone(t, "test")
	for in, want := range map[string]Key{
		"test":                     {Kind: KeyApex},
		"repl.test":                {Kind: KeyOwner, Owner: "repl"},
		"x.id.test":                ReplIDKey("x"),
		"_acme-challenge.id.test":  {Kind: KeyChallenge, Name: "_acme-challenge.id.test"},
		"www.example.com":          DomainKey("www.example.com"),
		"blog.alice.test.example":  DomainKey("blog.alice.test.example"),
		"blog.alice.Test.:8080":    ReplKey("alice", "blog"),
		"_acme-challenge.alice.te": {},
	} {
		k, err := z.ParseName(in)
		if want == (Key{}) {
			if err == nil {
				t.Errorf("ParseName(%q) = %v, want an error", in, k)
			}
			continue
		}
		if err != nil || k != want {
			t.Errorf("ParseName(%q) = %v, %v; want %v", in, k, err, want)
		}
	}
}

func TestParseNameLongZone(t *testing.T) {
	// With a zone this long, a challenge name can pass 253 octets even
	// though the name after the prefix does not.
	long := strings.Repeat(strings.Repeat("z", 49)+".", 4) + "test" // 204 octets
	z := mustZone(t, long)
	owner := strings.Repeat("o", 40)
	if k, err := z.ParseName(owner + "." + long); err != nil || k != (Key{Kind: KeyOwner, Owner: owner}) {
		t.Fatalf("ParseName(owner) = %v, %v", k, err)
	}
	_, err := z.ParseName(challengeLabel + "." + owner + "." + long)
	if err == nil || !strings.Contains(err.Error(), "261 octets long; the limit is 253") {
		t.Errorf("ParseName(challenge) error = %v, want one about its length", err)
	}
	_, err = z.ParseName(strings.Repeat("s", 10) + "." + owner + "." + long)
	if err == nil || !strings.Contains(err.Error(), "256 octets long") {
		t.Errorf("ParseName(repl) error = %v, want one about its length", err)
	}
}

func TestValidLabel(t *testing.T) {
	for _, tt := range []struct {
		in  string
		err string
	}{
		{"alice", ""},
		{"a", ""},
		{"0", ""},
		{"my--app", ""},
		{strings.Repeat("a", 63), ""},
		{"xn--bcher-kva", ""},
		{"", "empty label"},
		{strings.Repeat("a", 64), "64 octets long; the limit is 63"},
		{"-a", "starts with '-'"},
		{"a-", "ends with '-'"},
		{"Alice", "upper-case 'A'; labels are lower-case"},
		{"a_b", "character '_' is not allowed"},
		{"a.b", "character '.' is not allowed"},
		{"bücher", "non-ASCII byte 0xc3"},
		{"xn--bcher-k", "not a valid A-label"},
		{"xn--a-ecp", "not a valid A-label"},
		{"XN--BCHER-KVA", "upper-case"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			err := ValidLabel(tt.in)
			checkValid(t, "ValidLabel", tt.in, err, tt.err, "invalid label ")
		})
	}
}

func TestValidOwner(t *testing.T) {
	for _, tt := range []struct {
		in  string
		err string
	}{
		{"alice", ""},
		{"ids", ""},
		{"id", `"id" is reserved`},
		{"", "empty label"},
		{"Alice", "upper-case"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			err := ValidOwner(tt.in)
			checkValid(t, "ValidOwner", tt.in, err, tt.err, "invalid owner ")
		})
	}
}

func TestValidDomain(t *testing.T) {
	for _, tt := range []struct {
		in  string
		err string
	}{
		{"example.com", ""},
		{"www.example.com", ""},
		{"xn--bcher-kva.example", ""},
		{name253, ""},
		{"", "empty name"},
		{"a" + name253, "254 octets long"},
		{"localhost", "at least two labels"},
		{"example.com.", "empty label"},
		{"a..b", "empty label"},
		{"Example.com", "upper-case"},
		{"example.com:443", "character ':' is not allowed"},
		{"_acme-challenge.example.com", "character '_' is not allowed"},
		{"127.0.0.1", "is a number"},
		{"bücher.example", "non-ASCII"},
		{"xn--zn7c.example", "not a valid A-label"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			err := ValidDomain(tt.in)
			checkValid(t, "ValidDomain", tt.in, err, tt.err, "invalid domain ")
		})
	}
}

func checkValid(t *testing.T, fn, in string, err error, want, prefix string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Errorf("%s(%q): %v", fn, in, err)
		}
		return
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("%s(%q) = %v, want an error containing %q", fn, in, err, want)
	}
	if !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("%s(%q) error %q does not start with %q", fn, in, err, prefix)
	}
	checkNameError(t, err)
}

// FuzzParseName checks that ParseName never panics, that every Key it
// returns holds valid, normalised parts that Format turns back into the
// same Key, and that every error is a *NameError.
func FuzzParseName(f *testing.F) {
	for _, tt := range nameTests {
		f.Add(tt.in)
	}
	// More of what IDNA maps, rejects or lets through, to steer the fuzzer.
	for _, s := range []string{"مثال.إختبار", "1.שלום", "①.example", "⒈.example", "x\u0301.example", "ǅ.example", "\u0660.example", "a\u200cb.example", "xn--ls8h.example", "xn--9dbne9b.alice.repl.test", "_acme-challenge.xn--mller-kva.repl.test"} {
		f.Add(s)
	}
	z := mustZone(f, testZone)
	f.Fuzz(func(t *testing.T, in string) {
		k, err := z.ParseName(in)
		if err != nil {
			checkNameError(t, err)
			if k != (Key{}) {
				t.Errorf("ParseName(%q) = %v with an error", in, k)
			}
			return
		}
		checkKey(t, z, in, k)
		s := z.Format(k)
		k2, err := z.ParseName(s)
		if err != nil || k2 != k {
			t.Fatalf("ParseName(%q) = %#v; ParseName(Format = %q) = %#v, %v", in, k, s, k2, err)
		}
		if len(s) > maxNameLen {
			t.Errorf("ParseName(%q) = %v, which formats to %d octets", in, k, len(s))
		}
	})
}

// checkKey checks that k is well formed: the fields its kind uses are
// valid, normalised labels or names, and the others are empty.
func checkKey(t *testing.T, z Zone, in string, k Key) {
	t.Helper()
	label := func(what, s string) {
		if err := ValidLabel(s); err != nil {
			t.Errorf("ParseName(%q) = %#v: %s: %v", in, k, what, err)
		}
	}
	var want Key
	switch k.Kind {
	case KeyApex, KeyIDRoot:
		want = Key{Kind: k.Kind}
	case KeyOwner:
		if err := ValidOwner(k.Owner); err != nil {
			t.Errorf("ParseName(%q) = %#v: %v", in, k, err)
		}
		want = Key{Kind: k.Kind, Owner: k.Owner}
	case KeyRepl:
		if err := ValidOwner(k.Owner); err != nil {
			t.Errorf("ParseName(%q) = %#v: %v", in, k, err)
		}
		label("slug", k.Slug)
		want = ReplKey(k.Owner, k.Slug)
	case KeyReplID:
		label("id", k.ID)
		want = ReplIDKey(k.ID)
	case KeyChallenge:
		rest, ok := strings.CutPrefix(k.Name, challengeLabel+".")
		if !ok {
			t.Fatalf("ParseName(%q) = %#v: no %s. prefix", in, k, challengeLabel)
		}
		r, err := z.ParseName(rest)
		if err != nil || r.Kind == KeyDomain || r.Kind == KeyChallenge || z.Format(r) != rest {
			t.Errorf("ParseName(%q) = %#v: the name after the prefix parses to %v, %v", in, k, r, err)
		}
		want = Key{Kind: k.Kind, Name: k.Name}
	case KeyDomain:
		if err := ValidDomain(k.Name); err != nil {
			t.Errorf("ParseName(%q) = %#v: %v", in, k, err)
		}
		if k.Name == z.Name() || strings.HasSuffix(k.Name, "."+z.Name()) {
			t.Errorf("ParseName(%q) = %#v: a domain under the zone", in, k)
		}
		want = DomainKey(k.Name)
	default:
		t.Fatalf("ParseName(%q) = %#v without an error", in, k)
	}
	if k != want {
		t.Errorf("ParseName(%q) = %#v: fields set that kind %v does not use", in, k, k.Kind)
	}
}

func BenchmarkParseName(b *testing.B) {
	z := mustZone(b, testZone)
	for _, bb := range []struct{ name, in string }{
		{"repl", "blog.alice.repl.test"},
		{"mixed-case-port", "Blog.Alice.Repl.Test:8443"},
		{"repl-id", "0c1f5a7e-4b2d-4e8f-9a3b-6d2e1f0a9b8c.id.repl.test"},
		{"challenge", "_acme-challenge.blog.alice.repl.test."},
		{"domain", "www.example.com"},
		{"u-label", "www.bücher.example"},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := z.ParseName(bb.in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
