// Command proxybench compares replproxy with nginx, HAProxy, Caddy and a
// plain httputil.ReverseProxy on loopback, and prints one table.
//
// The headline figure is CPU time per proxied request at a fixed offered
// load: the proxy process's user+sys CPU (from /proc) divided by the
// requests it served, as a ratio to nginx measured in the same run. The
// proxies run on CPU 0; the backend (nginx returning a small body) and the
// load generator (h2load, HTTP/1.1, fixed rate) on CPU 1.
//
// It also measures a tombstone-forwarded request (two replproxy processes)
// against a local one, and the resident memory of idle WebSocket
// connections through replproxy and through the plain ReverseProxy.
//
// Needs: nginx, haproxy, caddy, h2load (nghttp2-client), taskset.
// Run: make bench-proxy (or go run ./bench/proxy -replproxy bin/replproxy).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/replproxy/replproxy/internal/benchproc"
	"github.com/replproxy/replproxy/peertls"
	"github.com/replproxy/replproxy/store"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "stdproxy" {
		stdProxy(os.Args[2], os.Args[3])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "wsbackend" {
		wsBackend(os.Args[2])
		return
	}
	var o opts
	flag.StringVar(&o.replproxy, "replproxy", "bin/replproxy", "the replproxy binary")
	flag.IntVar(&o.rate, "rate", 4000, "offered load, requests per second")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long each measurement runs")
	flag.IntVar(&o.clients, "clients", 20, "load-generator connections")
	flag.StringVar(&o.peers, "peers", "nginx,haproxy,caddy,stdlib", "peers to compare with (nginx is the baseline)")
	flag.IntVar(&o.ws, "ws", 10000, "idle WebSocket connections to hold for the memory figure (0: skip)")
	flag.BoolVar(&o.perf, "perf", false, "sample replproxy with perf record during its runs and print where its CPU time went (sampling inflates those runs' CPU figures a little)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(1)
	}
}

type opts struct {
	replproxy string
	rate      int
	duration  time.Duration
	clients   int
	peers     string
	ws        int
	perf      bool
}

// result is one row of the table.
type result struct {
	name     string
	requests int
	failed   int
	cpuSec   float64
	p50, p99 time.Duration
	rps      float64
	profile  []benchproc.Share // with -perf
}

func (r result) cpuPerReq() time.Duration {
	if r.requests == 0 {
		return 0
	}
	return time.Duration(r.cpuSec / float64(r.requests) * 1e9)
}

// measure offers o.rate requests/s for o.duration to addr with the given
// Host, and charges the CPU of procs.
func measure(o opts, dir, name, addr, host string, procs ...*benchproc.Proc) (result, error) {
	url := "http://" + addr + "/"
	// Warm up: connections, caches, upstream pools.
	warm := exec.Command("taskset", "-c", "1", "h2load", "--h1", "-c", strconv.Itoa(o.clients), "-n", "2000", "-H", ":authority: "+host, url)
	if out, err := warm.CombinedOutput(); err != nil {
		return result{}, fmt.Errorf("warm up %s: %v\n%s", name, err, out)
	}
	logFile := filepath.Join(dir, name+".h2load.tsv")
	total := int(float64(o.rate) * o.duration.Seconds())
	perClient := max(1, o.rate/o.clients)
	var prof *benchproc.Perf
	if o.perf && strings.HasPrefix(name, "replproxy") {
		pids := make([]int, len(procs))
		for i, p := range procs {
			pids[i] = p.Cmd.Process.Pid
		}
		var err error
		// Kept after the run, for perf report.
		if prof, err = benchproc.StartPerf(filepath.Join(os.TempDir(), "proxybench-"+name+".perf.data"), pids...); err != nil {
			return result{}, err
		}
	}
	var before int64
	for _, p := range procs {
		before += p.CPUTicks()
	}
	start := time.Now()
	cmd := exec.Command("taskset", "-c", "1", "h2load", "--h1", "-c", strconv.Itoa(o.clients), "-n", strconv.Itoa(total),
		"--rps", strconv.Itoa(perClient), "-H", ":authority: "+host, "--log-file", logFile, url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("h2load %s: %v\n%s", name, err, out)
	}
	elapsed := time.Since(start)
	var after int64
	for _, p := range procs {
		after += p.CPUTicks()
	}
	r := result{name: name, cpuSec: float64(after-before) / 100} // USER_HZ is 100 on Linux
	if prof != nil {
		if r.profile, err = prof.Stop(); err != nil {
			return result{}, err
		}
	}
	lat, ok, failed, err := readLog(logFile)
	if err != nil {
		return result{}, err
	}
	r.requests, r.failed = ok, failed
	r.rps = float64(ok) / elapsed.Seconds()
	if len(lat) > 0 {
		slices.Sort(lat)
		r.p50 = lat[len(lat)/2]
		r.p99 = lat[len(lat)*99/100]
	}
	return r, nil
}

