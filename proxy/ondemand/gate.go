package ondemand

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/store"
)

// admitOrder is the order gate's check (see orderGate): every name ours to
// order, the rate limit, and this proxy holding each name's lease.
func (m *Manager) admitOrder(ctx context.Context, names []string) error {
	for _, name := range names {
		if err := m.ours(ctx, name); err != nil {
			m.metrics.refusal("not_ours")
			return fmt.Errorf("order for %s: %w: %w", name, errNotOurs, err)
		}
	}
	if m.limiter != nil && !m.limiter.take(m.now()) {
		m.metrics.refusal("rate_limited")
		return fmt.Errorf("order for %v: %w (at most %g an hour)", names, errRateLimited, m.cfg.OrdersPerHour)
	}
	for _, name := range names {
		got, err := m.st.AcquireCertLease(ctx, name, m.cfg.Holder, m.cfg.LeaseTTL)
		if err != nil {
			return fmt.Errorf("order for %s: %w", name, err)
		}
		if !got {
			m.metrics.refusal("lease_held")
			return fmt.Errorf("order for %s: %w", name, errLeaseHeld)
		}
	}
	now := m.now()
	m.mu.Lock()
	for _, name := range names {
		if start, ok := m.orders[name]; !ok || now.Sub(start) > m.cfg.LeaseTTL {
			m.orders[name] = now
		}
	}
	m.mu.Unlock()
	for _, name := range names {
		m.metrics.order(kindOf(name))
		m.logger.Info("ordering certificate", zap.String("name", name), zap.String("directory", m.cfg.Directory))
	}
	return nil
}

// ours checks that name is a certificate this proxy may order: a wildcard
// of an owner or of the ids under the zone, or a linked custom domain.
func (m *Manager) ours(ctx context.Context, name string) error {
	if rest, ok := cutWildcard(name); ok {
		key, err := m.cfg.Zone.ParseName(rest)
		if err != nil {
			return err
		}
		if key.Kind != store.KeyOwner && key.Kind != store.KeyIDRoot {
			return fmt.Errorf("%s is not an owner's or the ids' wildcard", name)
		}
		return nil
	}
	return m.hostPolicy(ctx, name)
}

func cutWildcard(name string) (string, bool) {
	if len(name) > 2 && name[0] == '*' && name[1] == '.' {
		return name[2:], true
	}
	return "", false
}

// orderGate is the ACME client's transport. Every new order passes
// through it — autocert's background renewals too, which nothing else sees
// before they reach the CA — and it lets one through only when admit
// agrees: the names are ours to order, the overall rate allows one more,
// and this proxy holds the cluster's lease on each name.
type orderGate struct {
	next  http.RoundTripper
	admit func(ctx context.Context, names []string) error

	mu     sync.Mutex
	closed bool
}

var errStopped = errors.New("the certificate manager has stopped")

// RoundTrip implements http.RoundTripper.
func (g *orderGate) RoundTrip(req *http.Request) (*http.Response, error) {
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed {
		closeBody(req)
		return nil, errStopped
	}
	if req.Method == http.MethodPost && req.GetBody != nil {
		names, err := orderNames(req)
		if err == nil && names != nil {
			err = g.admit(req.Context(), names)
		}
		if err != nil {
			closeBody(req)
			return nil, err
		}
	}
	return g.next.RoundTrip(req)
}

// close makes every later request fail at once, so that nothing autocert
// starts after shutdown (it deactivates authorizations in goroutines of its
// own) opens connections.
func (g *orderGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// orderNames returns the identifiers of a newOrder request (RFC 8555,
// section 7.4), and nil for every other request: a JWS whose payload has
// "identifiers".
func orderNames(req *http.Request) ([]string, error) {
	body, err := req.GetBody()
	if err != nil {
		return nil, fmt.Errorf("read ACME request: %w", err)
	}
	defer body.Close()
	raw, err := io.ReadAll(io.LimitReader(body, 1<<16))
	if err != nil {
		return nil, fmt.Errorf("read ACME request: %w", err)
	}
	var jws struct {
		Payload string `json:"payload"`
	}
	if json.Unmarshal(raw, &jws) != nil || jws.Payload == "" {
		return nil, nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		return nil, nil
	}
	var order struct {
		Identifiers []struct {
			Type  string `json:"type"`
			Value string `json:"value"`
		} `json:"identifiers"`
	}
	if json.Unmarshal(payload, &order) != nil || len(order.Identifiers) == 0 {
		return nil, nil
	}
	names := make([]string, 0, len(order.Identifiers))
	for _, id := range order.Identifiers {
		if id.Type != "dns" {
			return nil, fmt.Errorf("ACME order for a %s identifier %q: only DNS names are ordered here", id.Type, id.Value)
		}
		names = append(names, strings.ToLower(id.Value))
	}
	return names, nil
}

// tokenBucket is the overall order rate limit.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // tokens a second
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate, burst float64, now time.Time) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, last: now}
}

func (b *tokenBucket) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
