package postgres

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/replproxy/replproxy/store"
)

// readChangesSQL reads, in one statement and so in one snapshot, the
// horizon (the xmin of that snapshot: every transaction below it has
// ended), what pruning removed, up to $3 changes after the position ($1,
// $2) below the horizon, and whether rows at or above it wait for open
// transactions. With no change to read it returns one row of NULLs after
// the first three columns.
const readChangesSQL = `
SELECT h.xmin, w.xid, w.pos, c.xid, c.pos, c.kind, c.repl_id, c.owner, c.slug, c.name,
       EXISTS (SELECT 1 FROM changes x WHERE (x.xid, x.pos) > ($1, $2) AND x.xid >= h.xmin)
  FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin) h
 CROSS JOIN changes_pruned w
  LEFT JOIN LATERAL (
        SELECT xid, pos, kind, repl_id, owner, slug, name FROM changes
         WHERE (xid, pos) > ($1, $2) AND xid < h.xmin
         ORDER BY xid, pos LIMIT $3) c ON true
 ORDER BY c.xid, c.pos`

// changesRead is one read of the log.
type changesRead struct {
	events []store.Event
	next   store.Position // where the next read starts
	full   bool           // as many changes as asked: read again at once
	held   bool           // changes wait for open transactions: read again soon
	resync bool           // from was zero, or pruned past: rebuild
	pruned store.Position // what pruning removed, when resync
}

// readChanges reads up to limit changes after from.
func (p *Store) readChanges(ctx context.Context, from store.Position, limit int) (changesRead, error) {
	after := from
	if after.IsZero() {
		after = store.Position{XID: math.MaxInt64, Pos: math.MaxInt64} // the horizon only
	}
	rows, err := p.pool.Query(ctx, readChangesSQL, after.XID, after.Pos, limit)
	if err != nil {
		return changesRead{}, p.fail("read the change log", err)
	}
	defer rows.Close()
	var (
		r       changesRead
		horizon int64
		last    store.Position
	)
	for rows.Next() {
		var (
			xid, pos                    *int64
			kind, id, owner, slug, name *string
		)
		if err := rows.Scan(&horizon, &r.pruned.XID, &r.pruned.Pos, &xid, &pos, &kind, &id, &owner, &slug, &name, &r.held); err != nil {
			return changesRead{}, p.fail("read the change log", err)
		}
		if xid == nil {
			continue
		}
		last = store.Position{XID: *xid, Pos: *pos}
		r.events = append(r.events, changeEvent(*kind, *pos, deref(id), deref(owner), deref(slug), deref(name)))
	}
	if err := rows.Err(); err != nil {
		return changesRead{}, p.fail("read the change log", err)
	}
	switch {
	case from.IsZero() || from.Less(r.pruned):
		return changesRead{next: store.Position{XID: horizon}, resync: true, pruned: r.pruned}, nil
	case len(r.events) == limit:
		r.full, r.next = true, last
	default:
		// Every change below the horizon is read: the next ones are at
		// or above it.
		r.next = store.Position{XID: horizon}
	}
	return r, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// changeEvent turns a row of the log into an event. A kind this build does
// not know (a newer schema) is an EventResync: be safe, rebuild.
func changeEvent(kind string, pos int64, id, owner, slug, name string) store.Event {
	switch kind {
	case "r":
		return store.Event{Kind: store.EventRepl, ReplID: id, Owner: owner, Slug: slug, Pos: pos}
	case "d":
		return store.Event{Kind: store.EventDomain, Name: name, Pos: pos}
	case "c":
		return store.Event{Kind: store.EventChallenge, Name: name, Pos: pos}
	case "k":
		return store.Event{Kind: store.EventCertificate, Name: name, Pos: pos}
	case "w":
		return store.Event{Kind: store.EventWake, ReplID: id, Pos: pos}
	}
	return store.Event{Kind: store.EventResync}
}

// The reads of Current: store.Prefer's live row first, as Lookup by id.
const (
	currentReplsSQL = `
SELECT 1, id, owner, slug, endpoints, '', generation, asleep FROM repls WHERE id = ANY($1)
UNION ALL
SELECT 2, repl_id, owner, slug, NULL, cluster, generation, false FROM tombstones WHERE repl_id = ANY($1)`
	currentDomainsSQL    = `SELECT name, repl_id FROM domains WHERE name = ANY($1)`
	currentChallengesSQL = `SELECT name, value, expires_at FROM challenges WHERE name = ANY($1) AND expires_at > $2 ORDER BY name, value`
)

// Current implements store.Feed: its (up to) three queries go in one
// pipeline, one round trip.
func (p *Store) Current(ctx context.Context, replIDs, domains, challenges []string) (store.Current, error) {
	cur := store.Current{
		Routes:     make(map[string]store.Route, len(replIDs)),
		Domains:    make(map[string]string, len(domains)),
		Challenges: make(map[string][]store.Challenge),
	}
	var b pgx.Batch
	if len(replIDs) > 0 {
		b.Queue(currentReplsSQL, replIDs).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var (
					r    store.Route
					kind int32
				)
				if err := rows.Scan(&kind, &r.ReplID, &r.Owner, &r.Slug, &r.Endpoints, &r.Cluster, &r.Generation, &r.Asleep); err != nil {
					return err
				}
				r.Kind = store.RouteKind(kind)
				if old, ok := cur.Routes[r.ReplID]; !ok || old.Kind != store.RouteLocal {
					cur.Routes[r.ReplID] = r
				}
			}
			return rows.Err()
		})
	}
	if len(domains) > 0 {
		b.Queue(currentDomainsSQL, domains).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var name, id string
				if err := rows.Scan(&name, &id); err != nil {
					return err
				}
				cur.Domains[name] = id
			}
			return rows.Err()
		})
	}
	if len(challenges) > 0 {
		b.Queue(currentChallengesSQL, challenges, p.now()).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var c store.Challenge
				if err := rows.Scan(&c.Name, &c.Value, &c.ExpiresAt); err != nil {
					return err
				}
				cur.Challenges[c.Name] = append(cur.Challenges[c.Name], c)
			}
			return rows.Err()
		})
	}
	if b.Len() == 0 {
		return cur, nil
	}
	if err := p.pool.SendBatch(ctx, &b).Close(); err != nil {
		return store.Current{}, p.fail(fmt.Sprintf("read %d changed names", len(replIDs)+len(domains)+len(challenges)), err)
	}
	return cur, nil
}

