package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/replproxy/replproxy/store"
	"go.uber.org/zap"
)

// Store is the backend that needs no server: one cluster's data in a
// YAML file that an operator can also write by hand, for a single machine,
// the demo and fast tests.
//
//	repls:
//	  - id: r1a2b3
//	    owner: alice
//	    slug: blog
//	    endpoints: [127.0.0.1:9001]
//	    generation: 1                      # optional, default 1
//	    asleep: true                       # optional, default false; endpoints may be left out then
//	    created_at: 2026-11-29T10:00:00Z   # optional (RFC 3339); updated_at likewise
//	tombstones:
//	  - repl_id: r9
//	    owner: bob
//	    slug: shop
//	    cluster: west
//	    generation: 2
//	    moved_at: 2026-11-29T10:00:00Z
//	domains:
//	  - name: www.example.com
//	    repl_id: r1a2b3
//	    token: 3f1c0e...                   # 1-128 of A-Z a-z 0-9 _ -
//	    verified_at: 2026-11-29T10:05:00Z  # optional; created_at likewise
//	challenges:
//	  - name: _acme-challenge.alice.repl.test
//	    value: xyz
//	    expires_at: 2026-11-29T11:00:00Z
//	wakes:                                 # written by proxies and the container manager
//	  - repl_id: r1a2b3                    # a live repl; at most one wake each
//	    requested_at: 2026-11-29T10:00:00Z
//	    requested_by: east/host-a/4242
//	    claimed_by: manager-1              # optional, with claimed_at
//	    claimed_at: 2026-11-29T10:00:01Z
//	    failed: image pull failed          # optional, with failed_at
//	    failed_at: 2026-11-29T10:00:05Z
//
// Activity (RecordActivity) is not in the file but in
// "<file>.activity/last", so that the proxies' flushes do not rewrite it.
//
// Every section is optional and an empty file is an empty store. The file
// is checked whole when it is read: a problem anywhere (an unknown field,
// a bad label, a duplicate, a domain naming no repl, ...) is reported with
// the file name and line, and every problem is reported at once.
//
// Reads are served from an immutable in-memory snapshot of the file;
// Lookup takes no lock. The file's folder is watched: when the file
// changes (rewritten in place or, better, replaced by a rename), it is read
// again and, when good, replaces the snapshot. A broken file is logged and
// the last good data keeps serving until the file is fixed.
//
// Writes may come from several processes at once (replctl and the daemons
// of one machine): each write takes an exclusive flock(2) on "<path>.lock",
// reads the file again, applies the change, checks the result as a whole,
// and replaces the file atomically (temporary file, fsync, rename, fsync
// of the folder). A write refuses to touch a file that is broken: the
// operator fixes it first. Writes keep the file's mode but not its
// comments or layout: the file is written back in a canonical form.
//
// Watch sends only EventResync: once when it starts, and again after every
// change to the data, whether made through this Store, by another
// process or by hand. The embedded store does not work out which keys a
// change touched; consumers drop what they hold and look it up again.
type Store struct {
	path     string // as given to Open, for messages
	lockPath string
	logger   *zap.Logger
	now      func() time.Time // the clock: timestamps and challenge expiry

	snap atomic.Pointer[snapshot]

	// mu serialises this process's writes and reloads, so that the
	// snapshot only ever moves forward.
	mu      sync.Mutex
	lastBad string // the reload problem last logged; "" while the file is good

	subMu  sync.Mutex
	subs   map[chan struct{}]struct{} // one per Watch call, buffered 1
	closed bool

	done      chan struct{} // closed by Close
	closeOnce sync.Once
	wg        sync.WaitGroup // the file watcher and every Watch call
}

var _ store.Store = (*Store)(nil)

// After a change the file is read again once it has been quiet for
// debounce, so that a writer's several steps give one reload, but
// never later than maxDelay after the first change.
const (
	debounce = 30 * time.Millisecond
	maxDelay = 250 * time.Millisecond
)

// fileHeader starts every file this package writes.
const fileHeader = "# replproxy embedded store (one cluster's data). Edit by hand if you like;\n" +
	"# replctl and the daemons rewrite this file and do not keep comments.\n"

