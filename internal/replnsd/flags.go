package replnsd

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/internal/cli"
	"github.com/replproxy/replproxy/internal/memlimit"
	"github.com/replproxy/replproxy/nameserver"
	"github.com/replproxy/replproxy/store/routecache"
)

// options is everything the command line (or the environment) sets.
type options struct {
	clusters  string // the registry file
	zoneFile  string
	admin     string
	handover  string // the handover socket's path
	logLevel  string
	logFormat string
	memory    memlimit.Flags

	dns    nameserver.Config
	server nameserver.ServerConfig
	cache  routecache.Config
	// moveHold is -move-hold: 0 turns it off (ClustersConfig.MoveHold
	// takes a negative value for that).
	moveHold time.Duration
}

// envPrefix: every flag -some-name is also read from REPLNS_SOME_NAME.
const envPrefix = "REPLNS"

const usageHead = `replns is the authoritative DNS server of a replproxy platform's zone. It
answers A/AAAA for <slug>.<owner>.<zone> and <repl-id>.id.<zone> with the
load-balancer addresses of the cluster hosting the repl, found in the
stores of every cluster of the registry, and serves the zone's SOA, NS and
static apex records and the _acme-challenge TXT records of DNS-01.

Usage:

  replns -zone repl.co -registry /etc/replproxy/clusters.yaml \
    -ns ns1.repl.co=192.0.2.53+2001:db8::53,ns2.repl.co=198.51.100.53 \
    -listen 192.0.2.53:53

` + cli.EnvRule + `
Durations are like 60s, 5m, 24h.

Flags:
`

// parseFlags reads the command line, then the environment (through env;
// empty means not set) for flags not given. It returns flag.ErrHelp after
// printing the usage for -h.
func parseFlags(args []string, env Env, out io.Writer) (*options, error) {
	o := &options{}
	var raw rawFlags
	fs := flag.NewFlagSet("replns", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, usageHead)
		fs.PrintDefaults()
	}
	o.zoneFlags(fs, &raw)
	o.serverFlags(fs)
	o.cacheFlags(fs)
	o.operationFlags(fs)

	if err := cli.ParseEnv(fs, envPrefix, args, env); err != nil {
		return nil, err
	}
	if err := o.memory.Parsed(fs); err != nil {
		return nil, err
	}
	return o, raw.apply(o)
}

// rawFlags are the flags written in a form the Config does not take.
type rawFlags struct {
	ns     string
	serial uint
	cookie string
}

// zoneFlags are what the zone answers: its names, records and TTLs.
func (o *options) zoneFlags(fs *flag.FlagSet, raw *rawFlags) {
	d := &o.dns
	fs.StringVar(&d.Zone, "zone", "", "the zone served, e.g. `repl.co` (required)")
	fs.StringVar(&o.clusters, "registry", "", "the cluster registry `file` (required): each cluster's addresses and store")
	fs.StringVar(&raw.ns, "ns", "", "the zone's name servers, a comma-separated `list`, the SOA's primary first; one under the\n"+
		"zone takes its addresses after '=', joined by '+': ns1.repl.co=192.0.2.53+2001:db8::53,ns2.example.net\n"+
		"(required, unless -zone-file lists them under ns, which then wins)")
	fs.StringVar(&o.zoneFile, "zone-file", "", "a YAML `file` of static apex records (a, aaaa, txt, mx, caa) and name servers (ns);\n"+
		"reread on SIGHUP; see the README, section replns")
	fs.StringVar(&d.SOA.Mbox, "soa-mbox", "", "the SOA mailbox in DNS form, e.g. `hostmaster.repl.co` (default hostmaster.<zone>)")
	fs.UintVar(&raw.serial, "soa-serial", 1, "the SOA serial")
	fs.DurationVar(&d.SOA.Refresh, "soa-refresh", 4*time.Hour, "the SOA refresh timer")
	fs.DurationVar(&d.SOA.Retry, "soa-retry", time.Hour, "the SOA retry timer")
	fs.DurationVar(&d.SOA.Expire, "soa-expire", 14*24*time.Hour, "the SOA expire timer")
	fs.DurationVar(&d.SOA.Minimum, "soa-minimum", time.Minute, "the SOA minimum: NXDOMAIN and NODATA are cached for min(this, -soa-ttl)")
	fs.DurationVar(&d.SOA.TTL, "soa-ttl", time.Hour, "the TTL of the SOA, NS, glue and static apex records")
	fs.DurationVar(&d.TTL, "ttl", nameserver.DefaultTTL, "the TTL of repls' A and AAAA answers")
	fs.DurationVar(&d.ChallengeTTL, "challenge-ttl", nameserver.DefaultChallengeTTL, "the TTL of _acme-challenge answers")
	fs.StringVar(&d.ValidationZone, "validation-zone", "", "answer every _acme-challenge name with a CNAME into this `zone`\n"+
		"(_acme-challenge.alice.<zone> -> _acme-challenge.alice.<validation-zone>) instead of TXT from the stores")
	fs.IntVar(&d.MaxUDPSize, "max-udp-size", nameserver.DefaultMaxUDPSize, "the largest UDP reply, advertised in EDNS (512-4096)")
	fs.StringVar(&raw.cookie, "cookie-secret", "", "the DNS cookie secret, 32 hex digits; give every server behind one address the same\n"+
		"(default: random at start)")
}