// readLog reads h2load's per-request log: start µs, status, duration µs.
func readLog(path string) (lat []time.Duration, ok, failed int, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, 0, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		if f[1] != "200" {
			failed++
			continue
		}
		us, _ := strconv.ParseInt(f[2], 10, 64)
		lat = append(lat, time.Duration(us)*time.Microsecond)
		ok++
	}
	return lat, ok, failed, nil
}

func run(o opts) error {
	// n WebSockets need 2n+ descriptors in the proxy: raise the soft
	// limit to the hard one, and fit n under it.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
		if fit := int(lim.Max)/2 - 500; o.ws > fit {
			fmt.Printf("note: the descriptor limit is %d here, so %d WebSockets are held instead of %d\n", lim.Max, fit, o.ws)
			o.ws = fit
		}
	}
	for _, tool := range []string{"taskset", "h2load", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing: apt-get install -y nginx haproxy caddy nghttp2-client util-linux", tool)
		}
	}
	dir, err := os.MkdirTemp("", "proxybench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var procs []*benchproc.Proc
	defer func() {
		for _, p := range procs {
			p.Stop()
		}
	}()
	launch := func(name, cpu string, args ...string) (*benchproc.Proc, error) {
		p, err := benchproc.Start(dir, name, cpu, nil, args...)
		if err == nil {
			procs = append(procs, p)
		}
		return p, err
	}

	// The backend: nginx answering a small body, on CPU 1.
	backendPort, _ := benchproc.FreePort()
	backendAddr := fmt.Sprintf("127.0.0.1:%d", backendPort)
	if err := writeNginx(dir, "backend", fmt.Sprintf(`server { listen %s; access_log off; location / { return 200 "hello from the backend\n"; } }`, backendAddr)); err != nil {
		return err
	}
	if _, err := launch("backend", "1", "nginx", "-p", dir, "-c", filepath.Join(dir, "backend.conf")); err != nil {
		return err
	}
	if err := benchproc.WaitListening(backendAddr); err != nil {
		return err
	}

	// replproxy: east routes alice/bench locally and alice/moved by a
	// tombstone to west, which runs it.
	eastPort, _ := benchproc.FreePort()
	westPort, _ := benchproc.FreePort()
	east, west := fmt.Sprintf("127.0.0.1:%d", eastPort), fmt.Sprintf("127.0.0.1:%d", westPort)
	// The clusters forward to each other over mutual TLS (HTTP/2), as
	// deployed.
	eastFwdPort, _ := benchproc.FreePort()
	westFwdPort, _ := benchproc.FreePort()
	eastFwd, westFwd := fmt.Sprintf("127.0.0.1:%d", eastFwdPort), fmt.Sprintf("127.0.0.1:%d", westFwdPort)
	wsPort, _ := benchproc.FreePort()
	wsAddr := fmt.Sprintf("127.0.0.1:%d", wsPort)
	files := map[string]string{
		"clusters.yaml": fmt.Sprintf("clusters:\n  - {name: east, proxy_ipv4: [192.0.2.1], forward: %q, store: east.yaml}\n  - {name: west, proxy_ipv4: [192.0.2.2], forward: %q, store: west.yaml}\n", eastFwd, westFwd),
		"east.yaml": fmt.Sprintf("repls:\n  - {id: r1, owner: alice, slug: bench, endpoints: [%q]}\n  - {id: r3, owner: alice, slug: ws, endpoints: [%q]}\ntombstones:\n  - {repl_id: r2, owner: alice, slug: moved, cluster: west, generation: 2, moved_at: 2026-01-01T00:00:00Z}\n",
			backendAddr, wsAddr),
		"west.yaml":  fmt.Sprintf("repls:\n  - {id: r2, owner: alice, slug: moved, endpoints: [%q], generation: 2}\n", backendAddr),
		"hop.secret": "bench-secret-bench-secret-bench-secret-0123456789",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	zone, err := store.NewZone("repl.test")
	if err != nil {
		return err
	}
	ca, err := peertls.NewCA(zone, 24*time.Hour)
	if err != nil {
		return err
	}
	rp := func(cluster, listen, fwd string) ([]string, error) {
		f, err := ca.WriteFiles(dir, cluster)
		if err != nil {
			return nil, err
		}
		return []string{o.replproxy, "-zone", "repl.test", "-cluster", cluster, "-registry", filepath.Join(dir, "clusters.yaml"),
			"-hop-secret-file", filepath.Join(dir, "hop.secret"), "-listen", listen, "-admin-listen", "", "-access-log=false", "-log-level", "warn",
			"-forward-listen", fwd, "-forward-cert", f.Cert, "-forward-key", f.Key, "-forward-ca", f.CA}, nil
	}
	eastArgs, err := rp("east", east, eastFwd)
	if err != nil {
		return err
	}
	westArgs, err := rp("west", west, westFwd)
	if err != nil {
		return err
	}
	eastProc, err := launch("replproxy-east", "0", eastArgs...)
	if err != nil {
		return err
	}
	westProc, err := launch("replproxy-west", "0", westArgs...)
	if err != nil {
		return err
	}
	for _, a := range []string{east, west} {
		if err := benchproc.WaitListening(a); err != nil {
			return err
		}
	}

	var rows []result
	local, err := measure(o, dir, "replproxy", east, "bench.alice.repl.test", eastProc)
	if err != nil {
		return err
	}
	rows = append(rows, local)

	peers := strings.Split(o.peers, ",")
	for _, peer := range peers {
		port, _ := benchproc.FreePort()
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		var p *benchproc.Proc
		switch peer {
		case "nginx":
			conf := fmt.Sprintf(`upstream app { server %s; keepalive 64; }
server { listen %s; access_log off;
  location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; } }`, backendAddr, addr)
			if err := writeNginx(dir, "nginx", conf); err != nil {
				return err
			}
			p, err = launch("nginx", "0", "nginx", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
		case "haproxy":
			conf := fmt.Sprintf("global\n  nbthread 1\n  maxconn 5000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\nfrontend fe\n  bind %s\n  default_backend be\nbackend be\n  server app %s\n", addr, backendAddr)
			path := filepath.Join(dir, "haproxy.cfg")
			if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
				return err
			}
			p, err = launch("haproxy", "0", "haproxy", "-f", path)
		case "caddy":
			conf := fmt.Sprintf("{\n  admin off\n  auto_https off\n}\nhttp://:%d {\n  bind 127.0.0.1\n  reverse_proxy %s\n}\n", port, backendAddr)
			path := filepath.Join(dir, "Caddyfile")
			if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
				return err
			}
			p, err = launch("caddy", "0", "caddy", "run", "--config", path, "--adapter", "caddyfile")
		case "stdlib":
			self, _ := os.Executable()
			p, err = launch("stdlib", "0", self, "stdproxy", addr, backendAddr)
		default:
			return fmt.Errorf("unknown peer %q", peer)
		}
		if err != nil {
			return err
		}
		if err := benchproc.WaitListening(addr); err != nil {
			return fmt.Errorf("%s: %w", peer, err)
		}
		r, err := measure(o, dir, peer, addr, "bench.alice.repl.test", p)
		if err != nil {
			return err
		}
		rows = append(rows, r)
	}

	forwarded, err := measure(o, dir, "replproxy-tombstone", east, "moved.alice.repl.test", eastProc, westProc)
	if err != nil {
		return err
	}
	rows = append(rows, forwarded)

	printTable(o, rows)
	fmt.Printf("\ntombstone-forwarded (mutual TLS, HTTP/2 between the proxies) / local CPU per request: %.2fx (two proxies; target <= 2.2x)\n",
		float64(forwarded.cpuPerReq())/float64(local.cpuPerReq()))
	fmt.Printf("connections from east to west's forward listener after the run: %d (target <= 4)\n", establishedTo(westFwdPort))

	if o.ws > 0 {
		self, _ := os.Executable()
		if _, err := launch("wsbackend", "1", self, "wsbackend", wsAddr); err != nil {
			return err
		}
		if err := benchproc.WaitListening(wsAddr); err != nil {
			return err
		}
		stdPort, _ := benchproc.FreePort()
		stdAddr := fmt.Sprintf("127.0.0.1:%d", stdPort)
		stdProc, err := launch("stdlib-ws", "0", self, "stdproxy", stdAddr, wsAddr)
		if err != nil {
			return err
		}
		if err := benchproc.WaitListening(stdAddr); err != nil {
			return err
		}
		ours, err := wsMemory(o.ws, eastProc, east)
		if err != nil {
			return err
		}
		std, err := wsMemory(o.ws, stdProc, stdAddr)
		if err != nil {
			return err
		}
		fmt.Printf("\nidle WebSockets: %d held through each proxy; resident memory per connection:\n", o.ws)
		fmt.Printf("  replproxy                  %6.1f KiB\n  httputil.ReverseProxy      %6.1f KiB  (replproxy / stdlib: %.2fx; target <= 40 KiB)\n",
			ours, std, ours/std)
	}
	return nil
}

