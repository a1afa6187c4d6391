package nameserver

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/replproxy/replproxy/store"
)

// Config is what a Handler answers for. Zone and at least one NameServer
// are required; every other field has a documented zero-value default.
type Config struct {
	// Zone is the platform's zone, such as "repl.co".
	Zone string
	// NameServers are the zone's NS records, in order; the first is the
	// SOA's primary. A name server under the zone needs its addresses
	// (glue); one outside it must have none.
	NameServers []NameServer
	// SOA holds the zone's SOA fields.
	SOA SOA
	// Apex holds static records at the zone's apex. Empty means none
	// besides the SOA and NS.
	Apex Apex

	// TTL of the A and AAAA answers for repls. Zero means 60 s.
	TTL time.Duration
	// ChallengeTTL of the _acme-challenge TXT (or CNAME) answers. Zero
	// means 10 s: certificate authorities must see a new value at once.
	ChallengeTTL time.Duration
	// ValidationZone, when set, makes every _acme-challenge name a CNAME
	// into it instead of TXT records from the store: the name with the
	// zone replaced, e.g. _acme-challenge.alice.repl.co CNAME
	// _acme-challenge.alice.<ValidationZone>.
	ValidationZone string

	// MaxUDPSize is the largest UDP reply sent, and the size advertised in
	// EDNS. Zero means 1232 (the DNS flag day 2020 value). 512 to 4096.
	MaxUDPSize int
	// CookieSecret keys the server cookies (RFC 7873, 9018): 16 bytes.
	// Nil means a random secret, so cookies verify only on this instance;
	// servers behind one address should share one.
	CookieSecret []byte
	// RRL limits UDP responses per client network.
	RRL RRLConfig
	// QueryLogEvery logs one query in this many (at info level, logger
	// "query"). Zero means no query log.
	QueryLogEvery int
}

// Off turns off a setting whose zero value means its default: RRLConfig's
// Rate (no rate limiting) and Slip (no truncated replies: drop them all).
// replns's flags say it the same way (-rrl-rate -1), and take 0 as well.
const Off = -1

// NameServer is one NS record of the zone, and its glue.
type NameServer struct {
	Name  string       // e.g. "ns1.repl.co"
	Addrs []netip.Addr // glue; required under the zone, refused outside
}

// SOA holds the zone's SOA fields. The default timers suit Zonemaster's
// recommendations; replns has no secondaries, so they matter little.
type SOA struct {
	// Mbox is the administrator's mailbox in DNS form. Empty means
	// "hostmaster.<zone>".
	Mbox string
	// Serial zero means 1.
	Serial uint32
	// Refresh zero means 4 h, Retry 1 h, Expire 14 d.
	Refresh, Retry, Expire time.Duration
	// Minimum bounds negative caching: NXDOMAIN and NODATA answers carry the
	// SOA with TTL min(TTL, Minimum). Zero means 60 s, so a repl created
	// just after someone asked for it resolves soon.
	Minimum time.Duration
	// TTL of the SOA, the NS records, glue and the static apex records.
	// Zero means 1 h.
	TTL time.Duration
}

// Apex lists static records at the zone's apex.
type Apex struct {
	A    []netip.Addr
	AAAA []netip.Addr
	TXT  [][]string // each record one or more character-strings
	MX   []MX
	CAA  []CAA
}

// MX is one mail exchanger.
type MX struct {
	Preference uint16
	Exchange   string
}

// CAA is one certification authority authorization (RFC 8659).
type CAA struct {
	Flag  uint8
	Tag   string // "issue", "issuewild", "iodef", ...
	Value string
}

// RRLConfig tunes response rate limiting: per client network (an IPv4 /24,
// an IPv6 /56), a token bucket of replies over UDP. A reply over the limit
// is dropped, except every Slip-th one, sent empty with TC set so that a
// real client retries over TCP. TCP is never limited, nor is a client that
// returns a valid server cookie (its address is proven).
type RRLConfig struct {
	// Rate is replies per second per client network. Zero means 200;
	// Off (any negative) turns rate limiting off.
	Rate int
	// Burst is how many replies over Rate a network may send at once.
	// Zero means Rate.
	Burst int
	// Slip: every Slip-th limited reply is sent truncated. Zero means 2;
	// 1 sends every one truncated; Off (any negative) drops them all.
	Slip int
	// IPv4Prefix and IPv6Prefix are the sizes of a client network. Zero
	// means 24 and 56.
	IPv4Prefix, IPv6Prefix int
	// Buckets is the size of the fixed table of buckets (memory is about
	// 24 bytes each; networks that collide share one, keyed at random so
	// that collisions cannot be chosen). Zero means 65536.
	Buckets int
}

