// Command fanoutbench measures one cluster's change feed fanned out to many
// consumers, on loopback: N replproxy processes and M replns following one
// throw-away PostgreSQL database while a writer changes repls' endpoints at
// a fixed rate.
//
// For each N it reports, idle: the CPU of each proxy and of PostgreSQL, and
// the connections each consumer holds (pg_stat_activity by application_name,
// the LISTEN connection apart); then, for each rate: PostgreSQL's CPU (its
// processes' utime+stime from /proc: every child of the postmaster, and
// those reaped, through its cutime+cstime) per change and per change and
// consumer, the consumers' CPU, and commit-to-all latency: for a sample of
// the writer's transactions, the time from its commit returning until the
// last consumer's name index had applied it (each consumer's
// /debug/index/passed says when its index got past the transaction).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replproxy/replproxy/internal/admin"
	"github.com/replproxy/replproxy/internal/benchproc"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/store/postgres"
)

type options struct {
	replproxy, replns string
	proxies           []int
	dns               int
	rates             []int
	batch             int
	duration          time.Duration
	idle              time.Duration
	repls             int
	samples           int
	dsnParams         string
	maxConns          int
}

func main() {
	var o options
	var proxies, rates string
	flag.StringVar(&o.replproxy, "replproxy", "bin/replproxy", "the replproxy binary")
	flag.StringVar(&o.replns, "replns", "bin/replns", "the replns binary")
	flag.StringVar(&proxies, "proxies", "10,25,50,100", "numbers of replproxy processes, one round each")
	flag.IntVar(&o.dns, "dns", 5, "replns processes following the cluster")
	flag.StringVar(&rates, "rates", "500,1000,2000", "changes a second the writer makes, one run each")
	flag.IntVar(&o.batch, "batch", 1, "changes per writing transaction (one UPDATE of that many repls)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long each rate runs")
	flag.DurationVar(&o.idle, "idle", 10*time.Second, "how long the idle CPU is measured")
	flag.IntVar(&o.repls, "repls", 1000, "repls in the cluster")
	flag.IntVar(&o.samples, "samples", 20, "sampled transactions a second for the commit-to-all latency")
	flag.StringVar(&o.dsnParams, "dsn-params", "", "added to every consumer's DSN, e.g. pool_max_conns=2")
	flag.IntVar(&o.maxConns, "max-connections", 1000, "the server's max_connections")
	flag.Parse()
	var err error
	if o.proxies, err = ints(proxies); err == nil {
		o.rates, err = ints(rates)
	}
	if err != nil {
		log.Fatal(err)
	}
	// SIGINT or SIGTERM ends the run early, its processes stopped and its
	// folders removed.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		log.Fatal(err)
	}
}

