package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"
	"go.uber.org/zap"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// schemaVersionTable is where tern records the applied migration.
const schemaVersionTable = "replproxy_schema_version"

// notifyChannel is the LISTEN/NOTIFY channel of every change.
const notifyChannel = "replproxy"

// Postgres is the production backend: one PostgreSQL database per cluster.
type Postgres struct {
	pool   *pgxpool.Pool
	dsn    string // redacted, for messages
	logger *zap.Logger
	now    func() time.Time
}

var _ Store = (*Postgres)(nil)

// OpenPostgres connects to the database at dsn and checks that it answers.
// Pool sizing and timeouts stay in the DSN (pool_max_conns, connect_timeout,
// ...). An unreachable server gives one error naming the DSN, password
// masked. It does not check the schema: see Migrate and CheckSchema.
func OpenPostgres(ctx context.Context, dsn string, logger *zap.Logger) (*Postgres, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse database DSN %s: %w", RedactDSN(dsn), err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", RedactDSN(dsn), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database %s: %w: %w", RedactDSN(dsn), ErrUnavailable, err)
	}
	return NewPostgres(pool, logger), nil
}

// NewPostgres uses an existing pool. The Postgres owns it from then on and
// closes it in Close.
func NewPostgres(pool *pgxpool.Pool, logger *zap.Logger) *Postgres {
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Postgres{
		pool:   pool,
		dsn:    RedactDSN(pool.Config().ConnString()),
		logger: logger.Named("postgres"),
		now:    time.Now,
	}
}

// Close closes the pool.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}

func (p *Postgres) migrator(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
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
func (p *Postgres) Migrate(ctx context.Context) error {
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
func (p *Postgres) SchemaVersion(ctx context.Context) (have, want int32, err error) {
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
func (p *Postgres) CheckSchema(ctx context.Context) error {
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
func (p *Postgres) fail(doing string, err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", doing, ErrNotFound)
	}
	for _, ours := range []error{ErrNotFound, ErrConflict, ErrInvalid, ErrUnavailable} {
		if errors.Is(err, ours) { // mapped already, inside a transaction
			return fmt.Errorf("%s: %w", doing, err)
		}
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == "23505": // unique_violation
			return fmt.Errorf("%s: %w: %s", doing, ErrConflict, pgErr.Message)
		case pgErr.Code == "23503": // foreign_key_violation, raised by domains_check_repl too
			return fmt.Errorf("%s: %w: %s", doing, ErrNotFound, pgErr.Message)
		case pgErr.Code[:2] == "23", pgErr.Code[:2] == "22": // integrity, data exceptions
			return fmt.Errorf("%s: %w: %s", doing, ErrInvalid, pgErr.Message)
		case pgErr.Code[:2] == "08", pgErr.Code[:2] == "53", pgErr.Code[:2] == "57":
			// connection exceptions, insufficient resources, operator
			// intervention (a server shutting down or restarted)
			return fmt.Errorf("%s on %s: %w: %w", doing, p.dsn, ErrUnavailable, err)
		}
		return fmt.Errorf("%s: %w", doing, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", doing, err)
	}
	return fmt.Errorf("%s on %s: %w: %w", doing, p.dsn, ErrUnavailable, err)
}