// Defaults: what the zero values of Config and RRLConfig mean.
const (
	DefaultTTL          = 60 * time.Second
	DefaultChallengeTTL = 10 * time.Second
	DefaultMaxUDPSize   = 1232
	DefaultRRLRate      = 200
	DefaultRRLSlip      = 2
)

// withDefaults returns a copy of c with zero values replaced, checked.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	zone, err := store.NewZone(c.Zone)
	if err != nil {
		bad("zone: %w", err)
	} else {
		c.Zone = zone.Name()
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.ChallengeTTL == 0 {
		c.ChallengeTTL = DefaultChallengeTTL
	}
	if c.MaxUDPSize == 0 {
		c.MaxUDPSize = DefaultMaxUDPSize
	}
	if c.MaxUDPSize < minUDPSize || c.MaxUDPSize > 4096 {
		bad("max UDP size %d: must be from 512 to 4096", c.MaxUDPSize)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"TTL", c.TTL}, {"challenge TTL", c.ChallengeTTL}} {
		if d.v < time.Second || d.v > 7*24*time.Hour {
			bad("%s %v: must be from 1s to 168h", d.name, d.v)
		}
	}

	s := &c.SOA
	setDur := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	setDur(&s.Refresh, 4*time.Hour)
	setDur(&s.Retry, time.Hour)
	setDur(&s.Expire, 14*24*time.Hour)
	setDur(&s.Minimum, 60*time.Second)
	setDur(&s.TTL, time.Hour)
	if s.Serial == 0 {
		s.Serial = 1
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"SOA refresh", s.Refresh}, {"SOA retry", s.Retry}, {"SOA expire", s.Expire}, {"SOA minimum", s.Minimum}, {"SOA TTL", s.TTL}} {
		if d.v < time.Second || d.v > 1<<31*time.Second {
			bad("%s %v: must be from 1s to 68 years, in whole seconds", d.name, d.v)
		}
	}

	if zone.Name() != "" {
		if s.Mbox == "" {
			s.Mbox = "hostmaster." + zone.Name()
		}
		s.Mbox = strings.TrimSuffix(strings.ToLower(s.Mbox), ".")
		if err := checkHostname(s.Mbox); err != nil {
			bad("SOA mailbox %q: %v (write the address user@example.com as user.example.com)", s.Mbox, err)
		}
		c.NameServers = checkNameServers(c.NameServers, zone.Name(), bad)
		c.Apex = checkApex(c.Apex, bad)
		if c.ValidationZone != "" {
			vz, err := store.NewZone(c.ValidationZone)
			if err != nil {
				bad("validation zone: %w", err)
			} else {
				c.ValidationZone = vz.Name()
			}
			if c.ValidationZone == zone.Name() || strings.HasSuffix(c.ValidationZone, "."+zone.Name()) {
				bad("validation zone %q: must be outside the zone %q", c.ValidationZone, zone.Name())
			}
		}
	}

	if c.CookieSecret == nil {
		c.CookieSecret = make([]byte, 16)
		_, _ = rand.Read(c.CookieSecret) // never fails
	} else if len(c.CookieSecret) != 16 {
		bad("cookie secret: %d bytes; it must be 16", len(c.CookieSecret))
	}
	if c.QueryLogEvery < 0 {
		bad("query log every %d: must be 0 (off) or more", c.QueryLogEvery)
	}
	if c.RRL, err = c.RRL.withDefaults(); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