func ints(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%q: want numbers separated by commas", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func run(ctx context.Context, o options) (err error) {
	dir, err := os.MkdirTemp("", "fanoutbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	servers, stop, err := pgtest.LaunchWith(1, pgtest.LaunchOptions{MaxConnections: o.maxConns})
	defer func() { err = errors.Join(err, stop()) }()
	if err != nil {
		return err
	}
	srv := servers[0]
	if err := setUp(ctx, srv.DSN(), o.repls); err != nil {
		return err
	}
	secret := filepath.Join(dir, "hop.secret")
	if err := os.WriteFile(secret, []byte("fanoutbench hop secret, 32 bytes or more\n"), 0o600); err != nil {
		return err
	}
	fmt.Printf("fan-out: %d repls, %d replns, %d change(s) per transaction, %v per rate; PostgreSQL max_connections %d, consumers' DSN params %q\n\n",
		o.repls, o.dns, o.batch, o.duration, o.maxConns, o.dsnParams)
	var rows []string
	for _, n := range o.proxies {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r, err := round(ctx, o, dir, secret, srv, n)
		rows = append(rows, r...)
		if err != nil {
			return err
		}
	}
	fmt.Println("\n| proxies | replns | changes/s (done) | PG CPU | PG µs/change | PG µs/change/consumer | consumers' CPU | commit-to-all p50 / p99 / max | sampled | PG connections |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
	return nil
}

// setUp migrates the database and creates the repls.
func setUp(ctx context.Context, dsn string, repls int) error {
	st, err := postgres.Open(ctx, dsn, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `INSERT INTO repls (id, owner, slug, endpoints)
		SELECT 'r' || i, 'o' || i, 'app', ARRAY['127.0.0.1:1'] FROM generate_series(1, $1) i`, repls)
	return err
}

// consumer is a replproxy or replns process and its admin address.
type consumer struct {
	proc    *benchproc.Proc
	admin   string
	cluster string // ?cluster= for /debug/index/passed ("" for a proxy)
	name    string // its application_name
}

// round starts n proxies and o.dns replns, measures them idle and at each
// rate, and stops them.
func round(ctx context.Context, o options, dir, secret string, srv *pgtest.Server, n int) (rows []string, err error) {
	var cs []*consumer
	defer func() {
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Go(c.proc.Stop)
		}
		wg.Wait()
	}()
	withApp := func(name string) string {
		dsn := srv.DSN() + "&application_name=" + name
		if o.dsnParams != "" {
			dsn += "&" + o.dsnParams
		}
		return dsn
	}
	// Every listener its own port: free ports drawn one at a time can
	// repeat, and a consumer whose port another took would leave its
	// admin address to the other.
	taken := map[int]bool{}
	freePort := func() (int, error) {
		for {
			port, err := benchproc.FreePort()
			if err != nil || !taken[port] {
				taken[port] = true
				return port, err
			}
		}
	}
	for i := range n + o.dns {
		c := &consumer{}
		var args []string
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		adminPort, err := freePort()
		if err != nil {
			return nil, err
		}
		c.admin = "127.0.0.1:" + strconv.Itoa(adminPort)
		listen := "127.0.0.1:" + strconv.Itoa(port)
		bin := o.replproxy
		if i < n {
			c.name = "replproxy-" + strconv.Itoa(i)
			reg, err := registry(dir, c.name, srv.DSN())
			if err != nil {
				return nil, err
			}
			args = []string{"-zone", "repl.test", "-cluster", "east", "-registry", reg, "-store", withApp(c.name),
				"-hop-secret-file", secret, "-listen", listen, "-admin-listen", c.admin, "-forward-plaintext",
				"-access-log=false", "-shutdown-timeout", "1s"}
		} else {
			c.name, c.cluster, bin = "replns-"+strconv.Itoa(i-n), "east", o.replns
			reg, err := registry(dir, c.name, withApp(c.name))
			if err != nil {
				return nil, err
			}
			args = []string{"-zone", "repl.test", "-registry", reg, "-ns", "ns1.repl.test=127.0.0.1",
				"-listen", listen, "-admin-listen", c.admin, "-rrl-rate", "0", "-shutdown-timeout", "1s"}
		}
		if c.proc, err = benchproc.Start(dir, c.name, "0,1", nil, append([]string{bin}, args...)...); err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	for _, c := range cs {
		if err := waitReady(c); err != nil {
			return nil, err
		}
	}
	time.Sleep(3 * time.Second) // start-up work done
	for _, c := range cs {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.proc.Cmd.Process.Pid)); err != nil || strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))[0] == "Z" {
			return nil, fmt.Errorf("%s exited:\n%s", c.name, c.proc.Log())
		}
	}

	// Idle.
	pg0, cpu0 := pgTicks(srv.PID()), consumerTicks(cs)
	time.Sleep(o.idle)
	pg1, cpu1 := pgTicks(srv.PID()), consumerTicks(cs)
	proxyIdle := nsMs(cpu1.proxy-cpu0.proxy) / o.idle.Seconds() / float64(n)
	dnsIdle := nsMs(cpu1.dns-cpu0.dns) / o.idle.Seconds() / float64(max(o.dns, 1))
	conns, err := connections(ctx, srv.DSN())
	if err != nil {
		return nil, err
	}
	rss := int64(0)
	for _, c := range cs[:n] {
		rss += c.proc.RSSKiB()
	}
	fmt.Printf("%d proxies, %d replns, idle %v: %.2f ms CPU/s per proxy, %.2f per replns, PostgreSQL %.2f ms/s; %.1f MiB resident per proxy\n",
		n, o.dns, o.idle, proxyIdle, dnsIdle, ticksMs(pg1-pg0)/o.idle.Seconds(), float64(rss)/1024/float64(n))
	fmt.Printf("  connections idle: %s\n", conns)

	for _, rate := range o.rates {
		if ctx.Err() != nil {
			return rows, ctx.Err()
		}
		row, err := measure(ctx, o, srv, cs, n, rate)
		if err != nil {
			return rows, err
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// registry writes a registry of the one cluster east whose store is dsn.
func registry(dir, name, dsn string) (string, error) {
	path := filepath.Join(dir, name+".yaml")
	body := fmt.Sprintf("clusters:\n  - {name: east, proxy_ipv4: [127.0.0.1], forward: \"127.0.0.1:1\", store: %q}\n", dsn)
	return path, os.WriteFile(path, []byte(body), 0o644)
}

func waitReady(c *consumer) error {
	url := "http://" + c.admin + "/readyz"
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if c.proc.Cmd.ProcessState != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after 60s:\n%s", c.name, c.proc.Log())
}

type cpuTicks struct{ proxy, dns int64 } // ns

// consumerTicks sums the consumers' CPU time in nanoseconds, from the
// nanoseconds of their threads' /proc/PID/task/TID/schedstat (an idle
// proxy's 2 ms a second is a fraction of a tick).
func consumerTicks(cs []*consumer) cpuTicks {
	var t cpuTicks
	for _, c := range cs {
		ns := int64(0)
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", c.proc.Cmd.Process.Pid))
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			if fs := strings.Fields(string(b)); len(fs) > 0 {
				v, _ := strconv.ParseInt(fs[0], 10, 64)
				ns += v
			}
		}
		if c.cluster == "" {
			t.proxy += ns
		} else {
			t.dns += ns
		}
	}
	return t
}

// ticksMs converts clock ticks (USER_HZ, 100 a second) to ms.
func ticksMs(t int64) float64 { return float64(t) * 10 }

func nsMs(ns int64) float64 { return float64(ns) / 1e6 }

// pgTicks sums utime+stime of the postmaster, its children (the backends,
// which call setsid: they are not in its process group) and the children
// it reaped (cutime+cstime).
func pgTicks(postmaster int) int64 {
	var total int64
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		if len(f) < 15 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if pid != postmaster && ppid != postmaster {
			continue
		}
		for _, i := range []int{11, 12} { // utime, stime
			v, _ := strconv.ParseInt(f[i], 10, 64)
			total += v
		}
		if pid == postmaster {
			for _, i := range []int{13, 14} { // cutime, cstime
				v, _ := strconv.ParseInt(f[i], 10, 64)
				total += v
			}
		}
	}
	return total
}

