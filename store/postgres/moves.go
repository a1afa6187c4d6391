package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replproxy/replproxy/store"
)

// Move claims are rows of move_claims (003), reckoned by the database's
// clock, as cert leases are.

// ClaimMove implements Moves: one statement that inserts the claim, or
// takes it over when it expired, names the same destination, or force.
func (p *Store) ClaimMove(ctx context.Context, c store.MoveClaim, ttl time.Duration, force bool) (store.MoveClaim, error) {
	if err := store.CheckMoveClaim(c, ttl); err != nil {
		return store.MoveClaim{}, err
	}
	for range 2 { // a claim that expires between the two statements: once more
		got := store.MoveClaim{ReplID: c.ReplID}
		err := p.pool.QueryRow(ctx, `
INSERT INTO move_claims AS m (repl_id, holder, destination, since, expires_at)
VALUES ($1, $2, $3, clock_timestamp(), clock_timestamp() + $4 * interval '1 microsecond')
ON CONFLICT (repl_id) DO UPDATE SET holder = EXCLUDED.holder, destination = EXCLUDED.destination,
    since = CASE WHEN m.destination = EXCLUDED.destination AND m.expires_at > clock_timestamp() THEN m.since ELSE EXCLUDED.since END,
    expires_at = EXCLUDED.expires_at
WHERE m.expires_at <= clock_timestamp() OR m.destination = EXCLUDED.destination OR $5
RETURNING holder, destination, since, expires_at`, c.ReplID, c.Holder, c.To, ttl.Microseconds(), force).
			Scan(&got.Holder, &got.To, &got.Since, &got.Expires)
		if err == nil {
			return got, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return store.MoveClaim{}, p.fail("claim repl "+c.ReplID+" for a move", err)
		}
		held, err := p.GetMoveClaim(ctx, c.ReplID)
		if errors.Is(err, store.ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return store.MoveClaim{}, err
		}
		return store.MoveClaim{}, fmt.Errorf("claim repl %s for a move to %s: %w", c.ReplID, c.To, &store.ClaimedError{Claim: held})
	}
	return store.MoveClaim{}, fmt.Errorf("claim repl %s for a move: %w: the claim kept changing", c.ReplID, store.ErrUnavailable)
}

// ReleaseMove implements Moves.
func (p *Store) ReleaseMove(ctx context.Context, replID, holder string) error {
	if _, err := p.pool.Exec(ctx, `DELETE FROM move_claims WHERE repl_id = $1 AND holder = $2`, replID, holder); err != nil {
		return p.fail("release the move claim on "+replID, err)
	}
	return nil
}

// GetMoveClaim implements Moves.
func (p *Store) GetMoveClaim(ctx context.Context, replID string) (store.MoveClaim, error) {
	c := store.MoveClaim{ReplID: replID}
	err := p.pool.QueryRow(ctx, `SELECT holder, destination, since, expires_at FROM move_claims WHERE repl_id = $1`, replID).
		Scan(&c.Holder, &c.To, &c.Since, &c.Expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.MoveClaim{}, fmt.Errorf("move claim on %s: %w", replID, store.ErrNotFound)
	}
	if err != nil {
		return store.MoveClaim{}, p.fail("read the move claim on "+replID, err)
	}
	return c, nil
}