func checkNameServers(nss []NameServer, zone string, bad func(string, ...any)) []NameServer {
	if len(nss) == 0 {
		bad("name servers: none given; the zone needs at least one NS record, e.g. ns1.%s with its address", zone)
		return nil
	}
	out := make([]NameServer, 0, len(nss))
	seen := make(map[string]bool)
	for i, ns := range nss {
		name := strings.TrimSuffix(strings.ToLower(ns.Name), ".")
		if err := checkHostname(name); err != nil {
			bad("name server %d %q: %v", i+1, ns.Name, err)
			continue
		}
		if seen[name] {
			bad("name server %q: listed twice", name)
			continue
		}
		seen[name] = true
		inZone := name == zone || strings.HasSuffix(name, "."+zone)
		switch {
		case name == zone:
			bad("name server %q: the apex cannot be a name server's name; use e.g. ns1.%s", name, zone)
		case inZone && strings.Count(strings.TrimSuffix(name, "."+zone), ".") > 0:
			bad("name server %q: in-zone name servers must be one label under the zone, e.g. ns1.%s", name, zone)
		case inZone && strings.TrimSuffix(name, "."+zone) == "id":
			bad("name server %q: id.%s names repls by id; pick another label", name, zone)
		case inZone && len(ns.Addrs) == 0:
			bad("name server %q: it is under the zone, so give its addresses (glue)", name)
		case !inZone && len(ns.Addrs) != 0:
			bad("name server %q: it is outside the zone, so it takes no addresses here (its own zone serves them)", name)
		}
		addrs := make([]netip.Addr, 0, len(ns.Addrs))
		for _, a := range ns.Addrs {
			a = a.Unmap()
			if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
				bad("name server %q: address %v is not a usable unicast address", name, a)
				continue
			}
			addrs = append(addrs, a)
		}
		out = append(out, NameServer{Name: name, Addrs: addrs})
	}
	return out
}

func checkApex(a Apex, bad func(string, ...any)) Apex {
	for _, ip := range a.A {
		if !ip.Is4() && !ip.Is4In6() {
			bad("apex A %v: not an IPv4 address; put IPv6 addresses under AAAA", ip)
		}
	}
	for i, ip := range a.A {
		a.A[i] = ip.Unmap()
	}
	for _, ip := range a.AAAA {
		if !ip.Is6() || ip.Is4In6() {
			bad("apex AAAA %v: not an IPv6 address; put IPv4 addresses under A", ip)
		}
	}
	for i, txt := range a.TXT {
		if len(txt) == 0 {
			bad("apex TXT %d: empty; give at least one string", i+1)
		}
		for _, s := range txt {
			if len(s) > 255 {
				bad("apex TXT %d: a string of %d octets; the limit is 255 (split it into several strings)", i+1, len(s))
			}
		}
	}
	for i, mx := range a.MX {
		a.MX[i].Exchange = strings.TrimSuffix(strings.ToLower(mx.Exchange), ".")
		if err := checkHostname(a.MX[i].Exchange); err != nil {
			bad("apex MX %q: %v", mx.Exchange, err)
		}
	}
	for _, caa := range a.CAA {
		if caa.Tag == "" || len(caa.Tag) > 15 || strings.IndexFunc(caa.Tag, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9')
		}) >= 0 {
			bad("apex CAA tag %q: 1 to 15 letters and digits, e.g. issue, issuewild, iodef", caa.Tag)
		}
		if len(caa.Value) > 255 {
			bad("apex CAA value of %d octets: too long", len(caa.Value))
		}
	}
	return a
}

// checkHostname checks a lower-case name without the final dot: labels of
// letters, digits and '-', at most 253 octets.
func checkHostname(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > 253 {
		return fmt.Errorf("%d octets long; the limit is 253", len(name))
	}
	for label := range strings.SplitSeq(name, ".") {
		if err := store.ValidLabel(label); err != nil {
			return fmt.Errorf("label %q: letters, digits and '-' only, 1 to 63 of them, not starting or ending with '-'", label)
		}
	}
	return nil
}

// withDefaults returns a copy of r with zero values replaced, checked.
func (r RRLConfig) withDefaults() (RRLConfig, error) {
	if r.Rate < 0 {
		return RRLConfig{Rate: Off}, nil
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if r.Rate == 0 {
		r.Rate = DefaultRRLRate
	}
	if r.Burst == 0 {
		r.Burst = r.Rate
	}
	if r.Slip == 0 {
		r.Slip = DefaultRRLSlip
	}
	if r.IPv4Prefix == 0 {
		r.IPv4Prefix = 24
	}
	if r.IPv6Prefix == 0 {
		r.IPv6Prefix = 56
	}
	if r.Buckets == 0 {
		r.Buckets = 65536
	}
	if r.IPv4Prefix < 1 || r.IPv4Prefix > 32 {
		bad("rate limit IPv4 prefix /%d: must be /1 to /32", r.IPv4Prefix)
	}
	if r.IPv6Prefix < 1 || r.IPv6Prefix > 128 {
		bad("rate limit IPv6 prefix /%d: must be /1 to /128", r.IPv6Prefix)
	}
	if r.Burst < 0 {
		bad("rate limit burst %d: must be 0 (the rate) or more", r.Burst)
	}
	if r.Buckets < 1 || r.Buckets > 1<<24 {
		bad("rate limit table of %d buckets: must be 1 to 16777216", r.Buckets)
	}
	return r, errors.Join(errs...)
}
