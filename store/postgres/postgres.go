package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"
	"github.com/replproxy/replproxy/internal/dsn"
	"github.com/replproxy/replproxy/store"
	"go.uber.org/zap"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// schemaVersionTable is where tern records the applied migration.
const schemaVersionTable = "replproxy_schema_version"

// Store is the production backend: one PostgreSQL database per cluster.
type Store struct {
	pool   *pgxpool.Pool
	dsn    string // redacted, for messages
	logger *zap.Logger
	now    func() time.Time

	feedPoll time.Duration // Follow's poll without wake-ups (SetFeedPoll)
}

var _ store.Store = (*Store)(nil)

// DefaultPoolMaxConns is the pool's size when the DSN sets no
// pool_max_conns. pgxpool's own default is the host's CPU count (at least
// 4): a proxy on a 32-core host could open 32 connections, and a cluster's
// hundred proxies many times PostgreSQL's default max_connections (100).
// A daemon needs few at once: the change feed reads one statement at a
// time, and the name index sends the store only the names it knows and
// has not cached. Each Follow holds one LISTEN connection besides (README,
// "Connections").
const DefaultPoolMaxConns = 4

// An Option changes how Open connects.
type Option func(*pgxpool.Config)

// WithApplicationName names the connections (PostgreSQL's
// application_name, in pg_stat_activity) when the DSN does not: the
// daemons say who they are ("replproxy east", "replns"), so that an
// operator counting a cluster's connections sees whose they are.
func WithApplicationName(name string) Option {
	return func(cfg *pgxpool.Config) {
		if name != "" && cfg.ConnConfig.RuntimeParams["application_name"] == "" {
			cfg.ConnConfig.RuntimeParams["application_name"] = name
		}
	}
}

// Open connects to the database at addr, a DSN, and checks that it answers.
// Pool sizing and timeouts stay in the DSN (pool_max_conns, connect_timeout,
// ...; without pool_max_conns the pool holds up to DefaultPoolMaxConns). An
// unreachable server gives one error naming the DSN, password masked. It
// does not check the schema: see Migrate and CheckSchema.
func Open(ctx context.Context, addr string, logger *zap.Logger, opts ...Option) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(addr)
	if err != nil {
		return nil, fmt.Errorf("parse database DSN %s: %w", dsn.Redact(addr), err)
	}
	for _, o := range opts {
		o(cfg)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	if !strings.Contains(addr, "pool_max_conns") {
		cfg.MaxConns = DefaultPoolMaxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", dsn.Redact(addr), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database %s: %w: %w", dsn.Redact(addr), store.ErrUnavailable, err)
	}
	return New(pool, logger), nil
}

// New uses an existing pool. The Store owns it from then on and
// closes it in Close.
func New(pool *pgxpool.Pool, logger *zap.Logger) *Store {
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Store{
		pool:   pool,
		dsn:    dsn.Redact(pool.Config().ConnString()),
		logger: logger.Named("postgres"),
		now:    time.Now,

		feedPoll: DefaultFeedPoll,
	}
}

// Close closes the pool.
func (p *Store) Close() error {
	p.pool.Close()
	return nil
}

func (p *Store) migrator(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, conn, schemaVersionTable)
	if err != nil {
		return nil, fmt.Errorf("prepare migrations: %w", err)
	}
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	if err := m.LoadMigrations(sub); err != nil {
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	return m, nil
}

// Migrate applies every migration not yet applied, under tern's advisory
// lock, so several processes may call it at once.
func (p *Store) Migrate(ctx context.Context) error {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return p.fail("migrate", err)
	}
	defer conn.Release()
	m, err := p.migrator(ctx, conn.Conn())
	if err != nil {
		return err
	}
	m.OnStart = func(seq int32, name, direction, _ string) {
		p.logger.Info("applying migration", zap.Int32("version", seq), zap.String("name", name), zap.String("direction", direction))
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate %s: %w", p.dsn, err)
	}
	return nil
}

// SchemaVersion returns the applied schema version and the version this
// build expects.
func (p *Store) SchemaVersion(ctx context.Context) (have, want int32, err error) {
	conn, err := p.pool.Acquire(ctx)
	if err != nil {
		return 0, 0, p.fail("read schema version", err)
	}
	defer conn.Release()
	m, err := p.migrator(ctx, conn.Conn())
	if err != nil {
		return 0, 0, err
	}
	have, err = m.GetCurrentVersion(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("read schema version of %s: %w", p.dsn, err)
	}
	return have, int32(len(m.Migrations)), nil
}

// CheckSchema returns an error that says what to run when the database's
// schema is not the one this build expects.
func (p *Store) CheckSchema(ctx context.Context) error {
	have, want, err := p.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	switch {
	case have < want:
		return fmt.Errorf("database %s has schema version %d, this build needs %d: run `replctl migrate` (or start with -migrate)", p.dsn, have, want)
	case have > want:
		return fmt.Errorf("database %s has schema version %d, newer than this build's %d: upgrade this binary", p.dsn, have, want)
	}
	return nil
}

// fail wraps an error from PostgreSQL with what was being done, mapping it
// to the package's sentinel errors.
func (p *Store) fail(doing string, err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", doing, store.ErrNotFound)
	}
	for _, ours := range []error{store.ErrNotFound, store.ErrConflict, store.ErrInvalid, store.ErrUnavailable} {
		if errors.Is(err, ours) { // mapped already, inside a transaction
			return fmt.Errorf("%s: %w", doing, err)
		}
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "23505": // unique_violation
			return fmt.Errorf("%s: %w: %s", doing, store.ErrConflict, pgErr.Message)
		case pgErr.Code == "23503": // foreign_key_violation, raised by domains_check_repl too
			return fmt.Errorf("%s: %w: %s", doing, store.ErrNotFound, pgErr.Message)
		case pgErr.Code[:2] == "23", pgErr.Code[:2] == "22": // integrity, data exceptions
			return fmt.Errorf("%s: %w: %s", doing, store.ErrInvalid, pgErr.Message)
		case pgErr.Code[:2] == "08", pgErr.Code[:2] == "53", pgErr.Code[:2] == "57":
			// connection exceptions, insufficient resources, operator
			// intervention (a server shutting down or restarted)
			return fmt.Errorf("%s on %s: %w: %w", doing, p.dsn, store.ErrUnavailable, err)
		}
		return fmt.Errorf("%s: %w", doing, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", doing, err)
	}
	return fmt.Errorf("%s on %s: %w: %w", doing, p.dsn, store.ErrUnavailable, err)
}
