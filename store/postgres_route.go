package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// The lookups on the request path: one indexed query each, live row first.
const (
	lookupByNameSQL = `
SELECT 1, id, owner, slug, endpoints, '', generation FROM repls WHERE owner = $1 AND slug = $2
UNION ALL
SELECT 2, repl_id, owner, slug, NULL, cluster, generation FROM tombstones WHERE owner = $1 AND slug = $2
ORDER BY 1, 7 DESC LIMIT 1`
	lookupByIDSQL = `
SELECT 1, id, owner, slug, endpoints, '', generation FROM repls WHERE id = $1
UNION ALL
SELECT 2, repl_id, owner, slug, NULL, cluster, generation FROM tombstones WHERE repl_id = $1
ORDER BY 1 LIMIT 1`
	lookupByDomainSQL = `
SELECT 1, r.id, r.owner, r.slug, r.endpoints, '', r.generation FROM domains d JOIN repls r ON r.id = d.repl_id WHERE d.name = $1
UNION ALL
SELECT 2, t.repl_id, t.owner, t.slug, NULL, t.cluster, t.generation FROM domains d JOIN tombstones t ON t.repl_id = d.repl_id WHERE d.name = $1
ORDER BY 1 LIMIT 1`
)

// Lookup implements Reader.
func (p *Postgres) Lookup(ctx context.Context, k Key) (Route, error) {
	sql, args := LookupQuery(k)
	if sql == "" {
		return Route{}, fmt.Errorf("lookup %s: %w: not a routable name", k, ErrInvalid)
	}
	row := p.pool.QueryRow(ctx, sql, args...)
	var (
		r    Route
		kind int32
	)
	if err := row.Scan(&kind, &r.ReplID, &r.Owner, &r.Slug, &r.Endpoints, &r.Cluster, &r.Generation); err != nil {
		return Route{}, p.fail("lookup "+k.String(), err)
	}
	r.Kind = RouteKind(kind)
	return r, nil
}

// Challenges implements Reader.
func (p *Postgres) Challenges(ctx context.Context, name string) ([]Challenge, error) {
	rows, _ := p.pool.Query(ctx,
		`SELECT name, value, expires_at FROM challenges WHERE name = $1 AND expires_at > $2 ORDER BY value`,
		name, p.now())
	cs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Challenge])
	if err != nil {
		return nil, p.fail("read challenges "+name, err)
	}
	return cs, nil
}

// LookupQuery returns the SQL and arguments Lookup runs for a routable key
// (for EXPLAIN in tests and benchmarks).
func LookupQuery(k Key) (string, []any) {
	switch k.Kind {
	case KeyRepl:
		return lookupByNameSQL, []any{k.Owner, k.Slug}
	case KeyReplID:
		return lookupByIDSQL, []any{k.ID}
	case KeyDomain:
		return lookupByDomainSQL, []any{k.Name}
	}
	return "", nil
}
