package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/replproxy/replproxy/internal/backoff"
	"github.com/replproxy/replproxy/store"
)

// The change feed (README, "The change feed"): Follow reads the changes
// table of migration 005 in batches; a LISTEN connection of its own only
// wakes it up early.
const (
	// feedChannel is the wake-up channel of log_change(): one empty
	// NOTIFY per writing transaction.
	feedChannel = "replproxy_feed"
	// feedBatch is how many changes one read of the log returns.
	feedBatch = 5000
	// DefaultFeedPoll is how often the log is read with no wake-up: the
	// bound on a change's delay when NOTIFY does not come (a hot standby,
	// where LISTEN is refused, or a lost LISTEN connection).
	DefaultFeedPoll = time.Second
	// heldMin is the first wait before the log is read again when it has
	// rows an open transaction holds back (below, "the horizon").
	heldMin = 5 * time.Millisecond
	// listeningPoll is how often the log is read with no wake-up while the
	// LISTEN connection is up: every writing transaction's commit wakes
	// the reader then, so this is only a safety net, and an idle consumer
	// (a hundred proxies per cluster) costs next to nothing.
	listeningPoll = 30 * time.Second
	// readGap is the least time between two reads of the log on
	// wake-ups: under a stream of small transactions a consumer reads
	// once per gap, whatever came meanwhile, instead of once per commit.
	// Each read costs PostgreSQL ≈ 0.2–0.5 ms of CPU per consumer
	// (make bench-fanout), so with a hundred consumers per cluster this is
	// what keeps a busy cluster's database from spending itself on them;
	// a change waits at most this much longer to be seen.
	readGap = 25 * time.Millisecond
)

// Backoff bounds for reconnecting after a failed read or a lost LISTEN
// connection.
const (
	watchMinBackoff = 100 * time.Millisecond
	watchMaxBackoff = 5 * time.Second
)

// A LISTEN connection quiet for watchProbeEvery is probed with an empty
// query (Ping: no statement, so statement statistics do not count it),
// which must be answered within watchProbeTimeout. A server that hangs
// (SIGSTOP, a frozen host, a network that drops packets without a reset)
// keeps the connection open and silent: without the probe its loss would
// never be noticed. Connecting, LISTEN and each read of the log are
// bounded by watchConnectTimeout. A hung server is noticed within
// watchProbeEvery+watchProbeTimeout.
const (
	watchProbeEvery     = 5 * time.Second
	watchProbeTimeout   = 3 * time.Second
	watchConnectTimeout = 5 * time.Second
)

var _ store.Feed = (*Store)(nil)

// Watch implements Reader: it is Follow from the log's end, one event at a
// time.
func (p *Store) Watch(ctx context.Context, fn func(store.Event)) error {
	return p.Follow(ctx, store.Position{}, func(b store.Batch) {
		for _, ev := range b.Events {
			fn(ev)
		}
	})
}

// SetFeedPoll sets how often Follow reads the log without a wake-up
// (DefaultFeedPoll when d is 0 or less). Call it before Follow or Watch.
func (p *Store) SetFeedPoll(d time.Duration) {
	if d <= 0 {
		d = DefaultFeedPoll
	}
	p.feedPoll = d
}

// listenState is what the LISTEN connection tells Follow.
type listenState uint8

const (
	listenUp      listenState = iota + 1 // listening: wake-ups come
	listenDown                           // lost: reconnecting
	listenStandby                        // the server is a hot standby: no LISTEN, polling only
)

// errStandby: the server is in recovery, where LISTEN is refused.
var errStandby = errors.New("the server is a hot standby")

// Follow implements store.Feed.
//
// It reads the log with plain queries, so it follows a hot standby as
// well as the primary: there it polls every SetFeedPoll (NOTIFY does not
// reach a standby). A read takes the changes after the position whose
// writer's transaction id is below the xmin of the read's own snapshot
// (the horizon): those transactions have all ended, so no change can
// later appear before them, and rows of transactions still open are read
// once they end (the log is read again soon while some are held back).
func (p *Store) Follow(ctx context.Context, from store.Position, fn func(store.Batch)) error {
	lctx, cancel := context.WithCancel(ctx)
	wake := make(chan struct{}, 1)
	states := make(chan listenState, 1)
	var wg sync.WaitGroup
	wg.Go(func() { p.listenLoop(lctx, wake, states) })
	defer wg.Wait()
	defer cancel()

	f := &follower{p: p, fn: fn, poll: p.feedPoll, pos: from, retry: watchMinBackoff, held: heldMin}
	if f.poll <= 0 {
		f.poll = DefaultFeedPoll
	}
	for {
		f.lastRead = time.Now()
		rctx, cancelRead := context.WithTimeout(ctx, watchConnectTimeout)
		r, err := p.readChanges(rctx, f.pos, feedBatch)
		cancelRead()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !f.lost {
				p.logger.Warn("change log unreadable; retrying", zap.String("database", p.dsn), zap.Error(err))
				f.lose()
			}
			if !backoff.Sleep(ctx, backoff.Jitter(f.retry)) {
				return ctx.Err()
			}
			f.retry = min(2*f.retry, watchMaxBackoff)
			continue
		}
		f.retry = watchMinBackoff
		f.deliver(r)
		if r.full {
			continue
		}
		if err := f.wait(ctx, r.held, wake, states); err != nil {
			return err
		}
	}
}

