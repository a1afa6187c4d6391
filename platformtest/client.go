package platformtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/miekg/dns"
)

// Resolve asks replns for name's A record as a stub resolver does (a
// truncated UDP reply is asked again over TCP) and returns the cluster
// whose address it answered.
func (p *Platform) Resolve(ctx context.Context, name string) (*Cluster, error) {
	if p.dnsAddr == "" {
		return nil, fmt.Errorf("resolve %s: the platform has no replns (Options.NoDNS)", name)
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 2 * time.Second}).ExchangeContext(ctx, m, p.dnsAddr)
	if err == nil && r.Truncated {
		r, _, err = (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).ExchangeContext(ctx, m, p.dnsAddr)
	}
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", name, err)
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			for _, c := range p.clusters {
				if c.IP == a.A.String() {
					return c, nil
				}
			}
			return nil, fmt.Errorf("resolve %s: replns answered %s, no cluster's address", name, a.A)
		}
	}
	return nil, fmt.Errorf("resolve %s: replns answered %s with no address", name, dns.RcodeToString[r.Rcode])
}

// Client returns an HTTP client that reaches every name as a browser on
// the platform would: it asks replns which cluster hosts the name and
// connects to that cluster's proxy (whatever port the URL has). Like a
// browser's, its connections are kept alive: a request on a connection
// opened before a move still goes to the old cluster, which forwards it.
// Its idle connections are closed at cleanup.
func (p *Platform) Client(t TB) *http.Client {
	t.Helper()
	return p.client(func(ctx context.Context, host string) (string, error) {
		c, err := p.Resolve(ctx, host)
		if err != nil {
			return "", err
		}
		return c.ProxyAddr, nil
	})
}

// StaleClient returns an HTTP client that connects to cluster's proxy
// for every name: a client that resolved a name once, before the repl
// moved, and kept the address.
func (p *Platform) StaleClient(t TB, cluster string) *http.Client {
	t.Helper()
	addr := p.Cluster(t, cluster).ProxyAddr
	return p.client(func(context.Context, string) (string, error) { return addr, nil })
}

func (p *Platform) client(proxyFor func(ctx context.Context, host string) (string, error)) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			proxy, err := proxyFor(ctx, host)
			if err != nil {
				return nil, err
			}
			return dialer.DialContext(ctx, network, proxy)
		},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
	}
	if p.tls != nil {
		// https:// URLs go to the cluster's HTTPS listener, verified
		// against Pebble's roots under the URL's name.
		roots := p.tls.roots
		tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			plain, err := proxyFor(ctx, host)
			if err != nil {
				return nil, err
			}
			c := p.clusterAt(plain)
			if c == nil || c.TLSAddr == "" {
				return nil, fmt.Errorf("https to %s: no cluster's proxy has HTTPS at %s", host, plain)
			}
			d := &tls.Dialer{NetDialer: dialer, Config: &tls.Config{ServerName: host, RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}}}
			return d.DialContext(ctx, network, c.TLSAddr)
		}
		tr.ForceAttemptHTTP2 = true
	}
	p.mu.Lock()
	p.clients = append(p.clients, tr)
	p.mu.Unlock()
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// clusterAt returns the cluster whose proxy listens at addr.
func (p *Platform) clusterAt(addr string) *Cluster {
	for _, c := range p.clusters {
		if c.ProxyAddr == addr {
			return c
		}
	}
	return nil
}
