package platformtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// App is a sample container: an HTTP server on a cluster's IP that answers
// every request with "served in <cluster> by <name> (<method>, <n>
// bytes)" (the body it read), and echoes WebSocket messages on /ws, each
// prefixed with "<cluster>: ".
type App struct {
	Cluster, Name string
	// Addr is the container's address (host:port): a repl's endpoint.
	Addr string

	srv    *http.Server
	served atomic.Int64
}

// AppOptions tune StartApp. The zero value is usable.
type AppOptions struct {
	// Name is in every answer. Default: "app".
	Name string
	// Port fixes the port on the cluster's IP. Zero: a free one.
	Port int
	// Handler replaces the sample's own (Served still counts).
	Handler http.Handler
}

// StartApp starts a sample container in cluster c, until the test ends.
func (p *Platform) StartApp(t TB, cluster string, o AppOptions) *App {
	t.Helper()
	c := p.Cluster(t, cluster)
	if o.Name == "" {
		o.Name = "app"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(c.IP, fmt.Sprint(o.Port)))
	if err != nil {
		t.Fatalf("platformtest: sample app %s in %s: %v", o.Name, cluster, err)
	}
	a := &App{Cluster: cluster, Name: o.Name, Addr: ln.Addr().String()}
	h := o.Handler
	if h == nil {
		h = http.HandlerFunc(a.serve)
	}
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		h.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = a.srv.Serve(ln) }()
	t.Cleanup(func() { _ = a.srv.Close() })
	return a
}

// Served counts the requests the app has answered.
func (a *App) Served() int64 { return a.served.Load() }

// Stop stops the app: its repl's requests fail with 502 from then on.
func (a *App) Stop() { _ = a.srv.Close() }

func (a *App) serve(w http.ResponseWriter, r *http.Request) {
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
			if err := c.Write(context.Background(), typ, append([]byte(a.Cluster+": "), msg...)); err != nil {
				return
			}
		}
	}
	n, _ := io.Copy(io.Discard, r.Body)
	fmt.Fprintf(w, "served in %s by %s (%s, %d bytes)\n", a.Cluster, a.Name, r.Method, n)
}
