// Package replproxyd is the replproxy daemon, from its command line to its
// shutdown: cmd/replproxy is Main with the process's arguments, and the
// test platform (package platformtest) runs it in-process with the same
// flags it gives the binary.
package replproxyd

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/crypto/acme/autocert"
	"golang.org/x/sync/errgroup"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/cli"
	"github.com/replproxy/replproxy/internal/dsn"
	"github.com/replproxy/replproxy/internal/handover"
	"github.com/replproxy/replproxy/internal/memlimit"
	"github.com/replproxy/replproxy/internal/reload"
	"github.com/replproxy/replproxy/peertls"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/proxy/ondemand"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/postgres"
	"github.com/replproxy/replproxy/store/routecache"
)

// Env is where Main reads the REPLPROXY_* variables that stand in for
// flags: os.LookupEnv for the binary.
type Env func(name string) (string, bool)

// Main runs replproxy with the command-line arguments args (without the
// program name) until ctx is done, then shuts down gracefully. It logs to
// stderr and returns flag.ErrHelp after printing the usage for -h. It is
// MainWith without hooks: nothing reloads it.
func Main(ctx context.Context, args []string, env Env, stderr io.Writer) error {
	return MainWith(ctx, args, env, stderr, Hooks{})
}

// Hooks are what a caller gives the daemon besides its flags. The zero
// value is none.
type Hooks struct {
	// Reload reloads the configuration each time it receives (see
	// reload.go): cmd/replproxy sends on it on SIGHUP, the test platform
	// when a test asks (platformtest's ReloadProxy), so that in-process
	// daemons sharing a process do not all reload on one signal. Nil:
	// never.
	Reload <-chan struct{}
}

// MainWith is Main with hooks.
func MainWith(ctx context.Context, args []string, env Env, stderr io.Writer, hooks Hooks) error {
	return run(ctx, args, env, stderr, hooks)
}

type options struct {
	zone, cluster, registry, storeAddr, hopSecretFile, logLevel string
	handoverSocket                                              string
	storeFromRegistry                                           bool // -store was not given
	migrate                                                     bool
	wake                                                        bool
	memory                                                      memlimit.Flags
	feedRetention                                               time.Duration
	proxy                                                       proxy.Config
	server                                                      proxy.ServerConfig
	cache                                                       routecache.Config

	// Mutual TLS between clusters.
	peerFiles        peertls.Files
	forwardPlaintext bool

	proxyProtocolFrom string // -proxy-protocol-from, parsed into server

	// Certificates on demand.
	tlsOnDemand            bool
	acmeCARoot, dns01Check string
	certs                  ondemand.Config
}

