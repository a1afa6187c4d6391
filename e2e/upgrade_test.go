package e2e

import (
	"context"
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
)

// TestUpgradesUnderLoad: east's replproxy is replaced 10 times (a new
// process takes over the old one's sockets through the handover socket,
// the old one drains) under 500 requests/s — GETs and POSTs on keep-alive
// connections, GETs on a new connection each, for a repl in east and for
// one moved to west (forwarded) — with WebSockets open all along and more
// opened during the upgrades: no request fails, every WebSocket opened
// before the first upgrade still echoes after the last, and every
// WebSocket opened on the way works.
func TestUpgradesUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("25 s of load")
	}
	// The replaced processes keep their WebSockets until they close:
	// -shutdown-timeout is longer than the test.
	p := startPlatform(t, platformtest.Options{ProxyFlags: []string{"-shutdown-timeout", "2m"}})
	p.createRepl(t)
	p.ctl(t, false, "repl", "create", "carol/site", "--id", "site1", "--cluster", "east", "--endpoint", p.apps["east"])
	p.ctl(t, false, "move", "site1", "--to", "west", "--endpoint", p.apps["west"])
	east := p.proxy(t, "east")
	hosts := map[string]string{p.Host("alice", "blog"): "served in east", p.Host("carol", "site"): "served in west"}
	p.Settle(t, p.Host("carol", "site"), "west")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var wsFailures atomic.Int64
	wsErrs := make(chan string, 1000)
	dialWS := func() (*websocket.Conn, error) {
		c, _, err := websocket.Dial(ctx, "ws://"+east+"/ws", &websocket.DialOptions{Host: p.Host("alice", "blog")})
		return c, err
	}
	echo := func(c *websocket.Conn, msg string) error {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := c.Write(wctx, websocket.MessageText, []byte(msg)); err != nil {
			return err
		}
		_, got, err := c.Read(wctx)
		if err != nil {
			return err
		}
		if string(got) != "east: "+msg {
			return fmt.Errorf("echo %q, want %q", got, "east: "+msg)
		}
		return nil
	}
	var open []*websocket.Conn
	for range 20 {
		c, err := dialWS()
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		open = append(open, c)
	}

	stop := make(chan struct{})
	var sent, failed atomic.Int64
	failures := make(chan string, 10000)
	keepAlive := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer keepAlive.CloseIdleConnections()
	do := func(client *http.Client, method, host string, body io.Reader) {
		sent.Add(1)
		req, _ := http.NewRequest(method, "http://"+east+"/", body)
		req.Host = host
		resp, err := client.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(b), hosts[host]) {
				err = fmt.Errorf("status %d %q", resp.StatusCode, b)
			}
		}
		if err != nil {
			failed.Add(1)
			select {
			case failures <- fmt.Sprintf("%s %s: %v", method, host, err):
			default:
			}
		}
	}
	hostList := []string{p.Host("alice", "blog"), p.Host("carol", "site")}
	// 6 workers every 20 ms on keep-alive connections (300/s, half POSTs)
	// and 4 every 20 ms on new connections (200/s).
	waitKeepAlive := paced(6, 20*time.Millisecond, stop, func(w, i int) {
		method, body := "GET", io.Reader(nil)
		if (w+i)%2 == 1 {
			method, body = "POST", strings.NewReader(strings.Repeat("p", 4096))
		}
		do(keepAlive, method, hostList[(w+i/2)%2], body)
	})
	waitFresh := paced(4, 20*time.Millisecond, stop, func(w, i int) {
		do(fresh, "GET", hostList[(w+i)%2], nil)
	})
	// The open WebSockets echo every 100 ms; one more opens every 100 ms
	// and echoes once.
	var wsWG sync.WaitGroup
	wsWG.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for j, c := range open {
				if err := echo(c, fmt.Sprintf("ping %d %d", i, j)); err != nil {
					wsFailures.Add(1)
					wsErrs <- fmt.Sprintf("WebSocket %d: %v", j, err)
				}
			}
			c, err := dialWS()
			if err == nil {
				err = echo(c, "new")
				c.Close(websocket.StatusNormalClosure, "")
			}
			if err != nil {
				wsFailures.Add(1)
				wsErrs <- fmt.Sprintf("new WebSocket: %v", err)
			}
		}
	})

	start := time.Now()
	var took []time.Duration
	for range 10 {
		time.Sleep(time.Second)
		t0 := time.Now()
		p.ReplaceProxy(t, "east")
		took = append(took, time.Since(t0).Round(time.Millisecond))
	}
	time.Sleep(time.Second)
	close(stop)
	waitKeepAlive()
	waitFresh()
	wsWG.Wait()
	for j, c := range open {
		if err := echo(c, "after"); err != nil {
			t.Errorf("the WebSocket %d opened before the upgrades, after them: %v", j, err)
		}
		c.Close(websocket.StatusNormalClosure, "")
	}
	close(failures)
	close(wsErrs)
	var first []string
	for f := range failures {
		if len(first) < 5 {
			first = append(first, f)
		}
	}
	for f := range wsErrs {
		if len(first) < 10 {
			first = append(first, f)
		}
	}
	elapsed := time.Since(start)
	t.Logf("%d requests in %v (%.0f/s) across 10 replproxy upgrades (each ready and serving after %v): %d failed, %d WebSocket echoes failed %q",
		sent.Load(), elapsed.Round(time.Second), float64(sent.Load())/elapsed.Seconds(), took, failed.Load(), wsFailures.Load(), first)
	if failed.Load() != 0 || wsFailures.Load() != 0 {
		t.Fatalf("%d of %d requests and %d WebSocket echoes failed across the upgrades, e.g. %q", failed.Load(), sent.Load(), wsFailures.Load(), first)
	}
	if rate := float64(sent.Load()) / elapsed.Seconds(); rate < 300 {
		t.Fatalf("only %.0f requests/s were sent: the test did not load the proxy as meant (500/s)", rate)
	}
}
