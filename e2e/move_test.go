package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/replproxy/replproxy/platformtest"
)

// start starts a platform of the real binaries (platformtest, Mode
// Binaries) as o describes, the proxies forwarding straight to each other
// (NoLinks: no relay of the test process on the forward hop, whose timing
// these tests measure), and, when the test ends, stops its daemons
// gracefully before platformtest's cleanups do: a replproxy or replns that
// does not exit cleanly (status 0, within 15 s of SIGTERM) fails the test.
func start(t *testing.T, o platformtest.Options) *platformtest.Platform {
	t.Helper()
	o.Mode, o.NoLinks = platformtest.Binaries, true
	p := platformtest.Start(t, o)
	t.Cleanup(func() {
		for _, c := range p.Clusters() {
			p.StopProxy(t, c.Name)
		}
		if p.DNSAddr() != "" {
			p.StopDNS(t)
		}
	})
	return p
}

// platform is two clusters, east and west, each with its own PostgreSQL
// and replproxy process, plus replns, running the real binaries; a sample
// container in each cluster, and replctl.
type platform struct {
	*platformtest.Platform
	apps           map[string]string // cluster → the repl's container there
	replctl        string
	requests, fail atomic.Int64
	dnsTrouble     atomic.Int64 // lookups without an answer, retried or not
}

// startPlatform starts the move tests' platform; o may add to it (its
// Store and Mode are set here).
func startPlatform(t *testing.T, o platformtest.Options) *platform {
	t.Helper()
	o.Store = platformtest.Postgres
	return startPlatformOn(t, o)
}

// startPlatformOn is startPlatform on the backend o.Store names.
func startPlatformOn(t *testing.T, o platformtest.Options) *platform {
	t.Helper()
	p := &platform{Platform: start(t, o), apps: map[string]string{}, replctl: platformtest.Binary(t, "replctl")}
	for _, c := range p.Clusters() {
		p.apps[c.Name] = p.StartApp(t, c.Name, platformtest.AppOptions{}).Addr
	}
	return p
}

// seeded returns a random source seeded from the clock, or from the
// environment variable env when it is set; it logs the seed and how to
// replay it.
func seeded(t *testing.T, env string) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(env); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", env, s, err)
		}
	}
	t.Logf("seed %d (%s=%d replays it)", seed, env, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// command is replctl with args, on the platform's registry.
func (p *platform) command(args ...string) *exec.Cmd {
	return exec.Command(p.replctl, append([]string{"-registry", p.Registry(), "-timeout", "30s"}, args...)...)
}

// ctl runs replctl and returns its output; failures fail the test unless
// allowed.
func (p *platform) ctl(t *testing.T, allowFail bool, args ...string) string {
	t.Helper()
	out, err := p.command(args...).CombinedOutput()
	if err != nil && !allowFail {
		t.Fatalf("replctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// shown is `replctl -o json repl show`, what the move tests read of it.
type shown struct {
	Clusters []struct {
		Cluster, State, To string // State: live, tombstone, none, unreachable
		Generation         int64
	} `json:"clusters"`
	LiveIn   []string                     `json:"live_in"`
	Settled  bool                         `json:"settled"`
	Problems []string                     `json:"problems"`
	Moving   *struct{ To, Holder string } `json:"moving"`
}

// settled checks, with replctl repl show (a process of its own, which
// reads every store afresh), that repl id is settled: live in exactly one
// cluster, every tombstone naming that cluster at its generation, and no
// move in progress. It returns that cluster; otherwise it fails t with
// what repl show printed.
func (p *platform) settled(t *testing.T, id string) string {
	t.Helper()
	out, err := p.command("-o", "json", "repl", "show", id).Output()
	var s shown
	if jerr := json.Unmarshal(out, &s); err != nil || jerr != nil {
		t.Fatalf("replctl repl show %s: %v %v\n%s", id, err, jerr, out)
	}
	fail := func(why string) {
		t.Helper()
		t.Fatalf("repl %s is not settled: %s\n%s", id, why, p.ctl(t, true, "repl", "show", id))
	}
	if len(s.LiveIn) != 1 {
		fail(fmt.Sprintf("live in %d clusters %v", len(s.LiveIn), s.LiveIn))
	}
	home := s.LiveIn[0]
	var gen int64
	for _, c := range s.Clusters {
		if c.Cluster == home {
			gen = c.Generation
		}
	}
	for _, c := range s.Clusters {
		switch {
		case c.State == "tombstone" && (c.To != home || c.Generation != gen):
			fail(fmt.Sprintf("%s's tombstone names %s at generation %d, not %s at %d", c.Cluster, c.To, c.Generation, home, gen))
		case c.State != "tombstone" && c.State != "none" && c.Cluster != home:
			fail(fmt.Sprintf("%s: %s", c.Cluster, c.State))
		}
	}
	switch {
	case !s.Settled || len(s.Problems) > 0:
		fail(fmt.Sprintf("repl show finds it unsettled: %v", s.Problems))
	case s.Moving != nil:
		fail(fmt.Sprintf("a move to %s by %s is in progress", s.Moving.To, s.Moving.Holder))
	}
	return home
}

// proxy is the address of cluster's proxy.
func (p *platform) proxy(t *testing.T, cluster string) string {
	t.Helper()
	return p.Cluster(t, cluster).ProxyAddr
}

// resolve asks replns which proxy serves host, the way a stub resolver
// does (platformtest's Resolve). A lookup without an answer is counted in
// p.dnsTrouble and is an error.
func (p *platform) resolve(host string) (string, error) {
	c, err := p.Resolve(context.Background(), host)
	if err != nil {
		p.dnsTrouble.Add(1)
		return "", err
	}
	return c.ProxyAddr, nil
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
	stale := p.proxy(t, "east")
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
		if _, err := p.resolve(p.Host("alice", "blog")); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("a created repl does not resolve within 1 s: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// replns and east's proxy follow east's change feed each on its own:
	// replns may answer a moment before the proxy's index has the repl (a
	// request then is a 404; README, "The change feed").
	for p.Route(t, "east", p.Host("alice", "blog")).Route != "local" {
		if time.Now().After(deadline) {
			t.Fatal("east's proxy does not route a created repl within 1 s")
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
	p := startPlatform(t, platformtest.Options{})
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
	t.Logf("%d requests in %v during 20 moves, %d failed; %d DNS lookups without an answer", p.requests.Load(), time.Since(start).Round(time.Second), p.fail.Load(), p.dnsTrouble.Load())
	if p.dnsTrouble.Load() > 0 {
		t.Logf("replns warnings:\n%s", grep(p.DNSLogs(t), `"level":"warn"`))
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
	p := startPlatform(t, platformtest.Options{})
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
			// replns answers the destination once its move hold (2 s from
			// the activate) has passed: README, "Moves and DNS".
			p.WaitResolves(t, host, to)
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
	p := startPlatform(t, platformtest.Options{})
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
	before := dial(p.proxy(t, "east"))
	if got := echo(before, "hi"); got != "east: hi" {
		t.Fatalf("before the move: %q", got)
	}
	p.ctl(t, false, "move", "blog1", "--to", "west", "--endpoint", p.apps["west"])
	// The proxies learn of the move by NOTIFY, within milliseconds.
	deadline := time.Now().Add(5 * time.Second)
	for echo(dial(p.proxy(t, "east")), "new") != "west: new" {
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
		if got := echo(dial(p.proxy(t, cluster)), "new"); got != "west: new" {
			t.Fatalf("a WebSocket opened after the move through %s's proxy: %q, want the new container", cluster, got)
		}
	}
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