func printTable(o opts, rows []result) {
	var base time.Duration
	for _, r := range rows {
		if r.name == "nginx" {
			base = r.cpuPerReq()
		}
	}
	fmt.Printf("offered load %d req/s for %s over %d HTTP/1.1 connections; proxies on CPU 0, backend and h2load on CPU 1\n\n", o.rate, o.duration, o.clients)
	fmt.Printf("%-22s %10s %8s %12s %9s %9s %9s %9s\n", "proxy", "requests", "failed", "CPU/request", "vs nginx", "req/s", "p50", "p99")
	for _, r := range rows {
		ratio := "-"
		if base > 0 {
			ratio = fmt.Sprintf("%.2fx", float64(r.cpuPerReq())/float64(base))
		}
		fmt.Printf("%-22s %10d %8d %12s %9s %9.0f %9s %9s\n", r.name, r.requests, r.failed, r.cpuPerReq().Round(100*time.Nanosecond), ratio, r.rps,
			r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond))
	}
	for _, r := range rows {
		if r.profile != nil {
			fmt.Println()
			benchproc.PrintShares(os.Stdout, "where "+r.name+"'s CPU time went (perf record, self time; "+
				filepath.Join(os.TempDir(), "proxybench-"+r.name+".perf.data")+"):", r.profile)
		}
	}
}

