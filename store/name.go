package store

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Limits on names (RFC 1035, section 2.3.4).
const (
	maxNameLen  = 253 // octets in a name without its trailing dot
	maxLabelLen = 63  // octets in a label

	// maxInputLen caps what ParseName looks at before it rejects a name as
	// too long. It leaves room for a port and for U-labels, whose UTF-8
	// form can be up to four times longer than their A-label.
	maxInputLen = 4*maxNameLen + len(":65535.")

	// maxErrNameLen caps the input kept in a NameError.
	maxErrNameLen = 256

	// challengeLabel is the only label with an underscore that ParseName
	// admits, as the first label of a name under the zone.
	challengeLabel = "_acme-challenge"

	// aceLabelPrefix starts every A-label (RFC 5890, section 2.3.2.5).
	aceLabelPrefix = "xn--"
)

// NameError says why a name, label or zone was rejected. It unwraps to
// ErrInvalid.
type NameError struct {
	// Name is the rejected input, cut to 256 octets (with "..." appended
	// when cut). It may hold any bytes: quote it (%q) before printing it.
	Name string
	// Reason says what is wrong, e.g. "empty label".
	Reason string

	what string // "name" when empty, or "label", "owner", "domain", "zone"
}

func (e *NameError) Error() string {
	what := e.what
	if what == "" {
		what = "name"
	}
	return fmt.Sprintf("invalid %s %q: %s", what, e.Name, e.Reason)
}

// Unwrap returns ErrInvalid, so that errors.Is(err, ErrInvalid) holds.
func (e *NameError) Unwrap() error { return ErrInvalid }

// reject returns a NameError without its Name; the exported caller sets it
// with named.
func reject(format string, args ...any) *NameError {
	if len(args) == 0 {
		return &NameError{Reason: format}
	}
	return &NameError{Reason: fmt.Sprintf(format, args...)}
}

// named fills in the input and what it was, and returns e as an error.
func (e *NameError) named(what, input string) error {
	e.what = what
	e.Name = clip(input, maxErrNameLen)
	return e
}

// clip cuts s to n octets, marking the cut, and copies the part it keeps so
// that an error does not hold on to a large input.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.Clone(s[:n]) + "..."
}

// Zone is the platform's DNS zone, such as "repl.co". Every name it parses
// is classified relative to it. The zero Zone rejects every name: make one
// with NewZone.
type Zone struct {
	name    string // "repl.test"
	dotName string // ".repl.test"
}

// NewZone validates and normalises a zone name: it folds ASCII case, drops
// one trailing dot and converts U-labels to A-labels. Every label must
// follow the label rules (see ValidLabel), so a port is not allowed; a
// single label is, a numeric last label (as in an IP address) is not.
func NewZone(name string) (Zone, error) {
	s := strings.TrimSuffix(name, ".")
	if s == "" {
		return Zone{}, reject("empty name").named("zone", name)
	}
	n, e := normalise(s)
	if e != nil {
		return Zone{}, e.named("zone", name)
	}
	if e := checkTopLabel(n); e != nil {
		return Zone{}, e.named("zone", name)
	}
	n = strings.Clone(n)
	return Zone{name: n, dotName: "." + n}, nil
}

// Name returns the normalised zone name, e.g. "repl.test".
func (z Zone) Name() string { return z.name }

// ParseName turns a Host header value (or TLS server name) or a DNS question
// name into a Key, following DESIGN.md, "Names".
//
// It drops a ":port" (1-65535) and one trailing dot, folds ASCII case, and
// converts U-labels to A-labels (IDNA2008 with the UTS #46 lookup mapping).
// It rejects IP addresses, empty labels, labels that are not 1-63 octets of
// [a-z0-9-] not starting or ending with '-', A-labels ("xn--") that are not
// valid punycode of a valid U-label, and names longer than 253 octets. The
// only label with an underscore it admits is a first label
// "_acme-challenge" in front of a name under the zone (KeyChallenge).
//
// Names under the zone give KeyApex, KeyOwner, KeyIDRoot, KeyRepl or
// KeyReplID; deeper names are rejected. Names outside it give KeyDomain and
// need at least two labels, the last one not numeric.
//
// Every error is a *NameError. When name is lower-case ASCII (a port and a
// trailing dot are fine), ParseName does not allocate: the Key's strings are
// substrings of name, so a long-lived holder of the Key keeps name alive.
func (z Zone) ParseName(name string) (Key, error) {
	k, e := z.parse(name)
	if e != nil {
		return Key{}, e.named("name", name)
	}
	return k, nil
}

