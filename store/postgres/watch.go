package postgres

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/replproxy/replproxy/store"
	"go.uber.org/zap"
)

// Backoff bounds for reconnecting a lost LISTEN connection.
const (
	watchMinBackoff = 100 * time.Millisecond
	watchMaxBackoff = 5 * time.Second
)

// A LISTEN connection quiet for watchProbeEvery is probed with an empty
// query (Ping: no statement, so statement statistics do not count it),
// which must be answered within watchProbeTimeout. A server that hangs
// (SIGSTOP, a frozen host, a network that drops packets without a reset)
// keeps the connection open and silent: without the probe its loss would
// never be noticed. Connecting and LISTEN are bounded by watchConnectTimeout.
// A hung server is noticed within watchProbeEvery+watchProbeTimeout.
const (
	watchProbeEvery     = 5 * time.Second
	watchProbeTimeout   = 3 * time.Second
	watchConnectTimeout = 5 * time.Second
)

// Watch implements Reader. It holds one connection of its own (not one of
// the pool's) that LISTENs on the change channel, probed when it has been
// quiet for 5 s (see watchProbeEvery). When the connection is lost, or a
// probe fails, it sends EventLost (again after every failed reconnection)
// and reconnects with exponential backoff and jitter, and once it listens
// again sends EventResync: notifications sent while it was away are lost.
func (p *Store) Watch(ctx context.Context, fn func(store.Event)) error {
	backoff := watchMinBackoff
	for {
		err := p.listen(ctx, fn, func() { backoff = watchMinBackoff })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fn(store.Event{Kind: store.EventLost})
		wait := backoff/2 + rand.N(backoff/2+1)
		p.logger.Warn("change notifications lost, reconnecting",
			zap.String("database", p.dsn), zap.Duration("retry_in", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(backoff*2, watchMaxBackoff)
	}
}

// listen runs one LISTEN connection until it fails or ctx is done.
func (p *Store) listen(ctx context.Context, fn func(store.Event), connected func()) error {
	setupCtx, cancel := context.WithTimeout(ctx, watchConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(setupCtx, p.pool.Config().ConnConfig)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(setupCtx, "LISTEN "+notifyChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	cancel()
	connected()
	fn(store.Event{Kind: store.EventResync})
	for {
		n, err := waitForNotification(ctx, conn)
		if err != nil {
			return err
		}
		ev, ok := parseNotification(n.Payload)
		if !ok {
			// A payload this build does not know: be safe, drop everything.
			p.logger.Warn("unknown change notification; resyncing", zap.String("payload", n.Payload))
			ev = store.Event{Kind: store.EventResync}
		}
		fn(ev)
	}
}

// waitForNotification waits for the next notification on conn, probing
// the connection whenever it has been quiet for watchProbeEvery. A
// timeout of WaitForNotification leaves the connection usable (pgconn
// closes it on any other error).
func waitForNotification(ctx context.Context, conn *pgx.Conn) (*pgconn.Notification, error) {
	for {
		waitCtx, cancel := context.WithTimeout(ctx, watchProbeEvery)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case err == nil:
			return n, nil
		case ctx.Err() != nil || !pgconn.Timeout(err):
			return nil, fmt.Errorf("wait for notification: %w", err)
		}
		probeCtx, cancel := context.WithTimeout(ctx, watchProbeTimeout)
		err = conn.Ping(probeCtx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("probe the LISTEN connection, quiet for %v: %w", watchProbeEvery, err)
		}
	}
}

// parseNotification reads the payloads written by notify_change() in the
// schema: "r <id> <owner> <slug>", "d <name>", "c <name>", and
// notify_wake() of 004: "w <repl id>".
func parseNotification(payload string) (store.Event, bool) {
	kind, rest, _ := strings.Cut(payload, " ")
	switch kind {
	case "r":
		f := strings.Fields(rest)
		if len(f) != 3 {
			return store.Event{}, false
		}
		return store.Event{Kind: store.EventRepl, ReplID: f[0], Owner: f[1], Slug: f[2]}, true
	case "d":
		return store.Event{Kind: store.EventDomain, Name: rest}, rest != ""
	case "c":
		return store.Event{Kind: store.EventChallenge, Name: rest}, rest != ""
	case "w":
		return store.Event{Kind: store.EventWake, ReplID: rest}, rest != ""
	}
	return store.Event{}, false
}
