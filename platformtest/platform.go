package platformtest

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/peertls"
	"github.com/replproxy/replproxy/store"
)

// Mode says how the daemons run.
type Mode int

const (
	// InProcess runs replproxy and replns inside the test process
	// (internal/replproxyd and internal/replnsd, with the flags the
	// binaries would get): fast, debuggable, seen by the race detector.
	InProcess Mode = iota
	// Binaries runs the cmd/ binaries as processes: black-box tests, and
	// faults only a process has (KillProxy is SIGKILL).
	Binaries
)

func (m Mode) String() string {
	if m == Binaries {
		return "binaries"
	}
	return "in-process"
}

// inProcessMemory are the flags that leave the Go runtime's memory limit
// and GOGC to the test process, which in-process daemons share.
func inProcessMemory() []string { return []string{"-memory-limit", "0", "-gc-percent", "0"} }

// StoreKind says what holds each cluster's data.
type StoreKind int

const (
	// Embedded: a file per cluster in the test's temporary folder.
	Embedded StoreKind = iota
	// Postgres: a database per cluster, on a throw-away PostgreSQL server
	// per cluster (internal/pgtest: needs PostgreSQL's server binaries),
	// or in Options.PostgresURL.
	Postgres
)

// Options describe a platform. The zero value is two clusters, east and
// west, in-process, on embedded stores, with replns.
type Options struct {
	// Clusters names the clusters, in registry order (replns prefers the
	// first on a tie). Default: east, west.
	Clusters []string
	// Zone is the platform's DNS zone. Default: repl.test.
	Zone string
	// Mode: InProcess (the default) or Binaries.
	Mode Mode
	// Store: Embedded (the default) or Postgres.
	Store StoreKind
	// PostgresURL, with Store Postgres: an existing server (a postgres://
	// URL of a role that may create databases) to make each cluster's
	// database in; they are dropped at cleanup. Empty: a throw-away server
	// per cluster, as the clusters of a platform have.
	PostgresURL string
	// NoDNS leaves replns out: Resolve and Client then fail.
	NoDNS bool
	// NoLinks leaves the relays out of the paths between the clusters'
	// proxies: each forwards straight to the others' forward listeners, as
	// in production, with no hop and no goroutine of the test process in
	// between (timing at the forward hop is the proxies' own: how many
	// requests a closing proxy's GOAWAY meets in flight, say). Link then
	// fails.
	NoLinks bool
	// TLS turns on TLS on demand: every proxy also listens for HTTPS
	// (Cluster.TLSAddr) and obtains its certificates from a throw-away
	// Pebble ACME server, by DNS-01 through replns for names under the
	// zone. It needs replns and the pebble binary (apt-get install -y
	// pebble); TLSRoots verifies what the proxies serve, and Client
	// reaches https:// URLs with it.
	TLS bool
	// Bin, with Mode Binaries, is a folder holding the replproxy and
	// replns binaries. Empty: they are built once per test process with
	// `go build` (the go command and the module's source are needed).
	Bin string
	// IPs are the clusters' loopback addresses, one per cluster: each
	// cluster's proxy listens there, and replns answers it as the
	// cluster's load-balancer address. Default: 127.0.0.1, 127.0.0.2, ...
	// (Linux routes all of 127.0.0.0/8 to loopback).
	IPs []string
	// ProxyPort, ForwardPort and AdminPort fix the ports of every
	// cluster's proxy on its IP: plain HTTP, mutual TLS from the other
	// clusters, and the admin endpoints. Zero: free ports.
	ProxyPort, ForwardPort, AdminPort int
	// DNSAddr and DNSAdmin fix replns's address (UDP and TCP) and its
	// admin listener. Empty: free ports on 127.0.0.1.
	DNSAddr, DNSAdmin string
	// ProxyFlags and DNSFlags are more flags for every replproxy and for
	// replns (they come last, and win).
	ProxyFlags, DNSFlags []string
	// ClusterProxyFlags are more flags for the proxy of the cluster they
	// are named by, after ProxyFlags: what differs between the clusters'
	// deployments (a hop secret file of each cluster's own, say).
	ClusterProxyFlags map[string][]string
	// Logs receives every daemon's log lines as they are written. Nil:
	// they are kept, and the last lines of each are in the messages of
	// failures.
	Logs io.Writer
	// LogFiles writes each daemon's log also into Dir(), as
	// replproxy-<cluster>.log and replns.log.
	LogFiles bool
	// ReadyTimeout bounds the wait for each daemon to be ready. Default:
	// 20 s.
	ReadyTimeout time.Duration
}

