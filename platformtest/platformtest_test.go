package platformtest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/replproxy/replproxy/move"
	"github.com/replproxy/replproxy/platformtest"
)

// get asks url with c and returns the body, failing on anything but 200.
func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", errors.New(resp.Status + ": " + string(body))
	}
	return string(body), nil
}

// TestPlatform runs the same scenario in both modes: a repl is created,
// answered by name through replns and through a stale client, moved under
// load without a failed request, a WebSocket opened before the move keeps
// working, and the platform leaves no goroutine behind.
func TestPlatform(t *testing.T) {
	for _, mode := range []platformtest.Mode{platformtest.InProcess, platformtest.Binaries} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
			p := platformtest.Start(t, platformtest.Options{Mode: mode})
			east := p.StartApp(t, "east", platformtest.AppOptions{Name: "blog"})
			west := p.StartApp(t, "west", platformtest.AppOptions{Name: "blog"})
			p.CreateRepl(t, platformtest.Repl{ID: "blog1", Owner: "alice", Slug: "blog", Endpoints: []string{east.Addr}})
			url := "http://" + p.Host("alice", "blog") + "/"

			browser, stale := p.Client(t), p.StaleClient(t, "east")
			if body, err := get(browser, url); err != nil || !strings.HasPrefix(body, "served in east by blog") {
				t.Fatalf("before the move: %q %v", body, err)
			}

			ws, _, err := websocket.Dial(context.Background(), "ws://"+p.Cluster(t, "east").ProxyAddr+"/ws",
				&websocket.DialOptions{Host: p.Host("alice", "blog")})
			if err != nil {
				t.Fatal(err)
			}
			defer ws.CloseNow()

			var requests, failures atomic.Int64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for _, c := range []*http.Client{browser, stale} {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						case <-time.After(2 * time.Millisecond):
						}
						requests.Add(1)
						if _, err := get(c, url); err != nil {
							failures.Add(1)
							t.Errorf("request during the move: %v", err)
						}
					}
				})
			}
			time.Sleep(50 * time.Millisecond)
			if err := p.Move(context.Background(), "blog1", "west", []string{west.Addr}); err != nil {
				t.Fatal(err)
			}
			p.Settle(t, p.Host("alice", "blog"), "west")
			time.Sleep(50 * time.Millisecond)
			close(stop)
			wg.Wait()
			t.Logf("%d requests during the move, %d failed", requests.Load(), failures.Load())
			if west.Served() == 0 {
				t.Error("no request reached west after the move")
			}
			if body, err := get(stale, url); err != nil || !strings.HasPrefix(body, "served in west") {
				t.Errorf("the stale client after the move: %q %v (want west, through east's tombstone)", body, err)
			}
			if err := ws.Write(context.Background(), websocket.MessageText, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, msg, err := ws.Read(context.Background()); err != nil || string(msg) != "east: hi" {
				t.Errorf("the WebSocket opened before the move: %q %v", msg, err)
			}
			ws.Close(websocket.StatusNormalClosure, "")
		})
	}
}

