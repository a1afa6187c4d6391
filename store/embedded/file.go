package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/replproxy/replproxy/internal/atomicfile"
	"github.com/replproxy/replproxy/internal/filelock"
	"github.com/replproxy/replproxy/store"
)

// write runs one change under the lock: it takes s.mu and the file lock,
// reads and checks the file as it is now, lets change modify a copy of its
// data, checks the result and, if anything changed, replaces the file and
// installs the new snapshot. An error from change is returned with doing
// in front; nothing is written then.
func (s *Store) write(ctx context.Context, doing string, change func(*tables) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subMu.Lock()
	closed := s.closed
	s.subMu.Unlock()
	if closed {
		return fmt.Errorf("%s: %w: embedded store %s is closed", doing, store.ErrUnavailable, s.path)
	}

	unlock, err := s.lockFile(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	defer unlock()

	raw, info, err := s.readFile()
	if err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	cur, err := load(s.path, raw)
	if err != nil {
		// %v, not %w: the problems are the file's, not the caller's, so
		// the error must not read as ErrInvalid.
		return fmt.Errorf("%s: %w: the embedded store file %s is broken and must be fixed first:\n%v",
			doing, store.ErrUnavailable, s.path, err)
	}
	// The file may hold another process's writes that the watcher has
	// not picked up yet: serve them from now on, whatever change does.
	latest := cur
	defer func() { s.install(latest) }()

	data := cur.data()
	if err := change(data); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	next, err := data.snapshot()
	if err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	if bytes.Equal(next.canon, cur.canon) {
		return nil // nothing changed: leave the file as the operator wrote it
	}
	if err := s.replaceFile(next.canon, info); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	latest = next
	return nil
}

// lockFile takes the exclusive flock on the lock file, waiting until ctx
// is done. The returned func releases it.
func (s *Store) lockFile(ctx context.Context) (func(), error) {
	unlock, err := filelock.Lock(ctx, s.lockPath, 0o666)
	if err != nil && ctx.Err() == nil {
		err = fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	return unlock, err
}

// readFile reads the store file and what replaceFile needs to keep.
func (s *Store) readFile() ([]byte, fs.FileInfo, error) {
	f, err := os.Open(s.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("%w: embedded store file %s is gone; create it again (an empty file is an empty store): %w",
				store.ErrUnavailable, s.path, err)
		}
		return nil, nil, fmt.Errorf("read %s: %w: %w", s.path, store.ErrUnavailable, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w: %w", s.path, store.ErrUnavailable, err)
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w: %w", s.path, store.ErrUnavailable, err)
	}
	return raw, info, nil
}

// replaceFile writes the header and data atomically in place of the
// store file, keeping its mode (and, when allowed, its owner).
func (s *Store) replaceFile(data []byte, old fs.FileInfo) error {
	full := make([]byte, 0, len(fileHeader)+len(data))
	full = append(append(full, fileHeader...), data...)
	if err := atomicfile.Write(s.path, full, old.Mode().Perm(), old); err != nil {
		return fmt.Errorf("write %s: %w: %w", s.path, store.ErrUnavailable, err)
	}
	return nil
}
