package embedded

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/internal/atomicfile"
	"github.com/replproxy/replproxy/internal/filelock"
	"github.com/replproxy/replproxy/store"
)

// The embedded store keeps certificates as files in a folder next to its
// file: "<store file>.certs/<name>", mode 0600 in a 0700 folder, since
// they hold private keys. Each file is replaced whole (temporary file,
// fsync, rename, fsync of the folder), so a reader never sees half of
// one. Leases are files in "<store file>.certs/.leases/", holding the
// holder and the expiry; every change to them happens under an exclusive
// flock(2) on ".leases/.lock", so processes sharing the store agree.
//
// The YAML file's watcher does not look into the folder: certificate
// writes send no change notifications (neither backend sends any).

// The certificate storage that store.CertsOf (replctl certs) and
// replproxy's TLS on demand find by a type assertion.
var _ store.Certs = (*Store)(nil)

func (s *Store) certDir() string { return s.path + ".certs" }

func (s *Store) leaseDir() string { return filepath.Join(s.certDir(), ".leases") }

// GetCert implements Certs.
func (s *Store) GetCert(ctx context.Context, name string) ([]byte, error) {
	if err := store.CheckCertName(name); err != nil {
		return nil, fmt.Errorf("get certificate: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get certificate %s: %w", name, err)
	}
	data, err := os.ReadFile(filepath.Join(s.certDir(), name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("get certificate %s: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get certificate %s: %w: %w", name, store.ErrUnavailable, err)
	}
	return data, nil
}

// PutCert implements Certs.
func (s *Store) PutCert(ctx context.Context, name string, data []byte) error {
	if err := store.CheckCertName(name); err != nil {
		return fmt.Errorf("put certificate: %w", err)
	}
	if err := store.CheckCertData(name, data); err != nil {
		return fmt.Errorf("put certificate: %w", err)
	}
	if err := s.certsWritable(ctx); err != nil {
		return fmt.Errorf("put certificate %s: %w", name, err)
	}
	if err := writeFileAtomic(s.certDir(), name, data); err != nil {
		return fmt.Errorf("put certificate %s: %w: %w", name, store.ErrUnavailable, err)
	}
	return nil
}

// DeleteCert implements Certs.
func (s *Store) DeleteCert(ctx context.Context, name string) error {
	if err := store.CheckCertName(name); err != nil {
		return fmt.Errorf("delete certificate: %w", err)
	}
	if err := s.certsWritable(ctx); err != nil {
		return fmt.Errorf("delete certificate %s: %w", name, err)
	}
	if err := os.Remove(filepath.Join(s.certDir(), name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete certificate %s: %w: %w", name, store.ErrUnavailable, err)
	}
	return nil
}

// ListCerts implements Certs. It reads every file to find the expiry of
// the certificates: the embedded store is for one machine.
func (s *Store) ListCerts(ctx context.Context) ([]store.CertEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list certificates: %w", err)
	}
	dirents, err := os.ReadDir(s.certDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list certificates: %w: %w", store.ErrUnavailable, err)
	}
	var out []store.CertEntry // ReadDir sorts by name
	for _, d := range dirents {
		if !d.Type().IsRegular() || store.CheckCertName(d.Name()) != nil {
			continue // .leases, temporary files, strays
		}
		data, err := os.ReadFile(filepath.Join(s.certDir(), d.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("list certificates: %w: %w", store.ErrUnavailable, err)
		}
		info, err := d.Info()
		if err != nil {
			continue
		}
		out = append(out, store.CertEntry{Name: d.Name(), NotAfter: store.CertNotAfter(data), UpdatedAt: info.ModTime(), Size: len(data)})
	}
	return out, nil
}

// AcquireCertLease implements Certs.
func (s *Store) AcquireCertLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	if err := store.CheckLease(name, holder, ttl); err != nil {
		return false, fmt.Errorf("acquire lease: %w", err)
	}
	if err := s.certsWritable(ctx); err != nil {
		return false, fmt.Errorf("acquire lease on %s: %w", name, err)
	}
	got := false
	err := s.withLeases(ctx, func() error {
		now := s.now()
		path := filepath.Join(s.leaseDir(), name)
		if cur, until, ok := readLease(path); ok && cur != holder && now.Before(until) {
			return nil
		}
		got = true
		return writeFileAtomic(s.leaseDir(), name, []byte(holder+"\n"+strconv.FormatInt(now.Add(ttl).UnixNano(), 10)+"\n"))
	})
	if err != nil {
		return false, fmt.Errorf("acquire lease on %s: %w", name, err)
	}
	return got, nil
}

// ReleaseCertLease implements Certs.
func (s *Store) ReleaseCertLease(ctx context.Context, name, holder string) error {
	if err := store.CheckCertName(name); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	err := s.withLeases(ctx, func() error {
		path := filepath.Join(s.leaseDir(), name)
		if cur, _, ok := readLease(path); !ok || cur != holder {
			return nil
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("release lease on %s: %w", name, err)
	}
	return nil
}

// certsWritable fails once the store is closed, as the store's own writes do.
func (s *Store) certsWritable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.subMu.Lock()
	closed := s.closed
	s.subMu.Unlock()
	if closed {
		return fmt.Errorf("%w: embedded store %s is closed", store.ErrUnavailable, s.path)
	}
	return nil
}

// withLeases runs fn holding the exclusive flock of the lease folder.
func (s *Store) withLeases(ctx context.Context, fn func() error) error {
	return withFolderLock(ctx, s.leaseDir(), fn)
}

// withFolderLock runs fn holding the exclusive flock of dir/.lock (making
// dir, 0700, when missing); its failures are ErrUnavailable.
func withFolderLock(ctx context.Context, dir string, fn func() error) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	unlock, err := filelock.Lock(ctx, filepath.Join(dir, ".lock"), 0o600)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	defer unlock()
	if err := fn(); err != nil {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return nil
}

// readLease reads a lease file: its holder and expiry; ok is false when
// there is none or it cannot be read (then it counts as expired).
func readLease(path string) (holder string, until time.Time, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", time.Time{}, false
	}
	holder, rest, found := strings.Cut(string(b), "\n")
	if !found {
		return "", time.Time{}, false
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
	if err != nil {
		return "", time.Time{}, false
	}
	return holder, time.Unix(0, ns), true
}

// writeFileAtomic writes data to dir/name (atomicfile.Write, mode 0600),
// making the folder (0700) when missing.
func writeFileAtomic(dir, name string, data []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, name), data, 0o600, nil)
}
