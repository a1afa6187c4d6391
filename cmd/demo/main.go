// Command demo runs replproxy on one machine: two clusters' proxies on
// loopback addresses, replns on a high port, and a few sample apps, on the
// embedded store (or, with -postgres, on throw-away PostgreSQL servers).
// It prints curl and dig lines to try, including a move between clusters,
// and stops everything on Ctrl-C.
//
//	make run             # go run ./cmd/demo -bin bin
//	make run-postgres    # the same with -postgres
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/peertls"
	"github.com/replproxy/replproxy/store"
)

// The demo's fixed layout: east on 127.0.0.1, west on 127.0.0.2.
var clusters = []struct{ name, ip string }{{"east", "127.0.0.1"}, {"west", "127.0.0.2"}}

const (
	zone      = "repl.test"
	proxyPort = "8080"
	fwdPort   = "8443" // mutual TLS between the clusters' proxies
	nsAddr    = "127.0.0.1:5353"
)

// apps are the sample repls: each runs in both clusters (so that it can
// move), on port appPort+i of each cluster's address, and starts out in
// cluster home.
var apps = []struct {
	id, owner, slug, home, domain string
}{
	{"blog1", "alice", "blog", "east", "blog.example.com"},
	{"shop1", "bob", "shop", "east", ""},
	{"chat1", "carol", "chat", "west", ""},
}

const appPort = 9101

func main() {
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	bin := fs.String("bin", "bin", "the folder with the replproxy, replns and replctl binaries")
	usePostgres := fs.Bool("postgres", false, "run on two throw-away PostgreSQL servers instead of the embedded store")
	_ = fs.Parse(os.Args[1:]) // ExitOnError
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *usePostgres); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// run sets the demo up in a temporary folder, runs it until ctx is done
// (or a sample app fails), then stops everything and removes the folder.
func run(ctx context.Context, bin string, usePostgres bool) error {
	bin, err := findBinaries(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "replproxy-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	addrs, stopStores, err := openStores(dir, usePostgres)
	defer stopStores()
	if err != nil {
		return err
	}
	registry, secret, err := writeConfig(dir, addrs)
	if err != nil {
		return err
	}
	if err := seed(ctx, addrs); err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	var (
		servers []*http.Server
		procs   []*child
	)
	stopAll := func() error {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
		for _, s := range servers {
			_ = s.Close()
		}
		return g.Wait()
	}
	if servers, err = startApps(g); err != nil {
		_ = stopAll()
		return err
	}
	if procs, err = startDaemons(gctx, bin, dir, registry, secret); err != nil {
		_ = stopAll()
		return err
	}
	printGuide(bin, dir, registry)
	<-gctx.Done()
	fmt.Println("\nstopping...")
	return stopAll()
}

// findBinaries returns the absolute path of the folder bin, once it holds
// the three binaries.
func findBinaries(bin string) (string, error) {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return "", err
	}
	for _, name := range []string{"replproxy", "replns", "replctl"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			return "", fmt.Errorf("%s is not built: run `make build` first (%w)", name, err)
		}
	}
	return bin, nil
}

// openStores makes each cluster's store: an embedded file in dir, or a
// throw-away PostgreSQL server. It returns their addresses, by cluster,
// and what stops the servers (also after an error).
func openStores(dir string, usePostgres bool) (map[string]string, func(), error) {
	addrs := map[string]string{}
	if !usePostgres {
		for _, c := range clusters {
			addrs[c.name] = filepath.Join(dir, c.name+".yaml")
			if err := os.WriteFile(addrs[c.name], nil, 0o644); err != nil {
				return nil, func() {}, err
			}
		}
		return addrs, func() {}, nil
	}
	fmt.Println("starting two throw-away PostgreSQL servers...")
	servers, stopPG, err := pgtest.Launch(len(clusters))
	stop := func() {
		if err := stopPG(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: stop PostgreSQL:", err)
		}
	}
	if err != nil {
		return nil, stop, err
	}
	for i, c := range clusters {
		addrs[c.name] = servers[i].DSN()
	}
	return addrs, stop, nil
}

