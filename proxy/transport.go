package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// newTransport returns the upstream transport: HTTP/1.1 (containers and
// peer proxies speak it; upgrades need it), many idle connections per
// host, bounded dials and waits, no compression of its own (bodies pass
// through as they are).
func newTransport(cfg *Config) *http.Transport {
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                  nil, // never an environment proxy
		DialContext:            retryRefused(dialer.DialContext),
		MaxIdleConns:           0, // no overall limit; per host below
		MaxIdleConnsPerHost:    cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:        cfg.IdleConnTimeout,
		ResponseHeaderTimeout:  cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout:  time.Second,
		DisableCompression:     true,
		ForceAttemptHTTP2:      false,
		MaxResponseHeaderBytes: 1 << 20,
		// Read and write buffers stay at 4 KiB: an upgraded (WebSocket)
		// connection keeps them for its whole life.
	}
}

// dialRetries are the waits before dialling again an address that refused
// the connection, or reset it while it was being made (a listener closing
// with connections in its queue): a container that restarts is back
// within them, and nothing was sent, so any request may wait for it.
var dialRetries = [...]time.Duration{25 * time.Millisecond, 75 * time.Millisecond, 200 * time.Millisecond}

// retryRefused returns dial, dialling again after each of dialRetries
// while the address refuses (or resets) and ctx allows.
func retryRefused(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		for i := 0; ; i++ {
			conn, err := dial(ctx, network, addr)
			if err == nil || i == len(dialRetries) || !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ECONNRESET) {
				return conn, err
			}
			t := time.NewTimer(dialRetries[i])
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, err
			case <-t.C:
			}
		}
	}
}

// bufferPool lends the 32 KiB buffers ReverseProxy copies bodies with, so
// a streamed body costs no allocation per request.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (bp *bufferPool) Get() []byte  { return *bp.p.Get().(*[]byte) }
func (bp *bufferPool) Put(b []byte) { bp.p.Put(&b) }