func writeNginx(dir, name, server string) error {
	conf := fmt.Sprintf(`worker_processes 1;
daemon off;
master_process on;
pid %[1]s/%[2]s.pid;
error_log %[1]s/%[2]s.error.log warn;
events { worker_connections 20000; }
http {
  client_body_temp_path %[1]s/%[2]s.tmp;
  proxy_temp_path %[1]s/%[2]s.tmp;
  fastcgi_temp_path %[1]s/%[2]s.tmp;
  uwsgi_temp_path %[1]s/%[2]s.tmp;
  scgi_temp_path %[1]s/%[2]s.tmp;
  keepalive_requests 1000000;
  %[3]s
}
`, dir, name, server)
	return os.WriteFile(filepath.Join(dir, name+".conf"), []byte(conf), 0o644)
}

// wsMemory opens n idle WebSockets through the proxy at addr and returns
// the proxy's resident memory per connection, in KiB.
func wsMemory(n int, p *benchproc.Proc, addr string) (float64, error) {
	runtimeSettle()
	before := p.RSSKiB()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conns := make([]*websocket.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.CloseNow()
		}
	}()
	for i := range n {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i%200))}}
		c, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", &websocket.DialOptions{
			Host:       "ws.alice.repl.test",
			HTTPClient: &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}},
		})
		if err != nil {
			return 0, fmt.Errorf("websocket %d through %s: %w", i, addr, err)
		}
		conns = append(conns, c)
	}
	// One round trip on a sample proves they are up; then let them idle.
	for _, c := range conns[:10] {
		if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
			return 0, err
		}
		if _, _, err := c.Read(ctx); err != nil {
			return 0, err
		}
	}
	time.Sleep(2 * time.Second)
	after := p.RSSKiB()
	return float64(after-before) / float64(n), nil
}

func runtimeSettle() { time.Sleep(500 * time.Millisecond) }

// stdProxy is the baseline: a plain httputil.ReverseProxy with Go's
// defaults, as "the standard library's default path".
func stdProxy(listen, backend string) {
	u, _ := url.Parse("http://" + backend)
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u); pr.Out.Host = pr.In.Host }}
	err := http.ListenAndServe(listen, rp)
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// wsBackend echoes WebSocket messages.
func wsBackend(listen string) {
	err := http.ListenAndServe(listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	}))
	if !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// establishedTo counts the established TCP connections to a loopback
// port, from /proc/net/tcp.
func establishedTo(port int) int {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return -1
	}
	n := 0
	want := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && strings.HasSuffix(f[2], want) && f[3] == "01" {
			n++
		}
	}
	return n
}
