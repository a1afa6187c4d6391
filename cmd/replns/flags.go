package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/replproxy/replproxy/nameserver"
	"github.com/replproxy/replproxy/store/routecache"
)

// options is everything the command line (or the environment) sets.
type options struct {
	clusters  string
	zoneFile  string
	admin     string
	logLevel  string
	logFormat string

	dns    nameserver.Config
	server nameserver.ServerConfig
	cache  routecache.Config
}

// envPrefix: every flag -some-name is also read from REPLNS_SOME_NAME.
const envPrefix = "REPLNS_"

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

const usageHead = `replns is the authoritative DNS server of a replproxy platform's zone. It
answers A/AAAA for <slug>.<owner>.<zone> and <repl-id>.id.<zone> with the
load-balancer addresses of the cluster hosting the repl, found in the
stores of every cluster of the registry, and serves the zone's SOA, NS and
static apex records and the _acme-challenge TXT records of DNS-01.

Usage:

  replns -zone repl.co -registry /etc/replproxy/clusters.yaml \
    -ns ns1.repl.co=192.0.2.53+2001:db8::53,ns2.repl.co=198.51.100.53 \
    -listen 192.0.2.53:53

Every flag can also be set in the environment: -rrl-rate as REPLNS_RRL_RATE,
and so on; the command line wins. Durations are like 60s, 5m, 24h.

Flags:
`