func (o Options) withDefaults() (Options, error) {
	if len(o.Clusters) == 0 {
		o.Clusters = []string{"east", "west"}
	}
	if o.Zone == "" {
		o.Zone = "repl.test"
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 20 * time.Second
	}
	if len(o.IPs) == 0 {
		for i := range o.Clusters {
			o.IPs = append(o.IPs, fmt.Sprintf("127.0.0.%d", i+1))
		}
	}
	switch {
	case len(o.IPs) != len(o.Clusters):
		return o, fmt.Errorf("%d IPs for %d clusters: give one per cluster, or none", len(o.IPs), len(o.Clusters))
	case o.Mode != InProcess && o.Mode != Binaries:
		return o, fmt.Errorf("mode %d: want InProcess or Binaries", o.Mode)
	case o.Store != Embedded && o.Store != Postgres:
		return o, fmt.Errorf("store kind %d: want Embedded or Postgres", o.Store)
	case o.TLS && o.NoDNS:
		return o, fmt.Errorf("TLS needs replns (DNS-01 records are served by it): leave NoDNS off")
	case o.PostgresURL != "" && o.Store != Postgres:
		return o, fmt.Errorf("PostgresURL is set but Store is not Postgres: set Store: platformtest.Postgres")
	}
	for name := range o.ClusterProxyFlags {
		if !slices.Contains(o.Clusters, name) {
			return o, fmt.Errorf("ClusterProxyFlags for %q: no such cluster (the platform has %v)", name, o.Clusters)
		}
	}
	seen, seenIP := map[string]bool{}, map[string]bool{}
	for i, name := range o.Clusters {
		if err := store.ValidLabel(name); err != nil {
			return o, fmt.Errorf("cluster name %q: %w", name, err)
		}
		if seen[name] {
			return o, fmt.Errorf("cluster %q named twice", name)
		}
		seen[name] = true
		if ip := net.ParseIP(o.IPs[i]); ip == nil || !ip.IsLoopback() || ip.To4() == nil {
			return o, fmt.Errorf("IP %q of cluster %s: want an IPv4 loopback address (127.x.y.z)", o.IPs[i], name)
		}
		if seenIP[o.IPs[i]] {
			return o, fmt.Errorf("IPs %v: each cluster needs its own address, or replns's answers cannot tell them apart", o.IPs)
		}
		seenIP[o.IPs[i]] = true
	}
	return o, nil
}

// Platform is a running platform: its clusters, each with a store and a
// replproxy, and replns over all of them. Everything it started is stopped
// and removed by the cleanups of the test that started it.
type Platform struct {
	opts     Options
	zone     store.Zone
	dir      string
	sockDir  string // the handover sockets' (a short path: a Unix socket's has at most 107 bytes)
	nsock    int    // handover sockets made
	registry string // the registry replns and Move read
	reg      *cluster.Registry
	secret   string // the hop secret file every proxy reads
	clusters []*Cluster
	dns      *daemon      // nil with NoDNS
	dnsAddr  string       // replns's DNS address (ReplaceDNS keeps it); "" with NoDNS
	tls      *tlsOnDemand // nil without TLS
	mu       sync.Mutex   // guards clients
	links    map[[2]string]*Link
	clients  []interface{ CloseIdleConnections() }
}

// Cluster is one cluster of a platform.
type Cluster struct {
	Name string
	// IP is the cluster's loopback address: its proxy's, and what replns
	// answers for the repls it hosts.
	IP string
	// ProxyAddr is the proxy's plain HTTP address (host:port).
	ProxyAddr string
	// ForwardAddr is where the other clusters' proxies forward to, over
	// mutual TLS.
	ForwardAddr string
	// AdminAddr serves the proxy's /metrics, /healthz and /readyz.
	AdminAddr string
	// TLSAddr is the proxy's HTTPS address, with Options.TLS; "" without.
	TLSAddr string
	// StoreAddr is the store as the registry names it: an embedded file
	// or a PostgreSQL DSN.
	StoreAddr string
	// Store is the platform's own handle on the cluster's store (migrated),
	// for what the API below does not cover.
	Store store.Store

	pg       *pgtest.Server // a throw-away server; nil otherwise
	proxy    *daemon
	registry string // this proxy's registry: the others' forward addresses go through Links
}

