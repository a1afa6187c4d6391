package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replproxy/replproxy/store"
)

// The wake protocol (004): a row of wakes per requested wake, the repl's
// asleep column, and repl_activity. Times are the store's clock (p.now),
// as every other timestamp it writes.

// endpointsArg is endpoints as a NOT NULL text[]: an asleep repl has '{}'.
func endpointsArg(endpoints []string) []string {
	if endpoints == nil {
		return []string{}
	}
	return endpoints
}

const wakeColumns = `repl_id, requested_at, requested_by, coalesce(claimed_by, ''), coalesce(claimed_at, '0001-01-01Z'),
    coalesce(failed, ''), coalesce(failed_at, '0001-01-01Z')`

func scanWake(row pgx.CollectableRow) (store.Wake, error) {
	var w store.Wake
	err := row.Scan(&w.ReplID, &w.RequestedAt, &w.RequestedBy, &w.ClaimedBy, &w.ClaimedAt, &w.Failed, &w.FailedAt)
	return w, err
}

// RequestWake implements Wakes: one INSERT that makes the wake when the
// repl is asleep, or replaces a failed one. Concurrent requests meet on
// the primary key: one inserts, the others see a pending wake.
func (p *Store) RequestWake(ctx context.Context, replID, by string) (bool, error) {
	doing := "request a wake of repl " + replID
	if err := store.CheckWakeName("requested by", by); err != nil {
		return false, fmt.Errorf("%s: %w", doing, err)
	}
	// FOR UPDATE: a FinishWake in flight updates the repl row and deletes
	// the wake in one transaction; without the lock this statement saw the
	// repl asleep, waited on the conflicting wake, and inserted a new one
	// for a repl awake by then (TestPostgresWakeRequestRacesFinish).
	tag, err := p.pool.Exec(ctx, `
INSERT INTO wakes (repl_id, requested_at, requested_by)
SELECT id, $3, $2 FROM repls WHERE id = $1 AND asleep FOR UPDATE
ON CONFLICT (repl_id) DO UPDATE SET requested_at = excluded.requested_at, requested_by = excluded.requested_by,
    claimed_by = NULL, claimed_at = NULL, failed = NULL, failed_at = NULL
WHERE wakes.failed IS NOT NULL`, replID, by, p.now())
	if err != nil {
		return false, p.fail(doing, err)
	}
	if tag.RowsAffected() == 1 {
		return true, nil
	}
	var exists bool
	if err := p.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM repls WHERE id = $1)`, replID).Scan(&exists); err != nil {
		return false, p.fail(doing, err)
	}
	if !exists {
		return false, fmt.Errorf("%s: %w: the repl is not live here", doing, store.ErrNotFound)
	}
	return false, nil // awake, or a wake is pending
}

// GetWake implements Wakes.
func (p *Store) GetWake(ctx context.Context, replID string) (store.Wake, error) {
	return getOne(ctx, p, "get the wake of repl "+replID, scanWake,
		`SELECT `+wakeColumns+` FROM wakes WHERE repl_id = $1`, replID)
}

// ListWakes implements Wakes.
func (p *Store) ListWakes(ctx context.Context, staleBefore time.Time) ([]store.Wake, error) {
	return all(ctx, p, "list wakes", scanWake, `SELECT `+wakeColumns+` FROM wakes
WHERE failed IS NULL AND (claimed_by IS NULL OR claimed_at < $1) ORDER BY requested_at, repl_id`, staleBefore)
}

// ClaimWake implements Wakes: one UPDATE that takes the wake when it is
// unclaimed, claimed by by already, or claimed before staleBefore.
func (p *Store) ClaimWake(ctx context.Context, replID, by string, staleBefore time.Time) (store.Wake, error) {
	doing := fmt.Sprintf("claim the wake of repl %s for %s", replID, by)
	if err := store.CheckWakeName("claimed by", by); err != nil {
		return store.Wake{}, fmt.Errorf("%s: %w", doing, err)
	}
	w, err := one(ctx, p.pool, scanWake, `
