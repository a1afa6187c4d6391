package proxy

import (
	"net"
	"net/http"
	"sync"
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
		DialContext:            dialer.DialContext,
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

// bufferPool lends the 32 KiB buffers ReverseProxy copies bodies with, so
// a streamed body costs no allocation per request.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (bp *bufferPool) Get() []byte  { return *bp.p.Get().(*[]byte) }
func (bp *bufferPool) Put(b []byte) { bp.p.Put(&b) }
