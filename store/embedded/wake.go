package embedded

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/replproxy/replproxy/store"
	"go.uber.org/zap"
)

// Wakes are the "wakes" section of the file (a change to one is a change
// of the data: Watch sends EventResync), and a repl's asleep field.
// Activity is not in the file: proxies record it every few seconds, and
// rewriting the file for that would make every watcher drop what it
// holds each time. It is "<store file>.activity/last", one
// "<repl id> <unix nanoseconds>" line per repl, replaced whole under the
// folder's flock(2).

// RequestWake implements Wakes.
func (s *Store) RequestWake(ctx context.Context, replID, by string) (bool, error) {
	doing := "request a wake of repl " + replID
	if err := store.CheckWakeName("requested by", by); err != nil {
		return false, fmt.Errorf("%s: %w", doing, err)
	}
	var made bool
	err := s.write(ctx, doing, func(d *tables) error {
		made = false
		r, ok := d.repls[replID]
		if !ok {
			return fmt.Errorf("%w: the repl is not live here", store.ErrNotFound)
		}
		if !r.Asleep {
			return nil
		}
		if w, ok := d.wakes[replID]; ok && w.Failed == "" {
			return nil
		}
		d.wakes[replID] = store.Wake{ReplID: replID, RequestedAt: s.stamp(), RequestedBy: by}
		made = true
		return nil
	})
	if err != nil {
		return false, err
	}
	return made, nil
}

// GetWake implements Wakes.
func (s *Store) GetWake(_ context.Context, replID string) (store.Wake, error) {
	snap := s.snap.Load()
	i, ok := snap.wakeByID[replID]
	if !ok {
		return store.Wake{}, fmt.Errorf("get the wake of repl %s: %w", replID, store.ErrNotFound)
	}
	return snap.wakes[i], nil
}

// ListWakes implements Wakes.
func (s *Store) ListWakes(_ context.Context, staleBefore time.Time) ([]store.Wake, error) {
	var out []store.Wake
	for _, w := range s.snap.Load().wakes {
		if w.Failed == "" && (w.ClaimedBy == "" || w.ClaimedAt.Before(staleBefore)) {
			out = append(out, w)
		}
	}
	slices.SortStableFunc(out, func(a, b store.Wake) int { return a.RequestedAt.Compare(b.RequestedAt) })
	return out, nil
}

// ClaimWake implements Wakes.
func (s *Store) ClaimWake(ctx context.Context, replID, by string, staleBefore time.Time) (store.Wake, error) {
	doing := fmt.Sprintf("claim the wake of repl %s for %s", replID, by)
	if err := store.CheckWakeName("claimed by", by); err != nil {
		return store.Wake{}, fmt.Errorf("%s: %w", doing, err)
	}
	var out store.Wake
	err := s.write(ctx, doing, func(d *tables) error {
		w, ok := d.wakes[replID]
		switch {
		case !ok:
			return fmt.Errorf("%w: no wake", store.ErrNotFound)
		case w.Failed != "":
			return fmt.Errorf("%w: the wake failed: %s", store.ErrConflict, w.Failed)
		case w.ClaimedBy != "" && w.ClaimedBy != by && !w.ClaimedAt.Before(staleBefore):
			return fmt.Errorf("%w: claimed by %s at %s", store.ErrConflict, w.ClaimedBy, w.ClaimedAt.Format(time.RFC3339Nano))
		}
		w.ClaimedBy, w.ClaimedAt = by, s.stamp()
		d.wakes[replID] = w
		out = w
		return nil
	})
	if err != nil {
		return store.Wake{}, err
	}
	return out, nil
}

