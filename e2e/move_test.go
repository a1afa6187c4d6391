package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/miekg/dns"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/peertls"
	"github.com/replproxy/replproxy/store"
)

// platform is two clusters, east and west, each with its own PostgreSQL
// and replproxy process, plus replns, running the real binaries.
type platform struct {
	registry       string
	secrets        map[string]string         // by cluster: its hop secret file (the same content in all)
	proxyArgs      map[string][]string       // by cluster: replproxy's flags for mutual TLS between the clusters
	dsns           map[string]string         // by cluster: its PostgreSQL database
	proxies        map[string]*replproxyProc // by cluster
	byLB           map[string]string         // load-balancer IP (what replns answers) → proxy address
	ns             *replns
	apps           map[string]string // cluster → the repl's container there
	replctl        string
	stores         map[string]store.Store
	wsApps         map[string]string
	requests, fail atomic.Int64
	dnsTrouble     atomic.Int64 // replies without an answer, retried or not
}

// lbIPs are the clusters' load-balancer addresses in the registry: replns
// answers with them, and the test maps them to the proxies' addresses.
var lbIPs = map[string]string{"east": "192.0.2.1", "west": "192.0.2.2"}

func startPlatform(t *testing.T) *platform {
	t.Helper()
	ctx := context.Background()
	servers := pgtest.StartN(t, 2)
	p := &platform{proxies: map[string]*replproxyProc{}, byLB: map[string]string{}, apps: map[string]string{},
		stores: map[string]store.Store{}, wsApps: map[string]string{}}
	names := []string{"east", "west"}
	dsns := map[string]string{}
	addrs := map[string]string{}
	fwds := map[string]string{}
	var reg strings.Builder
	reg.WriteString("clusters:\n")
	for i, name := range names {
		dsns[name] = servers[i].NewDatabase(t)
		s, err := cluster.Open(ctx, dsns[name], cluster.OpenOptions{Migrate: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		p.stores[name] = s
		addrs[name] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		fwds[name] = fmt.Sprintf("127.0.0.1:%d", freePort(t))
		p.byLB[lbIPs[name]] = addrs[name]
		fmt.Fprintf(&reg, "  - {name: %s, proxy_ipv4: [%s], forward: %q, store: %q}\n", name, lbIPs[name], fwds[name], dsns[name])

		// The repl's container in this cluster: it says where it runs,
		// and echoes WebSocket messages with its name.
		app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/ws" {
				c, err := websocket.Accept(w, r, nil)
				if err != nil {
					return
				}
				defer c.CloseNow()
				for {
					typ, msg, err := c.Read(context.Background())
					if err != nil {
						return
					}
					if err := c.Write(context.Background(), typ, append([]byte(name+": "), msg...)); err != nil {
						return
					}
				}
			}
			n, _ := io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "served in %s (%s, %d bytes)\n", name, r.Method, n)
		}))
		t.Cleanup(app.Close)
		p.apps[name] = strings.TrimPrefix(app.URL, "http://")
	}
	const secret = "the e2e move test's shared hop secret, 32+ bytes\n"
	dir := writeFiles(t, map[string]string{"clusters.yaml": reg.String(), "east.secret": secret, "west.secret": secret})
	p.registry = filepath.Join(dir, "clusters.yaml")
	p.secrets = map[string]string{"east": filepath.Join(dir, "east.secret"), "west": filepath.Join(dir, "west.secret")}
	// The clusters forward to each other over mutual TLS, as `make run`
	// sets them up.
	ca, err := peertls.NewCA(testZone(t), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p.proxyArgs = map[string][]string{}
	p.dsns = dsns
	for _, name := range names {
		files, err := ca.WriteFiles(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		p.proxyArgs[name] = []string{"-forward-listen", fwds[name], "-forward-cert", files.Cert, "-forward-key", files.Key, "-forward-ca", files.CA}
		p.proxies[name] = startReplproxy(t, name, addrs[name], p.registry, p.secrets[name], p.proxyArgs[name]...)
	}
	p.ns = startReplns(t, "-zone", "repl.test", "-registry", p.registry, "-ns", "ns1.repl.test=127.0.0.1")
	p.replctl = buildBinary(t, "replctl")
	return p
}

// ctl runs replctl and returns its output; failures fail the test unless
// allowed.
func (p *platform) ctl(t *testing.T, allowFail bool, args ...string) string {
	t.Helper()
	out, err := exec.Command(p.replctl, append([]string{"-registry", p.registry, "-timeout", "30s"}, args...)...).CombinedOutput()
	if err != nil && !allowFail {
		t.Fatalf("replctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// resolve asks replns which proxy serves host, the way a stub resolver
// does: a truncated UDP reply is asked again over TCP. A reply without an
// answer is counted in p.dnsTrouble and is an error.
func (p *platform) resolve(host string) (string, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(host), dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, p.ns.addr)
	if err == nil && r.Truncated {
		r, _, err = (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Exchange(m, p.ns.addr)
	}
	if err != nil {
		return "", err
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			if addr, ok := p.byLB[a.A.String()]; ok {
				return addr, nil
			}
		}
	}
	p.dnsTrouble.Add(1)
	return "", fmt.Errorf("replns answered %s (truncated %v) %v for %s", dns.RcodeToString[r.Rcode], r.Truncated, r.Answer, host)
}

// get sends one request and counts it; a failure is recorded with why.
func (p *platform) get(client *http.Client, proxyAddr, host string, failures chan<- string) {
	p.requests.Add(1)
	req, _ := http.NewRequest(http.MethodGet, "http://"+proxyAddr+"/", nil)
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		p.fail.Add(1)
		failures <- err.Error()
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "served in ") {
		p.fail.Add(1)
		failures <- fmt.Sprintf("%d %s", resp.StatusCode, body)
	}
}

// load runs two clients until stop: one resolves through replns before
// every request, the other keeps the address it first had (east). rate
// is requests per second for each.
func (p *platform) load(t *testing.T, host string, rate int, stop <-chan struct{}) (wait func() []string) {
	t.Helper()
	failures := make(chan string, 100000)
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	stale := p.byLB[lbIPs["east"]]
	for _, resolving := range []bool{true, false} {
		wg.Go(func() {
			tick := time.NewTicker(time.Second / time.Duration(rate))
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				addr := stale
				if resolving {
					var err error
					if addr, err = p.resolve(host); err != nil {
						p.requests.Add(1)
						p.fail.Add(1)
						failures <- "resolve: " + err.Error()
						continue
					}
				}
				p.get(client, addr, host, failures)
			}
		})
	}
	return func() []string {
		wg.Wait()
		close(failures)
		var out []string
		for f := range failures {
			out = append(out, f)
		}
		client.CloseIdleConnections()
		return out
	}
}

// createRepl creates alice/blog in east and waits until replns resolves
// it (within milliseconds: the change notification), so that the load
// that follows measures moves, not creation.
func (p *platform) createRepl(t *testing.T) {
	t.Helper()
	p.ctl(t, false, "repl", "create", "alice/blog", "--id", "blog1", "--cluster", "east", "--endpoint", p.apps["east"])
	deadline := time.Now().Add(time.Second)
	for {
		if _, err := p.resolve("blog.alice.repl.test"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("a created repl does not resolve within 1 s: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.dnsTrouble.Store(0)
}

// TestMoveUnderLoad moves a repl back and forth 20 times under a steady
// load from a client that resolves through replns and one that keeps a
// stale address: not one request may fail.
func TestMoveUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s of load")
	}
	p := startPlatform(t)
	p.createRepl(t)
	host := "blog.alice.repl.test"
	stop := make(chan struct{})
	wait := p.load(t, host, 100, stop) // 2 clients × 100/s = 200 requests/s
	to := "west"
	start := time.Now()
	for range 20 {
		p.ctl(t, false, "move", "blog1", "--to", to, "--endpoint", p.apps[to])
		time.Sleep(1200 * time.Millisecond) // bounded: 20 moves in about 30 s
		if to == "west" {
			to = "east"
		} else {
			to = "west"
		}
	}
	close(stop)
	failures := wait()
	t.Logf("%d requests in %v during 20 moves, %d failed; %d DNS replies without an answer", p.requests.Load(), time.Since(start).Round(time.Second), p.fail.Load(), p.dnsTrouble.Load())
	if p.dnsTrouble.Load() > 0 {
		t.Logf("replns warnings:\n%s", grep(p.ns.out.String(), "WARN"))
	}
	if len(failures) > 0 {
		t.Fatalf("%d of %d requests failed, e.g. %q", len(failures), p.requests.Load(), failures[0])
	}
	if p.requests.Load() < 2000 {
		t.Fatalf("only %d requests were made", p.requests.Load())
	}
	out := p.ctl(t, false, "repl", "show", "blog1")
	if strings.Contains(out, "NOT SETTLED") {
		t.Fatalf("after 20 moves the repl is not settled:\n%s", out)
	}
}

// TestMoveInterrupted stops replctl after each step of a move, under
// load: every request made during and after still succeeds, and running
// the same command again completes the move.
func TestMoveInterrupted(t *testing.T) {
	p := startPlatform(t)
	p.createRepl(t)
	host := "blog.alice.repl.test"
	to := "west"
	for _, step := range []string{"1", "2", "3"} {
		t.Run("stop after step "+step, func(t *testing.T) {
			stop := make(chan struct{})
			wait := p.load(t, host, 50, stop)
			out := p.ctl(t, true, "move", "blog1", "--to", to, "--endpoint", p.apps[to], "--stop-after", step)
			time.Sleep(time.Second) // requests keep flowing with the move stopped part way
			p.ctl(t, false, "move", "blog1", "--to", to, "--endpoint", p.apps[to])
			time.Sleep(500 * time.Millisecond)
			close(stop)
			if failures := wait(); len(failures) > 0 {
				t.Fatalf("%d requests failed with the move stopped after step %s (%s), e.g. %q", len(failures), step, out, failures[0])
			}
			if addr, err := p.resolve(host); err != nil || addr != p.byLB[lbIPs[to]] {
				t.Fatalf("after the rerun replns sends clients to %q (%v), want %s's proxy", addr, err, to)
			}
			if show := p.ctl(t, false, "repl", "show", "blog1"); strings.Contains(show, "NOT SETTLED") {
				t.Fatalf("not settled after the rerun:\n%s", show)
			}
		})
		if to == "west" {
			to = "east"
		} else {
			to = "west"
		}
	}
}

// TestMoveKeepsEstablishedWebSockets: a WebSocket opened before the move
// stays up, served by the old container, and every connection opened
// after it, through either proxy, reaches the new one.
func TestMoveKeepsEstablishedWebSockets(t *testing.T) {
	p := startPlatform(t)
	p.createRepl(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dial := func(proxyAddr string) *websocket.Conn {
		t.Helper()
		c, _, err := websocket.Dial(ctx, "ws://"+proxyAddr+"/ws", &websocket.DialOptions{Host: "blog.alice.repl.test"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	echo := func(c *websocket.Conn, msg string) string {
		t.Helper()
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return string(got)
	}
	before := dial(p.byLB[lbIPs["east"]])
	if got := echo(before, "hi"); got != "east: hi" {
		t.Fatalf("before the move: %q", got)
	}
	p.ctl(t, false, "move", "blog1", "--to", "west", "--endpoint", p.apps["west"])
	// The proxies learn of the move by NOTIFY, within milliseconds.
	deadline := time.Now().Add(5 * time.Second)
	for echo(dial(p.byLB[lbIPs["east"]]), "new") != "west: new" {
		if time.Now().After(deadline) {
			t.Fatal("east's proxy still sends new WebSockets to the old container 5 s after the move")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range 3 {
		if got := echo(before, fmt.Sprint("still there ", i)); got != fmt.Sprint("east: still there ", i) {
			t.Fatalf("the WebSocket opened before the move: %q", got)
		}
	}
	for _, cluster := range []string{"east", "west"} {
		if got := echo(dial(p.byLB[lbIPs[cluster]]), "new"); got != "west: new" {
			t.Fatalf("a WebSocket opened after the move through %s's proxy: %q, want the new container", cluster, got)
		}
	}
}

// testZone is the e2e tests' zone, repl.test.
func testZone(t testing.TB) store.Zone {
	t.Helper()
	z, err := store.NewZone("repl.test")
	if err != nil {
		t.Fatal(err)
	}
	return z
}

// paced runs workers goroutines, each calling fn(worker, i) for i = 0, 1,
// … once per interval until stop is closed; wait returns once they
// have all stopped.
func paced(workers int, interval time.Duration, stop <-chan struct{}, fn func(w, i int)) (wait func()) {
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				fn(w, i)
			}
		})
	}
	return wg.Wait
}
