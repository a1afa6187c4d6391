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

	"github.com/replproxy/replproxy/store"
)

// Move claims are files in "<store file>.moves/<repl id>", holding the
// holder, the destination, the start and the expiry; every change to them
// happens under an exclusive flock(2) on ".moves/.lock", so processes
// sharing the store agree, as for certificate leases.

func (s *Store) movesDir() string { return s.path + ".moves" }

// ClaimMove implements Moves.
func (s *Store) ClaimMove(ctx context.Context, c store.MoveClaim, ttl time.Duration, force bool) (store.MoveClaim, error) {
	if err := store.CheckMoveClaim(c, ttl); err != nil {
		return store.MoveClaim{}, err
	}
	if err := s.certsWritable(ctx); err != nil {
		return store.MoveClaim{}, fmt.Errorf("claim repl %s for a move: %w", c.ReplID, err)
	}
	var got store.MoveClaim
	var held *store.ClaimedError
	err := s.withMoves(ctx, func() error {
		now := s.now()
		cur, ok := readClaim(s.movesDir(), c.ReplID)
		live := ok && now.Before(cur.Expires)
		if live && cur.To != c.To && !force {
			held = &store.ClaimedError{Claim: cur}
			return nil
		}
		got = store.MoveClaim{ReplID: c.ReplID, Holder: c.Holder, To: c.To, Since: now, Expires: now.Add(ttl)}
		if live && cur.To == c.To {
			got.Since = cur.Since
		}
		return writeFileAtomic(s.movesDir(), c.ReplID, []byte(strings.Join([]string{got.Holder, got.To,
			strconv.FormatInt(got.Since.UnixNano(), 10), strconv.FormatInt(got.Expires.UnixNano(), 10)}, "\n")+"\n"))
	})
	if err != nil {
		return store.MoveClaim{}, fmt.Errorf("claim repl %s for a move: %w", c.ReplID, err)
	}
	if held != nil {
		return store.MoveClaim{}, fmt.Errorf("claim repl %s for a move to %s: %w", c.ReplID, c.To, held)
	}
	return got, nil
}

// ReleaseMove implements Moves.
func (s *Store) ReleaseMove(ctx context.Context, replID, holder string) error {
	if store.ValidLabel(replID) != nil {
		return nil // no such claim can exist
	}
	err := s.withMoves(ctx, func() error {
		if cur, ok := readClaim(s.movesDir(), replID); !ok || cur.Holder != holder {
			return nil
		}
		if err := os.Remove(filepath.Join(s.movesDir(), replID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("release the move claim on %s: %w", replID, err)
	}
	return nil
}

// GetMoveClaim implements Moves.
func (s *Store) GetMoveClaim(ctx context.Context, replID string) (store.MoveClaim, error) {
	if err := ctx.Err(); err != nil {
		return store.MoveClaim{}, err
	}
	if store.ValidLabel(replID) == nil {
		if c, ok := readClaim(s.movesDir(), replID); ok {
			return c, nil
		}
	}
	return store.MoveClaim{}, fmt.Errorf("move claim on %s: %w", replID, store.ErrNotFound)
}

// withMoves runs fn holding the exclusive flock of the claims folder.
func (s *Store) withMoves(ctx context.Context, fn func() error) error {
	return withFolderLock(ctx, s.movesDir(), fn)
}

// readClaim reads a claim file; ok is false when there is none or it
// cannot be read (then it counts as none).
func readClaim(dir, replID string) (store.MoveClaim, bool) {
	b, err := os.ReadFile(filepath.Join(dir, replID))
	if err != nil {
		return store.MoveClaim{}, false
	}
	f := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(f) != 4 {
		return store.MoveClaim{}, false
	}
	since, err1 := strconv.ParseInt(f[2], 10, 64)
	until, err2 := strconv.ParseInt(f[3], 10, 64)
	if err1 != nil || err2 != nil {
		return store.MoveClaim{}, false
	}
	return store.MoveClaim{ReplID: replID, Holder: f[0], To: f[1], Since: time.Unix(0, since), Expires: time.Unix(0, until)}, true
}