// writeConfig writes the cluster registry and the hop secret into dir and
// returns their paths.
func writeConfig(dir string, addrs map[string]string) (registry, secret string, err error) {
	registry = filepath.Join(dir, "clusters.yaml")
	reg := "clusters:\n"
	for _, c := range clusters {
		reg += fmt.Sprintf("  - name: %s\n    proxy_ipv4: [%s]\n    forward: %s:%s\n    store: %q\n", c.name, c.ip, c.ip, fwdPort, addrs[c.name])
	}
	secret = filepath.Join(dir, "hop.secret")
	if err := os.WriteFile(registry, []byte(reg), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(secret, []byte("demo hop secret: use 32 random bytes in production\n"), 0o600); err != nil {
		return "", "", err
	}
	return registry, secret, nil
}

// startApps starts the sample apps, in both clusters, each serving in g.
// It returns the servers (to close), also after an error.
func startApps(g *errgroup.Group) ([]*http.Server, error) {
	var servers []*http.Server
	for _, c := range clusters {
		for i, a := range apps {
			addr := fmt.Sprintf("%s:%d", c.ip, appPort+i)
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return servers, fmt.Errorf("sample app %s on %s: %w", a.slug, addr, err)
			}
			msg := fmt.Sprintf("hello from %s/%s (repl %s), served in cluster %s\n", a.owner, a.slug, a.id, c.name)
			s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, msg)
				fmt.Fprintf(w, "  Host: %s  X-Forwarded-For: %s  X-Request-Id: %s\n", r.Host, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Request-Id"))
			}), ReadHeaderTimeout: 5 * time.Second}
			servers = append(servers, s)
			g.Go(func() error {
				if err := s.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
					return fmt.Errorf("sample app %s on %s: %w", a.slug, addr, err)
				}
				return nil
			})
		}
	}
	return servers, nil
}

// startDaemons starts replns and the two proxies, logging into dir, and
// waits until each is ready. It returns the processes (to stop), also
// after an error.
func startDaemons(ctx context.Context, bin, dir, registry, secret string) ([]*child, error) {
	var procs []*child
	start := func(name string, args ...string) error {
		c, err := startChild(dir, name, filepath.Join(bin, args[0]), args[1:]...)
		if err == nil {
			procs = append(procs, c)
		}
		return err
	}
	if err := start("replns", "replns", "-zone", zone, "-registry", registry, "-ns", "ns1."+zone+"=127.0.0.1",
		"-listen", nsAddr, "-admin-listen", "127.0.0.1:9153", "-log-format", "console"); err != nil {
		return procs, err
	}
	// A throw-away CA for the clusters' proxies: they forward to each
	// other over mutual TLS, each with a certificate naming its cluster.
	z, err := store.NewZone(zone)
	if err != nil {
		return procs, err
	}
	ca, err := peertls.NewCA(z, 30*24*time.Hour)
	if err != nil {
		return procs, err
	}
	for _, c := range clusters {
		files, err := ca.WriteFiles(dir, c.name)
		if err != nil {
			return procs, err
		}
		if err := start("replproxy-"+c.name, "replproxy", "-zone", zone, "-cluster", c.name, "-registry", registry,
			"-hop-secret-file", secret, "-listen", c.ip+":"+proxyPort, "-admin-listen", c.ip+":9090",
			"-forward-listen", c.ip+":"+fwdPort, "-forward-cert", files.Cert, "-forward-key", files.Key, "-forward-ca", files.CA); err != nil {
			return procs, err
		}
	}
	for _, ready := range []string{"http://127.0.0.1:9153/readyz?all=1", "http://127.0.0.1:9090/readyz", "http://127.0.0.2:9090/readyz"} {
		if err := waitReady(ctx, ready, procs); err != nil {
			return procs, err
		}
	}
	return procs, nil
}

