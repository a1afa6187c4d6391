package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingServer counts the connections its clients open.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func testUpstream(headerWait time.Duration) *upstream {
	return newUpstream(&Config{DialTimeout: time.Second, ResponseHeaderTimeout: headerWait, IdleConnTimeout: time.Minute, MaxIdleConnsPerHost: 4})
}

func roundTrip(t *testing.T, u *upstream, ctx context.Context, method, url string) (*http.Response, string, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, method, url, nil)
	resp, err := u.RoundTrip(req)
	if err != nil {
		return nil, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b), err
}

func TestUpstreamLeanPath(t *testing.T) {
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/close":
			w.Header().Set("Connection", "close")
		case "/hints":
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
		case "/big":
			_, _ = io.WriteString(w, strings.Repeat("x", 1<<20))
			return
		}
		_, _ = io.WriteString(w, "ok "+r.Method)
	})
	ctx := context.Background()

	t.Run("reuses one connection", func(t *testing.T) {
		u := testUpstream(time.Second)
		defer u.CloseIdleConnections()
		before := conns.Load()
		for _, m := range []string{"GET", "HEAD", "GET", "DELETE"} {
			resp, body, err := roundTrip(t, u, ctx, m, srv.URL+"/")
			if err != nil || resp.StatusCode != 200 || (m != "HEAD" && body != "ok "+m) {
				t.Fatalf("%s: %v %q", m, err, body)
			}
		}
		if n := conns.Load() - before; n != 1 {
			t.Fatalf("%d connections for 4 requests, want 1", n)
		}
	})
	t.Run("Connection: close is honoured", func(t *testing.T) {
		u := testUpstream(time.Second)
		defer u.CloseIdleConnections()
		before := conns.Load()
		for range 2 {
			if _, _, err := roundTrip(t, u, ctx, "GET", srv.URL+"/close"); err != nil {
				t.Fatal(err)
			}
		}
		if n := conns.Load() - before; n != 2 {
			t.Fatalf("%d connections, want 2", n)
		}
	})
	t.Run("a body left unread closes the connection", func(t *testing.T) {
		u := testUpstream(time.Second)
		defer u.CloseIdleConnections()
		before := conns.Load()
		req, _ := http.NewRequest("GET", srv.URL+"/big", nil)
		resp, err := u.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.ReadFull(resp.Body, make([]byte, 100))
		resp.Body.Close()
		if _, _, err := roundTrip(t, u, ctx, "GET", srv.URL+"/"); err != nil {
			t.Fatal(err)
		}
		if n := conns.Load() - before; n != 2 {
			t.Fatalf("%d connections, want 2 (the half-read one is not reused)", n)
		}
	})
	t.Run("a connection the server closed is replaced", func(t *testing.T) {
		u := testUpstream(time.Second)
		defer u.CloseIdleConnections()
		if _, _, err := roundTrip(t, u, ctx, "GET", srv.URL+"/"); err != nil {
			t.Fatal(err)
		}
		srv.CloseClientConnections() // the pooled connection is now dead
		if resp, _, err := roundTrip(t, u, ctx, "GET", srv.URL+"/"); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET after the server closed the pooled connection: %v", err)
		}
	})
	t.Run("early hints are passed on", func(t *testing.T) {
		u := testUpstream(time.Second)
		defer u.CloseIdleConnections()
		var got []int
		tctx := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			got = append(got, code)
			return nil
		}})
		resp, body, err := roundTrip(t, u, tctx, "GET", srv.URL+"/hints")
		if err != nil || resp.StatusCode != 200 || body != "ok GET" || len(got) != 1 || got[0] != 103 {
			t.Fatalf("resp %v body %q err %v informational %v", resp, body, err, got)
		}
	})
}

func TestUpstreamTimeoutsAndCancel(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	u := testUpstream(200 * time.Millisecond)
	defer u.CloseIdleConnections()
	_, _, err := roundTrip(t, u, context.Background(), "GET", srv.URL+"/")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("slow upstream: %v, want a timeout", err)
	}

	u = testUpstream(time.Minute)
	defer u.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	if _, _, err := roundTrip(t, u, ctx, "GET", srv.URL+"/"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled request: %v, want context.Canceled", err)
	}
}
