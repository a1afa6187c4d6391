package proxy_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
)

// TestGracefulShutdown: on cancel (SIGTERM in the binary) the proxy stops
// accepting, lets an in-flight request and an open WebSocket finish within
// the deadline, closes what is left at the deadline — the WebSocket with a
// close frame (1001, going away) to the client and one to the container —
// and Serve returns nil.
func TestGracefulShutdown(t *testing.T) {
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) { s.ShutdownTimeout = 2 * time.Second }})
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	backendEnd := make(chan error, 1)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			conn, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer conn.CloseNow()
			for {
				typ, msg, err := conn.Read(r.Context())
				if err != nil {
					backendEnd <- err
					return
				}
				if err := conn.Write(r.Context(), typ, msg); err != nil {
					return
				}
			}
		}
		arrived <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "finished")
	}))
	defer slow.Close()
	testbed.CreateRepl(t, c.Store, "r1", "alice", "slow", testbed.HostOf(slow.URL))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+c.Addr+"/ws", &websocket.DialOptions{Host: "slow.alice.repl.test"})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()

	inflight := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, c.URL("/slow"), nil)
		req.Host = "slow.alice.repl.test"
		resp, err := testClient.Do(req)
		if err != nil {
			inflight <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		inflight <- string(b)
	}()
	select {
	case <-arrived:
	case <-ctx.Done():
		t.Fatal("the slow request did not reach the container")
	}

	c.Cancel() // the drain starts
	testbed.WaitFor(t, 5*time.Second, "the listener to close", func() bool {
		conn, err := net.DialTimeout("tcp", c.Addr, 200*time.Millisecond)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	})
	// The WebSocket still works during the drain.
	if err := ws.Write(ctx, websocket.MessageText, []byte("still here")); err != nil {
		t.Fatalf("websocket during the drain: %v", err)
	}
	if _, msg, err := ws.Read(ctx); err != nil || string(msg) != "still here" {
		t.Fatalf("websocket during the drain: %q, %v", msg, err)
	}
	close(release) // the in-flight request finishes
	if got := <-inflight; got != "finished" {
		t.Fatalf("in-flight request: %q", got)
	}
	select {
	case <-c.Served:
		t.Fatal("Serve returned while a WebSocket was open, before the deadline")
	case <-time.After(500 * time.Millisecond):
	}
	// At the deadline the WebSocket is closed and Serve returns.
	select {
	case <-c.Served:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the drain deadline")
	}
	if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("the websocket after the deadline: %v, want closed with status 1001 (going away)", err)
	}
	select {
	case err := <-backendEnd:
		if websocket.CloseStatus(err) != websocket.StatusGoingAway {
			t.Fatalf("the container's end of the websocket after the deadline: %v, want a close frame with status 1001", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the container's end of the websocket is still open")
	}
	if n := len(c.Logs.FilterMessage("drain deadline passed; closing upgraded connections").All()); n != 1 {
		t.Errorf("logged %d deadline messages, want 1", n)
	}
}

// TestDrainLetsKeepAliveConnectionsFinish: a keep-alive connection idle
// when the drain starts may still bring a request during the drain's
// grace: it is answered, with Connection: close, and the connection then
// closes. (Closing it at once, as http.Server.Shutdown does, loses a
// request the client sent at that moment: after an upgrade's handover, a
// client's request on the old process's idle connection.) A connection
// that stays idle is closed once the grace is over.
func TestDrainLetsKeepAliveConnectionsFinish(t *testing.T) {
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) {
		s.ShutdownTimeout, s.DrainGrace = 10*time.Second, 2*time.Second
	}})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer app.Close()
	testbed.CreateRepl(t, c.Store, "r1", "alice", "app", testbed.HostOf(app.URL))

	request := "GET / HTTP/1.1\r\nHost: app.alice.repl.test\r\n\r\n"
	dial := func() (net.Conn, *bufio.Reader) {
		conn, err := net.Dial("tcp", c.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		br := bufio.NewReader(conn)
		if _, err := io.WriteString(conn, request); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Close {
			t.Fatal("the first response closes the connection")
		}
		return conn, br
	}
	busy, busyR := dial()
	idle, idleR := dial()

	c.Cancel() // the drain starts
	testbed.WaitFor(t, 5*time.Second, "the listener to close", func() bool {
		conn, err := net.DialTimeout("tcp", c.Addr, 200*time.Millisecond)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	})
	start := time.Now()
	if _, err := io.WriteString(busy, request); err != nil {
		t.Fatalf("a request on a kept-alive connection during the drain: %v", err)
	}
	_ = busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(busyR, nil)
	if err != nil {
		t.Fatalf("a request on a kept-alive connection during the drain got no response: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" || !resp.Close {
		t.Fatalf("during the drain: %d %q, Connection: close %v; want 200 \"ok\" closing the connection", resp.StatusCode, body, resp.Close)
	}
	if _, err := busyR.ReadByte(); err != io.EOF {
		t.Fatalf("the connection after its last response: %v, want EOF", err)
	}
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idleR.ReadByte(); err != io.EOF {
		t.Fatalf("the idle connection: %v, want closed (EOF)", err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Fatalf("the idle connection was closed %v into the drain, before the grace (2 s) was over", waited)
	}
	select {
	case <-c.Served:
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
}