// serverFlags are the sockets and their bounds, and response rate limiting.
func (o *options) serverFlags(fs *flag.FlagSet) {
	s, rrl := &o.server, &o.dns.RRL
	fs.StringVar(&s.Addr, "listen", ":53", "the `host:port` answered on, UDP and TCP")
	fs.IntVar(&s.UDPSockets, "udp-sockets", 0, "UDP sockets sharing the address with SO_REUSEPORT (default GOMAXPROCS)")
	fs.IntVar(&s.UDPReaders, "udp-readers", 1, "goroutines answering on each UDP socket, each up to 32 queries a read: the bound on UDP queries in progress is 32 times this (the readers of one socket take turns)")
	fs.IntVar(&s.ReadBuffer, "udp-read-buffer", 8<<20, "each UDP socket's receive buffer, in `bytes`")
	fs.IntVar(&s.MaxTCPConns, "tcp-max-conns", 1000, "TCP connections open at once; from 90% of it each new one closes the connection idle the longest,\n"+
		"at it with none idle a new one is closed at once")
	fs.IntVar(&s.MaxTCPPerClient, "tcp-per-client", 16, "TCP connections open at once from one client (an IPv4 address, an IPv6 /64); more are closed at once")
	fs.DurationVar(&s.TCPIdleTimeout, "tcp-idle-timeout", 10*time.Second, "close a TCP connection waiting this long for its next query; shorter above half of\n"+
		"-tcp-max-conns, down to 1s at it")
	fs.DurationVar(&s.TCPMaxLifetime, "tcp-max-lifetime", 2*time.Minute, "close a TCP connection open this long (after the reply in hand), however often it asks")
	fs.DurationVar(&s.TCPMessageTimeout, "tcp-message-timeout", 2*time.Second, "a TCP query must arrive whole, and its reply be taken, within this once its first\n"+
		"octet came; slower clients are cut")
	fs.DurationVar(&s.ShutdownTimeout, "shutdown-timeout", 5*time.Second, "how long a graceful shutdown waits for queries in progress")

	fs.Var(offInt(&rrl.Rate, nameserver.DefaultRRLRate), "rrl-rate", "response rate limit: `n` UDP replies per second per client network; 0 or -1 turns it off")
	fs.IntVar(&rrl.Burst, "rrl-burst", 0, "replies a network may send at once beyond the rate (default the rate)")
	fs.Var(offInt(&rrl.Slip, nameserver.DefaultRRLSlip), "rrl-slip", "every `n`-th limited reply is sent empty with TC so real clients retry over TCP; 0 or -1: drop them all")
	fs.IntVar(&rrl.IPv4Prefix, "rrl-ipv4-prefix", 24, "the IPv4 prefix length of a client network")
	fs.IntVar(&rrl.IPv6Prefix, "rrl-ipv6-prefix", 56, "the IPv6 prefix length of a client network")
	fs.IntVar(&rrl.Buckets, "rrl-buckets", 65536, "the size of the rate limiter's fixed table")
}

// cacheFlags tune each cluster's route cache.
func (o *options) cacheFlags(fs *flag.FlagSet) {
	c := &o.cache
	fs.DurationVar(&c.TTL, "cache-ttl", 60*time.Second, "how long a cached route is trusted without a change notification")
	fs.DurationVar(&c.NegativeTTL, "cache-negative-ttl", 10*time.Second, "the same for not-found names and challenge records")
	fs.DurationVar(&c.KeepExpired, "cache-keep-expired", 10*time.Minute, "how long a cached route stays in memory past its TTL unused (to be served stale if a store fails); older ones are dropped, except while the store fails")
	fs.IntVar(&c.MaxEntries, "cache-max-entries", 1_000_000, "found routes cached, per cluster")
	fs.IntVar(&c.MaxNegative, "cache-max-negative", 100_000, "not-found and challenge entries cached, per cluster")
	fs.DurationVar(&c.LoadTimeout, "cache-load-timeout", 2*time.Second, "how long one store lookup may take")
	fs.DurationVar(&o.moveHold, "move-hold", nameserver.DefaultMoveHold, "how long after a moved repl becomes live in its new cluster replns keeps answering the old one\n"+
		"(which serves it, or forwards it there): that cluster's proxies follow its changes each on its own and\n"+
		"may be a moment behind replns; 0 answers the new cluster at once")
}

