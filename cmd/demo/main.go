// Command demo runs replproxy on one machine: two clusters' proxies on
// loopback addresses, replns on a high port, and a few sample apps, on the
// embedded store (or, with -postgres, on throw-away PostgreSQL servers).
// It prints curl and dig lines to try, including a move between clusters
// and the wake of a sleeping repl (each cluster has a sample container
// manager, manager.go, that starts a repl's app on a wake and puts the
// repl to sleep when idle), and stops everything on Ctrl-C. It is a
// platformtest platform with a fixed layout, run outside of a test.
//
//	make run             # go run ./cmd/demo -bin bin
//	make run-postgres    # the same with -postgres
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/platformtest"
	"github.com/replproxy/replproxy/store"
)

// The demo's fixed layout: east on 127.0.0.1, west on 127.0.0.2.
var clusters = []struct{ name, ip string }{{"east", "127.0.0.1"}, {"west", "127.0.0.2"}}

const (
	zone      = "repl.test"
	proxyPort = 8080
	fwdPort   = 8443 // mutual TLS between the clusters' proxies
	adminPort = 9090
	nsAddr    = "127.0.0.1:5353"
	nsAdmin   = "127.0.0.1:9153"
)

// apps are the sample repls, created in cluster home, each with its app
// on port appPort+i of a cluster's address. The app of a repl that is not
// sleepy runs from the start in both clusters (so that the repl can move);
// a sleepy repl starts asleep, and the container manager of the cluster
// where it is live starts its app on a wake and stops it when it sleeps.
var apps = []struct {
	id, owner, slug, home, domain string
	sleepy                        bool
}{
	{"blog1", "alice", "blog", "east", "blog.example.com", false},
	{"shop1", "bob", "shop", "east", "", false},
	{"chat1", "carol", "chat", "west", "", false},
	{"docs1", "dave", "docs", "east", "", true},
}

const appPort = 9101

func main() {
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	bin := fs.String("bin", "bin", "the folder with the replproxy, replns and replctl binaries")
	usePostgres := fs.Bool("postgres", false, "run on two throw-away PostgreSQL servers instead of the embedded store")
	idle := fs.Duration("idle", 20*time.Second, "the sample container manager puts a sleepy repl to sleep after this long with no request")
	_ = fs.Parse(os.Args[1:]) // ExitOnError
	if *idle <= 0 {
		fmt.Fprintf(os.Stderr, "demo: -idle %v: want a positive duration\n", *idle)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *usePostgres, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// run starts the platform, seeds it, prints the guide and waits for ctx;
// then everything stops and the temporary folder goes.
func run(ctx context.Context, bin string, usePostgres bool, idle time.Duration) error {
	bin, err := findBinaries(bin)
	if err != nil {
		return err
	}
	o := platformtest.Options{
		Clusters: []string{clusters[0].name, clusters[1].name}, IPs: []string{clusters[0].ip, clusters[1].ip},
		Zone: zone, Mode: platformtest.Binaries, Bin: bin,
		ProxyPort: proxyPort, ForwardPort: fwdPort, AdminPort: adminPort, DNSAddr: nsAddr, DNSAdmin: nsAdmin,
		DNSFlags: []string{"-log-format", "console"},
		// The proxies write the repls' last activity every 2 s (not 10):
		// the managers see soon enough that a repl is in use.
		ProxyFlags: []string{"-activity-flush", "2s"},
	}
	if usePostgres {
		o.Store = platformtest.Postgres
		fmt.Println("starting two throw-away PostgreSQL servers...")
	}
	o.LogFiles = true
	return platformtest.Run(os.Stderr, func(t platformtest.TB) {
		p := platformtest.Start(t, o)
		for _, c := range clusters {
			for i, a := range apps {
				if !a.sleepy {
					p.StartApp(t, c.name, platformtest.AppOptions{Name: a.slug, Port: appPort + i, Handler: appHandler(a.id, a.owner, a.slug, c.name)})
				}
			}
			m, err := newManager(c.name, c.ip, p.Cluster(t, c.name).Store, idle)
			if err != nil {
				t.Fatalf("container manager of %s: %v", c.name, err)
			}
			mctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); m.run(mctx) }()
			t.Cleanup(func() { cancel(); <-done }) // before the platform's: the stores are still open
		}
		for i, a := range apps {
			ip := clusters[0].ip
			if a.home == clusters[1].name {
				ip = clusters[1].ip
			}
			if a.sleepy {
				createAsleep(t, p, a.id, a.owner, a.slug, a.home)
			} else {
				p.CreateRepl(t, platformtest.Repl{ID: a.id, Owner: a.owner, Slug: a.slug, Cluster: a.home, Endpoints: []string{fmt.Sprintf("%s:%d", ip, appPort+i)}})
			}
			if a.domain != "" {
				p.LinkDomain(t, a.domain, a.id)
			}
		}
		printGuide(bin, p.Dir(), p.Registry(), idle)
		<-ctx.Done()
		fmt.Println("\nstopping...")
	})
}

