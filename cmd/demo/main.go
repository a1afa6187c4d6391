// Command demo runs replproxy on one machine: two clusters' proxies on
// loopback addresses, replns on a high port, and a few sample apps, on the
// embedded store (or, with -postgres, on throw-away PostgreSQL servers).
// It prints curl and dig lines to try, including a move between clusters,
// and stops everything on Ctrl-C. It is a platformtest platform with a
// fixed layout, run outside of a test.
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

	"github.com/replproxy/replproxy/platformtest"
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

// run starts the platform, seeds it, prints the guide and waits for ctx;
// then everything stops and the temporary folder goes.
func run(ctx context.Context, bin string, usePostgres bool) error {
	bin, err := findBinaries(bin)
	if err != nil {
		return err
	}
	o := platformtest.Options{
		Clusters: []string{clusters[0].name, clusters[1].name}, IPs: []string{clusters[0].ip, clusters[1].ip},
		Zone: zone, Mode: platformtest.Binaries, Bin: bin,
		ProxyPort: proxyPort, ForwardPort: fwdPort, AdminPort: adminPort, DNSAddr: nsAddr, DNSAdmin: nsAdmin,
		DNSFlags: []string{"-log-format", "console"},
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
				msg := fmt.Sprintf("hello from %s/%s (repl %s), served in cluster %s\n", a.owner, a.slug, a.id, c.name)
				p.StartApp(t, c.name, platformtest.AppOptions{Name: a.slug, Port: appPort + i, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					fmt.Fprint(w, msg)
					fmt.Fprintf(w, "  Host: %s  X-Forwarded-For: %s  X-Request-Id: %s\n", r.Host, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Request-Id"))
				})})
			}
		}
		for i, a := range apps {
			ip := clusters[0].ip
			if a.home == clusters[1].name {
				ip = clusters[1].ip
			}
			p.CreateRepl(t, platformtest.Repl{ID: a.id, Owner: a.owner, Slug: a.slug, Cluster: a.home, Endpoints: []string{fmt.Sprintf("%s:%d", ip, appPort+i)}})
			if a.domain != "" {
				p.LinkDomain(t, a.domain, a.id)
			}
		}
		printGuide(bin, p.Dir(), p.Registry())
		<-ctx.Done()
		fmt.Println("\nstopping...")
	})
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
