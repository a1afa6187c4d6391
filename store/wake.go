package store

import (
	"context"
	"fmt"
	"time"
	"unicode/utf8"
)

// Wake is a request to start a sleeping repl's container, made by a proxy
// and answered by the cluster's container manager. There is at most one
// per repl in a cluster.
type Wake struct {
	ReplID      string
	RequestedAt time.Time
	RequestedBy string // who asked: a proxy ("<cluster>/<hostname>/<pid>") or replctl
	ClaimedBy   string // the manager working on it; "" until claimed
	ClaimedAt   time.Time
	Failed      string // the manager's reason once the wake failed; "" otherwise
	FailedAt    time.Time
}

// Wakes is the wake protocol's side in the store (README, "Wake on
// request"). Store embeds it.
type Wakes interface {
	// RequestWake asks for a wake of the live repl id. It records a Wake
	// unless one is pending (unclaimed or claimed, not failed) and reports
	// whether it made it (so concurrent requests from many proxies make one).
	// A failed wake is replaced by a new request. A repl that is not asleep:
	// (false, nil). Not live here: ErrNotFound.
	RequestWake(ctx context.Context, replID, by string) (bool, error)
	// GetWake returns the repl's wake (pending or failed); ErrNotFound: none.
	GetWake(ctx context.Context, replID string) (Wake, error)
	// ListWakes returns the wakes a manager has to do: not failed, and not
	// claimed or claimed before staleBefore, oldest first.
	ListWakes(ctx context.Context, staleBefore time.Time) ([]Wake, error)
	// ClaimWake gives the repl's wake to manager `by`, unless it is failed
	// or claimed by another manager at or after staleBefore: ErrConflict.
	// None: ErrNotFound.
	ClaimWake(ctx context.Context, replID, by string, staleBefore time.Time) (Wake, error)
	// FinishWake sets the repl's endpoints (CheckRepl rules: at least one),
	// marks it awake and removes its wake, in one transaction.
	FinishWake(ctx context.Context, replID string, endpoints []string) (Repl, error)
	// FailWake records the manager's reason on the pending wake (ErrNotFound: none).
	FailWake(ctx context.Context, replID, reason string) error
	// Sleep marks the live repl asleep and clears its endpoints (what a
	// manager does with an idle repl); ErrNotFound when it is not live here.
	Sleep(ctx context.Context, replID string) (Repl, error)
	// RecordActivity stores when each repl last served a request (or had an
	// open upgraded connection), in ONE statement for the whole map (PostgreSQL:
	// unnest of two arrays, keeping the later time per repl).
	RecordActivity(ctx context.Context, last map[string]time.Time) error
	// Activity returns the last activity of every repl that has one.
	Activity(ctx context.Context) (map[string]time.Time, error)
}

// MaxWakeText is the longest RequestedBy, ClaimedBy or Failed text a
// store keeps, in bytes; a longer failure reason is cut (on a UTF-8
// boundary), a longer name is ErrInvalid.
const MaxWakeText = 1000

// CheckWakeName checks a RequestedBy or ClaimedBy name: 1 to MaxWakeText
// bytes.
func CheckWakeName(what, name string) error {
	if name == "" || len(name) > MaxWakeText {
		return fmt.Errorf("%s %q: %w: must be 1 to %d bytes", what, name, ErrInvalid, MaxWakeText)
	}
	return nil
}

// CutReason makes a failure reason storable: never empty, at most
// MaxWakeText bytes, cut on a UTF-8 boundary.
func CutReason(reason string) string {
	if reason == "" {
		return "the wake failed (no reason given)"
	}
	if len(reason) <= MaxWakeText {
		return reason
	}
	cut := MaxWakeText
	for cut > 0 && !utf8.RuneStart(reason[cut]) {
		cut--
	}
	return reason[:cut]
}
