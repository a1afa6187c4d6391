// Package filelock takes an exclusive flock(2) on a file, waiting until a
// context is done. Writers of the embedded store, in any process, take
// the store's lock file this way.
package filelock

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/gofrs/flock"
)

// retry is how often a held lock is tried again.
const retry = 2 * time.Millisecond

// Lock takes the exclusive lock on path, creating the file with perm when
// it is missing. The file is opened read-only, which is enough for flock
// and lets a process that may not write the lock file (made by another
// user) still lock. It returns the function that releases the lock.
func Lock(ctx context.Context, path string, perm fs.FileMode) (unlock func(), err error) {
	l := flock.New(path, flock.SetFlag(os.O_CREATE|os.O_RDONLY), flock.SetPermissions(perm))
	ok, err := l.TryLockContext(ctx, retry)
	if err != nil {
		_ = l.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if !ok { // TryLockContext returns false only with an error
		return nil, fmt.Errorf("lock %s: not taken", path)
	}
	return func() { _ = l.Unlock() }, nil
}