// Start starts a platform as o describes and waits until every daemon is
// ready; t's cleanups stop it. Start fails t with what to do when a part
// cannot start.
func Start(t TB, o Options) *Platform {
	t.Helper()
	o, err := o.withDefaults()
	if err != nil {
		t.Fatalf("platformtest: %v", err)
	}
	p := &Platform{opts: o, dir: t.TempDir(), links: map[[2]string]*Link{}}
	if p.zone, err = store.NewZone(o.Zone); err != nil {
		t.Fatalf("platformtest: zone %q: %v", o.Zone, err)
	}
	t.Cleanup(func() {
		for _, c := range p.clients {
			c.CloseIdleConnections()
		}
	})
	p.openStores(t)
	p.writeConfig(t)
	p.startDaemons(t)
	return p
}

// openStores makes and opens each cluster's store.
func (p *Platform) openStores(t TB) {
	t.Helper()
	o := p.opts
	for i, name := range o.Clusters {
		p.clusters = append(p.clusters, &Cluster{Name: name, IP: o.IPs[i]})
	}
	switch {
	case o.Store == Embedded:
		for _, c := range p.clusters {
			c.StoreAddr = filepath.Join(p.dir, c.Name+".yaml")
			if err := os.WriteFile(c.StoreAddr, nil, 0o644); err != nil {
				t.Fatalf("platformtest: store of %s: %v", c.Name, err)
			}
		}
	case o.PostgresURL != "":
		for _, c := range p.clusters {
			c.StoreAddr = createDatabase(t, o.PostgresURL, c.Name)
		}
	default:
		if err := pgtest.Available(); err != nil {
			skipOrFail(t, fmt.Sprintf("platformtest: Store Postgres: %v", err), pgtest.Required())
		}
		servers, stop, err := pgtest.Launch(len(p.clusters))
		t.Cleanup(func() {
			if err := stop(); err != nil {
				t.Logf("platformtest: stop PostgreSQL: %v", err)
			}
		})
		if err != nil {
			t.Fatalf("platformtest: start PostgreSQL: %v", err)
		}
		for i, c := range p.clusters {
			c.pg, c.StoreAddr = servers[i], servers[i].DSN()
		}
	}
	for _, c := range p.clusters {
		st, err := cluster.Open(context.Background(), c.StoreAddr, cluster.OpenOptions{Migrate: true})
		if err != nil {
			t.Fatalf("platformtest: open the store of %s: %v", c.Name, err)
		}
		t.Cleanup(func() { _ = st.Close() })
		c.Store = st
	}
}

// writeConfig picks the addresses and writes the registries, the hop
// secret, and each cluster's certificate for mutual TLS.
func (p *Platform) writeConfig(t TB) {
	t.Helper()
	o := p.opts
	for _, c := range p.clusters {
		c.ProxyAddr = addrOn(t, c.IP, o.ProxyPort)
		c.ForwardAddr = addrOn(t, c.IP, o.ForwardPort)
		c.AdminAddr = addrOn(t, c.IP, o.AdminPort)
		if o.TLS {
			c.TLSAddr = addrOn(t, c.IP, 0)
		}
	}
	p.registry = filepath.Join(p.dir, "clusters.yaml")
	p.writeRegistry(t, p.registry, func(c *Cluster) string { return c.ForwardAddr })
	// Every ordered pair of clusters gets a relay, so that a test can
	// delay or cut the link between two proxies (Link) without restarting
	// them: each proxy's registry names the relays to the others.
	for _, from := range p.clusters {
		if o.NoLinks {
			from.registry = p.registry
			continue
		}
		for _, to := range p.clusters {
			if from != to {
				p.links[[2]string{from.Name, to.Name}] = startLink(t, from, to)
			}
		}
		from.registry = filepath.Join(p.dir, "clusters-"+from.Name+".yaml")
		p.writeRegistry(t, from.registry, func(c *Cluster) string {
			if c == from {
				return c.ForwardAddr
			}
			return p.links[[2]string{from.Name, c.Name}].Addr()
		})
	}
	var err error
	if p.reg, err = cluster.Load(p.registry); err != nil {
		t.Fatalf("platformtest: %v", err)
	}
	p.secret = filepath.Join(p.dir, "hop.secret")
	if err := os.WriteFile(p.secret, []byte("platformtest hop secret, 32 bytes or more\n"), 0o600); err != nil {
		t.Fatalf("platformtest: %v", err)
	}
}

