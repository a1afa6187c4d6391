package proxy_test

import (
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
// the deadline, closes what is left at the deadline, and Serve returns nil.
func TestGracefulShutdown(t *testing.T) {
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) { s.ShutdownTimeout = 2 * time.Second }})
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
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
	if _, _, err := ws.Read(ctx); err == nil {
		t.Fatal("the websocket is still open after the deadline")
	}
	if n := len(c.Logs.FilterMessage("drain deadline passed; closing upgraded connections").All()); n != 1 {
		t.Errorf("logged %d deadline messages, want 1", n)
	}
}