// Open opens the embedded store file at path and watches it for changes until Close.
//
// The file must exist (an empty file is an empty store) and be good: a
// broken file gives an error listing every problem with its line. A nil
// logger means zap.NewNop().
func Open(ctx context.Context, path string, logger *zap.Logger) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open embedded store %s: %w", path, err)
	}
	if path == "" {
		return nil, fmt.Errorf("open embedded store: %w: no file name given", store.ErrInvalid)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	// Watch before reading, so that no change slips between the two.
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("open embedded store %s: watch for changes: %w", path, err)
	}
	if err := w.Add(filepath.Dir(path)); err != nil {
		_ = w.Close()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, missing(path, err)
		}
		return nil, fmt.Errorf("open embedded store %s: watch its folder for changes: %w", path, err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		_ = w.Close()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, missing(path, err)
		}
		return nil, fmt.Errorf("open embedded store %s: %w", path, err)
	}
	snap, err := load(path, raw)
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open embedded store %s:\n%w", path, err)
	}
	s := &Store{
		path:     path,
		lockPath: path + ".lock",
		logger:   logger.Named("embedded").With(zap.String("path", path)),
		now:      time.Now,
		subs:     make(map[chan struct{}]struct{}),
		done:     make(chan struct{}),
	}
	s.snap.Store(snap)
	s.wg.Add(1)
	go s.watchFile(w)
	return s, nil
}

func missing(path string, err error) error {
	return fmt.Errorf("open embedded store %s: the file does not exist; create it, e.g. with `touch %s` (an empty file is an empty store): %w",
		path, path, err)
}

// Close stops watching the file and waits until the watcher and every
// Watch call have returned. Do not call it from a Watch callback. Writes
// after Close fail with ErrUnavailable; reads keep answering from the last
// data.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.subMu.Lock()
		s.closed = true
		s.subMu.Unlock()
		close(s.done)
		s.wg.Wait()
	})
	return nil
}

// watchFile reloads the file, debounced, whenever an event names it.
func (s *Store) watchFile(w *fsnotify.Watcher) {
	defer s.wg.Done()
	defer func() { _ = w.Close() }()
	base := filepath.Base(s.path)
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	defer quiet.Stop()
	var first time.Time // the first change not read yet; zero when none
	changed := func() {
		now := time.Now()
		if first.IsZero() {
			first = now
		}
		quiet.Reset(min(debounce, first.Add(maxDelay).Sub(now)))
	}
	for {
		select {
		case <-s.done:
			return
		case ev, ok := <-w.Events:
			if !ok {
				s.logger.Error("file watcher stopped; changes to the file are no longer picked up")
				return
			}
			if filepath.Base(ev.Name) == base && ev.Op&^fsnotify.Chmod != 0 {
				changed()
			}
		case err, ok := <-w.Errors:
			if !ok {
				s.logger.Error("file watcher stopped; changes to the file are no longer picked up")
				return
			}
			// An overflow may have dropped the event we wanted: read anyway.
			s.logger.Warn("file watcher error", zap.Error(err))
			changed()
		case <-quiet.C:
			first = time.Time{}
			s.reload()
		}
	}
}

// reload reads the file again and installs it when it is good. A broken
// file is logged once per distinct problem; the last good data stays.
func (s *Store) reload() {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.logger.Debug("read the file again")
	raw, err := os.ReadFile(s.path)
	var next *snapshot
	if err == nil {
		next, err = load(s.path, raw)
	}
	if err != nil {
		if msg := err.Error(); msg != s.lastBad {
			s.lastBad = msg
			s.logger.Error("embedded store file is broken; still serving the last good data", zap.Error(err))
		}
		return
	}
	if s.lastBad != "" {
		s.lastBad = ""
		s.logger.Info("embedded store file is good again")
	}
	if s.install(next) {
		s.logger.Info("reloaded embedded store file",
			zap.Int("repls", len(next.repls)), zap.Int("tombstones", len(next.tombstones)),
			zap.Int("domains", len(next.domains)), zap.Int("challenges", len(next.challenges)))
	}
}

// install makes next the snapshot and tells the watchers, unless it holds
// the same data as the current one. The caller holds s.mu.
func (s *Store) install(next *snapshot) bool {
	if cur := s.snap.Load(); cur != nil && bytes.Equal(cur.canon, next.canon) {
		return false
	}
	s.snap.Store(next)
	s.subMu.Lock()
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default: // a resync is already pending
		}
	}
	s.subMu.Unlock()
	return true
}

// Watch implements Reader. It sends EventResync at once and after every
// change to the data (see Store); events are coalesced, so a slow fn
// gets one EventResync for several changes. It returns ctx's error, or an
// error wrapping ErrUnavailable when the store is closed.
func (s *Store) Watch(ctx context.Context, fn func(store.Event)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ch := make(chan struct{}, 1)
	s.subMu.Lock()
	if s.closed {
		s.subMu.Unlock()
		return fmt.Errorf("watch embedded store %s: %w: closed", s.path, store.ErrUnavailable)
	}
	s.subs[ch] = struct{}{}
	s.wg.Add(1)
	s.subMu.Unlock()
	defer func() {
		s.subMu.Lock()
		delete(s.subs, ch)
		s.subMu.Unlock()
		s.wg.Done()
	}()

	fn(store.Event{Kind: store.EventResync})
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return fmt.Errorf("watch embedded store %s: %w: closed", s.path, store.ErrUnavailable)
		case <-ch:
			fn(store.Event{Kind: store.EventResync})
		}
	}
}