UPDATE wakes SET claimed_by = $2, claimed_at = $4
WHERE repl_id = $1 AND failed IS NULL AND (claimed_by IS NULL OR claimed_by = $2 OR claimed_at < $3)
RETURNING `+wakeColumns, replID, by, staleBefore, p.now())
	if err == nil {
		return w, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return store.Wake{}, p.fail(doing, err)
	}
	cur, err := p.GetWake(ctx, replID)
	if err != nil {
		return store.Wake{}, fmt.Errorf("%s: %w", doing, err)
	}
	if cur.Failed != "" {
		return store.Wake{}, fmt.Errorf("%s: %w: the wake failed: %s", doing, store.ErrConflict, cur.Failed)
	}
	return store.Wake{}, fmt.Errorf("%s: %w: claimed by %s at %s", doing, store.ErrConflict, cur.ClaimedBy, cur.ClaimedAt.Format(time.RFC3339Nano))
}

// FinishWake implements Wakes. The UPDATE of repls notifies EventRepl, the
// DELETE of the wake EventWake, both at commit.
func (p *Store) FinishWake(ctx context.Context, replID string, endpoints []string) (store.Repl, error) {
	doing := "finish the wake of repl " + replID
	if err := store.CheckEndpoints(endpoints); err != nil {
		return store.Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	var out store.Repl
	err := p.inTx(ctx, doing, func(tx pgx.Tx) error {
		var err error
		out, err = one(ctx, tx, scanRepl,
			`UPDATE repls SET endpoints = $2, asleep = false, updated_at = $3 WHERE id = $1 RETURNING `+replColumns,
			replID, endpoints, p.now())
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM wakes WHERE repl_id = $1`, replID)
		return err
	})
	return out, err
}

// FailWake implements Wakes. A wake that failed already keeps its first
// reason.
func (p *Store) FailWake(ctx context.Context, replID, reason string) error {
	doing := "fail the wake of repl " + replID
	var n int
	err := p.pool.QueryRow(ctx, `
WITH up AS (UPDATE wakes SET failed = $2, failed_at = $3 WHERE repl_id = $1 AND failed IS NULL RETURNING 1)
SELECT (SELECT count(*) FROM up) + (SELECT count(*) FROM wakes WHERE repl_id = $1)`,
		replID, store.CutReason(reason), p.now()).Scan(&n)
	if err != nil {
		return p.fail(doing, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w: no wake", doing, store.ErrNotFound)
	}
	return nil
}

// Sleep implements Wakes.
func (p *Store) Sleep(ctx context.Context, replID string) (store.Repl, error) {
	return getOne(ctx, p, "put repl "+replID+" to sleep", scanRepl,
		`UPDATE repls SET asleep = true, endpoints = '{}', updated_at = $2 WHERE id = $1 RETURNING `+replColumns,
		replID, p.now())
}

// RecordActivity implements Wakes: one INSERT of two unnested arrays,
// keeping the later time of a repl; repls not live here are skipped.
func (p *Store) RecordActivity(ctx context.Context, last map[string]time.Time) error {
	if len(last) == 0 {
		return nil
	}
	ids := make([]string, 0, len(last))
	ats := make([]time.Time, 0, len(last))
	for id, at := range last {
		ids = append(ids, id)
		ats = append(ats, at)
	}
	if _, err := p.pool.Exec(ctx, recordActivitySQL, ids, ats); err != nil {
		return p.fail(fmt.Sprintf("record the activity of %d repls", len(ids)), err)
	}
	return nil
}

// recordActivitySQL is the one statement of RecordActivity.
const recordActivitySQL = `
INSERT INTO repl_activity AS a (repl_id, last_at)
SELECT u.id, u.at FROM unnest($1::text[], $2::timestamptz[]) AS u (id, at) JOIN repls r ON r.id = u.id
ON CONFLICT (repl_id) DO UPDATE SET last_at = greatest(a.last_at, excluded.last_at)`

// Activity implements Wakes.
func (p *Store) Activity(ctx context.Context) (map[string]time.Time, error) {
	rows, _ := p.pool.Query(ctx, `SELECT a.repl_id, a.last_at FROM repl_activity a JOIN repls r ON r.id = a.repl_id`)
	out := make(map[string]time.Time)
	var (
		id string
		at time.Time
	)
	_, err := pgx.ForEachRow(rows, []any{&id, &at}, func() error { out[id] = at; return nil })
	if err != nil {
		return nil, p.fail("read activity", err)
	}
	return out, nil
}