func (z Zone) parse(name string) (Key, *NameError) {
	if z.name == "" {
		return Key{}, reject("no zone: make the Zone with NewZone")
	}
	if len(name) > maxInputLen {
		return Key{}, reject("%d octets long; the limit is %d", len(name), maxNameLen)
	}
	host, e := splitHost(name)
	if e != nil {
		return Key{}, e
	}

	if hasChallengePrefix(host) {
		if len(host) == len(challengeLabel) {
			return Key{}, reject("%s must be followed by a name under the zone", challengeLabel)
		}
		rest := host[len(challengeLabel)+1:]
		n, e := normalise(rest)
		if e != nil {
			return Key{}, e
		}
		if _, ok, e := z.classify(n); e != nil {
			return Key{}, e
		} else if !ok {
			return Key{}, reject("%s is only served for names under the zone %s", challengeLabel, z.name)
		}
		full := host // already normalised: no copy
		if n != rest || host[:len(challengeLabel)] != challengeLabel {
			full = challengeLabel + "." + n
		}
		if len(full) > maxNameLen {
			return Key{}, reject("%d octets long; the limit is %d", len(full), maxNameLen)
		}
		return Key{Kind: KeyChallenge, Name: full}, nil
	}

	n, e := normalise(host)
	if e != nil {
		return Key{}, e
	}
	k, ok, e := z.classify(n)
	if e != nil {
		return Key{}, e
	}
	if ok {
		return k, nil
	}
	if e := checkDomainShape(n); e != nil {
		return Key{}, e
	}
	return Key{Kind: KeyDomain, Name: n}, nil
}

// hasChallengePrefix reports whether the first label of s is
// _acme-challenge, in any case.
func hasChallengePrefix(s string) bool {
	n := len(challengeLabel)
	return len(s) >= n && (len(s) == n || s[n] == '.') && strings.EqualFold(s[:n], challengeLabel)
}

// classify places a normalised name relative to the zone. ok is false for
// a name outside it.
func (z Zone) classify(n string) (k Key, ok bool, e *NameError) {
	if n == z.name {
		return Key{Kind: KeyApex}, true, nil
	}
	if len(n) <= len(z.dotName) || !strings.HasSuffix(n, z.dotName) {
		return Key{}, false, nil
	}
	rel := n[:len(n)-len(z.dotName)]
	first, rest, deeper := strings.Cut(rel, ".")
	switch {
	case !deeper && first == "id":
		return Key{Kind: KeyIDRoot}, true, nil
	case !deeper:
		return Key{Kind: KeyOwner, Owner: first}, true, nil
	case strings.IndexByte(rest, '.') >= 0:
		return Key{}, false, reject("too many labels under the zone %s", z.name)
	case rest == "id":
		return Key{Kind: KeyReplID, ID: first}, true, nil
	}
	return Key{Kind: KeyRepl, Owner: rest, Slug: first}, true, nil
}

// Format returns the name of k under the zone, without a trailing dot: the
// inverse of ParseName. For KeyChallenge and KeyDomain it returns k.Name;
// for KeyInvalid or an unknown kind, "". It does not validate k.
func (z Zone) Format(k Key) string {
	switch k.Kind {
	case KeyApex:
		return z.name
	case KeyOwner:
		return k.Owner + z.dotName
	case KeyIDRoot:
		return "id" + z.dotName
	case KeyRepl:
		return k.Slug + "." + k.Owner + z.dotName
	case KeyReplID:
		return k.ID + ".id" + z.dotName
	case KeyChallenge, KeyDomain:
		return k.Name
	}
	return ""
}

// splitHost drops a ":port" and one trailing dot, and rejects IP addresses.
func splitHost(s string) (string, *NameError) {
	if s == "" {
		return "", reject("empty name")
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", reject("'[' without ']'")
		}
		if rest := s[end+1:]; rest != "" {
			if rest[0] != ':' {
				return "", reject("%q after ']'", clip(rest, maxLabelLen))
			}
			if e := checkPort(rest[1:]); e != nil {
				return "", e
			}
		}
		if _, err := netip.ParseAddr(s[1:end]); err == nil {
			return "", reject("host is an IP address, not a name")
		}
		return "", reject("brackets around something that is not an IPv6 address")
	}
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		if strings.IndexByte(s[:i], ':') >= 0 {
			if _, err := netip.ParseAddr(s); err == nil {
				return "", reject("host is an IP address, not a name")
			}
			return "", reject("more than one ':'")
		}
		if e := checkPort(s[i+1:]); e != nil {
			return "", e
		}
		s = s[:i]
	}
	s = strings.TrimSuffix(s, ".")
	if s == "" {
		return "", reject("empty name")
	}
	if c := s[len(s)-1]; '0' <= c && c <= '9' {
		if _, err := netip.ParseAddr(s); err == nil {
			return "", reject("host is an IP address, not a name")
		}
	}
	return s, nil
}

