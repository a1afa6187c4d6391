package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/peertls"
	"github.com/replproxy/replproxy/store"
)

// Config is what a Handler needs besides its routes, metrics, clock and
// logger. A zero (or negative) field takes the default named on it.
type Config struct {
	// Zone is the platform's zone, e.g. repl.co. Required.
	Zone store.Zone
	// Cluster is the name of this proxy's cluster in Registry. Required.
	Cluster string
	// Registry lists the clusters; tombstones are forwarded to the
	// Forward address of the cluster they name. Required.
	Registry *cluster.Registry
	// HopSecret is the hop secret file's content (ParseHopKeys): one
	// secret per line, 32 bytes or more, the first signing hop marks and
	// every one verifying them; every cluster shares them. Required.
	HopSecret []byte
	hopKeys   *HopKeys
	// Peers, when set, is mutual TLS with the other clusters' proxies:
	// requests are forwarded over it (HTTP/2; HTTP/1.1 for upgrades), the
	// forward listener accepts only it, and a hop mark is trusted only
	// from the cluster the peer's certificate names. Nil forwards in
	// plaintext, for a private network.
	Peers *peertls.Peers

	// DialTimeout bounds connecting to a container or another cluster's
	// proxy. Zero means 5 s.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the upstream's response
	// headers after the request was written (a 504 after it). Zero means
	// 60 s.
	ResponseHeaderTimeout time.Duration
	// IdleConnTimeout closes idle upstream connections. Zero means 90 s.
	IdleConnTimeout time.Duration
	// MaxIdleConnsPerHost is the idle upstream connections kept per
	// container or peer proxy. Zero means 256 (Go's default is 2).
	MaxIdleConnsPerHost int
	// MaxIdleConns bounds the idle upstream connections kept across all
	// containers and peer proxies; beyond it the least recently used is
	// closed. Each pool has the bound: the lean path's, the large-body
	// path's (http.Transport), and each of the peer transports'. Zero
	// means 4096.
	MaxIdleConns int
	// UpgradeIdleTimeout closes an upgraded (WebSocket) connection when
	// nothing has passed either way for that long. Zero means 1 h.
	UpgradeIdleTimeout time.Duration
	// BodyWindow is the floor on how fast a request body arrives: at
	// least 1 KiB in every BodyWindow of time spent waiting for the
	// client, or the request fails and its connection is cut. Time the
	// proxy is not reading the body (the container is slow to take it)
	// does not count. Zero means 10 s.
	BodyWindow time.Duration
	// AccessLog writes one log line per request. False means none.
	AccessLog bool

	// Wakes, when set, lets a request for a sleeping repl ask for a wake
	// and wait for it (wake.go), and receives the repls' activity (nil: such
	// a request is a 503 at once, and no activity is recorded).
	Wakes Waker
	// WakeTimeout bounds a request's wait for a sleeping repl (then 503
	// with Retry-After). Zero means 30 s.
	WakeTimeout time.Duration
	// WakePageAfter is how long a browser's GET or HEAD (Accept:
	// text/html) waits before it gets the waking page instead: a 503 that
	// reloads itself every second. Zero means 2 s.
	WakePageAfter time.Duration
	// WakePoll is how often a waiting repl's route is looked up again in
	// the route cache (one lookup per repl, however many requests wait for
	// it: a memory lookup, no store query). Zero means 20 ms, which is most
	// of what a wake adds to the manager's start time (BenchmarkWake).
	WakePoll time.Duration
	// MaxHeld bounds the requests held for sleeping repls in all, and
	// MaxHeldPerRepl those for one repl; beyond either, a 503 at once.
	// Zero means 10,000 and 1,000.
	MaxHeld        int
	MaxHeldPerRepl int
	// WakeRate is the new wakes this proxy may request a second (a token
	// bucket of WakeBurst): a repl whose wake is pending costs none, so
	// the cluster's rate of new wakes is at most WakeRate times its
	// proxies. Zero means 10 a second and a burst of 20.
	WakeRate  float64
	WakeBurst int
	// ActivityFlush is how often the repls' last activity goes to
	// Wakes.RecordActivity, in one call. Zero means 10 s.
	ActivityFlush time.Duration
	// MaxActivity bounds the repls recorded between two flushes. Zero
	// means 100,000.
	MaxActivity int
}