// connStats is what pg_stat_activity shows of the consumers.
type connStats struct {
	total, listen    int
	perProxy, perDNS []int // pool connections of each
	other            int
}

func (s connStats) String() string {
	mm := func(v []int) string {
		if len(v) == 0 {
			return "-"
		}
		sum := 0
		for _, x := range v {
			sum += x
		}
		return fmt.Sprintf("pool %d–%d (mean %.1f)", slices.Min(v), slices.Max(v), float64(sum)/float64(len(v)))
	}
	return fmt.Sprintf("%d client backends on the database (%d LISTEN); per proxy %s + 1 LISTEN; per replns %s + 1 LISTEN; %d others",
		s.total, s.listen, mm(s.perProxy), mm(s.perDNS), s.other)
}

func connections(ctx context.Context, dsn string) (connStats, error) {
	var s connStats
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return s, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT application_name, query IN ('LISTEN replproxy_feed', '-- ping'), count(*)
		FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = current_database() AND pid <> pg_backend_pid()
		GROUP BY 1, 2`)
	if err != nil {
		return s, err
	}
	pools := map[string]int{}
	for rows.Next() {
		var app string
		var listen bool
		var n int
		if err := rows.Scan(&app, &listen, &n); err != nil {
			return s, err
		}
		s.total += n
		switch {
		case listen: // its last statement; after 5 s quiet, the probe's
			s.listen += n
		case strings.HasPrefix(app, "replproxy-"), strings.HasPrefix(app, "replns-"):
			pools[app] += n
		default:
			s.other += n
		}
	}
	if err := rows.Err(); err != nil {
		return s, err
	}
	for app, n := range pools {
		if strings.HasPrefix(app, "replproxy-") {
			s.perProxy = append(s.perProxy, n)
		} else {
			s.perDNS = append(s.perDNS, n)
		}
	}
	return s, nil
}

// sample is a sampled transaction: its xid and when its commit returned.
type sample struct {
	xid       int64
	committed time.Time
}

// measure runs the writer at rate for o.duration and returns a table row.
func measure(ctx context.Context, o options, srv *pgtest.Server, cs []*consumer, n, rate int) (string, error) {
	conn, err := pgx.Connect(ctx, srv.DSN()+"&application_name=fanoutbench-writer")
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	ids := make([]string, o.repls)
	for i := range ids {
		ids[i] = "r" + strconv.Itoa(i+1)
	}
	// Sampled transactions are asked about every half second, while the
	// consumers' indexes still remember them (their last 4,096 positions).
	var (
		mu      sync.Mutex
		pending []sample
		lat     []int64
		missed  int
		collErr error
	)
	collect := func() {
		mu.Lock()
		batch := pending
		pending = nil
		mu.Unlock()
		l, m, err := latencies(cs, batch)
		lat, missed, collErr = append(lat, l...), missed+m, errors.Join(collErr, err)
	}
	stopColl := make(chan struct{})
	collDone := make(chan struct{})
	go func() {
		defer close(collDone)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopColl:
				collect()
				return
			case <-t.C:
				collect()
			}
		}
	}()
	txPerSec := float64(rate) / float64(o.batch)
	sampleEvery := max(1, int(txPerSec/float64(o.samples)))
	interval := time.Duration(float64(time.Second) / txPerSec)

	pg0, cpu0 := pgTicks(srv.PID()), consumerTicks(cs)
	start := time.Now()
	changes, next := 0, 0
	for i := 0; ctx.Err() == nil; i++ {
		// Open loop at the rate; a writer held back by the server stops
		// at the duration all the same, and the rate done says so.
		due := start.Add(time.Duration(i) * interval)
		if due.Sub(start) >= o.duration || time.Since(start) >= o.duration {
			break
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		batch := make([]string, o.batch)
		for j := range batch {
			batch[j] = ids[next%len(ids)]
			next++
		}
		var xid int64
		err := conn.QueryRow(ctx, `UPDATE repls SET endpoints = ARRAY['127.0.0.1:' || (1 + $2::int % 60000)], updated_at = now()
			WHERE id = ANY($1) RETURNING pg_current_xact_id()::text::bigint`, batch, i).Scan(&xid)
		if err != nil {
			return "", fmt.Errorf("write: %w", err)
		}
		committed := time.Now()
		changes += o.batch
		if i%sampleEvery == 0 {
			mu.Lock()
			pending = append(pending, sample{xid, committed})
			mu.Unlock()
		}
	}
	elapsed := time.Since(start)
	close(stopColl)
	<-collDone
	if collErr != nil {
		return "", collErr
	}
	pg1, cpu1 := pgTicks(srv.PID()), consumerTicks(cs)
	conns, err := connections(ctx, srv.DSN())
	if err != nil {
		return "", err
	}
	pgMs := ticksMs(pg1 - pg0)
	wall := time.Since(start).Seconds()
	consumers := n + o.dns
	perChange := pgMs * 1000 / float64(changes)
	slices.Sort(lat)
	q := func(p float64) string {
		if len(lat) == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", float64(lat[int(math.Ceil(p*float64(len(lat))))-1])/1e6)
	}
	fmt.Printf("  %d changes/s (%d done in %v: %.0f/s): PostgreSQL %.0f %% of a core, %.0f µs/change, %.2f µs/change/consumer; consumers %.0f %% (proxies) + %.0f %% (replns); commit-to-all ms p50 %s p99 %s max %s (%d sampled, %d not seen)\n",
		rate, changes, elapsed.Round(time.Millisecond), float64(changes)/elapsed.Seconds(), pgMs/wall/10, perChange, perChange/float64(consumers),
		nsMs(cpu1.proxy-cpu0.proxy)/wall/10, nsMs(cpu1.dns-cpu0.dns)/wall/10, q(0.5), q(0.99), q(1), len(lat), missed)
	fmt.Printf("    connections after: %s\n", conns)
	return fmt.Sprintf("| %d | %d | %d (%.0f) | %.0f %% | %.0f | %.2f | %.0f %% | %s / %s / %s ms | %d | %d (%d LISTEN) |",
		n, o.dns, rate, float64(changes)/elapsed.Seconds(), pgMs/wall/10, perChange, perChange/float64(consumers),
		nsMs(cpu1.proxy-cpu0.proxy+cpu1.dns-cpu0.dns)/wall/10, q(0.5), q(0.99), q(1), len(lat), conns.total, conns.listen), nil
}

// latencies returns, for each sample every consumer applied, the time from
// its commit to the last consumer's applying it (ns), and how many samples
// some consumer could not say about (not applied within 10 s, or
// forgotten). Each consumer is asked about every sample in one request.
func latencies(cs []*consumer, samples []sample) ([]int64, int, error) {
	if len(samples) == 0 {
		return nil, 0, nil
	}
	xids := make([]string, len(samples))
	for i, s := range samples {
		xids[i] = strconv.FormatInt(s.xid, 10)
	}
	last := make([]int64, len(samples)) // the latest applied time of each, over the consumers
	bad := make([]bool, len(samples))
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(cs))
	for ci, c := range cs {
		wg.Go(func() {
			var got admin.IndexPassed
			deadline := time.Now().Add(10 * time.Second)
			for {
				got = admin.IndexPassed{}
				url := "http://" + c.admin + "/debug/index/passed?cluster=" + c.cluster + "&xid=" + strings.Join(xids, ",")
				resp, err := http.Get(url)
				if err != nil {
					errs[ci] = err
					return
				}
				err = json.NewDecoder(resp.Body).Decode(&got)
				resp.Body.Close()
				if err != nil || len(got.Passed) != len(samples) {
					errs[ci] = fmt.Errorf("%s: %s: %v", c.name, resp.Status, err)
					return
				}
				if got.Passed[len(got.Passed)-1] != 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			mu.Lock()
			defer mu.Unlock()
			for i, at := range got.Passed {
				if at <= 0 {
					bad[i] = true
				} else {
					last[i] = max(last[i], at)
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	var lat []int64
	missed := 0
	for i, s := range samples {
		if bad[i] {
			missed++
			continue
		}
		lat = append(lat, last[i]-s.committed.UnixNano())
	}
	return lat, missed, nil
}
