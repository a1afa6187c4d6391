package postgres

// PoolMaxConns returns the size of p's pool, for tests.
func PoolMaxConns(p *Store) int32 { return p.pool.Config().MaxConns }