// withDefaults checks c and returns it with the defaults filled in.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if c.Zone.Name() == "" {
		errs = append(errs, errors.New("no zone: set the platform's zone, e.g. -zone repl.co"))
	}
	if c.Registry == nil {
		errs = append(errs, errors.New("no cluster registry: give the registry file, e.g. -registry clusters.yaml"))
	} else if _, ok := c.Registry.Cluster(c.Cluster); !ok {
		errs = append(errs, fmt.Errorf("cluster %q is not in the registry (it has %v): set -cluster to one of them", c.Cluster, c.Registry.Names()))
	}
	var err error
	if c.hopKeys, err = ParseHopKeys(c.HopSecret); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.ResponseHeaderTimeout <= 0 {
		c.ResponseHeaderTimeout = 60 * time.Second
	}
	if c.IdleConnTimeout <= 0 {
		c.IdleConnTimeout = 90 * time.Second
	}
	if c.MaxIdleConnsPerHost <= 0 {
		c.MaxIdleConnsPerHost = 256
	}
	if c.MaxIdleConns <= 0 {
		c.MaxIdleConns = 4096
	}
	if c.UpgradeIdleTimeout <= 0 {
		c.UpgradeIdleTimeout = time.Hour
	}
	if c.BodyWindow <= 0 {
		c.BodyWindow = 10 * time.Second
	}
	if c.WakeTimeout <= 0 {
		c.WakeTimeout = 30 * time.Second
	}
	if c.WakePageAfter <= 0 {
		c.WakePageAfter = 2 * time.Second
	}
	if c.WakePoll <= 0 {
		c.WakePoll = 20 * time.Millisecond
	}
	if c.MaxHeld <= 0 {
		c.MaxHeld = 10_000
	}
	if c.MaxHeldPerRepl <= 0 {
		c.MaxHeldPerRepl = 1_000
	}
	if c.WakeRate <= 0 {
		c.WakeRate = 10
	}
	if c.WakeBurst <= 0 {
		c.WakeBurst = 20
	}
	if c.ActivityFlush <= 0 {
		c.ActivityFlush = 10 * time.Second
	}
	if c.MaxActivity <= 0 {
		c.MaxActivity = 100_000
	}
	return c, nil
}