// seed writes the sample repls into their home clusters.
func seed(ctx context.Context, addrs map[string]string) error {
	for name, addr := range addrs {
		s, err := cluster.Open(ctx, addr, cluster.OpenOptions{Migrate: true})
		if err != nil {
			return fmt.Errorf("open the %s store: %w", name, err)
		}
		defer s.Close()
		for i, a := range apps {
			if a.home != name {
				continue
			}
			ip := clusters[0].ip
			if name == "west" {
				ip = clusters[1].ip
			}
			if _, err := s.CreateRepl(ctx, store.Repl{ID: a.id, Owner: a.owner, Slug: a.slug,
				Endpoints: []string{fmt.Sprintf("%s:%d", ip, appPort+i)}}); err != nil {
				return fmt.Errorf("seed %s: %w", a.id, err)
			}
			if a.domain != "" {
				if _, err := s.LinkDomain(ctx, store.Domain{Name: a.domain, ReplID: a.id}); err != nil {
					return fmt.Errorf("seed %s: %w", a.domain, err)
				}
			}
		}
	}
	return nil
}

func printGuide(bin, dir, registry string) {
	rel := func(p string) string {
		if wd, err := os.Getwd(); err == nil {
			if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
				return r
			}
		}
		return p
	}
	replctl := rel(filepath.Join(bin, "replctl")) + " -registry " + registry
	fmt.Printf(`
replproxy demo is running (Ctrl-C stops everything). Zone %[1]s.
  cluster east: proxy 127.0.0.1:8080 (forward listener, mutual TLS: :8443), apps on 127.0.0.1:9101-9103
  cluster west: proxy 127.0.0.2:8080 (forward listener, mutual TLS: :8443), apps on 127.0.0.2:9101-9103
  the clusters' proxy certificates and their throw-away CA: %[3]s/{east,west}.crt, ca.crt
  replns (authoritative for %[1]s): %[2]s
  logs and files: %[3]s

Ask replns which cluster hosts a repl (the answer is that cluster's proxy address):
  dig @127.0.0.1 -p 5353 +norec blog.alice.repl.test A        # 127.0.0.1: east
  dig @127.0.0.1 -p 5353 +norec chat.carol.repl.test A        # 127.0.0.2: west
  dig @127.0.0.1 -p 5353 +norec nope.alice.repl.test A        # NXDOMAIN, with the SOA
  dig @127.0.0.1 -p 5353 +norec alice.repl.test A             # NODATA: an owner with repls

Send requests through a proxy, by name, id and custom domain:
  curl -s -H 'Host: blog.alice.repl.test' http://127.0.0.1:8080/
  curl -s -H 'Host: blog1.id.repl.test' http://127.0.0.1:8080/
  curl -s -H 'Host: blog.example.com' http://127.0.0.1:8080/
  curl -s -H 'Host: nope.alice.repl.test' http://127.0.0.1:8080/     # 404 naming the host
  curl -s --resolve blog.alice.repl.test:8080:$(dig @127.0.0.1 -p 5353 +short blog.alice.repl.test) http://blog.alice.repl.test:8080/

Move alice's blog from east to west without dropping a request:
  %[4]s move blog1 --to west --endpoint 127.0.0.2:9101
Then look again:
  dig @127.0.0.1 -p 5353 +short blog.alice.repl.test         # now 127.0.0.2: west
  curl -s -H 'Host: blog.alice.repl.test' http://127.0.0.2:8080/   # served in west
  curl -s -H 'Host: blog.alice.repl.test' http://127.0.0.1:8080/   # a stale address still works:
                                                                   # east's tombstone forwards it to west, one hop,
                                                                   # over mutual TLS and HTTP/2
  %[4]s repl list --cluster east        # blog1 is gone from east...
  %[4]s clusters status                  # ...and east holds a tombstone for it
Move it back with: %[4]s move blog1 --to east --endpoint 127.0.0.1:9101
`, zone, nsAddr, dir, replctl)
}

// child is a process the demo started.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startChild(dir, name, path string, args ...string) (*child, error) {
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); log.Close(); close(c.done) }()
	return c, nil
}

func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func waitReady(ctx context.Context, url string, procs []*child) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		for _, p := range procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited; see its log", p.name)
			default:
			}
		}
		if time.Now().After(deadline) {
			return errors.New(url + " not ready after 20s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