func (p *Platform) writeRegistry(t TB, path string, forward func(*Cluster) string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("clusters:\n")
	for _, c := range p.clusters {
		fmt.Fprintf(&b, "  - {name: %s, proxy_ipv4: [%s], forward: %q, store: %q}\n", c.Name, c.IP, forward(c), c.StoreAddr)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatalf("platformtest: write %s: %v", path, err)
	}
}

// startDaemons starts replns, then every proxy, and waits for each.
func (p *Platform) startDaemons(t TB) {
	t.Helper()
	o := p.opts
	dnsAddr, dnsAdmin := o.DNSAddr, o.DNSAdmin
	if dnsAddr == "" && !o.NoDNS {
		dnsAddr = addrOn(t, "127.0.0.1", 0)
	}
	if dnsAdmin == "" && !o.NoDNS {
		dnsAdmin = addrOn(t, "127.0.0.1", 0)
	}
	if o.TLS {
		p.tls = startTLS(t, p.dir, dnsAddr)
	}
	ca, err := peertls.NewCA(p.zone, 365*24*time.Hour) // as long as the certificates it issues: a demo may run for days
	if err != nil {
		t.Fatalf("platformtest: certificate authority: %v", err)
	}
	for _, c := range p.clusters {
		files, err := ca.WriteFiles(p.dir, c.Name)
		if err != nil {
			t.Fatalf("platformtest: certificate of %s: %v", c.Name, err)
		}
		args := []string{"-zone", o.Zone, "-cluster", c.Name, "-registry", c.registry, "-hop-secret-file", p.secret,
			"-listen", c.ProxyAddr, "-admin-listen", c.AdminAddr, "-forward-listen", c.ForwardAddr,
			"-forward-cert", files.Cert, "-forward-key", files.Key, "-forward-ca", files.CA,
			"-shutdown-timeout", "5s", "-handover-socket", p.handoverSocket(t, c.Name)}
		if o.Mode == InProcess {
			args = append(args, inProcessMemory()...)
		}
		if p.tls != nil {
			args = append(args, p.tls.proxyFlags(c.TLSAddr, dnsAddr)...)
		}
		c.proxy = p.newDaemon(t, "replproxy", "replproxy "+c.Name, slices.Concat(args, o.ProxyFlags, o.ClusterProxyFlags[c.Name]), "http://"+c.AdminAddr+"/readyz")
	}
	if !o.NoDNS {
		args := []string{"-zone", o.Zone, "-registry", p.registry, "-ns", "ns1." + o.Zone + "=127.0.0.1",
			"-listen", dnsAddr, "-admin-listen", dnsAdmin, "-rrl-rate", "0", "-shutdown-timeout", "5s",
			"-handover-socket", p.handoverSocket(t, "replns")}
		if o.Mode == InProcess {
			args = append(args, inProcessMemory()...)
		}
		p.dns = p.newDaemon(t, "replns", "replns", append(args, o.DNSFlags...), "http://"+dnsAdmin+"/readyz?all=1")
		p.dns.addr, p.dnsAddr = dnsAddr, dnsAddr
		p.dns.admin = dnsAdmin
	}
	// They start together; each is waited for.
	all := []*daemon{}
	for _, c := range p.clusters {
		all = append(all, c.proxy)
	}
	if p.dns != nil {
		all = append(all, p.dns)
	}
	for _, d := range all {
		d.start(t)
	}
	for _, d := range all {
		d.waitReady(t)
	}
}