// FinishWake implements Wakes.
func (s *Store) FinishWake(ctx context.Context, replID string, endpoints []string) (store.Repl, error) {
	doing := "finish the wake of repl " + replID
	if err := store.CheckEndpoints(endpoints); err != nil {
		return store.Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	var out store.Repl
	err := s.write(ctx, doing, func(d *tables) error {
		r, ok := d.repls[replID]
		if !ok {
			return fmt.Errorf("%w: the repl is not live here", store.ErrNotFound)
		}
		r.Endpoints = slices.Clone(endpoints)
		r.Asleep = false
		r.UpdatedAt = s.stamp()
		d.repls[replID] = r
		delete(d.wakes, replID)
		out = r
		return nil
	})
	if err != nil {
		return store.Repl{}, err
	}
	return cloneRepl(out), nil
}

// FailWake implements Wakes. A wake that failed already keeps its first
// reason.
func (s *Store) FailWake(ctx context.Context, replID, reason string) error {
	reason = store.CutReason(reason)
	return s.write(ctx, "fail the wake of repl "+replID, func(d *tables) error {
		w, ok := d.wakes[replID]
		if !ok {
			return fmt.Errorf("%w: no wake", store.ErrNotFound)
		}
		if w.Failed != "" {
			return nil
		}
		w.Failed, w.FailedAt = reason, s.stamp()
		d.wakes[replID] = w
		return nil
	})
}

// Sleep implements Wakes.
func (s *Store) Sleep(ctx context.Context, replID string) (store.Repl, error) {
	var out store.Repl
	err := s.write(ctx, "put repl "+replID+" to sleep", func(d *tables) error {
		r, ok := d.repls[replID]
		if !ok {
			return fmt.Errorf("%w: the repl is not live here", store.ErrNotFound)
		}
		if !r.Asleep || len(r.Endpoints) > 0 {
			r.Asleep, r.Endpoints, r.UpdatedAt = true, nil, s.stamp()
			d.repls[replID] = r
		}
		out = r
		return nil
	})
	if err != nil {
		return store.Repl{}, err
	}
	return cloneRepl(out), nil
}

func (s *Store) activityDir() string { return s.path + ".activity" }

const activityFile = "last"

// RecordActivity implements Wakes: one read-merge-replace of the activity
// file under its lock, keeping the later time of a repl; repls not live
// here are skipped, and ones no longer live are dropped.
func (s *Store) RecordActivity(ctx context.Context, last map[string]time.Time) error {
	if len(last) == 0 {
		return nil
	}
	if err := s.certsWritable(ctx); err != nil {
		return fmt.Errorf("record activity: %w", err)
	}
	live := s.snap.Load().replByID
	err := withFolderLock(ctx, s.activityDir(), func() error {
		cur := readActivity(s.activityDir())
		for id := range cur {
			if _, ok := live[id]; !ok {
				delete(cur, id)
			}
		}
		for id, at := range last {
			if _, ok := live[id]; !ok {
				continue
			}
			if old, ok := cur[id]; !ok || at.After(old) {
				cur[id] = at
			}
		}
		return writeActivity(s.activityDir(), cur)
	})
	if err != nil {
		return fmt.Errorf("record the activity of %d repls: %w", len(last), err)
	}
	return nil
}

// forgetActivity removes a repl's activity once its live row went, so that
// a repl created again with its id starts with none. It is best effort,
// after the write: a leftover is dropped by the next RecordActivity and
// hidden by Activity while the repl is not live.
func (s *Store) forgetActivity(ctx context.Context, replID string) {
	err := withFolderLock(ctx, s.activityDir(), func() error {
		cur := readActivity(s.activityDir())
		if _, ok := cur[replID]; !ok {
			return nil
		}
		delete(cur, replID)
		return writeActivity(s.activityDir(), cur)
	})
	if err != nil {
		s.logger.Warn("could not remove the activity of a repl that went", zap.String("repl", replID), zap.Error(err))
	}
}

// writeActivity replaces the activity file with cur.
func writeActivity(dir string, cur map[string]time.Time) error {
	var b strings.Builder
	ids := make([]string, 0, len(cur))
	for id := range cur {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		fmt.Fprintf(&b, "%s %d\n", id, cur[id].UnixNano())
	}
	return writeFileAtomic(dir, activityFile, []byte(b.String()))
}

// Activity implements Wakes.
func (s *Store) Activity(ctx context.Context) (map[string]time.Time, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	live := s.snap.Load().replByID
	out := readActivity(s.activityDir())
	for id := range out {
		if _, ok := live[id]; !ok {
			delete(out, id)
		}
	}
	return out, nil
}

// readActivity reads the activity file; lines it cannot read are skipped
// (the file is the store's own, replaced whole).
func readActivity(dir string) map[string]time.Time {
	out := make(map[string]time.Time)
	b, err := os.ReadFile(filepath.Join(dir, activityFile))
	if err != nil {
		return out
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		id, ns, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		var n int64
		if _, err := fmt.Sscan(ns, &n); err != nil {
			continue
		}
		out[id] = time.Unix(0, n).UTC()
	}
	return out
}