// ServerConfig says where a Server listens. A zero (or negative) field
// takes the default named on it; HSTSMaxAge is the one that can be off,
// and zero turns it off.
type ServerConfig struct {
	// Listen is the plain HTTP address, e.g. ":80". Required unless
	// TLSListen is set.
	Listen string
	// TLSListen is the HTTPS address, e.g. ":443", served with the static
	// certificate in TLSCertFile and TLSKeyFile, or with certificates on
	// demand (NewServer's onDemand), which make the static one optional:
	// it then serves the names on demand does not (no server name, the
	// apex). Empty means no HTTPS.
	TLSListen   string
	TLSCertFile string
	TLSKeyFile  string
	// ForwardListen is where requests forwarded by other clusters' proxies
	// arrive (the cluster's forward address in the registry points here).
	// Empty means they arrive on Listen.
	ForwardListen string
	// AdminListen serves /metrics, /healthz, /readyz and /debug/pprof/.
	// Keep it off the public network. Empty means no admin listener.
	AdminListen string
	// LogLevel, when set, is served at /loglevel on the admin listener:
	// GET and PUT of {"level":"debug"} (a zap.AtomicLevel). Nil: none.
	LogLevel http.Handler
	// H2C accepts HTTP/2 without TLS (prior knowledge) on the plain
	// listeners. False means HTTP/1 only there.
	H2C bool
	// ReadHeaderTimeout bounds reading a request's headers. Zero means
	// 10 s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes idle client connections. Zero means 120 s.
	IdleTimeout time.Duration
	// MaxConns bounds the client connections open at once on the HTTP
	// and HTTPS listeners; beyond it a new connection is closed as soon
	// as it is accepted, and from 3/4 of it on, keep-alive connections
	// are closed when they go idle. Zero means 50,000.
	MaxConns int
	// MaxConnsPerClient bounds the connections from one client network, a
	// /32 for IPv4 and a /64 for IPv6, on the HTTP and HTTPS listeners.
	// Zero means 1,024.
	MaxConnsPerClient int
	// MaxForwardConns and MaxForwardConnsPerClient are the same bounds
	// on the forward listener, its own: connections to it (anyone can
	// open one, and hold it through a TLS handshake) never take room
	// from the public listeners, nor theirs from it. Zero means 10,000
	// and 1,024 (a peer cluster's proxy is one address).
	MaxForwardConns          int
	MaxForwardConnsPerClient int
	// ProxyProtocolFrom are the networks of the load balancers trusted to
	// open a connection on the HTTP, HTTPS or forward listener with a
	// PROXY protocol header (v1 or v2, before TLS): the client it names is
	// then the connection's remote address for everything (the access log,
	// X-Forwarded-For, MaxConnsPerClient); a v2 LOCAL header (a health
	// check) leaves it the load balancer's. A connection from anywhere
	// else that starts with a header is closed. A header is read within
	// ReadHeaderTimeout. Empty means no PROXY protocol: nothing is read
	// ahead.
	ProxyProtocolFrom []netip.Prefix
	// ProxyProtocolRequired closes a connection from ProxyProtocolFrom
	// that does not start with a header. False means such a connection is
	// the load balancer's own.
	ProxyProtocolRequired bool
	// ShutdownTimeout bounds the drain after the context is cancelled:
	// in-flight requests and upgraded connections get this long, then are
	// closed. Zero means 30 s.
	ShutdownTimeout time.Duration
	// DrainGrace is the first part of the drain, when keep-alive
	// connections may bring one more request (answered with Connection:
	// close) before the ones still idle are closed. Zero means 1 s.
	DrainGrace time.Duration
	// Binder binds the listeners (a *handover.Sockets takes over those of
	// the process being replaced). Nil binds them afresh with SO_REUSEPORT.
	Binder Binder

	// With certificates on demand, plain HTTP requests for hosts with a
	// certificate are redirected to HTTPS on HTTPSPort (zero means the
	// port TLSListen is bound to), and HTTPS responses for them carry
	// Strict-Transport-Security with HSTSMaxAge (zero means no header).
	HTTPSPort  int
	HSTSMaxAge time.Duration
}

// withDefaults checks c and returns it with the defaults filled in.
func (c ServerConfig) withDefaults() (ServerConfig, error) {
	if c.Listen == "" && c.TLSListen == "" {
		return c, errors.New("no listen address: set -listen (HTTP) or -listen-tls (HTTPS)")
	}
	if c.TLSListen != "" && (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return c, errors.New("-tls-cert and -tls-key go together")
	}
	if c.ProxyProtocolRequired && len(c.ProxyProtocolFrom) == 0 {
		return c, errors.New("-proxy-protocol-required needs -proxy-protocol-from (the load balancers that send the header)")
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = 10 * time.Second
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 50_000
	}
	if c.MaxConnsPerClient <= 0 {
		c.MaxConnsPerClient = 1024
	}
	if c.MaxForwardConns <= 0 {
		c.MaxForwardConns = 10_000
	}
	if c.MaxForwardConnsPerClient <= 0 {
		c.MaxForwardConnsPerClient = 1024
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if c.DrainGrace <= 0 {
		c.DrainGrace = time.Second
	}
	if c.HTTPSPort < 0 {
		c.HTTPSPort = 0
	}
	if c.HSTSMaxAge < 0 {
		c.HSTSMaxAge = 0
	}
	return c, nil
}