// follower is one Follow's state between its reads of the log.
type follower struct {
	p          *Store
	fn         func(store.Batch)
	poll       time.Duration  // SetFeedPoll's
	pos        store.Position // where the next read starts
	lost       bool           // EventLost sent, EventResume not yet
	listenGone bool           // the LISTEN connection is down
	listening  bool           // the LISTEN connection is up: commits wake the reader
	lastRead   time.Time
	retry      time.Duration // the wait after a failed read
	held       time.Duration // the wait while open transactions hold changes back
}

// lose sends EventLost, once until the feed resumes or resyncs.
func (f *follower) lose() {
	if !f.lost {
		f.lost = true
		f.fn(store.Batch{Events: []store.Event{{Kind: store.EventLost}}, Next: f.pos})
	}
}

// deliver hands fn what a read found, after EventResync when the log was
// pruned past the position (or there was none) and EventResume when it
// is readable again after EventLost, with its LISTEN connection up.
func (f *follower) deliver(r changesRead) {
	var events []store.Event
	switch {
	case r.resync:
		if !f.pos.IsZero() {
			f.p.logger.Warn("change log pruned past this consumer's position: rebuilding from a full read",
				zap.String("database", f.p.dsn), zap.Stringer("position", f.pos), zap.Stringer("pruned_to", r.pruned))
		}
		events = []store.Event{{Kind: store.EventResync}}
		f.lost = false
	case f.lost && !f.listenGone:
		f.p.logger.Info("change log readable again: resuming", zap.String("database", f.p.dsn), zap.Stringer("position", f.pos))
		events = append([]store.Event{{Kind: store.EventResume}}, r.events...)
		f.lost = false
	default:
		events = r.events
	}
	f.pos = r.next
	if len(events) > 0 {
		f.fn(store.Batch{Events: events, Next: f.pos})
	}
}

// wait waits until the log should be read again: a wake-up (no sooner
// than readGap after the last read), a change of the LISTEN connection's
// state, or the poll (soon while held: open transactions hold changes
// back). It returns ctx's error once ctx is done.
func (f *follower) wait(ctx context.Context, held bool, wake <-chan struct{}, states <-chan listenState) error {
	wait := f.poll
	if f.listening {
		wait = max(f.poll, listeningPoll)
	}
	if held {
		wait, f.held = min(f.held, f.poll), min(2*f.held, f.poll)
	} else {
		f.held = heldMin
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-wake:
		// Coalesce: wait out the gap since the last read.
		if gap := readGap - time.Since(f.lastRead); gap > 0 {
			if !backoff.Sleep(ctx, gap) {
				return ctx.Err()
			}
		}
	case s := <-states:
		switch s {
		case listenDown:
			f.listenGone, f.listening = true, false
			f.lose()
		case listenUp:
			f.listenGone, f.listening = false, true
		case listenStandby:
			f.listenGone, f.listening = false, false
		}
	case <-t.C:
	}
	return nil
}

// listenLoop keeps a LISTEN connection on feedChannel, reconnecting with
// backoff, and reports its state on states and every notification on wake.
// On a hot standby it reports listenStandby and stops.
func (p *Store) listenLoop(ctx context.Context, wake chan<- struct{}, states chan<- listenState) {
	report := func(s listenState) bool {
		select {
		case states <- s:
			return true
		case <-ctx.Done():
			return false
		}
	}
	delay := watchMinBackoff
	for {
		err := p.listen(ctx, wake, func() { delay = watchMinBackoff; report(listenUp) })
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errStandby) {
			p.logger.Info("following a hot standby's change log by polling", zap.String("database", p.dsn), zap.Duration("poll", p.feedPoll))
			report(listenStandby)
			return
		}
		if !report(listenDown) {
			return
		}
		wait := backoff.Jitter(delay)
		p.logger.Warn("change wake-ups lost, reconnecting",
			zap.String("database", p.dsn), zap.Duration("retry_in", wait), zap.Error(err))
		if !backoff.Sleep(ctx, wait) {
			return
		}
		delay = min(2*delay, watchMaxBackoff)
	}
}

// listen runs one LISTEN connection (not one of the pool's) until it fails
// or ctx is done.
func (p *Store) listen(ctx context.Context, wake chan<- struct{}, listening func()) error {
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
	var standby bool
	if err := conn.QueryRow(setupCtx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
		return fmt.Errorf("ask whether in recovery: %w", err)
	}
	if standby {
		return errStandby
	}
	// The last statement of the connection: platformtest's CutFeed finds
	// it by it.
	if _, err := conn.Exec(setupCtx, "LISTEN "+feedChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	cancel()
	listening()
	for {
		if err := waitForNotification(ctx, conn); err != nil {
			return err
		}
		select {
		case wake <- struct{}{}:
		default:
		}
	}
}

// waitForNotification waits for the next notification on conn, probing it
// whenever it has been quiet for watchProbeEvery.
func waitForNotification(ctx context.Context, conn *pgx.Conn) error {
	for {
		waitCtx, cancel := context.WithTimeout(ctx, watchProbeEvery)
		_, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil || !pgconn.Timeout(err):
			return fmt.Errorf("wait for notification: %w", err)
		}
		probeCtx, cancel := context.WithTimeout(ctx, watchProbeTimeout)
		err = conn.Ping(probeCtx)
		cancel()
		if err != nil {
			return fmt.Errorf("probe the LISTEN connection, quiet for %v: %w", watchProbeEvery, err)
		}
	}
}
