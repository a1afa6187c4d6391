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
}

type exchangeKey struct{}

// connSlot carries the exchange of an HTTP/1 connection's current request:
// such a connection serves one request at a time, so the Server puts one
// slot in each connection's context (ConnContext) and requests use it
// instead of a context.WithValue and a Request copy each.
type connSlot struct{ ex *exchange }

type connSlotKey struct{}

// withConnSlot is the http.Server's ConnContext.
func withConnSlot(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connSlotKey{}, &connSlot{})
}

// exchangeOf returns the exchange of a request made by ServeHTTP.
func exchangeOf(ctx context.Context) *exchange {
	if ex, ok := ctx.Value(exchangeKey{}).(*exchange); ok {
		return ex
	}
	return ctx.Value(connSlotKey{}).(*connSlot).ex
}

var exchangePool = sync.Pool{New: func() any { return new(exchange) }}
