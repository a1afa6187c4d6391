package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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
		MaxIdleConns:           cfg.MaxIdleConns, // in all, as the lean path (pool)
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
// a streamed body costs no allocation per request. It holds them as
// pointers to arrays, which a slice converts back to without allocating:
// holding a *[]byte would cost a new slice header at every Put, one
// allocation per proxied response.
type bufferPool struct{ p sync.Pool }

const copyBufferSize = 32 << 10

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { return new([copyBufferSize]byte) }}}
}

func (bp *bufferPool) Get() []byte { return bp.p.Get().(*[copyBufferSize]byte)[:] }

// Put takes back a buffer Get lent; anything else is left to the
// collector.
func (bp *bufferPool) Put(b []byte) {
	if cap(b) >= copyBufferSize {
		bp.p.Put((*[copyBufferSize]byte)(b[:copyBufferSize]))
	}
}

// peerTransports carry forwarded requests to other clusters' proxies over
// mutual TLS (Config.Peers): HTTP/2 for ordinary requests, one
// multiplexed connection per peer address as long as its streams suffice,
// and HTTP/1.1 for upgrades, which HTTP/2 cannot carry.
type peerTransports struct {
	h2, h1 *http.Transport
}

// clusterAt names the cluster whose forward address addr is, in the
// registry in use when the connection is dialled.
func newPeerTransports(cfg *Config, clusterAt func(addr string) (string, bool)) *peerTransports {
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	dial := retryRefused(dialer.DialContext)
	dialTLS := func(alpn ...string) func(ctx context.Context, network, addr string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			name, ok := clusterAt(addr)
			if !ok {
				return nil, fmt.Errorf("forward to %s: no cluster of the registry has that forward address", addr)
			}
			raw, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(raw, cfg.Peers.ClientConfig(name, alpn...))
			if err := tc.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, fmt.Errorf("TLS with cluster %s's proxy at %s: %w", name, addr, err)
			}
			return tc, nil
		}
	}
	t := func(alpn ...string) *http.Transport {
		tr := newTransport(cfg)
		tr.DialContext = nil
		tr.DialTLSContext = dialTLS(alpn...)
		return tr
	}
	h2 := t("h2", "http/1.1")
	h2.ForceAttemptHTTP2 = true
	// A peer that stops answering is found by a ping, not by the
	// requests that wait on it.
	h2.HTTP2 = &http.HTTP2Config{SendPingTimeout: 10 * time.Second, PingTimeout: 5 * time.Second}
	return &peerTransports{h2: h2, h1: t("http/1.1")}
}

func (p *peerTransports) RoundTrip(req *http.Request) (*http.Response, error) {
	if upgradeType(req.Header) != "" {
		return p.h1.RoundTrip(req)
	}
	return p.h2.RoundTrip(req)
}

func (p *peerTransports) CloseIdleConnections() {
	p.h2.CloseIdleConnections()
	p.h1.CloseIdleConnections()
}