// Cluster returns the named cluster; it fails t for a name the platform
// does not have.
func (p *Platform) Cluster(t TB, name string) *Cluster {
	t.Helper()
	for _, c := range p.clusters {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("platformtest: no cluster %q (the platform has %v)", name, p.opts.Clusters)
	return nil
}

// Clusters returns the clusters, in registry order.
func (p *Platform) Clusters() []*Cluster { return slices.Clone(p.clusters) }

// Zone returns the platform's zone.
func (p *Platform) Zone() store.Zone { return p.zone }

// handoverSocket returns a new path for a daemon's handover socket (its
// replacement, ReplaceProxy, takes the same).
func (p *Platform) handoverSocket(t TB, name string) string {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sockDir == "" {
		d, err := os.MkdirTemp("", "pt-")
		if err != nil {
			t.Fatalf("platformtest: %v", err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(d) }) // after the daemons' stops, registered later
		p.sockDir = d
	}
	p.nsock++
	return filepath.Join(p.sockDir, fmt.Sprintf("%s-%d.sock", name, p.nsock))
}

// Dir returns the folder of the platform's files: registries, the hop
// secret, the clusters' certificates (<cluster>.crt, ca.crt), embedded
// stores, log files. It is removed at cleanup.
func (p *Platform) Dir() string { return p.dir }

// Registry returns the path of the cluster registry (the file replctl's
// -registry takes).
func (p *Platform) Registry() string { return p.registry }

// HopSecretFile returns the path of the proxies' hop secret.
func (p *Platform) HopSecretFile() string { return p.secret }

// DNSAddr returns replns's address (UDP and TCP), or "" without replns.
func (p *Platform) DNSAddr() string { return p.dnsAddr }

// DNSAdmin returns the address of replns's admin listener (/metrics,
// /healthz, /readyz), host:port; "" with NoDNS.
func (p *Platform) DNSAdmin() string {
	if p.dns == nil {
		return ""
	}
	return p.dns.admin
}

// Host returns the name of a repl under the zone: Host("alice", "blog")
// is blog.alice.<zone>.
func (p *Platform) Host(owner, slug string) string { return slug + "." + owner + "." + p.opts.Zone }

// skipOrFail skips a test that can be skipped (unless required), and
// fails any other.
func skipOrFail(t TB, why string, required bool) {
	t.Helper()
	if s, ok := t.(interface{ Skip(args ...any) }); ok && !required {
		s.Skip(why)
	}
	t.Fatalf("%s", why)
}

// FreeAddr returns host:port on ip (a loopback address) with a port free
// for both TCP and UDP, as far as can be told before it is used: for an
// address a test must know before Start (Options.DNSAddr, say, or one in
// ProxyFlags).
func FreeAddr(t TB, ip string) string {
	t.Helper()
	return addrOn(t, ip, 0)
}

// addrOn returns host:port on ip, a free port when port is 0 (free for
// both TCP and UDP: replns takes one port for both). A free port is drawn
// at random below the kernel's ephemeral range (ip_local_port_range): a
// port the kernel hands out for :0 is one an outgoing connection of this
// machine (a daemon's to PostgreSQL, say) can take between the pick and
// the daemon's bind, and then the daemon fails with "address already in
// use". Where the range cannot be read, the kernel picks.
func addrOn(t TB, ip string, port int) string {
	t.Helper()
	if port != 0 {
		return net.JoinHostPort(ip, fmt.Sprint(port))
	}
	lo, hi := belowEphemeral()
	for i := range 100 {
		try := 0
		if hi-lo >= 1000 && i < 90 {
			try = lo + rand.IntN(hi-lo)
			if !reservePort(t, try) {
				continue // another platform (in this process or another) has it
			}
		}
		pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, fmt.Sprint(try)))
		if err != nil {
			if try != 0 {
				continue // taken
			}
			t.Fatalf("platformtest: a free port on %s: %v", ip, err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
		pc.Close()
		if err == nil {
			ln.Close()
			return net.JoinHostPort(ip, fmt.Sprint(port))
		}
	}
	t.Fatalf("platformtest: no port free for both TCP and UDP on %s", ip)
	return ""
}

// reservePort takes port for the test, against every other platform on the
// machine, until its cleanup: random picks from one range by test processes
// running side by side (go test runs packages in parallel) would otherwise
// meet, one daemon failing with "address already in use". The reservation
// is an flock on a file named by the port in the temporary folder, removed
// when the test ends.
func reservePort(t TB, port int) bool {
	dir := filepath.Join(os.TempDir(), "platformtest-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return true // no reservations here: the bind check alone
	}
	path := filepath.Join(dir, fmt.Sprint(port))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return false
	}
	// The holder before us may have removed the file between our open and
	// our lock: then we hold a lock nobody else can see.
	if fi, err := f.Stat(); err == nil {
		if now, err := os.Stat(path); err != nil || !os.SameFile(fi, now) {
			f.Close()
			return false
		}
	}
	t.Cleanup(func() {
		_ = os.Remove(path) // while holding the lock, then release it
		f.Close()
	})
	return true
}

// belowEphemeral returns the ports addrOn draws from: from 10000 to the
// start of the kernel's ephemeral range (0, 0 when it cannot be read).
var belowEphemeral = sync.OnceValues(func() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	var first, last int
	if _, err := fmt.Sscan(string(b), &first, &last); err != nil || first <= 10000 {
		return 0, 0
	}
	return 10000, first
})
