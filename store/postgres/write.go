package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/replproxy/replproxy/store"
)

const replColumns = `id, owner, slug, endpoints, generation, asleep, created_at, updated_at`

func scanRepl(row pgx.CollectableRow) (store.Repl, error) {
	var r store.Repl
	err := row.Scan(&r.ID, &r.Owner, &r.Slug, &r.Endpoints, &r.Generation, &r.Asleep, &r.CreatedAt, &r.UpdatedAt)
	return r, err
}

const tombstoneColumns = `repl_id, owner, slug, cluster, generation, moved_at`

func scanTombstone(row pgx.CollectableRow) (store.Tombstone, error) {
	var t store.Tombstone
	err := row.Scan(&t.ReplID, &t.Owner, &t.Slug, &t.Cluster, &t.Generation, &t.MovedAt)
	return t, err
}

const domainColumns = `name, repl_id, token, coalesce(verified_at, '0001-01-01Z'), created_at`

func scanDomain(row pgx.CollectableRow) (store.Domain, error) {
	var d store.Domain
	err := row.Scan(&d.Name, &d.ReplID, &d.Token, &d.VerifiedAt, &d.CreatedAt)
	return d, err
}

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// one runs a query that returns exactly one row; pgx.ErrNoRows when none.
func one[T any](ctx context.Context, q querier, scan pgx.RowToFunc[T], sql string, args ...any) (T, error) {
	rows, _ := q.Query(ctx, sql, args...)
	return pgx.CollectExactlyOneRow(rows, scan)
}

// getOne is one on the pool, with errors mapped and wrapped.
func getOne[T any](ctx context.Context, p *Store, doing string, scan pgx.RowToFunc[T], sql string, args ...any) (T, error) {
	v, err := one(ctx, p.pool, scan, sql, args...)
	if err != nil {
		return v, p.fail(doing, err)
	}
	return v, nil
}

func all[T any](ctx context.Context, p *Store, doing string, scan pgx.RowToFunc[T], sql string, args ...any) ([]T, error) {
	rows, _ := p.pool.Query(ctx, sql, args...)
	vs, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return nil, p.fail(doing, err)
	}
	return vs, nil
}

// inTx runs fn in a transaction and commits it; fn's errors are mapped
// and wrapped with doing.
func (p *Store) inTx(ctx context.Context, doing string, fn func(pgx.Tx) error) error {
	if err := pgx.BeginFunc(ctx, p.pool, fn); err != nil {
		return p.fail(doing, err)
	}
	return nil
}

