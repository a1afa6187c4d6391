package proxy

import (
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"time"
)

// rewrite builds the upstream request: the target, the Host kept, our
// forwarding headers, and a hop mark when forwarding to another cluster.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	ex := exchangeOf(pr.In.Context())
	in, out := pr.In, pr.Out
	out.URL.Scheme = "http"
	if ex.route == routeForwarded && h.cfg.Peers != nil {
		out.URL.Scheme = "https" // mutual TLS with the peer (peerTransports)
	}
	out.URL.Host = ex.target
	out.Host = in.Host
	if !asciiHost(in.Host) {
		// A U-label (HTTP/2 lets a client send one): the container, and
		// the next cluster that checks the hop mark, get the A-label
		// ParseName read it as. An ASCII Host is passed on as it came.
		out.Host = h.cfg.Zone.Format(ex.key)
	}

	clientIP, _, err := net.SplitHostPort(in.RemoteAddr)
	if err != nil {
		clientIP = in.RemoteAddr
	}
	var xff, proto, fhost string
	if ex.trusted {
		// The proxy that forwarded the request vouched for these (the hop
		// mark signs them) and set them as it would have for its own
		// container; the hop between clusters is not the client's, so the
		// container sees what it would have seen there.
		xff = strings.Join(in.Header.Values("X-Forwarded-For"), ", ")
		proto = in.Header.Get("X-Forwarded-Proto")
		fhost = in.Header.Get("X-Forwarded-Host")
	} else {
		xff = clientIP
		proto = "http"
		if in.TLS != nil {
			proto = "https"
		}
		fhost = out.Host
	}
	oh := out.Header
	// Headers that claim to say who the client is, from a client or a
	// proxy nobody vouches for, are not passed on: the proxy says it.
	for _, k := range clientIPHeaders {
		delete(oh, k)
	}
	via := "1.1 replproxy"
	if in.ProtoMajor == 2 {
		via = "2 replproxy"
	}
	// One array holds every value set here (one allocation, not six);
	// each header gets a slice of it whose capacity ends at its own
	// value, so that appending to one header copies instead of writing
	// over the next.
	vals := [...]string{xff, proto, fhost, firstHop(xff), ex.id, via}
	vs := vals[:]
	one := func(i int) []string { return vs[i : i+1 : i+1] }
	oh["X-Forwarded-For"] = one(0)
	oh["X-Forwarded-Proto"] = one(1)
	oh["X-Forwarded-Host"] = one(2)
	oh["X-Real-Ip"] = one(3)
	oh["X-Request-Id"] = one(4)
	if prior := in.Header.Values("Via"); len(prior) > 0 {
		oh["Via"] = append(prior[:len(prior):len(prior)], via)
	} else {
		oh["Via"] = one(5)
	}
	oh.Del(HopHeader)
	switch {
	case ex.sent != nil:
		// The body goes to the peer only after its 100 Continue: a 508
		// (staleForward) leaves it here, unsent (holdForward).
		oh["Expect"] = []string{"100-continue"}
	case ex.trusted:
		// The Expect of the hop between clusters was for this proxy,
		// which reads the body anyway.
		delete(oh, "Expect")
	}

	if ex.route == routeForwarded {
		oh[HopHeader] = []string{h.hop.sign(hopFields{
			Source:    h.cfg.Cluster,
			Gen:       ex.fwdGen, // a second forward (staleForward) is another mark
			Method:    out.Method,
			Target:    out.URL.RequestURI(),
			Length:    wireLength(out),
			Host:      out.Host,
			For:       xff,
			Proto:     proto,
			FHost:     fhost,
			RequestID: ex.id,
		})}
	}
	ex.upstreamAt = time.Now()
}

// wireLength is the body length the next proxy will read for out: its
// Content-Length when it has one (signedLength).
func wireLength(out *http.Request) int64 {
	if out.Body == nil || out.Body == http.NoBody {
		return 0
	}
	return out.ContentLength
}

