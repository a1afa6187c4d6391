package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/replproxy/replproxy/store"
)

// The certificates table (migration 001, not_after from 002) and
// cert_leases (002). Lease expiry is reckoned by the database's clock, so
// that proxies whose clocks disagree still agree on who holds a lease.

// The certificate storage that store.CertsOf (replctl certs) and
// replproxy's TLS on demand find by a type assertion.
var _ store.Certs = (*Store)(nil)

// GetCert implements Certs.
func (p *Store) GetCert(ctx context.Context, name string) ([]byte, error) {
	if err := store.CheckCertName(name); err != nil {
		return nil, fmt.Errorf("get certificate: %w", err)
	}
	var data []byte
	if err := p.pool.QueryRow(ctx, `SELECT data FROM certificates WHERE name = $1`, name).Scan(&data); err != nil {
		return nil, p.fail("get certificate "+name, err)
	}
	return data, nil
}

// PutCert implements Certs.
func (p *Store) PutCert(ctx context.Context, name string, data []byte) error {
	if err := store.CheckCertName(name); err != nil {
		return fmt.Errorf("put certificate: %w", err)
	}
	if err := store.CheckCertData(name, data); err != nil {
		return fmt.Errorf("put certificate: %w", err)
	}
	var notAfter *time.Time
	if t := store.CertNotAfter(data); !t.IsZero() {
		notAfter = &t
	}
	_, err := p.pool.Exec(ctx, `
INSERT INTO certificates (name, data, not_after, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (name) DO UPDATE SET data = EXCLUDED.data, not_after = EXCLUDED.not_after, updated_at = EXCLUDED.updated_at`,
		name, data, notAfter, p.now())
	if err != nil {
		return p.fail("put certificate "+name, err)
	}
	return nil
}

// DeleteCert implements Certs.
func (p *Store) DeleteCert(ctx context.Context, name string) error {
	if err := store.CheckCertName(name); err != nil {
		return fmt.Errorf("delete certificate: %w", err)
	}
	if _, err := p.pool.Exec(ctx, `DELETE FROM certificates WHERE name = $1`, name); err != nil {
		return p.fail("delete certificate "+name, err)
	}
	return nil
}

// ListCerts implements Certs.
func (p *Store) ListCerts(ctx context.Context) ([]store.CertEntry, error) {
	return all(ctx, p, "list certificates", func(row pgx.CollectableRow) (store.CertEntry, error) {
		var (
			e        store.CertEntry
			notAfter *time.Time
		)
		err := row.Scan(&e.Name, &notAfter, &e.UpdatedAt, &e.Size)
		if notAfter != nil {
			e.NotAfter = *notAfter
		}
		return e, err
	}, `SELECT name, not_after, updated_at, octet_length(data) FROM certificates ORDER BY name`)
}

// AcquireCertLease implements Certs: one statement that inserts the lease,
// or takes it over when it expired or is the holder's already.
func (p *Store) AcquireCertLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	if err := store.CheckLease(name, holder, ttl); err != nil {
		return false, fmt.Errorf("acquire lease: %w", err)
	}
	var got bool
	err := p.pool.QueryRow(ctx, `
INSERT INTO cert_leases AS l (name, holder, expires_at)
VALUES ($1, $2, clock_timestamp() + $3 * interval '1 microsecond')
ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
WHERE l.holder = EXCLUDED.holder OR l.expires_at <= clock_timestamp()
RETURNING true`, name, holder, ttl.Microseconds()).Scan(&got)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, p.fail("acquire lease on "+name, err)
	}
	return got, nil
}

// ReleaseCertLease implements Certs.
func (p *Store) ReleaseCertLease(ctx context.Context, name, holder string) error {
	if err := store.CheckCertName(name); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	if _, err := p.pool.Exec(ctx, `DELETE FROM cert_leases WHERE name = $1 AND holder = $2`, name, holder); err != nil {
		return p.fail("release lease on "+name, err)
	}
	return nil
}