// checkPort accepts 1 to 5 decimal digits with a value from 1 to 65535.
func checkPort(p string) *NameError {
	if p == "" {
		return reject("empty port")
	}
	v := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c < '0' || c > '9' {
			return reject("port %q is not a number", clip(p, 8))
		}
		if v = v*10 + int(c-'0'); v > 65535 {
			return reject("port %q is out of range 1-65535", clip(p, 8))
		}
	}
	if v == 0 {
		return reject("port %q is out of range 1-65535", p)
	}
	return nil
}

// normalise folds case, converts U-labels to A-labels and checks every
// label of s, which has no port and no trailing dot. It returns s itself
// when s is already normalised.
func normalise(s string) (string, *NameError) {
	if len(s) > maxInputLen {
		return "", reject("%d octets long; the limit is %d", len(s), maxNameLen)
	}
	sc := scanName(s)
	if sc.nonASCII {
		a, e := toASCII(s)
		if e != nil {
			return "", e
		}
		s = a
		sc = scanName(s)
		if sc.nonASCII { // idna returns ASCII; never trust it blindly
			return "", reject("not ASCII after IDNA conversion")
		}
	}
	if len(s) > maxNameLen {
		return "", reject("%d octets long; the limit is %d", len(s), maxNameLen)
	}
	if sc.err != nil {
		return "", sc.err
	}
	if sc.upper {
		s = strings.ToLower(s)
	}
	if sc.ace {
		for rest := s; rest != ""; {
			var label string
			label, rest, _ = strings.Cut(rest, ".")
			if strings.HasPrefix(label, aceLabelPrefix) {
				if e := checkALabel(label); e != nil {
					return "", e
				}
			}
		}
	}
	return s, nil
}

// scanned is what scanName found.
type scanned struct {
	upper    bool       // an upper-case ASCII letter
	ace      bool       // a label starting "xn--", in any case
	nonASCII bool       // a byte >= 0x80; the scan stopped there
	err      *NameError // the first broken rule, if any
}

// scanName checks every label of s against the LDH rules, taking
// upper-case letters as their lower-case ones. It stops at the first
// non-ASCII byte, since such names go through IDNA first.
func scanName(s string) scanned {
	var sc scanned
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			c := s[i]
			switch {
			case c >= 0x80:
				sc.nonASCII = true
				return sc
			case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
			case 'A' <= c && c <= 'Z':
				sc.upper = true
			default:
				if sc.err == nil {
					sc.err = labelErr(s[start:labelEnd(s, start)], "character %q is not allowed", rune(c))
				}
			}
			continue
		}
		if sc.err == nil {
			sc.err = checkLabelShape(s[start:i])
		}
		if i-start >= len(aceLabelPrefix) && strings.EqualFold(s[start:start+len(aceLabelPrefix)], aceLabelPrefix) {
			sc.ace = true
		}
		start = i + 1
	}
	return sc
}

// labelEnd returns the end of the label that starts at start.
func labelEnd(s string, start int) int {
	if i := strings.IndexByte(s[start:], '.'); i >= 0 {
		return start + i
	}
	return len(s)
}

// checkLabelShape checks a label's length and hyphens, not its characters.
func checkLabelShape(label string) *NameError {
	switch {
	case label == "":
		return reject("empty label")
	case len(label) > maxLabelLen:
		return labelErr(label, "%d octets long; the limit is %d", len(label), maxLabelLen)
	case label[0] == '-':
		return labelErr(label, "starts with '-'")
	case label[len(label)-1] == '-':
		return labelErr(label, "ends with '-'")
	}
	return nil
}

// labelErr says what is wrong with which label.
func labelErr(label, format string, args ...any) *NameError {
	return reject("label %q: %s", clip(label, maxLabelLen), fmt.Sprintf(format, args...))
}