// TestFaults: a partitioned link holds forwarded requests until healed; a
// cut one fails them fast; a killed proxy comes back; a move stopped after
// a step is finished by running it again.
func TestFaults(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	p := platformtest.Start(t, platformtest.Options{})
	east := p.StartApp(t, "east", platformtest.AppOptions{})
	west := p.StartApp(t, "west", platformtest.AppOptions{})
	p.CreateRepl(t, platformtest.Repl{ID: "r1", Owner: "bob", Slug: "api", Endpoints: []string{east.Addr}})
	err := p.Move(context.Background(), "r1", "west", []string{west.Addr}, platformtest.StopAfter(move.StepActivate))
	var me *move.Error
	if !errors.As(err, &me) || len(me.Done) != 1 {
		t.Fatalf("a move stopped after step 1: %v", err)
	}
	if err := p.Move(context.Background(), "r1", "west", []string{west.Addr}); err != nil {
		t.Fatalf("the move run again: %v", err)
	}
	p.Settle(t, p.Host("bob", "api"), "west")
	url := "http://" + p.Host("bob", "api") + "/"
	stale := p.StaleClient(t, "east") // forwards to west: crosses the east→west link
	if _, err := get(stale, url); err != nil {
		t.Fatal(err)
	}

	link := p.Link(t, "east", "west")
	link.Partition()
	done := make(chan error, 1)
	go func() {
		// A fresh connection: the pooled one between the proxies is held.
		_, err := get(p.StaleClient(t, "east"), url)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a request across a partitioned link was answered: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	link.Heal()
	if err := <-done; err != nil {
		t.Errorf("the held request after Heal: %v", err)
	}

	p.KillProxy(t, "west")
	if _, err := get(p.Client(t), url); err == nil {
		t.Error("a request to a killed proxy was answered")
	}
	p.RestartProxy(t, "west")
	if _, err := get(p.Client(t), url); err != nil {
		t.Errorf("after RestartProxy: %v", err)
	}
}

// TestPostgres: the platform on throw-away PostgreSQL servers; CutFeed
// ends the change feeds of the cluster's proxy and of replns.
func TestPostgres(t *testing.T) {
	p := platformtest.Start(t, platformtest.Options{Store: platformtest.Postgres})
	app := p.StartApp(t, "east", platformtest.AppOptions{})
	p.CreateRepl(t, platformtest.Repl{Owner: "carol", Slug: "chat", Endpoints: []string{app.Addr}})
	if n := p.CutFeed(t, "east"); n < 2 {
		t.Errorf("CutFeed ended %d LISTEN connections; want the proxy's and replns's", n)
	}
}

// TestReplaceProxy: requests sent while a proxy is replaced all succeed,
// and the new one serves on the cluster's addresses (its admin address a
// new one); ClusterProxyFlags reach that cluster's proxy only.
func TestReplaceProxy(t *testing.T) {
	p := platformtest.Start(t, platformtest.Options{NoDNS: true,
		ClusterProxyFlags: map[string][]string{"west": {"-access-log=false"}}})
	app := p.StartApp(t, "east", platformtest.AppOptions{})
	p.CreateRepl(t, platformtest.Repl{Owner: "dan", Slug: "web", Endpoints: []string{app.Addr}})
	url := "http://" + p.Host("dan", "web") + "/"
	before := p.Cluster(t, "east").AdminAddr
	stop := make(chan struct{})
	var failed atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		c := p.StaleClient(t, "east")
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			if _, err := get(c, url); err != nil {
				failed.Add(1)
				t.Errorf("a request while east's proxy is replaced: %v", err)
			}
		}
	})
	p.ReplaceProxy(t, "east")
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if after := p.Cluster(t, "east").AdminAddr; after == before {
		t.Errorf("the replacement's admin address is the old one's, %s", after)
	}
	if ri := p.Route(t, "east", p.Host("dan", "web")); ri.Route != "local" {
		t.Errorf("the replacement routes %s as %+v", p.Host("dan", "web"), ri)
	}
	_, _ = get(p.StaleClient(t, "west"), url) // a 404: west has never had it
	if !strings.Contains(p.Logs(t, "east"), "web.dan.repl.test") {
		t.Error("east's new proxy logged no request")
	}
	if strings.Contains(p.Logs(t, "west"), "web.dan.repl.test") {
		t.Errorf("west logged a request despite its -access-log=false:\n%s", p.Logs(t, "west"))
	}
}

// TestTLSOnDemand: with Options.TLS the proxies get certificates from
// Pebble by DNS-01 through replns, and Client reaches https:// URLs.
func TestTLSOnDemand(t *testing.T) {
	p := platformtest.Start(t, platformtest.Options{TLS: true})
	app := p.StartApp(t, "east", platformtest.AppOptions{})
	p.CreateRepl(t, platformtest.Repl{Owner: "alice", Slug: "blog", Endpoints: []string{app.Addr}})
	resp, err := p.Client(t).Get("https://" + p.Host("alice", "blog") + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "served in east") || resp.TLS == nil {
		t.Fatalf("GET over HTTPS: %s %q", resp.Status, body)
	}
	if got := resp.TLS.PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != "*.alice.repl.test" {
		t.Errorf("certificate for %v, want *.alice.repl.test", got)
	}
	if resp.Proto != "HTTP/2.0" {
		t.Errorf("protocol %s, want HTTP/2.0", resp.Proto)
	}
}