// clientIPHeaders are the request headers, besides X-Forwarded-*, that
// claim to name the client or how it connected; none is passed on as sent.
var clientIPHeaders = [...]string{"X-Real-Ip", "True-Client-Ip", "X-Client-Ip", "Client-Ip", "X-Cluster-Client-Ip",
	"Cf-Connecting-Ip", "Fastly-Client-Ip", "X-Forwarded-Port", "X-Forwarded-Server", "X-Original-Forwarded-For", "Forwarded"}

// firstHop returns the first address of an X-Forwarded-For list.
func firstHop(xff string) string {
	if i := strings.IndexByte(xff, ','); i >= 0 {
		return strings.TrimSpace(xff[:i])
	}
	return xff
}

// asciiHost reports whether a Host is all ASCII.
func asciiHost(host string) bool {
	for i := 0; i < len(host); i++ {
		if host[i] >= 0x80 {
			return false
		}
	}
	return true
}

// modifyResponse times the upstream, keeps the response from speaking for
// the proxy, adds Via, and hands a forward that came back as a stale loop
// (staleForward) and a protocol switch (takeOver) on.
func (h *Handler) modifyResponse(resp *http.Response) error {
	ex := exchangeOf(resp.Request.Context())
	ex.upstreamDur = time.Since(ex.upstreamAt)
	h.metrics.upstreamTime(ex.route, ex.upstreamDur)
	var loopTo string
	if ex.route == routeForwarded && resp.StatusCode == http.StatusLoopDetected {
		loopTo = h.hop.verifyLoop(resp.Header.Get(LoopHeader), ex.id)
	}
	stripProxyHeaders(resp.Header)
	if resp.StatusCode != http.StatusSwitchingProtocols && mayHaveTrailers(resp) {
		// Trailers may not say it either: the announced names now, the
		// values when they have arrived (trailerGuard).
		stripProxyHeaders(resp.Trailer)
		resp.Body = &trailerGuard{ReadCloser: resp.Body, resp: resp}
	}
	if ex.route != routeForwarded {
		// A peer proxy's answer has its Via already: the client sees one
		// replproxy, as if it had asked the right cluster.
		resp.Header["Via"] = append(resp.Header["Via"], "1.1 replproxy")
	}
	if loopTo != "" && !ex.reforwarded {
		// The peer's tombstone points on (or back here): this proxy's
		// route may be older than its store (staleForward).
		return errStaleForward
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return h.takeOver(ex, resp)
	}
	return nil
}

// stripProxyHeaders removes what only this proxy may say from an upstream
// response's headers or trailers: every Replproxy-* header (hop and loop marks: a container must
// not be able to forge them, and a peer's are read before this), and
// X-Request-Id, which ServeHTTP set already (the response would carry two).
func stripProxyHeaders(h http.Header) {
	for k := range h {
		if len(k) >= len("Replproxy-") && strings.EqualFold(k[:len("Replproxy-")], "Replproxy-") {
			delete(h, k)
		}
	}
	delete(h, "X-Request-Id")
}

// mayHaveTrailers reports whether resp's body can end with trailers: a
// chunked HTTP/1.1 body, or any HTTP/2 one.
func mayHaveTrailers(resp *http.Response) bool {
	if resp.Body == nil || resp.Body == http.NoBody {
		return false
	}
	return resp.ProtoMajor >= 2 || len(resp.TransferEncoding) > 0 || len(resp.Trailer) > 0
}

// trailerGuard is an upstream response's body that, once read to the end
// (the trailers have then been read into resp.Trailer, announced or not),
// strips from them what stripProxyHeaders strips from headers, before
// ReverseProxy copies them to the client.
type trailerGuard struct {
	io.ReadCloser
	resp *http.Response
}

func (g *trailerGuard) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	if err == io.EOF {
		stripProxyHeaders(g.resp.Trailer)
	}
	return n, err
}