func parse(args []string, env Env, stderr io.Writer) (*options, error) {
	var o options
	fs := flag.NewFlagSet("replproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: replproxy -zone ZONE -cluster NAME -registry FILE -hop-secret-file FILE [flags]

replproxy routes HTTP(S) requests for <slug>.<owner>.ZONE, <id>.id.ZONE and
linked custom domains to the repl's container in this cluster, and forwards
requests for repls that moved to another cluster to that cluster's proxy.

Example:
  replproxy -zone repl.test -cluster east -registry clusters.yaml \
    -hop-secret-file hop.secret -listen :8080 -admin-listen 127.0.0.1:9090

Flags:
`)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.zone, "zone", "", "the platform's DNS zone, e.g. repl.co (required)")
	fs.StringVar(&o.cluster, "cluster", "", "this proxy's cluster, as named in the registry (required)")
	fs.StringVar(&o.registry, "registry", "", "the cluster registry file (required)")
	fs.StringVar(&o.storeAddr, "store", "", "this cluster's store: a postgres:// DSN or an embedded store file (default: the cluster's store in the registry)")
	fs.BoolVar(&o.migrate, "migrate", false, "apply pending schema migrations to a PostgreSQL store at start-up")
	fs.StringVar(&o.hopSecretFile, "hop-secret-file", "", "file of the secrets (32+ bytes each, one per line) that sign and verify hop marks: the first signs, all verify; the same in every cluster, reloaded when it changes (required)")
	fs.StringVar(&o.server.Listen, "listen", ":8080", "HTTP listen address")
	fs.StringVar(&o.server.TLSListen, "listen-tls", "", "HTTPS listen address (needs -tls-cert and -tls-key)")
	fs.StringVar(&o.server.TLSCertFile, "tls-cert", "", "PEM certificate chain for -listen-tls")
	fs.StringVar(&o.server.TLSKeyFile, "tls-key", "", "PEM private key for -listen-tls")
	fs.StringVar(&o.server.ForwardListen, "forward-listen", "", "address for requests forwarded by other clusters (the registry's forward address points here); empty: they use -listen")
	fs.StringVar(&o.peerFiles.Cert, "forward-cert", "", "PEM certificate of this cluster's proxies (a URI SAN spiffe://ZONE/cluster/NAME), for -forward-listen and for forwarding to other clusters")
	fs.StringVar(&o.peerFiles.Key, "forward-key", "", "PEM private key of -forward-cert")
	fs.StringVar(&o.peerFiles.CA, "forward-ca", "", "PEM certificates of the CA that signs every cluster's -forward-cert; the three files are reread when they change")
	fs.BoolVar(&o.forwardPlaintext, "forward-plaintext", false, "forward between clusters in plaintext HTTP, without -forward-cert/-forward-key/-forward-ca: only on a private network")
	fs.StringVar(&o.server.AdminListen, "admin-listen", "127.0.0.1:9090", "address of /metrics, /healthz, /readyz and /debug/pprof/ (keep it private); empty: none")
	fs.BoolVar(&o.server.H2C, "h2c", false, "accept HTTP/2 without TLS (prior knowledge) on the plain listeners")
	fs.DurationVar(&o.server.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGTERM or after a handover, how long in-flight requests and WebSockets may finish before they are closed")
	fs.DurationVar(&o.server.DrainGrace, "drain-grace", time.Second, "at the start of a drain, how long keep-alive connections may bring one more request (answered with Connection: close) before the idle ones are closed")
	fs.StringVar(&o.handoverSocket, "handover-socket", "", "Unix socket `file` through which a new replproxy started with the same file takes over this one's listening sockets, with no connection refused or reset, while this one drains (an upgrade: see the README); empty: none (a new process then shares the ports with SO_REUSEPORT, and connections queued on the old one's sockets are reset when it exits)")
	fs.DurationVar(&o.server.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "bound on reading a client's request headers")
	fs.DurationVar(&o.server.IdleTimeout, "idle-timeout", 120*time.Second, "close idle client connections after this long")
	fs.IntVar(&o.server.MaxConns, "max-conns", 50_000, "client connections open at once on -listen and -listen-tls; from 3/4 of it, idle keep-alive connections are closed")
	fs.IntVar(&o.server.MaxConnsPerClient, "max-conns-per-client", 1024, "client connections open at once from one /32 (IPv4) or /64 (IPv6)")
	fs.IntVar(&o.server.MaxForwardConns, "max-forward-conns", 10_000, "connections open at once on -forward-listen (apart from -max-conns); from 3/4 of it, its idle keep-alive connections are closed")
	fs.IntVar(&o.server.MaxForwardConnsPerClient, "max-forward-conns-per-client", 1024, "connections open at once on -forward-listen from one /32 (IPv4) or /64 (IPv6)")
	fs.StringVar(&o.proxyProtocolFrom, "proxy-protocol-from", "", "comma-separated addresses or CIDR ranges of the load balancers trusted to open connections with a PROXY protocol header (v1 or v2) naming the client; a header from anywhere else is refused; empty: no PROXY protocol")
	fs.BoolVar(&o.server.ProxyProtocolRequired, "proxy-protocol-required", false, "refuse a connection from -proxy-protocol-from that does not start with a PROXY protocol header")
	fs.DurationVar(&o.proxy.DialTimeout, "dial-timeout", 5*time.Second, "bound on connecting to a container or another cluster's proxy (then 502)")
	fs.DurationVar(&o.proxy.ResponseHeaderTimeout, "response-header-timeout", 60*time.Second, "bound on waiting for an upstream's response headers (then 504)")
	fs.DurationVar(&o.proxy.IdleConnTimeout, "upstream-idle-timeout", 90*time.Second, "close idle upstream connections after this long")
	fs.IntVar(&o.proxy.MaxIdleConnsPerHost, "upstream-idle-per-host", 256, "idle upstream connections kept per container")
	fs.IntVar(&o.proxy.MaxIdleConns, "upstream-idle-max", 4096, "idle upstream connections kept in all (the least recently used is closed first)")
	fs.DurationVar(&o.proxy.UpgradeIdleTimeout, "upgrade-idle-timeout", time.Hour, "close an upgraded (WebSocket) connection after this long with no traffic either way")
	fs.DurationVar(&o.proxy.BodyWindow, "body-window", 10*time.Second, "a request body must bring at least 1 KiB in each such window, or it is cut")
	fs.BoolVar(&o.proxy.AccessLog, "access-log", true, "log one line per request")
	fs.BoolVar(&o.wake, "wake", true, "wake sleeping repls on request (through the store's wake protocol) and record the repls' activity; false: a request for a sleeping repl is a 503")
	fs.DurationVar(&o.proxy.WakeTimeout, "wake-timeout", 30*time.Second, "how long a request waits for a sleeping repl to wake (then 503 with Retry-After)")
	fs.DurationVar(&o.proxy.WakePageAfter, "wake-page-after", 2*time.Second, "how long a browser's GET waits for a sleeping repl before it gets the self-reloading \"waking up\" page")
	fs.IntVar(&o.proxy.MaxHeld, "wake-max-held", 10_000, "requests held waiting for sleeping repls, in all (beyond it: 503 at once)")
	fs.IntVar(&o.proxy.MaxHeldPerRepl, "wake-max-held-per-repl", 1_000, "requests held waiting for one sleeping repl (beyond it: 503 at once)")
	fs.Float64Var(&o.proxy.WakeRate, "wake-rate", 10, "new wakes this proxy may request a second (a repl already waking costs none)")
	fs.IntVar(&o.proxy.WakeBurst, "wake-burst", 20, "burst of -wake-rate")
	fs.DurationVar(&o.proxy.ActivityFlush, "activity-flush", 10*time.Second, "how often the repls' last activity is written to the store (one statement a flush)")
	fs.DurationVar(&o.feedRetention, "feed-retention", postgres.DefaultFeedRetention, "a PostgreSQL store: prune the cluster's change log of changes older than this (the cluster's proxies share the work); a proxy or replns away longer rebuilds its name index from a full read when it is back; 0: this proxy does not prune")
	fs.DurationVar(&o.cache.TTL, "cache-ttl", 60*time.Second, "how long a route is trusted without a change notification (a safety net)")
	fs.DurationVar(&o.cache.NegativeTTL, "cache-negative-ttl", 10*time.Second, "the same for unknown hosts")
	fs.DurationVar(&o.cache.KeepExpired, "cache-keep-expired", 10*time.Minute, "how long a cached route stays in memory past its TTL unused (to be served stale if the store fails); older ones are dropped, except while the store fails")
	fs.BoolVar(&o.tlsOnDemand, "tls-on-demand", false, "obtain certificates on demand for -listen-tls through ACME: *.<owner>.ZONE and *.id.ZONE by DNS-01 (replns serves the records), linked custom domains by TLS-ALPN-01 or HTTP-01; -tls-cert then only serves other names")
	fs.StringVar(&o.certs.Directory, "acme-directory", autocert.DefaultACMEDirectory, "the ACME server's directory URL")
	fs.StringVar(&o.certs.Email, "acme-email", "", "contact address of the ACME account")
	fs.StringVar(&o.acmeCARoot, "acme-ca-root", "", "PEM file of the CA that signs the ACME server's HTTPS certificate (a test CA such as Pebble's); empty: the system's roots")
	fs.StringVar(&o.dns01Check, "acme-dns01-check", "", "comma-separated host:port of the nameservers (replns) that must answer a DNS-01 record before the CA is asked to validate it")
	fs.DurationVar(&o.certs.HandshakeWait, "acme-handshake-wait", 10*time.Second, "how long a TLS handshake for a name without a certificate waits for one")
	fs.Float64Var(&o.certs.OrdersPerHour, "acme-orders-per-hour", 100, "limit on new certificate orders (burst 20); 0: no limit")
	fs.DurationVar(&o.server.HSTSMaxAge, "hsts-max-age", 365*24*time.Hour, "Strict-Transport-Security max-age on HTTPS responses for hosts with a certificate; 0: no header")
	fs.IntVar(&o.server.HTTPSPort, "https-port", 0, "the port HTTP requests are redirected to (default: the port of -listen-tls)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	o.memory.Register(fs)
	if err := cli.ParseEnv(fs, "REPLPROXY", args, env); err != nil {
		return nil, err
	}
	if err := o.memory.Parsed(fs); err != nil {
		return nil, err
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	return &o, nil
}

// check refuses what the flags cannot mean: a required flag left out, and
// settings that contradict each other. It parses -proxy-protocol-from.
func (o *options) check() error {
	var missing []string
	for name, v := range map[string]string{"zone": o.zone, "cluster": o.cluster, "registry": o.registry, "hop-secret-file": o.hopSecretFile} {
		if v == "" {
			missing = append(missing, "-"+name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s (see replproxy -h)", strings.Join(missing, ", "))
	}
	if err := o.checkWake(); err != nil {
		return err
	}
	var err error
	if o.server.ProxyProtocolFrom, err = parsePrefixes("proxy-protocol-from", o.proxyProtocolFrom); err != nil {
		return err
	}
	if o.server.ProxyProtocolRequired && len(o.server.ProxyProtocolFrom) == 0 {
		return errors.New("-proxy-protocol-required needs -proxy-protocol-from: the load balancers that send the header")
	}
	switch anyTLS := o.peerFiles != (peertls.Files{}); {
	case anyTLS && o.forwardPlaintext:
		return errors.New("-forward-plaintext and -forward-cert/-forward-key/-forward-ca exclude each other: choose one")
	case !anyTLS && !o.forwardPlaintext:
		return errors.New("forwarding between clusters needs -forward-cert, -forward-key and -forward-ca (mutual TLS; `make run` shows how to make them), or -forward-plaintext on a private network")
	case anyTLS && o.server.ForwardListen == "":
		return errors.New("-forward-cert needs -forward-listen: forwarded requests arrive over mutual TLS on a listener of their own (the registry's forward address)")
	}
	return nil
}

// parsePrefixes reads the comma-separated addresses and CIDR ranges of
// flag name; an address is a range of one.
func parsePrefixes(name, list string) ([]netip.Prefix, error) {
	var ps []netip.Prefix
	for _, item := range strings.Split(list, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		var p netip.Prefix
		if a, err := netip.ParseAddr(item); err == nil {
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		} else if p, err = netip.ParsePrefix(item); err != nil {
			return nil, fmt.Errorf("-%s: %q is neither an IP address nor a CIDR range such as 10.0.0.0/24", name, item)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		ps = append(ps, p.Masked())
	}
	return ps, nil
}

// checkWake validates the wake flags: zero would silently mean the default
// in proxy.Config, so only positive values are taken.
func (o *options) checkWake() error {
	p := o.proxy
	for name, d := range map[string]time.Duration{"wake-timeout": p.WakeTimeout, "wake-page-after": p.WakePageAfter, "activity-flush": p.ActivityFlush} {
		if d <= 0 {
			return fmt.Errorf("-%s must be positive (got %v)", name, d)
		}
	}
	for name, n := range map[string]int{"wake-max-held": p.MaxHeld, "wake-max-held-per-repl": p.MaxHeldPerRepl, "wake-burst": p.WakeBurst} {
		if n <= 0 {
			return fmt.Errorf("-%s must be positive (got %d)", name, n)
		}
	}
	switch {
	case !(p.WakeRate > 0):
		return fmt.Errorf("-wake-rate must be positive (got %v)", p.WakeRate)
	case p.MaxHeldPerRepl > p.MaxHeld:
		return fmt.Errorf("-wake-max-held-per-repl (%d) is more than -wake-max-held (%d)", p.MaxHeldPerRepl, p.MaxHeld)
	case p.WakePageAfter > p.WakeTimeout:
		return fmt.Errorf("-wake-page-after (%v) is longer than -wake-timeout (%v): browsers would never see the waking page", p.WakePageAfter, p.WakeTimeout)
	}
	return nil
}

// load reads what the flags name: the zone, the registry, the hop secret
// and, for certificates on demand, the ACME CA's roots and the DNS-01
// checkers.
func (o *options) load() error {
	var err error
	if o.proxy.Zone, err = store.NewZone(o.zone); err != nil {
		return fmt.Errorf("-zone: %w", err)
	}
	o.certs.Zone = o.proxy.Zone
	if o.proxy.Registry, err = cluster.Load(o.registry); err != nil {
		return err
	}
	o.proxy.Cluster = o.cluster
	secret, err := os.ReadFile(o.hopSecretFile)
	if err != nil {
		return fmt.Errorf("read hop secret: %w", err)
	}
	o.proxy.HopSecret = secret
	if !o.forwardPlaintext {
		if o.proxy.Peers, err = peertls.Load(o.peerFiles, o.proxy.Zone, o.proxy.Registry); err != nil {
			return err
		}
		if got := o.proxy.Peers.Cluster(); got != o.cluster {
			return fmt.Errorf("-forward-cert %s names cluster %s, but this is %s (-cluster)", o.peerFiles.Cert, got, o.cluster)
		}
	}
	if o.storeAddr == "" {
		c, ok := o.proxy.Registry.Cluster(o.cluster)
		if !ok {
			return fmt.Errorf("cluster %q is not in %s (it has %v)", o.cluster, o.registry, o.proxy.Registry.Names())
		}
		o.storeAddr, o.storeFromRegistry = c.Store, true
	}
	if o.acmeCARoot != "" {
		pem, err := os.ReadFile(o.acmeCARoot)
		if err != nil {
			return fmt.Errorf("-acme-ca-root: %w", err)
		}
		o.certs.CARoots = x509.NewCertPool()
		if !o.certs.CARoots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("-acme-ca-root %s: no PEM certificate in it", o.acmeCARoot)
		}
	}
	for _, ns := range strings.Split(o.dns01Check, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			o.certs.DNS01Check = append(o.certs.DNS01Check, ns)
		}
	}
	return nil
}

func run(ctx context.Context, args []string, env Env, stderr io.Writer, hooks Hooks) error {
	o, err := parse(args, env, stderr)
	if err != nil {
		return err
	}
	logger, level, err := cli.NewLoggerLevel(stderr, o.logLevel, "json")
	if err != nil {
		return err
	}
	o.server.LogLevel = level
	defer func() { _ = logger.Sync() }()
	mem, err := o.memory.Resolve(env, os.DirFS("/"))
	if err != nil {
		return err
	}
	logger.Info("memory", mem.Apply().Fields()...)
	if err := o.load(); err != nil {
		return err
	}

	st, err := cluster.Open(ctx, o.storeAddr, cluster.OpenOptions{Logger: logger, Migrate: o.migrate, AppName: "replproxy " + o.cluster})
	if err != nil {
		return err
	}
	defer st.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	memlimit.Register(reg, "replproxy")
	d, err := build(o, st, reg, logger)
	if err != nil {
		return err
	}
	if d.sockets, err = handover.New(ctx, o.handoverSocket, logger); err != nil {
		return err
	}
	defer d.sockets.Close()
	if err := d.listen(reg, level); err != nil {
		return err
	}
	d.reload = hooks.Reload
	logger.Info("replproxy started", zap.String("zone", o.zone), zap.String("cluster", o.cluster), zap.String("store", dsn.Redact(o.storeAddr)),
		zap.Strings("hop_keys", d.h.HopKeyIDs()))
	return d.run(ctx)
}

// daemon is replproxy built from its flags: build makes its request path,
// listen its server on the listening sockets, and run runs it.
type daemon struct {
	o       *options
	st      store.Store
	cache   *routecache.Cache // with its name index
	h       *proxy.Handler
	certs   *ondemand.Manager // nil without -tls-on-demand
	sockets *handover.Sockets
	srv     *proxy.Server
	ready   func(context.Context) error // the store answers or routes are cached
	gate    chan struct{}               // closed once this process serves in its predecessor's place
	rl      *reloader
	reload  <-chan struct{} // Hooks.Reload
	logger  *zap.Logger
}

// build makes the route cache over st, the handler and, with
// -tls-on-demand, the certificate manager, their metrics in reg.
func build(o *options, st store.Store, reg *prometheus.Registry, logger *zap.Logger) (*daemon, error) {
	d := &daemon{o: o, st: st, cache: routecache.NewIndexed(st, o.cache, nil, logger), logger: logger}
	if o.wake {
		o.proxy.Wakes = st // both backends keep wakes (store.Wakes)
	}
	var err error
	if d.h, err = proxy.NewHandler(o.proxy, d.cache, proxy.NewMetrics(reg, o.proxy.Cluster, d.cache), nil, logger.Named("proxy")); err != nil {
		return nil, err
	}
	if o.tlsOnDemand {
		cs, ok := st.(ondemand.Store)
		if !ok {
			return nil, fmt.Errorf("store %s keeps no certificates", dsn.Redact(o.storeAddr))
		}
		if d.certs, err = ondemand.New(o.certs, cs, d.cache, ondemand.NewMetrics(reg), nil, logger); err != nil {
			return nil, err
		}
	}
	d.ready = proxy.Ready(st, d.cache)
	return d, nil
}

// listen makes the server and binds its listeners (taking over those of a
// predecessor: d.sockets). With a predecessor, /readyz says not ready and
// nothing is accepted until this process serves in its place (d.gate).
func (d *daemon) listen(reg *prometheus.Registry, level zap.AtomicLevel) error {
	d.gate = make(chan struct{})
	serving := func(ctx context.Context) error {
		select {
		case <-d.gate:
			return d.ready(ctx)
		default:
			return fmt.Errorf("taking over from replproxy %d: not serving yet", d.sockets.Predecessor())
		}
	}
	var onDemand proxy.OnDemand // a nil *ondemand.Manager in it would not be nil
	if d.certs != nil {
		onDemand = d.certs
	}
	d.o.server.Binder = d.sockets
	var err error
	if d.srv, err = proxy.NewServer(d.o.server, d.h, onDemand, serving, reg, d.logger); err != nil {
		return err
	}
	reg.MustRegister(d.srv.Collector())
	if err := d.srv.Listen(); err != nil {
		return err
	}
	if d.sockets.Predecessor() != 0 {
		d.srv.AcceptAfter(d.gate)
	}
	d.rl = &reloader{o: d.o, h: d.h, cert: d.srv.CertFile(), level: level, startLevel: level.Level(),
		metrics: reload.NewMetrics(reg, "replproxy", time.Now()), logger: d.logger.Named("reload")}
	return nil
}

// run serves until ctx is done or a part fails. The route cache and the
// certificates keep working while the server drains, and stop once it
// has; both return only then (the cache with its context's error, which
// is no failure).
func (d *daemon) run(ctx context.Context) error {
	o, logger := d.o, d.logger
	background, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	g, gctx := errgroup.WithContext(ctx)
	serveCtx, stopServing := context.WithCancel(gctx)
	defer stopServing()
	g.Go(func() error { defer stopBackground(); return d.srv.Serve(serveCtx) })
	g.Go(func() error { return takeOver(serveCtx, stopServing, d.sockets, d.gate, d.ready, d.cache, logger) })
	g.Go(func() error { _ = d.cache.Run(background); return nil })
	g.Go(func() error { proxy.WatchHopSecret(background, o.hopSecretFile, time.Second, d.h, logger); return nil })
	g.Go(func() error { reload.Loop(background, d.reload, d.rl.apply, d.rl.metrics, d.rl.logger); return nil })
	if d.rl.cert != nil {
		g.Go(func() error { d.rl.cert.Watch(background, time.Second, logger.Named("tls")); return nil })
	}
	if o.proxy.Peers != nil {
		g.Go(func() error { o.proxy.Peers.Watch(background, time.Second, logger.Named("peertls")); return nil })
	} else {
		logger.Warn("forwarding between clusters in PLAINTEXT (-forward-plaintext): every forwarded request, cookies and credentials included, crosses the network between clusters readable and alterable; use it only on a private network")
	}
	if d.certs != nil {
		g.Go(func() error { return d.certs.Run(background) })
	}
	if p, ok := d.st.(*postgres.Store); ok && o.feedRetention > 0 {
		g.Go(func() error { _ = p.RunPruner(background, o.feedRetention, pruneInterval(o.feedRetention)); return nil })
	}
	return g.Wait()
}

// pruneInterval is how often a proxy prunes the change log: a tenth of the
// retention, between a second and ten minutes.
func pruneInterval(retention time.Duration) time.Duration {
	return min(max(retention/10, time.Second), 10*time.Minute)
}

// takeOver opens the gate of the listeners once the proxy can route (at
// once without a predecessor; with one, when the store answers or routes
// are cached, and the name index is built: until then the predecessor
// serves), tells the predecessor to drain and serves the handover socket;
// when a successor takes over it stops the serving. It returns when ctx
// is done.
func takeOver(ctx context.Context, stopServing func(), sockets *handover.Sockets, gate chan struct{}, ready func(context.Context) error,
	cache *routecache.Cache, logger *zap.Logger) error {
	if pid := sockets.Predecessor(); pid != 0 {
		logger.Info("taking over the listening sockets of a running replproxy once ready", zap.Int("pid", pid))
		for start, said := time.Now(), time.Now(); ; {
			err := ready(ctx)
			if ix := cache.Index(); err == nil && ix != nil && !ix.Stats().Built {
				err = errors.New("the name index is not built yet")
			}
			if err == nil {
				break
			}
			if time.Since(said) > 10*time.Second {
				logger.Warn("not ready to take over yet; the running replproxy serves meanwhile", zap.Int("pid", pid),
					zap.Duration("waited", time.Since(start).Round(time.Second)), zap.Error(err))
				said = time.Now()
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	close(gate)
	if err := sockets.Ready(ctx); err != nil {
		// This process serves either way; the next upgrade binds anew.
		logger.Error("handover", zap.Error(err))
	}
	select {
	case <-ctx.Done():
	case <-sockets.Done():
		logger.Info("a new replproxy took over the listening sockets: draining")
		stopServing()
	}
	sockets.Close() // a stopping process hands nothing over
	return nil
}