// operationFlags are the admin listener and the logs.
func (o *options) operationFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.handover, "handover-socket", "", "Unix socket `file` through which a new replns started with the same file takes over this one's\n"+
		"sockets (UDP, TCP, admin) with no query lost, while this one drains (an upgrade: see the README); empty: none")
	fs.StringVar(&o.admin, "admin-listen", "127.0.0.1:9153", "the `host:port` of the admin HTTP listener (/metrics, /healthz, /readyz,\n/debug/pprof/); empty (on the command line) turns it off")
	fs.IntVar(&o.dns.QueryLogEvery, "query-log-every", 0, "log one query in `n` (1: every query); 0: no query log")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "json", "json or console")
	o.memory.Register(fs)
}

// apply checks the required flags and puts the raw ones into o.
func (raw *rawFlags) apply(o *options) error {
	var errs []error
	if o.dns.Zone == "" {
		errs = append(errs, errors.New("-zone is required: the zone to serve, e.g. -zone repl.co"))
	}
	if o.clusters == "" {
		errs = append(errs, errors.New("-registry is required: the cluster registry file"))
	}
	if strings.TrimSpace(raw.ns) != "" || o.zoneFile == "" { // else the zone file may list them (build checks)
		nss, err := parseNameServers(raw.ns)
		if err != nil {
			errs = append(errs, err)
		}
		o.dns.NameServers = nss
	}
	if raw.serial > 1<<32-1 {
		errs = append(errs, fmt.Errorf("-soa-serial %d: the largest serial is 4294967295", raw.serial))
	}
	o.dns.SOA.Serial = uint32(raw.serial)
	errs = append(errs, checkTCP(&o.server)...)
	if o.moveHold < 0 {
		errs = append(errs, fmt.Errorf("-move-hold %v: must not be negative (0 turns the hold off)", o.moveHold))
	}
	if raw.cookie != "" {
		b, err := hex.DecodeString(raw.cookie)
		if err != nil || len(b) != 16 {
			errs = append(errs, errors.New("-cookie-secret: want 32 hex digits (16 bytes), e.g. from: openssl rand -hex 16"))
		}
		o.dns.CookieSecret = b
	}
	return errors.Join(errs...)
}

// checkTCP checks the TCP bounds, which have no "off": 0 would be taken
// for the default, so it is refused with the rest.
func checkTCP(s *nameserver.ServerConfig) []error {
	var errs []error
	for _, f := range []struct {
		name, what string
		n          int
	}{
		{"-tcp-max-conns", "TCP connections open at once", s.MaxTCPConns},
		{"-tcp-per-client", "TCP connections from one client", s.MaxTCPPerClient},
	} {
		if f.n < 1 {
			errs = append(errs, fmt.Errorf("%s %d: must be at least 1 (%s)", f.name, f.n, f.what))
		}
	}
	if s.MaxTCPPerClient > s.MaxTCPConns && s.MaxTCPConns >= 1 {
		errs = append(errs, fmt.Errorf("-tcp-per-client %d: must be at most -tcp-max-conns (%d)", s.MaxTCPPerClient, s.MaxTCPConns))
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"-tcp-idle-timeout", s.TCPIdleTimeout},
		{"-tcp-max-lifetime", s.TCPMaxLifetime},
		{"-tcp-message-timeout", s.TCPMessageTimeout},
	} {
		if f.d <= 0 {
			errs = append(errs, fmt.Errorf("%s %v: must be more than 0", f.name, f.d))
		}
	}
	return errs
}

// nsRequired says what to do without -ns.
const nsRequired = "-ns is required (unless -zone-file lists them under ns): the zone's name servers, e.g. -ns ns1.repl.co=192.0.2.53,ns2.repl.co=198.51.100.53"

// parseNameServers reads "ns1.repl.co=192.0.2.53+2001:db8::53,ns2.example.net".
func parseNameServers(s string) ([]nameserver.NameServer, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New(nsRequired)
	}
	var out []nameserver.NameServer
	for item := range strings.SplitSeq(s, ",") {
		name, addrs, _ := strings.Cut(strings.TrimSpace(item), "=")
		ns := nameserver.NameServer{Name: name}
		if addrs != "" {
			for a := range strings.SplitSeq(addrs, "+") {
				ip, err := netip.ParseAddr(strings.TrimSpace(a))
				if err != nil {
					return nil, fmt.Errorf("-ns %q: %q is not an IP address", item, a)
				}
				ns.Addrs = append(ns.Addrs, ip)
			}
		}
		out = append(out, ns)
	}
	return out, nil
}

// offValue is an int flag for a Config field where nameserver.Off (-1)
// means off: it stores what it is given, and 0, which the flag has always
// taken for off, as Off too.
type offValue struct{ p *int }

func offInt(p *int, value int) offValue {
	*p = value
	return offValue{p}
}

func (v offValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("want a whole number; 0 or -1 turns it off")
	}
	if n <= 0 {
		n = nameserver.Off
	}
	*v.p = n
	return nil
}

func (v offValue) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.Itoa(*v.p)
}
