package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/replproxy/replproxy/store"
)

// The lookups on the request path: one indexed query each. When several
// rows carry a name, the ORDER BY is store.Prefer: the live row, then the
// highest generation, then the smallest repl id.
const (
	lookupByNameSQL = `
SELECT 1, id, owner, slug, endpoints, '', generation, asleep FROM repls WHERE owner = $1 AND slug = $2
UNION ALL
SELECT 2, repl_id, owner, slug, NULL, cluster, generation, false FROM tombstones WHERE owner = $1 AND slug = $2
ORDER BY 1, 7 DESC, 2 LIMIT 1`
	lookupByIDSQL = `
SELECT 1, id, owner, slug, endpoints, '', generation, asleep FROM repls WHERE id = $1
UNION ALL
SELECT 2, repl_id, owner, slug, NULL, cluster, generation, false FROM tombstones WHERE repl_id = $1
ORDER BY 1 LIMIT 1`
	lookupByDomainSQL = `
SELECT 1, r.id, r.owner, r.slug, r.endpoints, '', r.generation, r.asleep FROM domains d JOIN repls r ON r.id = d.repl_id WHERE d.name = $1
UNION ALL
SELECT 2, t.repl_id, t.owner, t.slug, NULL, t.cluster, t.generation, false FROM domains d JOIN tombstones t ON t.repl_id = d.repl_id WHERE d.name = $1
ORDER BY 1 LIMIT 1`
)

// Lookup implements Reader.
func (p *Store) Lookup(ctx context.Context, k store.Key) (store.Route, error) {
	sql, args := LookupQuery(k)
	if sql == "" {
		return store.Route{}, fmt.Errorf("lookup %s: %w: not a routable name", k, store.ErrInvalid)
	}
	row := p.pool.QueryRow(ctx, sql, args...)
	var (
		r    store.Route
		kind int32
	)
	if err := row.Scan(&kind, &r.ReplID, &r.Owner, &r.Slug, &r.Endpoints, &r.Cluster, &r.Generation, &r.Asleep); err != nil {
		return store.Route{}, p.fail("lookup "+k.String(), err)
	}
	r.Kind = store.RouteKind(kind)
	return r, nil
}

// Challenges implements Reader.
func (p *Store) Challenges(ctx context.Context, name string) ([]store.Challenge, error) {
	rows, _ := p.pool.Query(ctx,
		`SELECT name, value, expires_at FROM challenges WHERE name = $1 AND expires_at > $2 ORDER BY value`,
		name, p.now())
	cs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[store.Challenge])
	if err != nil {
		return nil, p.fail("read challenges "+name, err)
	}
	return cs, nil
}

// LookupQuery returns the SQL and arguments Lookup runs for a routable key
// (for EXPLAIN in tests and benchmarks).
func LookupQuery(k store.Key) (string, []any) {
	switch k.Kind {
	case store.KeyRepl:
		return lookupByNameSQL, []any{k.Owner, k.Slug}
	case store.KeyReplID:
		return lookupByIDSQL, []any{k.ID}
	case store.KeyDomain:
		return lookupByDomainSQL, []any{k.Name}
	}
	return "", nil
}
