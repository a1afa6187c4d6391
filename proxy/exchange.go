package proxy

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/replproxy/replproxy/store"
)

// exchange is the state of one request, carried in its context from
// ServeHTTP to the ReverseProxy's callbacks.
type exchange struct {
	start       time.Time
	id          string
	route       string // routeLocal, routeForwarded, ...
	replID      string
	target      string // host:port upstream
	trusted     bool   // arrived with a valid hop mark
	source      string // the cluster that forwarded it, when trusted
	upstreamAt  time.Time
	upstreamDur time.Duration
	status      int // set when the response was not written (499)
	rec         *recorder
	key         store.Key
	in          *http.Request // the request as it came in, for a second dispatch
	body        []byte        // a forwarded request's body, held for a second dispatch (holdForward)
	sent        *sentBody     // or what of it went to the peer, sent after 100 Continue
	fwdGen      int64         // the generation of the tombstone the request was forwarded on
	hopGen      int64         // trusted: the generation of the source's tombstone, from its hop mark
	reforwarded bool          // staleForward sent it on once already
}

type exchangeKey struct{}

// connSlot carries the exchange of an HTTP/1 connection's current request:
// such a connection serves one request at a time, so the Server puts one
// slot in each connection's context (ConnContext) and requests use it
// instead of a context.WithValue and a Request copy each.
type connSlot struct {
	ex *exchange

	// For the HTTP/2 abuse budget (resetBudget): the connection, and the
	// streams its client cancelled.
	conn      net.Conn
	mu        sync.Mutex
	cancelled float64   // tokens spent, draining at resetRefill a second
	at        time.Time // when cancelled was last brought up to date
	cut       bool      // over budget once: the connection is being closed
	peer      bool      // a cluster's proxy over mutual TLS: its cancels are its clients'
}

// Streams a client may cancel (HTTP/2 RST_STREAM, or going away) before
// the answer: resetBurst at once, resetRefill a second after that. A
// client that cancels faster (the "rapid reset" attack: HEADERS then
// RST_STREAM, without end) loses the connection.
const (
	resetBurst  = 200
	resetRefill = 20
)

// cancel counts a stream the client cancelled, and reports whether the
// connection has just gone over its budget (once).
func (s *connSlot) cancel(now time.Time) bool {
	if s.peer {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.at.IsZero() {
		s.cancelled = max(0, s.cancelled-now.Sub(s.at).Seconds()*resetRefill)
	}
	s.at = now
	s.cancelled++
	if s.cut || s.cancelled <= resetBurst {
		return false
	}
	s.cut = true
	return true
}

type connSlotKey struct{}

// withConnSlot is the http.Server's ConnContext.
func withConnSlot(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connSlotKey{}, &connSlot{conn: c})
}

// withPeerSlot is the ConnContext of the forward listener over mutual
// TLS: its connections carry many clients' requests, and are not held to
// one client's budget of cancelled streams.
func withPeerSlot(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connSlotKey{}, &connSlot{conn: c, peer: true})
}

// exchangeOf returns the exchange of a request made by ServeHTTP.
func exchangeOf(ctx context.Context) *exchange {
	if ex, ok := ctx.Value(exchangeKey{}).(*exchange); ok {
		return ex
	}
	return ctx.Value(connSlotKey{}).(*connSlot).ex
}

var exchangePool = sync.Pool{New: func() any { return new(exchange) }}