// appHandler is a sample app: it says which repl and cluster it is, and
// what the proxy added to the request.
func appHandler(id, owner, slug, cluster string) http.Handler {
	msg := fmt.Sprintf("hello from %s/%s (repl %s), served in cluster %s\n", owner, slug, id, cluster)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, msg)
		fmt.Fprintf(w, "  Host: %s  X-Forwarded-For: %s  X-Request-Id: %s\n", r.Host, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Request-Id"))
	})
}

// createAsleep creates a repl that is asleep (no container, no endpoints)
// and waits until its cluster's proxy knows it and replns answers it.
func createAsleep(t platformtest.TB, p *platformtest.Platform, id, owner, slug, cluster string) {
	if _, err := p.Cluster(t, cluster).Store.CreateRepl(context.Background(), store.Repl{ID: id, Owner: owner, Slug: slug, Asleep: true}); err != nil {
		t.Fatalf("create repl %s: %v", id, err)
	}
	host := p.Host(owner, slug)
	for deadline := time.Now().Add(10 * time.Second); !p.Route(t, cluster, host).Asleep; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the proxy of %s does not route %s after 10 s", cluster, host)
		}
	}
	p.WaitResolves(t, host, cluster)
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

func printGuide(bin, dir, registry string, idle time.Duration) {
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
  cluster east: proxy 127.0.0.1:8080 (forward listener, mutual TLS: :8443), apps on 127.0.0.1:9101-9104
  cluster west: proxy 127.0.0.2:8080 (forward listener, mutual TLS: :8443), apps on 127.0.0.2:9101-9104
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

Wake on request: dave's docs (repl docs1, in east) is asleep, with no app running. Each cluster has
a sample container manager, in this process, that starts a repl's app on a wake (it takes %[5]v)
and puts the repl to sleep after %[6]v with no request; it says what it does below.
  curl -s -o /dev/null -w '%%{http_code} in %%{time_total}s\n' -H 'Host: docs.dave.repl.test' http://127.0.0.1:8080/
      # 200 in about %[5]v: the proxy asked for a wake and held the request until the app was up
  curl -s -o /dev/null -w '%%{http_code} in %%{time_total}s\n' -H 'Host: docs.dave.repl.test' http://127.0.0.1:8080/
      # 200 in a few ms: awake
  curl -s -H 'Host: docs.dave.repl.test' http://127.0.0.1:8080/
  %[4]s repl show docs1      # live in east, at 127.0.0.1:9104
After %[6]v with no request, the manager puts it to sleep and stops its app:
  %[4]s repl list            # docs1 is asleep; its next request wakes it again
By hand: %[4]s repl sleep docs1           # the manager stops its app a few seconds later
         %[4]s repl wake docs1 --wait 10s # the manager starts it without a request
`, zone, nsAddr, dir, replctl, bootTime, idle)
}