// CreateRepl implements Store.
func (p *Store) CreateRepl(ctx context.Context, r store.Repl) (store.Repl, error) {
	doing := "create repl " + r.ID
	if err := store.CheckRepl(r); err != nil {
		return store.Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	if r.Generation == 0 {
		r.Generation = 1
	}
	var out store.Repl
	err := p.inTx(ctx, doing, func(tx pgx.Tx) error {
		var tombstoned bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tombstones WHERE repl_id = $1)`, r.ID).Scan(&tombstoned); err != nil {
			return err
		}
		if tombstoned {
			return fmt.Errorf("%w: repl %s has a tombstone here: it moved away; move it back instead", store.ErrConflict, r.ID)
		}
		var err error
		out, err = one(ctx, tx, scanRepl,
			`INSERT INTO repls (id, owner, slug, endpoints, generation, asleep, created_at, updated_at)
			 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING `+replColumns,
			r.ID, r.Owner, r.Slug, endpointsArg(r.Endpoints), r.Generation, r.Asleep, p.now())
		return err
	})
	return out, err
}

// GetRepl implements Store.
func (p *Store) GetRepl(ctx context.Context, id string) (store.Repl, error) {
	return getOne(ctx, p, "get repl "+id, scanRepl, `SELECT `+replColumns+` FROM repls WHERE id = $1`, id)
}

// ListRepls implements Store.
func (p *Store) ListRepls(ctx context.Context, owner string) ([]store.Repl, error) {
	return all(ctx, p, "list repls", scanRepl,
		`SELECT `+replColumns+` FROM repls WHERE $1 = '' OR owner = $1 ORDER BY owner, slug`, owner)
}

// SetEndpoints implements Store.
func (p *Store) SetEndpoints(ctx context.Context, id string, endpoints []string) (store.Repl, error) {
	doing := "set endpoints of repl " + id
	if err := store.CheckEndpoints(endpoints); err != nil {
		return store.Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	return getOne(ctx, p, doing, scanRepl,
		`UPDATE repls SET endpoints = $2, updated_at = $3 WHERE id = $1 RETURNING `+replColumns,
		id, endpoints, p.now())
}

// DeleteRepl implements Store. The repls_drop_domains trigger removes the
// repl's domains when no tombstone names it.
func (p *Store) DeleteRepl(ctx context.Context, id string) error {
	tag, err := p.pool.Exec(ctx, `DELETE FROM repls WHERE id = $1`, id)
	if err != nil {
		return p.fail("delete repl "+id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete repl %s: %w", id, store.ErrNotFound)
	}
	return nil
}

// Activate implements Store.
func (p *Store) Activate(ctx context.Context, r store.Repl) (store.Repl, error) {
	return p.ActivateWithDomains(ctx, r, nil)
}

// ActivateWithDomains implements Store.
func (p *Store) ActivateWithDomains(ctx context.Context, r store.Repl, domains []store.Domain) (store.Repl, error) {
	doing := fmt.Sprintf("activate repl %s at generation %d", r.ID, r.Generation)
	if err := store.CheckActivation(r, domains); err != nil {
		return store.Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	var out store.Repl
	err := p.inTx(ctx, doing, func(tx pgx.Tx) error {
		var tombGen int64
		err := tx.QueryRow(ctx, `SELECT generation FROM tombstones WHERE repl_id = $1 FOR UPDATE`, r.ID).Scan(&tombGen)
		switch {
		case err == nil && tombGen >= r.Generation:
			return fmt.Errorf("%w: repl %s moved on since: tombstone here has generation %d", store.ErrConflict, r.ID, tombGen)
		case err == nil:
			if _, err := tx.Exec(ctx, `DELETE FROM tombstones WHERE repl_id = $1`, r.ID); err != nil {
				return err
			}
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		now := p.now()
		out, err = one(ctx, tx, scanRepl,
			`INSERT INTO repls (id, owner, slug, endpoints, generation, asleep, created_at, updated_at)
			 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
			 ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, slug = excluded.slug,
			     endpoints = excluded.endpoints, generation = excluded.generation, asleep = excluded.asleep,
			     updated_at = excluded.updated_at
			   WHERE repls.generation < excluded.generation
			 RETURNING `+replColumns,
			r.ID, r.Owner, r.Slug, endpointsArg(r.Endpoints), r.Generation, r.Asleep, now)
		if errors.Is(err, pgx.ErrNoRows) {
			// The row was there with the same or a higher generation: leave it.
			out, err = one(ctx, tx, scanRepl, `SELECT `+replColumns+` FROM repls WHERE id = $1`, r.ID)
		}
		if err != nil {
			return err
		}
		return p.linkAll(ctx, tx, r.ID, domains)
	})
	return out, err
}

// linkAll links domains to replID in tx, keeping links that are there.
func (p *Store) linkAll(ctx context.Context, tx pgx.Tx, replID string, domains []store.Domain) error {
	for _, d := range domains {
		var verified *time.Time
		if !d.VerifiedAt.IsZero() {
			verified = &d.VerifiedAt
		}
		var owner string
		err := tx.QueryRow(ctx, `
INSERT INTO domains (name, repl_id, token, verified_at, created_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET repl_id = domains.repl_id
RETURNING repl_id`, d.Name, replID, d.Token, verified, p.now()).Scan(&owner)
		if err != nil {
			return err
		}
		if owner != replID {
			return fmt.Errorf("%w: domain %s is already linked to repl %s here", store.ErrConflict, d.Name, owner)
		}
	}
	return nil
}

// Retire implements Store.
func (p *Store) Retire(ctx context.Context, replID, cluster string, generation int64) (store.Tombstone, error) {
	doing := fmt.Sprintf("retire repl %s to cluster %s at generation %d", replID, cluster, generation)
	if err := store.ValidLabel(cluster); err != nil {
		return store.Tombstone{}, fmt.Errorf("%s: cluster: %w", doing, err)
	}
	var out store.Tombstone
	err := p.inTx(ctx, doing, func(tx pgx.Tx) error {
		existing, err := one(ctx, tx, scanTombstone,
			`SELECT `+tombstoneColumns+` FROM tombstones WHERE repl_id = $1 FOR UPDATE`, replID)
		if err == nil && existing.Generation >= generation {
			out = existing
			return nil
		}
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		live, lerr := one(ctx, tx, scanRepl, `DELETE FROM repls WHERE id = $1 RETURNING `+replColumns, replID)
		switch {
		case lerr == nil && live.Generation >= generation:
			return fmt.Errorf("%w: repl %s is live here at generation %d, not below %d: it came back since", store.ErrConflict, replID, live.Generation, generation)
		case lerr == nil:
			existing.Owner, existing.Slug = live.Owner, live.Slug
		case !errors.Is(lerr, pgx.ErrNoRows):
			return lerr
		case err != nil: // neither a live row nor a tombstone
			return fmt.Errorf("%w: repl %s is neither live nor tombstoned here", store.ErrNotFound, replID)
		}
		out, err = one(ctx, tx, scanTombstone,
			`INSERT INTO tombstones (repl_id, owner, slug, cluster, generation, moved_at)
			 VALUES ($1, $2, $3, $4, $5, $6)
			 ON CONFLICT (repl_id) DO UPDATE SET cluster = excluded.cluster, generation = excluded.generation, moved_at = excluded.moved_at
			 RETURNING `+tombstoneColumns,
			replID, existing.Owner, existing.Slug, cluster, generation, p.now())
		return err
	})
	return out, err
}

// Repoint implements Store.
func (p *Store) Repoint(ctx context.Context, replID, cluster string, generation int64) error {
	doing := fmt.Sprintf("repoint tombstone of repl %s to cluster %s at generation %d", replID, cluster, generation)
	if err := store.ValidLabel(cluster); err != nil {
		return fmt.Errorf("%s: cluster: %w", doing, err)
	}
	var exists bool
	err := p.pool.QueryRow(ctx, `
WITH up AS (
    UPDATE tombstones SET cluster = $2, generation = $3, moved_at = $4
     WHERE repl_id = $1 AND generation < $3 RETURNING 1)
SELECT EXISTS (SELECT 1 FROM up) OR EXISTS (SELECT 1 FROM tombstones WHERE repl_id = $1)`,
		replID, cluster, generation, p.now()).Scan(&exists)
	if err != nil {
		return p.fail(doing, err)
	}
	if !exists {
		return fmt.Errorf("%s: %w: no tombstone for the repl here", doing, store.ErrNotFound)
	}
	return nil
}

// GetTombstone implements Store.
func (p *Store) GetTombstone(ctx context.Context, replID string) (store.Tombstone, error) {
	return getOne(ctx, p, "get tombstone "+replID, scanTombstone,
		`SELECT `+tombstoneColumns+` FROM tombstones WHERE repl_id = $1`, replID)
}

// ListTombstones implements Store.
func (p *Store) ListTombstones(ctx context.Context) ([]store.Tombstone, error) {
	return all(ctx, p, "list tombstones", scanTombstone,
		`SELECT `+tombstoneColumns+` FROM tombstones ORDER BY repl_id`)
}

// CollectTombstones implements Store. The tombstones_drop_domains trigger
// removes the domains left naming nothing.
func (p *Store) CollectTombstones(ctx context.Context, cutoff time.Time) (int, error) {
	tag, err := p.pool.Exec(ctx, `DELETE FROM tombstones WHERE moved_at < $1`, cutoff)
	if err != nil {
		return 0, p.fail("collect tombstones", err)
	}
	return int(tag.RowsAffected()), nil
}

// LinkDomain implements Store.
func (p *Store) LinkDomain(ctx context.Context, d store.Domain) (store.Domain, error) {
	doing := "link domain " + d.Name
	if err := store.ValidDomain(d.Name); err != nil {
		return store.Domain{}, fmt.Errorf("%s: %w", doing, err)
	}
	if d.Token == "" {
		d.Token = store.NewToken()
	} else if err := store.CheckToken(d.Token); err != nil {
		return store.Domain{}, fmt.Errorf("%s: %w", doing, err)
	}
	return getOne(ctx, p, doing, scanDomain,
		`INSERT INTO domains (name, repl_id, token, created_at) VALUES ($1, $2, $3, $4) RETURNING `+domainColumns,
		d.Name, d.ReplID, d.Token, p.now())
}

// UnlinkDomain implements Store.
func (p *Store) UnlinkDomain(ctx context.Context, name string) error {
	tag, err := p.pool.Exec(ctx, `DELETE FROM domains WHERE name = $1`, name)
	if err != nil {
		return p.fail("unlink domain "+name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("unlink domain %s: %w", name, store.ErrNotFound)
	}
	return nil
}

// GetDomain implements Store.
func (p *Store) GetDomain(ctx context.Context, name string) (store.Domain, error) {
	return getOne(ctx, p, "get domain "+name, scanDomain, `SELECT `+domainColumns+` FROM domains WHERE name = $1`, name)
}

// ListDomains implements Store.
func (p *Store) ListDomains(ctx context.Context, replID string) ([]store.Domain, error) {
	return all(ctx, p, "list domains", scanDomain,
		`SELECT `+domainColumns+` FROM domains WHERE $1 = '' OR repl_id = $1 ORDER BY name`, replID)
}

// MarkDomainVerified implements Store.
func (p *Store) MarkDomainVerified(ctx context.Context, name string, at time.Time) error {
	tag, err := p.pool.Exec(ctx, `UPDATE domains SET verified_at = $2 WHERE name = $1`, name, at)
	if err != nil {
		return p.fail("mark domain "+name+" verified", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("mark domain %s verified: %w", name, store.ErrNotFound)
	}
	return nil
}

// PutChallenge implements Store.
func (p *Store) PutChallenge(ctx context.Context, c store.Challenge) error {
	if err := store.CheckChallenge(c); err != nil {
		return fmt.Errorf("put challenge: %w", err)
	}
	_, err := p.pool.Exec(ctx, `
INSERT INTO challenges (name, value, expires_at) VALUES ($1, $2, $3)
ON CONFLICT (name, value) DO UPDATE SET expires_at = excluded.expires_at`, c.Name, c.Value, c.ExpiresAt)
	if err != nil {
		return p.fail("put challenge "+c.Name, err)
	}
	return nil
}

// DeleteChallenge implements Store.
func (p *Store) DeleteChallenge(ctx context.Context, name, value string) error {
	if _, err := p.pool.Exec(ctx, `DELETE FROM challenges WHERE name = $1 AND value = $2`, name, value); err != nil {
		return p.fail("delete challenge "+name, err)
	}
	return nil
}

// DeleteExpiredChallenges implements Store.
func (p *Store) DeleteExpiredChallenges(ctx context.Context, now time.Time) (int, error) {
	tag, err := p.pool.Exec(ctx, `DELETE FROM challenges WHERE expires_at <= $1`, now)
	if err != nil {
		return 0, p.fail("delete expired challenges", err)
	}
	return int(tag.RowsAffected()), nil
}

// Stats implements Store.
func (p *Store) Stats(ctx context.Context) (store.Stats, error) {
	var s store.Stats
	err := p.pool.QueryRow(ctx, `SELECT
    (SELECT count(*) FROM repls), (SELECT count(*) FROM tombstones),
    (SELECT count(*) FROM domains), (SELECT count(*) FROM challenges)`).
		Scan(&s.Repls, &s.Tombstones, &s.Domains, &s.Challenges)
	if err != nil {
		return store.Stats{}, p.fail("count rows", err)
	}
	return s, nil
}

// ListAll implements Store: the four lists in one read-only, repeatable
// read transaction, so that they are of one instant.
func (p *Store) ListAll(ctx context.Context) (store.Snapshot, error) {
	var snap store.Snapshot
	err := pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		rows, _ := tx.Query(ctx, `SELECT `+replColumns+` FROM repls ORDER BY owner, slug`)
		if snap.Repls, err = pgx.CollectRows(rows, scanRepl); err != nil {
			return err
		}
		rows, _ = tx.Query(ctx, `SELECT `+tombstoneColumns+` FROM tombstones ORDER BY repl_id`)
		if snap.Tombstones, err = pgx.CollectRows(rows, scanTombstone); err != nil {
			return err
		}
		rows, _ = tx.Query(ctx, `SELECT `+domainColumns+` FROM domains ORDER BY name`)
		if snap.Domains, err = pgx.CollectRows(rows, scanDomain); err != nil {
			return err
		}
		rows, _ = tx.Query(ctx, `SELECT name, value, expires_at FROM challenges WHERE expires_at > $1 ORDER BY name, value`, p.now())
		snap.Challenges, err = pgx.CollectRows(rows, pgx.RowToStructByPos[store.Challenge])
		return err
	})
	if err != nil {
		return store.Snapshot{}, p.fail("list everything", err)
	}
	return snap, nil
}