// DefaultFeedRetention is how long the change log keeps a change by
// default: a consumer that was away longer rebuilds from a full read.
const DefaultFeedRetention = 24 * time.Hour

// pruneChangesSQL removes the changes older than $1 whose transactions
// have ended (below the horizon: no consumer can be behind a position
// pruning skips without knowing it), and records the highest position it
// removed in changes_pruned. Under an advisory lock tried, not waited
// for: of the cluster's proxies pruning at once, one does it.
const pruneChangesSQL = `
WITH gone AS (
        DELETE FROM changes
         WHERE pg_try_advisory_xact_lock(hashtext('replproxy changes prune'))
           AND at < $1 AND xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
        RETURNING xid, pos),
     top AS (SELECT xid, pos FROM gone ORDER BY xid DESC, pos DESC LIMIT 1),
     mark AS (UPDATE changes_pruned w SET xid = top.xid, pos = top.pos FROM top
               WHERE (top.xid, top.pos) > (w.xid, w.pos) RETURNING 1)
SELECT count(*) FROM gone`

// PruneChanges removes the changes of the log made before cutoff and
// returns how many went. A consumer whose position they were after
// rebuilds from a full read when it next reads the log.
func (p *Store) PruneChanges(ctx context.Context, cutoff time.Time) (int64, error) {
	var n int64
	if err := p.pool.QueryRow(ctx, pruneChangesSQL, cutoff).Scan(&n); err != nil {
		return 0, p.fail("prune the change log", err)
	}
	return n, nil
}

// RunPruner prunes the log of changes older than retention every interval
// until ctx is done (replproxy runs it), logging failures; it returns
// ctx's error.
func (p *Store) RunPruner(ctx context.Context, retention, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := p.PruneChanges(ctx, p.now().Add(-retention))
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			p.logger.Warn("cannot prune the change log", zap.Error(err))
		case n > 0:
			p.logger.Info("change log pruned", zap.Int64("changes", n), zap.Duration("retention", retention))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
