package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/replproxy/replproxy/platformtest"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/wake"
)

// manager is a container manager for the wake tests: package wake, on one
// cluster's store, "starting" a repl's container by answering with the
// address of a sample app after a delay; or never, while hang is set.
type manager struct {
	starts atomic.Int64
	hang   atomic.Bool
}

func startManager(t *testing.T, st store.Store, app string, delay time.Duration) *manager {
	t.Helper()
	m := &manager{}
	w, err := wake.New(st, wake.Config{Name: "e2e-manager", Poll: 100 * time.Millisecond, StartTimeout: time.Minute,
		Start: func(ctx context.Context, _ store.Wake) ([]string, error) {
			m.starts.Add(1)
			if m.hang.Load() {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return []string{app}, nil
		}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// get sends a GET to proxy for host and returns the status and body.
func getVia(client *http.Client, proxy, host string) (int, string, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+proxy+"/", nil)
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestWakeOnRequest: a sleeping repl wakes on its first requests, in both
// modes: 100 concurrent requests through two proxies of its cluster make
// one wake and are all served; so are 100 through another cluster's
// tombstone; a POST with a body and a WebSocket are held and served; a
// manager that never answers gets every held request its 503 at the bound
// and the held requests back to 0; and a flood over many sleeping repls is
// held to the wake rate.
func TestWakeOnRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    platformtest.Options
	}{
		{"in-process, embedded", platformtest.Options{}},
		{"binaries, postgres", platformtest.Options{Mode: platformtest.Binaries, Store: platformtest.Postgres, NoLinks: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.NoDNS = true
			tc.o.ProxyFlags = []string{"-wake-timeout", "3s", "-wake-rate", "2", "-wake-burst", "4", "-access-log=false"}
			p := platformtest.Start(t, tc.o)
			app := p.StartApp(t, "east", platformtest.AppOptions{Name: "blog"})
			westApp := p.StartApp(t, "west", platformtest.AppOptions{Name: "blog"})
			// blog1 starts in west and moves to east: west keeps a tombstone.
			p.CreateRepl(t, platformtest.Repl{ID: "blog1", Owner: "alice", Slug: "blog", Cluster: "west", Endpoints: []string{westApp.Addr}})
			if err := p.Move(context.Background(), "blog1", "east", []string{app.Addr}); err != nil {
				t.Fatal(err)
			}
			host := p.Host("alice", "blog")
			p.Settle(t, host, "east")
			east := p.Cluster(t, "east")
			second, secondAdmin := p.AddProxy(t, "east")
			m := startManager(t, east.Store, app.Addr, 200*time.Millisecond)
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 200}}
			defer client.CloseIdleConnections()

			westAdmin := p.Cluster(t, "west").AdminAddr
			admins := []string{east.AdminAddr, secondAdmin, westAdmin}
			burst := func(what string, proxies ...string) {
				t.Helper()
				p.Sleep(t, "blog1")
				waitAsleep(t, host, admins...)
				before := m.starts.Load()
				var wg sync.WaitGroup
				var bad atomic.Int64
				for i := range 100 {
					wg.Go(func() {
						code, body, err := getVia(client, proxies[i%len(proxies)], host)
						if err != nil || code != 200 || !strings.HasPrefix(body, "served in east by blog") {
							bad.Add(1)
							t.Errorf("%s: %d %q %v", what, code, body, err)
						}
					})
				}
				wg.Wait()
				if n := m.starts.Load() - before; n != 1 || bad.Load() != 0 {
					t.Errorf("%s: %d wakes started for 100 requests (%d failed); want 1 and none", what, n, bad.Load())
				}
			}
			burst("two proxies of east", east.ProxyAddr, second)
			burst("through west's tombstone", p.Cluster(t, "west").ProxyAddr)

			// A POST with a body and a WebSocket, held through a wake.
			p.Sleep(t, "blog1")
			waitAsleep(t, host, admins...)
			body := strings.Repeat("b", 100<<10)
			req, _ := http.NewRequest(http.MethodPost, "http://"+east.ProxyAddr+"/", strings.NewReader(body))
			req.Host = host
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("served in east by blog (POST, %d bytes)\n", len(body)); string(got) != want {
				t.Errorf("POST through a wake: %s %q, want %q", resp.Status, got, want)
			}
			p.Sleep(t, "blog1")
			waitAsleep(t, host, admins...)
			ws, _, err := websocket.Dial(context.Background(), "ws://"+east.ProxyAddr+"/ws", &websocket.DialOptions{Host: host})
			if err != nil {
				t.Fatalf("WebSocket through a wake: %v", err)
			}
			if err := ws.Write(context.Background(), websocket.MessageText, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, msg, err := ws.Read(context.Background()); err != nil || string(msg) != "east: hi" {
				t.Errorf("WebSocket through a wake: %q %v", msg, err)
			}
			ws.Close(websocket.StatusNormalClosure, "")

			// A manager that never answers: every held request gets its 503
			// at the bound, and nothing stays held.
			m.hang.Store(true)
			p.Sleep(t, "blog1")
			waitAsleep(t, host, admins...)
			goroutines := adminMetric(t, east.AdminAddr, "go_goroutines")
			start := time.Now()
			var wg sync.WaitGroup
			var unavailable atomic.Int64
			for i := range 50 {
				wg.Go(func() {
					code, _, err := getVia(client, []string{east.ProxyAddr, second}[i%2], host)
					if err == nil && code == http.StatusServiceUnavailable {
						unavailable.Add(1)
					}
				})
			}
			wg.Wait()
			took := time.Since(start)
			if unavailable.Load() != 50 || took < 2500*time.Millisecond {
				t.Errorf("a manager that never answers: %d of 50 got 503, after %v; want all, at the 3 s bound", unavailable.Load(), took)
			}
			for _, admin := range []string{east.AdminAddr, secondAdmin} {
				if n := adminMetric(t, admin, "replproxy_wake_held_requests"); n != 0 {
					t.Errorf("%s: %v requests still held after the bound", admin, n)
				}
			}
			client.CloseIdleConnections()
			waitFor(t, 5*time.Second, "the proxy's goroutines back to before the held requests", func() bool {
				return adminMetric(t, east.AdminAddr, "go_goroutines") <= goroutines+10
			})

			// A flood over 30 sleeping repls: new wakes at the proxy's rate
			// (burst 4, then 2 a second), the others refused at once.
			m.hang.Store(false)
			before := m.starts.Load()
			for i := range 30 {
				id := fmt.Sprintf("s%d", i)
				p.CreateRepl(t, platformtest.Repl{ID: id, Owner: "scan", Slug: id, Cluster: "east", Endpoints: []string{app.Addr}})
				p.Sleep(t, id)
			}
			for i := range 30 {
				waitAsleep(t, p.Host("scan", fmt.Sprintf("s%d", i)), east.AdminAddr)
			}
			start = time.Now()
			var served, refused atomic.Int64
			for i := range 30 {
				wg.Go(func() {
					code, _, err := getVia(client, east.ProxyAddr, p.Host("scan", fmt.Sprintf("s%d", i)))
					switch {
					case err == nil && code == 200:
						served.Add(1)
					case err == nil && code == http.StatusServiceUnavailable:
						refused.Add(1)
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			wakes := m.starts.Load() - before
			if limit := 4 + int64(2*elapsed.Seconds()) + 1; wakes > limit || wakes < 4 || served.Load() != wakes || refused.Load() != 30-wakes {
				t.Errorf("a flood of 30 sleeping repls in %v: %d wakes (limit %d), %d served, %d refused", elapsed, wakes, limit, served.Load(), refused.Load())
			}
		})
	}
}

// waitAsleep waits until the proxies at admins see host asleep (their
// /debug/route): a GET would otherwise be served by the container of
// before.
func waitAsleep(t testing.TB, host string, admins ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, admin := range admins {
		for !notServing(host, admin) {
			if time.Now().After(deadline) {
				t.Fatalf("the proxy at %s does not see %s asleep", admin, host)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// notServing reports whether the proxy at admin would not serve host from
// a container now: asleep, or not local there (a tombstone forwards).
func notServing(host, admin string) bool {
	var ri proxy.RouteInfo
	resp, err := http.Get("http://" + admin + "/debug/route?host=" + host)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(&ri) == nil && (ri.Route != "local" || ri.Asleep)
}

// waitFor polls cond until it holds, failing after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