// parseFlags reads the command line, then the environment for flags not
// given. It returns flag.ErrHelp after printing the usage for -h.
func parseFlags(args []string, getenv func(string) string, out io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("replns", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, usageHead)
		fs.VisitAll(func(f *flag.Flag) {
			name, usage := flag.UnquoteUsage(f)
			fmt.Fprintf(out, "  -%s %s\n    \t%s", f.Name, name, strings.ReplaceAll(usage, "\n", "\n    \t"))
			if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "0s" {
				fmt.Fprintf(out, " (default %s)", f.DefValue)
			}
			fmt.Fprintf(out, "\n    \t[%s]\n", envName(f.Name))
		})
	}

	var (
		zone, ns, mbox, cookie              string
		serial                              uint
		rrlRate, rrlSlip, queryLog, udpSize int
	)
	fs.StringVar(&zone, "zone", "", "the zone served, e.g. `repl.co` (required)")
	fs.StringVar(&o.clusters, "registry", "", "the cluster registry `file` (required): each cluster's addresses and store")
	fs.StringVar(&ns, "ns", "", "the zone's name servers, a comma-separated `list`, the SOA's primary first; one under the\n"+
		"zone takes its addresses after '=', joined by '+': ns1.repl.co=192.0.2.53+2001:db8::53,ns2.example.net (required)")
	fs.StringVar(&o.zoneFile, "zone-file", "", "a YAML `file` of static apex records (a, aaaa, txt, mx, caa); see the README, section replns")
	fs.StringVar(&mbox, "soa-mbox", "", "the SOA mailbox in DNS form, e.g. `hostmaster.repl.co` (default hostmaster.<zone>)")
	fs.UintVar(&serial, "soa-serial", 1, "the SOA serial")
	fs.DurationVar(&o.dns.SOA.Refresh, "soa-refresh", 4*time.Hour, "the SOA refresh timer")
	fs.DurationVar(&o.dns.SOA.Retry, "soa-retry", time.Hour, "the SOA retry timer")
	fs.DurationVar(&o.dns.SOA.Expire, "soa-expire", 14*24*time.Hour, "the SOA expire timer")
	fs.DurationVar(&o.dns.SOA.Minimum, "soa-minimum", time.Minute, "the SOA minimum: NXDOMAIN and NODATA are cached for min(this, -soa-ttl)")
	fs.DurationVar(&o.dns.SOA.TTL, "soa-ttl", time.Hour, "the TTL of the SOA, NS, glue and static apex records")
	fs.DurationVar(&o.dns.TTL, "ttl", nameserver.DefaultTTL, "the TTL of repls' A and AAAA answers")
	fs.DurationVar(&o.dns.ChallengeTTL, "challenge-ttl", nameserver.DefaultChallengeTTL, "the TTL of _acme-challenge answers")
	fs.StringVar(&o.dns.ValidationZone, "validation-zone", "", "answer every _acme-challenge name with a CNAME into this `zone`\n"+
		"(_acme-challenge.alice.<zone> -> _acme-challenge.alice.<validation-zone>) instead of TXT from the stores")
	fs.IntVar(&udpSize, "max-udp-size", nameserver.DefaultMaxUDPSize, "the largest UDP reply, advertised in EDNS (512-4096)")
	fs.StringVar(&cookie, "cookie-secret", "", "the DNS cookie secret, 32 hex digits; give every server behind one address the same\n"+
		"(default: random at start)")

	fs.StringVar(&o.server.Addr, "listen", ":53", "the `host:port` answered on, UDP and TCP")
	fs.IntVar(&o.server.UDPSockets, "udp-sockets", 0, "UDP sockets sharing the address with SO_REUSEPORT (default GOMAXPROCS)")
	fs.IntVar(&o.server.UDPReaders, "udp-readers", 16, "goroutines answering on each UDP socket: the bound on UDP queries in progress")
	fs.IntVar(&o.server.ReadBuffer, "udp-read-buffer", 8<<20, "each UDP socket's receive buffer, in `bytes`")
	fs.IntVar(&o.server.MaxTCPConns, "tcp-max-conns", 1000, "TCP connections open at once")
	fs.DurationVar(&o.server.TCPIdleTimeout, "tcp-idle-timeout", 10*time.Second, "close idle TCP connections after this")
	fs.DurationVar(&o.server.ShutdownTimeout, "shutdown-timeout", 5*time.Second, "how long a graceful shutdown waits for queries in progress")

	fs.IntVar(&rrlRate, "rrl-rate", 200, "response rate limit: UDP replies per second per client network; 0 turns it off")
	fs.IntVar(&o.dns.RRL.Burst, "rrl-burst", 0, "replies a network may send at once beyond the rate (default the rate)")
	fs.IntVar(&rrlSlip, "rrl-slip", 2, "every n-th limited reply is sent empty with TC so real clients retry over TCP; 0: drop them all")
	fs.IntVar(&o.dns.RRL.IPv4Prefix, "rrl-ipv4-prefix", 24, "the IPv4 prefix length of a client network")
	fs.IntVar(&o.dns.RRL.IPv6Prefix, "rrl-ipv6-prefix", 56, "the IPv6 prefix length of a client network")
	fs.IntVar(&o.dns.RRL.Buckets, "rrl-buckets", 65536, "the size of the rate limiter's fixed table")

	fs.DurationVar(&o.cache.TTL, "cache-ttl", 60*time.Second, "how long a cached route is trusted without a change notification")
	fs.DurationVar(&o.cache.NegativeTTL, "cache-negative-ttl", 10*time.Second, "the same for not-found names and challenge records")
	fs.IntVar(&o.cache.MaxEntries, "cache-max-entries", 1_000_000, "found routes cached, per cluster")
	fs.IntVar(&o.cache.MaxNegative, "cache-max-negative", 100_000, "not-found and challenge entries cached, per cluster")
	fs.DurationVar(&o.cache.LoadTimeout, "cache-load-timeout", 2*time.Second, "how long one store lookup may take")

	fs.StringVar(&o.admin, "admin-listen", "127.0.0.1:9153", "the `host:port` of the admin HTTP listener (/metrics, /healthz, /readyz,\n/debug/pprof/); empty turns it off")
	fs.IntVar(&queryLog, "query-log-every", 0, "log one query in `n` (1: every query); 0: no query log")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "json", "json or console")

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q; every setting is a flag (see -h)", fs.Args())
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", envName(f.Name), v, err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	if zone == "" {
		errs = append(errs, errors.New("-zone is required: the zone to serve, e.g. -zone repl.co"))
	}
	if o.clusters == "" {
		errs = append(errs, errors.New("-registry is required: the cluster registry file"))
	}
	nss, err := parseNameServers(ns)
	if err != nil {
		errs = append(errs, err)
	}
	if serial > 1<<32-1 {
		errs = append(errs, fmt.Errorf("-soa-serial %d: the largest serial is 4294967295", serial))
	}
	o.dns.Zone, o.dns.NameServers, o.dns.SOA.Mbox, o.dns.SOA.Serial = zone, nss, mbox, uint32(serial)
	o.dns.MaxUDPSize, o.dns.QueryLogEvery = udpSize, queryLog
	o.dns.RRL.Rate, o.dns.RRL.Slip = rrlRate, rrlSlip
	if rrlRate <= 0 {
		o.dns.RRL.Rate = -1
	}
	if rrlSlip <= 0 {
		o.dns.RRL.Slip = -1
	}
	if cookie != "" {
		b, err := hex.DecodeString(cookie)
		if err != nil || len(b) != 16 {
			errs = append(errs, errors.New("-cookie-secret: want 32 hex digits (16 bytes), e.g. from: openssl rand -hex 16"))
		}
		o.dns.CookieSecret = b
	}
	return o, errors.Join(errs...)
}

// parseNameServers reads "ns1.repl.co=192.0.2.53+2001:db8::53,ns2.example.net".
func parseNameServers(s string) ([]nameserver.NameServer, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("-ns is required: the zone's name servers, e.g. -ns ns1.repl.co=192.0.2.53,ns2.repl.co=198.51.100.53")
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