// toASCII converts each label of s that is not ASCII with the IDNA lookup
// profile; the ASCII labels are left to scanName. Labels are converted one
// by one so that a U-label does not make the profile's stricter checks
// (such as "--" in the third and fourth position) apply to the LDH labels
// around it.
func toASCII(s string) (string, *NameError) {
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i, rest := 0, s; ; i++ {
		label, more, found := strings.Cut(rest, ".")
		if i > 0 {
			b.WriteByte('.')
		}
		switch {
		case isASCII(label):
			b.WriteString(label)
		case !utf8.ValidString(label):
			// The idna package turns invalid UTF-8 into U+FFFD and does
			// not always say so.
			return "", labelErr(label, "invalid UTF-8")
		default:
			a, err := idna.Lookup.ToASCII(label)
			if err != nil {
				return "", labelErr(label, "not a valid internationalised label: %v", err)
			}
			b.WriteString(a)
		}
		if !found {
			break
		}
		rest = more
	}
	return b.String(), nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// checkALabel checks that a lower-case label starting "xn--" is the
// canonical punycode of a valid U-label: it must convert to Unicode under
// the IDNA lookup profile and back to itself.
func checkALabel(label string) *NameError {
	u, err := idna.Lookup.ToUnicode(label)
	if err != nil {
		return labelErr(label, "not a valid A-label: %v", err)
	}
	a, err := idna.Lookup.ToASCII(u)
	if err != nil {
		return labelErr(label, "not a valid A-label: %v", err)
	}
	if a != label {
		return labelErr(label, "not a valid A-label: %q converts back to %q", u, a)
	}
	return nil
}

// checkDomainShape checks what a custom domain needs beyond valid labels:
// two labels or more, and a last label that does not look like a number.
func checkDomainShape(n string) *NameError {
	if strings.IndexByte(n, '.') < 0 {
		return reject("a custom domain needs at least two labels")
	}
	return checkTopLabel(n)
}

// checkTopLabel rejects a name whose last label is a number, as in an IPv4
// address: all digits, or "0x" and hex digits, which browsers (the WHATWG
// URL standard) also take for a number.
func checkTopLabel(n string) *NameError {
	top := n[strings.LastIndexByte(n, '.')+1:]
	digits := "0123456789"
	num := top
	if strings.HasPrefix(top, "0x") {
		digits, num = "0123456789abcdef", top[2:]
	}
	for i := 0; i < len(num); i++ {
		if strings.IndexByte(digits, num[i]) < 0 {
			return nil
		}
	}
	return reject("top-level label %q is a number", clip(top, maxLabelLen))
}

// ValidLabel reports whether s is a valid normalised label, such as a
// repl's owner, slug or id: 1 to 63 octets of [a-z0-9-], not starting or
// ending with '-', and, when it starts "xn--", a valid A-label. ParseName
// accepts exactly these labels (after folding case). The error is a
// *NameError saying what is wrong.
func ValidLabel(s string) error {
	if e := checkLabel(s); e != nil {
		return e.named("label", s)
	}
	return nil
}

func checkLabel(s string) *NameError {
	if e := checkLabelShape(s); e != nil {
		return e
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
		case 'A' <= c && c <= 'Z':
			return labelErr(s, "upper-case %q; labels are lower-case", rune(c))
		case c >= 0x80:
			return labelErr(s, "non-ASCII byte 0x%02x; use the A-label (xn--...)", c)
		default:
			return labelErr(s, "character %q is not allowed", rune(c))
		}
	}
	if strings.HasPrefix(s, aceLabelPrefix) {
		return checkALabel(s)
	}
	return nil
}

// ValidOwner reports whether s can be a repl's owner: a valid label (see
// ValidLabel) other than "id", which names repls by id (<repl-id>.id.<zone>).
func ValidOwner(s string) error {
	e := checkLabel(s)
	if e == nil && s == "id" {
		e = reject(`"id" is reserved for <repl-id>.id.<zone>`)
	}
	if e != nil {
		return e.named("owner", s)
	}
	return nil
}

// ValidDomain reports whether s is a normalised custom domain: lower-case
// A-labels (see ValidLabel), at least two of them, the last one not a
// number, no trailing dot, at most 253 octets. It does not know the zone:
// checking that s is outside it is the caller's job (Zone.ParseName gives
// KeyDomain only for names outside it).
func ValidDomain(s string) error {
	if e := checkDomain(s); e != nil {
		return e.named("domain", s)
	}
	return nil
}

func checkDomain(s string) *NameError {
	if s == "" {
		return reject("empty name")
	}
	if len(s) > maxNameLen {
		return reject("%d octets long; the limit is %d", len(s), maxNameLen)
	}
	for rest := s; ; {
		label, more, found := strings.Cut(rest, ".")
		if e := checkLabel(label); e != nil {
			return e
		}
		if !found {
			break
		}
		rest = more
	}
	return checkDomainShape(s)
}
