package store

import (
	"context"
	"fmt"
	"time"
)

// MoveClaim says that a move of a repl is in progress: who runs it, to
// which cluster, since when and until when. A move claims the repl in every
// cluster that knows it before it changes anything (package move), so that
// of two moves of one repl to different clusters only one proceeds.
type MoveClaim struct {
	ReplID  string
	Holder  string // who moves it, e.g. "replctl on ops-1, pid 4242, by alice"
	To      string // the destination cluster
	Since   time.Time
	Expires time.Time
}

// Moves are the move claims a store keeps.
type Moves interface {
	// ClaimMove claims c.ReplID for a move to c.To by c.Holder, until ttl
	// from now (the store's clock). A claim in force for another
	// destination is a *ClaimedError (wrapping ErrConflict), and nothing
	// changes, unless force; an expired claim, or one for the same
	// destination (a rerun of the same move, whoever ran it), is taken
	// over, keeping its Since when it had not expired. It returns the
	// claim as recorded.
	ClaimMove(ctx context.Context, c MoveClaim, ttl time.Duration, force bool) (MoveClaim, error)
	// ReleaseMove removes holder's claim on the repl; another's, or none,
	// is left as it is.
	ReleaseMove(ctx context.Context, replID, holder string) error
	// GetMoveClaim returns the claim on the repl, expired or not;
	// ErrNotFound when there is none.
	GetMoveClaim(ctx context.Context, replID string) (MoveClaim, error)
}

// ClaimedError is a move refused because another move holds the repl.
type ClaimedError struct {
	Claim MoveClaim // the claim in force
}

func (e *ClaimedError) Error() string {
	c := e.Claim
	return fmt.Sprintf("repl %s is being moved to %s by %s since %s (the claim lasts until %s)", c.ReplID, c.To, c.Holder,
		c.Since.UTC().Format(time.RFC3339), c.Expires.UTC().Format(time.RFC3339))
}

// Unwrap makes a ClaimedError an ErrConflict.
func (e *ClaimedError) Unwrap() error { return ErrConflict }

// CheckMoveClaim checks a claim's fields and ttl.
func CheckMoveClaim(c MoveClaim, ttl time.Duration) error {
	if err := ValidLabel(c.ReplID); err != nil {
		return fmt.Errorf("move claim: repl id: %w", err)
	}
	if err := ValidLabel(c.To); err != nil {
		return fmt.Errorf("move claim: destination: %w", err)
	}
	if c.Holder == "" || len(c.Holder) > maxHolderLen {
		return fmt.Errorf("move claim on %s: %w: holder must be 1 to %d characters", c.ReplID, ErrInvalid, maxHolderLen)
	}
	if ttl <= 0 {
		return fmt.Errorf("move claim on %s: %w: ttl must be positive", c.ReplID, ErrInvalid)
	}
	return nil
}
