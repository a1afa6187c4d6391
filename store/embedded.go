package store

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"
)

// Embedded is the backend that needs no server: one cluster's data in a
// YAML file that an operator can also write by hand, for a single machine,
// the demo and fast tests.
//
//	repls:
//	  - id: r1a2b3
//	    owner: alice
//	    slug: blog
//	    endpoints: [127.0.0.1:9001]
//	    generation: 1                      # optional, default 1
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
// change to the data, whether made through this Embedded, by another
// process or by hand. The embedded store does not work out which keys a
// change touched; consumers drop what they hold and look it up again.
type Embedded struct {
	path     string // as given to OpenEmbedded, for messages
	lockPath string
	logger   *zap.Logger
	now      func() time.Time // the clock: timestamps and challenge expiry

	snap atomic.Pointer[embeddedSnapshot]

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

var _ Store = (*Embedded)(nil)

// After a change the file is read again once it has been quiet for
// embeddedDebounce, so that a writer's several steps give one reload, but
// never later than embeddedMaxDelay after the first change.
const (
	embeddedDebounce = 30 * time.Millisecond
	embeddedMaxDelay = 250 * time.Millisecond
)

// embeddedHeader starts every file this package writes.
const embeddedHeader = "# replproxy embedded store (one cluster's data). Edit by hand if you like;\n" +
	"# replctl and the daemons rewrite this file and do not keep comments.\n"

// OpenEmbedded opens the embedded store file at path and watches it for changes until Close.
//
// The file must exist (an empty file is an empty store) and be good: a
// broken file gives an error listing every problem with its line. A nil
// logger means zap.NewNop().
func OpenEmbedded(ctx context.Context, path string, logger *zap.Logger) (*Embedded, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open embedded store %s: %w", path, err)
	}
	if path == "" {
		return nil, fmt.Errorf("open embedded store: %w: no file name given", ErrInvalid)
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
			return nil, embeddedMissing(path, err)
		}
		return nil, fmt.Errorf("open embedded store %s: watch its folder for changes: %w", path, err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		_ = w.Close()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, embeddedMissing(path, err)
		}
		return nil, fmt.Errorf("open embedded store %s: %w", path, err)
	}
	snap, err := embeddedLoad(path, raw)
	if err != nil {
		_ = w.Close()
		return nil, fmt.Errorf("open embedded store %s:\n%w", path, err)
	}
	s := &Embedded{
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

func embeddedMissing(path string, err error) error {
	return fmt.Errorf("open embedded store %s: the file does not exist; create it, e.g. with `touch %s` (an empty file is an empty store): %w",
		path, path, err)
}

// Close stops watching the file and waits until the watcher and every
// Watch call have returned. Do not call it from a Watch callback. Writes
// after Close fail with ErrUnavailable; reads keep answering from the last
// data.
func (s *Embedded) Close() error {
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
func (s *Embedded) watchFile(w *fsnotify.Watcher) {
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
		quiet.Reset(min(embeddedDebounce, first.Add(embeddedMaxDelay).Sub(now)))
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
func (s *Embedded) reload() {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.logger.Debug("read the file again")
	raw, err := os.ReadFile(s.path)
	var next *embeddedSnapshot
	if err == nil {
		next, err = embeddedLoad(s.path, raw)
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
func (s *Embedded) install(next *embeddedSnapshot) bool {
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
// change to the data (see Embedded); events are coalesced, so a slow fn
// gets one EventResync for several changes. It returns ctx's error, or an
// error wrapping ErrUnavailable when the store is closed.
func (s *Embedded) Watch(ctx context.Context, fn func(Event)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ch := make(chan struct{}, 1)
	s.subMu.Lock()
	if s.closed {
		s.subMu.Unlock()
		return fmt.Errorf("watch embedded store %s: %w: closed", s.path, ErrUnavailable)
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

	fn(Event{Kind: EventResync})
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return fmt.Errorf("watch embedded store %s: %w: closed", s.path, ErrUnavailable)
		case <-ch:
			fn(Event{Kind: EventResync})
		}
	}
}

// Reads: from the snapshot, without locks. Slices handed out are copies,
// except Route's, which the Reader contract says are shared.

// Lookup implements Reader.
func (s *Embedded) Lookup(_ context.Context, k Key) (Route, error) {
	snap := s.snap.Load()
	var (
		r  Route
		ok bool
	)
	switch k.Kind {
	case KeyRepl:
		r, ok = snap.routeByName[embeddedName{k.Owner, k.Slug}]
	case KeyReplID:
		r, ok = snap.routeByID[k.ID]
	case KeyDomain:
		r, ok = snap.routeByDomain[k.Name]
	default:
		return Route{}, fmt.Errorf("lookup %s: %w: not a routable name", k, ErrInvalid)
	}
	if !ok {
		return Route{}, fmt.Errorf("lookup %s: %w", k, ErrNotFound)
	}
	return r, nil
}

// Challenges implements Reader.
func (s *Embedded) Challenges(_ context.Context, name string) ([]Challenge, error) {
	all := s.snap.Load().challengesByName[name]
	now := s.now()
	var out []Challenge
	for _, c := range all {
		if c.ExpiresAt.After(now) {
			out = append(out, c)
		}
	}
	return out, nil
}

// GetRepl implements Store.
func (s *Embedded) GetRepl(_ context.Context, id string) (Repl, error) {
	snap := s.snap.Load()
	i, ok := snap.replByID[id]
	if !ok {
		return Repl{}, fmt.Errorf("get repl %s: %w", id, ErrNotFound)
	}
	return embeddedCloneRepl(snap.repls[i]), nil
}

// ListRepls implements Store.
func (s *Embedded) ListRepls(_ context.Context, owner string) ([]Repl, error) {
	var out []Repl
	for _, r := range s.snap.Load().repls {
		if owner == "" || r.Owner == owner {
			out = append(out, embeddedCloneRepl(r))
		}
	}
	return out, nil
}

// GetTombstone implements Store.
func (s *Embedded) GetTombstone(_ context.Context, replID string) (Tombstone, error) {
	snap := s.snap.Load()
	i, ok := snap.tombByID[replID]
	if !ok {
		return Tombstone{}, fmt.Errorf("get tombstone %s: %w", replID, ErrNotFound)
	}
	return snap.tombstones[i], nil
}

// ListTombstones implements Store.
func (s *Embedded) ListTombstones(context.Context) ([]Tombstone, error) {
	return slices.Clone(s.snap.Load().tombstones), nil
}

// GetDomain implements Store.
func (s *Embedded) GetDomain(_ context.Context, name string) (Domain, error) {
	snap := s.snap.Load()
	i, ok := snap.domainByName[name]
	if !ok {
		return Domain{}, fmt.Errorf("get domain %s: %w", name, ErrNotFound)
	}
	return snap.domains[i], nil
}

// ListDomains implements Store.
func (s *Embedded) ListDomains(_ context.Context, replID string) ([]Domain, error) {
	var out []Domain
	for _, d := range s.snap.Load().domains {
		if replID == "" || d.ReplID == replID {
			out = append(out, d)
		}
	}
	return out, nil
}

// Stats implements Store.
func (s *Embedded) Stats(context.Context) (Stats, error) {
	snap := s.snap.Load()
	return Stats{
		Repls:      len(snap.repls),
		Tombstones: len(snap.tombstones),
		Domains:    len(snap.domains),
		Challenges: len(snap.challenges),
	}, nil
}

func embeddedCloneRepl(r Repl) Repl {
	r.Endpoints = slices.Clone(r.Endpoints)
	return r
}

// Writes: each one is a whole read-change-check-replace of the file under
// the lock (see write).

// CreateRepl implements Store.
func (s *Embedded) CreateRepl(ctx context.Context, r Repl) (Repl, error) {
	doing := "create repl " + r.ID
	if err := CheckRepl(r); err != nil {
		return Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	if r.Generation == 0 {
		r.Generation = 1
	}
	var out Repl
	err := s.write(ctx, doing, func(d *embeddedData) error {
		if _, ok := d.repls[r.ID]; ok {
			return fmt.Errorf("%w: repl %s is already live here", ErrConflict, r.ID)
		}
		if _, ok := d.tombstones[r.ID]; ok {
			return fmt.Errorf("%w: repl %s has a tombstone here: it moved away; move it back instead", ErrConflict, r.ID)
		}
		if other, ok := d.liveByName(r.Owner, r.Slug); ok {
			return fmt.Errorf("%w: owner/slug %s/%s is already used by repl %s", ErrConflict, r.Owner, r.Slug, other.ID)
		}
		now := s.stamp()
		out = Repl{
			ID: r.ID, Owner: r.Owner, Slug: r.Slug,
			Endpoints:  slices.Clone(r.Endpoints),
			Generation: r.Generation,
			CreatedAt:  now, UpdatedAt: now,
		}
		d.repls[r.ID] = out
		return nil
	})
	if err != nil {
		return Repl{}, err
	}
	return embeddedCloneRepl(out), nil
}

// SetEndpoints implements Store.
func (s *Embedded) SetEndpoints(ctx context.Context, id string, endpoints []string) (Repl, error) {
	doing := "set endpoints of repl " + id
	if err := CheckEndpoints(endpoints); err != nil {
		return Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	var out Repl
	err := s.write(ctx, doing, func(d *embeddedData) error {
		r, ok := d.repls[id]
		if !ok {
			return fmt.Errorf("%w: repl %s is not live here", ErrNotFound, id)
		}
		r.Endpoints = slices.Clone(endpoints)
		r.UpdatedAt = s.stamp()
		d.repls[id] = r
		out = r
		return nil
	})
	if err != nil {
		return Repl{}, err
	}
	return embeddedCloneRepl(out), nil
}

// DeleteRepl implements Store.
func (s *Embedded) DeleteRepl(ctx context.Context, id string) error {
	return s.write(ctx, "delete repl "+id, func(d *embeddedData) error {
		if _, ok := d.repls[id]; !ok {
			return fmt.Errorf("%w: repl %s is not live here", ErrNotFound, id)
		}
		delete(d.repls, id)
		d.dropOrphanDomains()
		return nil
	})
}

// Activate implements Store.
func (s *Embedded) Activate(ctx context.Context, r Repl) (Repl, error) {
	return s.ActivateWithDomains(ctx, r, nil)
}

// ActivateWithDomains implements Store.
func (s *Embedded) ActivateWithDomains(ctx context.Context, r Repl, domains []Domain) (Repl, error) {
	doing := fmt.Sprintf("activate repl %s at generation %d", r.ID, r.Generation)
	if err := checkActivation(r, domains); err != nil {
		return Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	var out Repl
	err := s.write(ctx, doing, func(d *embeddedData) error {
		if t, ok := d.tombstones[r.ID]; ok {
			if t.Generation >= r.Generation {
				return fmt.Errorf("%w: repl %s moved on since: tombstone here has generation %d", ErrConflict, r.ID, t.Generation)
			}
			delete(d.tombstones, r.ID)
		}
		for _, dom := range domains {
			if old, ok := d.domains[dom.Name]; ok && old.ReplID != r.ID {
				return fmt.Errorf("%w: domain %s is already linked to repl %s here", ErrConflict, dom.Name, old.ReplID)
			}
		}
		link := func() {
			for _, dom := range domains {
				if _, ok := d.domains[dom.Name]; !ok {
					d.domains[dom.Name] = Domain{Name: dom.Name, ReplID: r.ID, Token: dom.Token, VerifiedAt: dom.VerifiedAt, CreatedAt: s.stamp()}
				}
			}
		}
		cur, live := d.repls[r.ID]
		if live && cur.Generation >= r.Generation {
			out = cur // the same move again, or an older one: leave it
			link()
			return nil
		}
		if other, ok := d.liveByName(r.Owner, r.Slug); ok && other.ID != r.ID {
			return fmt.Errorf("%w: owner/slug %s/%s is already used by repl %s", ErrConflict, r.Owner, r.Slug, other.ID)
		}
		now := s.stamp()
		created := now
		if live {
			created = cur.CreatedAt
		}
		out = Repl{
			ID: r.ID, Owner: r.Owner, Slug: r.Slug,
			Endpoints:  slices.Clone(r.Endpoints),
			Generation: r.Generation,
			CreatedAt:  created, UpdatedAt: now,
		}
		d.repls[r.ID] = out
		link()
		return nil
	})
	if err != nil {
		return Repl{}, err
	}
	return embeddedCloneRepl(out), nil
}

// Retire implements Store.
func (s *Embedded) Retire(ctx context.Context, replID, cluster string, generation int64) (Tombstone, error) {
	doing := fmt.Sprintf("retire repl %s to cluster %s at generation %d", replID, cluster, generation)
	if err := ValidLabel(cluster); err != nil {
		return Tombstone{}, fmt.Errorf("%s: cluster: %w", doing, err)
	}
	var out Tombstone
	err := s.write(ctx, doing, func(d *embeddedData) error {
		t, tombstoned := d.tombstones[replID]
		if tombstoned && t.Generation >= generation {
			out = t
			return nil
		}
		r, live := d.repls[replID]
		switch {
		case live && r.Generation >= generation:
			return fmt.Errorf("%w: repl %s is live here at generation %d, not below %d: it came back since",
				ErrConflict, replID, r.Generation, generation)
		case live:
			delete(d.repls, replID)
			t = Tombstone{ReplID: replID, Owner: r.Owner, Slug: r.Slug}
		case !tombstoned:
			return fmt.Errorf("%w: repl %s is neither live nor tombstoned here", ErrNotFound, replID)
		}
		t.Cluster, t.Generation, t.MovedAt = cluster, generation, s.stamp()
		d.tombstones[replID] = t
		out = t
		return nil
	})
	if err != nil {
		return Tombstone{}, err
	}
	return out, nil
}

// Repoint implements Store. Like Retire, it sets the tombstone's MovedAt
// to now when it changes it.
func (s *Embedded) Repoint(ctx context.Context, replID, cluster string, generation int64) error {
	doing := fmt.Sprintf("repoint tombstone of repl %s to cluster %s at generation %d", replID, cluster, generation)
	if err := ValidLabel(cluster); err != nil {
		return fmt.Errorf("%s: cluster: %w", doing, err)
	}
	return s.write(ctx, doing, func(d *embeddedData) error {
		t, ok := d.tombstones[replID]
		if !ok {
			return fmt.Errorf("%w: no tombstone for the repl here", ErrNotFound)
		}
		if t.Generation >= generation {
			return nil
		}
		t.Cluster, t.Generation, t.MovedAt = cluster, generation, s.stamp()
		d.tombstones[replID] = t
		return nil
	})
}

// CollectTombstones implements Store.
func (s *Embedded) CollectTombstones(ctx context.Context, cutoff time.Time) (int, error) {
	var n int
	err := s.write(ctx, "collect tombstones", func(d *embeddedData) error {
		n = 0
		for id, t := range d.tombstones {
			if t.MovedAt.Before(cutoff) {
				delete(d.tombstones, id)
				n++
			}
		}
		d.dropOrphanDomains()
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// LinkDomain implements Store.
func (s *Embedded) LinkDomain(ctx context.Context, d Domain) (Domain, error) {
	doing := "link domain " + d.Name
	if err := ValidDomain(d.Name); err != nil {
		return Domain{}, fmt.Errorf("%s: %w", doing, err)
	}
	if d.Token == "" {
		d.Token = NewToken()
	} else if err := CheckToken(d.Token); err != nil {
		return Domain{}, fmt.Errorf("%s: %w", doing, err)
	}
	var out Domain
	err := s.write(ctx, doing, func(data *embeddedData) error {
		if old, ok := data.domains[d.Name]; ok {
			return fmt.Errorf("%w: domain %s is already linked to repl %s", ErrConflict, d.Name, old.ReplID)
		}
		if !data.knows(d.ReplID) {
			return fmt.Errorf("%w: repl %s is neither live nor tombstoned here", ErrNotFound, d.ReplID)
		}
		out = Domain{Name: d.Name, ReplID: d.ReplID, Token: d.Token, CreatedAt: s.stamp()}
		data.domains[d.Name] = out
		return nil
	})
	if err != nil {
		return Domain{}, err
	}
	return out, nil
}

// UnlinkDomain implements Store.
func (s *Embedded) UnlinkDomain(ctx context.Context, name string) error {
	return s.write(ctx, "unlink domain "+name, func(d *embeddedData) error {
		if _, ok := d.domains[name]; !ok {
			return fmt.Errorf("%w: domain %s is not linked", ErrNotFound, name)
		}
		delete(d.domains, name)
		return nil
	})
}

// MarkDomainVerified implements Store.
func (s *Embedded) MarkDomainVerified(ctx context.Context, name string, at time.Time) error {
	return s.write(ctx, "mark domain "+name+" verified", func(d *embeddedData) error {
		dom, ok := d.domains[name]
		if !ok {
			return fmt.Errorf("%w: domain %s is not linked", ErrNotFound, name)
		}
		dom.VerifiedAt = embeddedTime(at)
		d.domains[name] = dom
		return nil
	})
}

// PutChallenge implements Store.
func (s *Embedded) PutChallenge(ctx context.Context, c Challenge) error {
	if err := CheckChallenge(c); err != nil {
		return fmt.Errorf("put challenge: %w", err)
	}
	c.ExpiresAt = embeddedTime(c.ExpiresAt)
	return s.write(ctx, "put challenge "+c.Name, func(d *embeddedData) error {
		d.challenges[embeddedChallengeKey{c.Name, c.Value}] = c
		return nil
	})
}

// DeleteChallenge implements Store.
func (s *Embedded) DeleteChallenge(ctx context.Context, name, value string) error {
	return s.write(ctx, "delete challenge "+name, func(d *embeddedData) error {
		delete(d.challenges, embeddedChallengeKey{name, value})
		return nil
	})
}

// DeleteExpiredChallenges implements Store. Like Challenges, it takes a
// record that expires at now as expired.
func (s *Embedded) DeleteExpiredChallenges(ctx context.Context, now time.Time) (int, error) {
	var n int
	err := s.write(ctx, "delete expired challenges", func(d *embeddedData) error {
		n = 0
		for k, c := range d.challenges {
			if !c.ExpiresAt.After(now) {
				delete(d.challenges, k)
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// stamp is the time a write records: UTC, in microseconds like
// PostgreSQL's timestamptz.
func (s *Embedded) stamp() time.Time { return embeddedTime(s.now()) }

func embeddedTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// write runs one change under the lock: it takes s.mu and the file lock,
// reads and checks the file as it is now, lets change modify a copy of its
// data, checks the result and, if anything changed, replaces the file and
// installs the new snapshot. An error from change is returned with doing
// in front; nothing is written then.
func (s *Embedded) write(ctx context.Context, doing string, change func(*embeddedData) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subMu.Lock()
	closed := s.closed
	s.subMu.Unlock()
	if closed {
		return fmt.Errorf("%s: %w: embedded store %s is closed", doing, ErrUnavailable, s.path)
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
	cur, err := embeddedLoad(s.path, raw)
	if err != nil {
		// %v, not %w: the problems are the file's, not the caller's, so
		// the error must not read as ErrInvalid.
		return fmt.Errorf("%s: %w: the embedded store file %s is broken and must be fixed first:\n%v",
			doing, ErrUnavailable, s.path, err)
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

// lockFile takes the exclusive flock on the lock file, polling so that ctx
// can stop the wait. The returned func releases it.
func (s *Embedded) lockFile(ctx context.Context) (func(), error) {
	// Read-only is enough for flock, and lets a user who may write the
	// store but not the lock file (made by another user) still lock.
	f, err := os.OpenFile(s.lockPath, os.O_RDONLY|os.O_CREATE, 0o666)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w: %w", ErrUnavailable, err)
	}
	fd := int(f.Fd())
	wait := 500 * time.Microsecond
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(fd, unix.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w: %w", s.lockPath, ErrUnavailable, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			_ = f.Close()
			return nil, fmt.Errorf("wait for lock %s: %w", s.lockPath, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Millisecond)
	}
}

// readFile reads the store file and what replaceFile needs to keep.
func (s *Embedded) readFile() ([]byte, fs.FileInfo, error) {
	f, err := os.Open(s.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("%w: embedded store file %s is gone; create it again (an empty file is an empty store): %w",
				ErrUnavailable, s.path, err)
		}
		return nil, nil, fmt.Errorf("read %s: %w: %w", s.path, ErrUnavailable, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w: %w", s.path, ErrUnavailable, err)
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w: %w", s.path, ErrUnavailable, err)
	}
	return raw, info, nil
}

// replaceFile writes data atomically in place of the store file, keeping
// its mode (and, when allowed, its owner): a temporary file in the same
// folder, fsync, rename over the file, fsync of the folder.
func (s *Embedded) replaceFile(data []byte, old fs.FileInfo) (err error) {
	dir, base := filepath.Split(s.path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w: %w", s.path, ErrUnavailable, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
			err = fmt.Errorf("write %s: %w: %w", s.path, ErrUnavailable, err)
		}
	}()
	if err := f.Chmod(old.Mode().Perm()); err != nil {
		return err
	}
	if st, ok := old.Sys().(*syscall.Stat_t); ok && (int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid()) {
		_ = f.Chown(int(st.Uid), int(st.Gid)) // best effort: only root may give files away
	}
	if _, err := io.WriteString(f, embeddedHeader); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil // the file is in place; only its durability is in doubt
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		s.logger.Warn("fsync folder after replacing the file", zap.Error(err))
	}
	return nil
}

// The data, three ways: as read from the file with positions (embeddedDoc),
// as an immutable snapshot for reads (embeddedSnapshot), and as maps that a
// write changes (embeddedData).

type embeddedName struct{ owner, slug string }

type embeddedChallengeKey struct{ name, value string }

// embeddedSnapshot is one version of the data; it never changes once made.
type embeddedSnapshot struct {
	// Sorted as the List methods return them: repls by owner and slug,
	// tombstones by repl id, domains by name, challenges by name and value.
	repls      []Repl
	tombstones []Tombstone
	domains    []Domain
	challenges []Challenge

	replByID     map[string]int // index into repls
	tombByID     map[string]int // index into tombstones
	domainByName map[string]int // index into domains

	routeByName      map[embeddedName]Route
	routeByID        map[string]Route
	routeByDomain    map[string]Route
	challengesByName map[string][]Challenge // sub-slices of challenges

	canon []byte // the canonical YAML of the data: equal bytes, equal data
}

// newEmbeddedSnapshot indexes a checked, sorted doc.
func newEmbeddedSnapshot(d *embeddedDoc) (*embeddedSnapshot, error) {
	canon, err := embeddedMarshal(d)
	if err != nil {
		return nil, err
	}
	s := &embeddedSnapshot{
		repls:            d.repls,
		tombstones:       d.tombstones,
		domains:          d.domains,
		challenges:       d.challenges,
		replByID:         make(map[string]int, len(d.repls)),
		tombByID:         make(map[string]int, len(d.tombstones)),
		domainByName:     make(map[string]int, len(d.domains)),
		routeByName:      make(map[embeddedName]Route, len(d.repls)+len(d.tombstones)),
		routeByID:        make(map[string]Route, len(d.repls)+len(d.tombstones)),
		routeByDomain:    make(map[string]Route, len(d.domains)),
		challengesByName: make(map[string][]Challenge),
		canon:            canon,
	}
	for i, r := range d.repls {
		s.replByID[r.ID] = i
		rt := Route{Kind: RouteLocal, ReplID: r.ID, Owner: r.Owner, Slug: r.Slug, Endpoints: r.Endpoints, Generation: r.Generation}
		s.routeByName[embeddedName{r.Owner, r.Slug}] = rt
		s.routeByID[r.ID] = rt
	}
	for i, t := range d.tombstones {
		s.tombByID[t.ReplID] = i
		rt := Route{Kind: RouteTombstone, ReplID: t.ReplID, Owner: t.Owner, Slug: t.Slug, Cluster: t.Cluster, Generation: t.Generation}
		s.routeByID[t.ReplID] = rt
		// By name, a live repl wins; among tombstones of one owner/slug
		// (the name was reused), the highest generation, then the latest
		// move, then the first id.
		n := embeddedName{t.Owner, t.Slug}
		if old, ok := s.routeByName[n]; ok {
			if old.Kind == RouteLocal {
				continue
			}
			o := d.tombstones[s.tombByID[old.ReplID]]
			if t.Generation < o.Generation || t.Generation == o.Generation && !t.MovedAt.After(o.MovedAt) {
				continue
			}
		}
		s.routeByName[n] = rt
	}
	for i, dom := range d.domains {
		s.domainByName[dom.Name] = i
		if rt, ok := s.routeByID[dom.ReplID]; ok {
			s.routeByDomain[dom.Name] = rt
		}
	}
	for i := 0; i < len(d.challenges); {
		j := i + 1
		for j < len(d.challenges) && d.challenges[j].Name == d.challenges[i].Name {
			j++
		}
		s.challengesByName[d.challenges[i].Name] = d.challenges[i:j:j]
		i = j
	}
	return s, nil
}

// embeddedData is a copy of the data that a write may change.
type embeddedData struct {
	repls      map[string]Repl
	tombstones map[string]Tombstone
	domains    map[string]Domain
	challenges map[embeddedChallengeKey]Challenge
}

func (s *embeddedSnapshot) data() *embeddedData {
	d := &embeddedData{
		repls:      make(map[string]Repl, len(s.repls)+1),
		tombstones: make(map[string]Tombstone, len(s.tombstones)+1),
		domains:    make(map[string]Domain, len(s.domains)+1),
		challenges: make(map[embeddedChallengeKey]Challenge, len(s.challenges)+1),
	}
	// Endpoints slices are shared: writes replace them, never change them.
	for _, r := range s.repls {
		d.repls[r.ID] = r
	}
	for _, t := range s.tombstones {
		d.tombstones[t.ReplID] = t
	}
	for _, dom := range s.domains {
		d.domains[dom.Name] = dom
	}
	for _, c := range s.challenges {
		d.challenges[embeddedChallengeKey{c.Name, c.Value}] = c
	}
	return d
}

func (d *embeddedData) liveByName(owner, slug string) (Repl, bool) {
	for _, r := range d.repls {
		if r.Owner == owner && r.Slug == slug {
			return r, true
		}
	}
	return Repl{}, false
}

// knows reports whether a repl is live or tombstoned.
func (d *embeddedData) knows(id string) bool {
	_, live := d.repls[id]
	_, tombstoned := d.tombstones[id]
	return live || tombstoned
}

// dropOrphanDomains removes the domains of repls that are neither live nor
// tombstoned any more.
func (d *embeddedData) dropOrphanDomains() {
	for name, dom := range d.domains {
		if !d.knows(dom.ReplID) {
			delete(d.domains, name)
		}
	}
}

// snapshot checks the changed data as a whole, as if it were read from a
// file, and indexes it. Problems wrap ErrInvalid.
func (d *embeddedData) snapshot() (*embeddedSnapshot, error) {
	doc := &embeddedDoc{}
	for _, r := range d.repls {
		doc.repls = append(doc.repls, r)
	}
	for _, t := range d.tombstones {
		doc.tombstones = append(doc.tombstones, t)
	}
	for _, dom := range d.domains {
		doc.domains = append(doc.domains, dom)
	}
	for _, c := range d.challenges {
		doc.challenges = append(doc.challenges, c)
	}
	doc.sort()
	p := &embeddedParser{}
	p.check(doc)
	if err := errors.Join(p.errs...); err != nil {
		return nil, err
	}
	return newEmbeddedSnapshot(doc)
}

// embeddedLoad parses and checks a store file and indexes it. The error
// joins every problem, each an *embeddedProblem naming path and line.
func embeddedLoad(path string, raw []byte) (*embeddedSnapshot, error) {
	p := &embeddedParser{path: path}
	doc := p.parse(raw)
	if doc != nil {
		p.check(doc)
	}
	if err := errors.Join(p.errs...); err != nil {
		return nil, err
	}
	doc.sort()
	doc.pos = [4][]*embeddedPos{}
	return newEmbeddedSnapshot(doc)
}

// embeddedDoc is the data in file order, with where each item was.
type embeddedDoc struct {
	repls      []Repl
	tombstones []Tombstone
	domains    []Domain
	challenges []Challenge
	// pos[section][i] is where item i of a section was; the lists are
	// empty when the data did not come from a file.
	pos [4][]*embeddedPos
}

// The sections of the file, in order.
const (
	embeddedSecRepls = iota
	embeddedSecTombstones
	embeddedSecDomains
	embeddedSecChallenges
)

var embeddedSections = [4]string{"repls", "tombstones", "domains", "challenges"}

// at returns where item i of a section was, or nil.
func (d *embeddedDoc) at(section, i int) *embeddedPos {
	if list := d.pos[section]; i < len(list) {
		return list[i]
	}
	return nil
}

func (d *embeddedDoc) sort() {
	slices.SortFunc(d.repls, func(a, b Repl) int {
		return cmp.Or(strings.Compare(a.Owner, b.Owner), strings.Compare(a.Slug, b.Slug), strings.Compare(a.ID, b.ID))
	})
	slices.SortFunc(d.tombstones, func(a, b Tombstone) int { return strings.Compare(a.ReplID, b.ReplID) })
	slices.SortFunc(d.domains, func(a, b Domain) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(d.challenges, func(a, b Challenge) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(a.Value, b.Value))
	})
}

// embeddedPos is where an item was in the file. A nil *embeddedPos (data
// not from a file) has every field given, at line 0.
type embeddedPos struct {
	line   int
	broken bool           // not a mapping: nothing in it was read
	fields map[string]int // the line of each field given
	bad    map[string]bool
	elems  []int // the line of each endpoint
}

func (p *embeddedPos) at(field string) int {
	if p == nil {
		return 0
	}
	if l, ok := p.fields[field]; ok {
		return l
	}
	return p.line
}

func (p *embeddedPos) given(field string) bool {
	if p == nil {
		return true
	}
	_, ok := p.fields[field]
	return ok
}

func (p *embeddedPos) elemAt(i int) int {
	if p == nil || i >= len(p.elems) {
		return p.at("endpoints")
	}
	return p.elems[i]
}

func (p *embeddedPos) lineOf() int {
	if p == nil {
		return 0
	}
	return p.line
}

// embeddedProblem is one problem in a store file. It unwraps to ErrInvalid.
type embeddedProblem struct {
	path string // "" for data that did not come from a file
	line int
	msg  string
}

func (e *embeddedProblem) Error() string {
	switch {
	case e.path == "":
		return e.msg
	case e.line > 0:
		return fmt.Sprintf("%s:%d: %s", e.path, e.line, e.msg)
	}
	return e.path + ": " + e.msg
}

func (e *embeddedProblem) Unwrap() error { return ErrInvalid }

// embeddedParser reads the YAML nodes of a store file and checks the data,
// collecting every problem.
type embeddedParser struct {
	path string
	errs []error
}

func (p *embeddedParser) fail(line int, format string, args ...any) {
	p.errs = append(p.errs, &embeddedProblem{path: p.path, line: line, msg: fmt.Sprintf(format, args...)})
}

// embeddedAlso returns " (line N)" to point at another item, or "" without a file.
func embeddedAlso(line int) string {
	if line <= 0 {
		return ""
	}
	return fmt.Sprintf(" (line %d)", line)
}

// The fields of each kind of item, as written in the file.
var embeddedFields = [4][]string{
	{"id", "owner", "slug", "endpoints", "generation", "created_at", "updated_at"},
	{"repl_id", "owner", "slug", "cluster", "generation", "moved_at"},
	{"name", "repl_id", "token", "verified_at", "created_at"},
	{"name", "value", "expires_at"},
}

// parse reads the file's structure and values; check then applies the
// rules. It returns nil when the file is not YAML or not shaped like a
// store.
func (p *embeddedParser) parse(raw []byte) *embeddedDoc {
	doc := &embeddedDoc{}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var top yaml.Node
	if err := dec.Decode(&top); err != nil {
		if errors.Is(err, io.EOF) {
			return doc // an empty file
		}
		p.yamlError(raw, err)
		return nil
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.fail(extra.Line, "a second YAML document; the store is one document: remove this \"---\" and what follows")
		return nil
	} else if !errors.Is(err, io.EOF) {
		p.yamlError(raw, err)
		return nil
	}
	root := &top
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return doc // only comments
		}
		root = embeddedDeref(root.Content[0])
	}
	if embeddedIsNull(root) {
		return doc
	}
	if root.Kind != yaml.MappingNode {
		p.fail(root.Line, "the file must be a mapping with repls, tombstones, domains and challenges, not %s", embeddedNodeKind(root))
		return nil
	}
	fields := p.mapping(root, "", embeddedSections[:], "the top level has repls, tombstones, domains and challenges")
	for sec, name := range embeddedSections {
		list, ok := fields[name]
		if !ok || embeddedIsNull(list) {
			continue
		}
		if list.Kind != yaml.SequenceNode {
			p.fail(list.Line, "%s: must be a list, one \"- %s: ...\" entry each, not %s", name, embeddedFields[sec][0], embeddedNodeKind(list))
			continue
		}
		for i, item := range list.Content {
			p.item(doc, sec, fmt.Sprintf("%s[%d]", name, i), embeddedDeref(item))
		}
	}
	return doc
}

// item reads one entry of a section into doc.
func (p *embeddedParser) item(doc *embeddedDoc, sec int, path string, n *yaml.Node) {
	pos := &embeddedPos{line: n.Line, fields: map[string]int{}, bad: map[string]bool{}}
	doc.pos[sec] = append(doc.pos[sec], pos)
	var fields map[string]*yaml.Node
	if n.Kind != yaml.MappingNode {
		p.fail(n.Line, "%s: must be a mapping with %s, not %s", path, strings.Join(embeddedFields[sec], ", "), embeddedNodeKind(n))
		pos.broken = true
	} else {
		fields = p.mapping(n, path, embeddedFields[sec],
			fmt.Sprintf("an entry of %s has %s", embeddedSections[sec], strings.Join(embeddedFields[sec], ", ")))
	}
	v := embeddedValues{p: p, path: path, fields: fields, pos: pos}
	switch sec {
	case embeddedSecRepls:
		r := Repl{
			ID: v.str("id"), Owner: v.str("owner"), Slug: v.str("slug"),
			Endpoints:  v.endpoints(),
			Generation: v.integer("generation", 1),
			CreatedAt:  v.timestamp("created_at"), UpdatedAt: v.timestamp("updated_at"),
		}
		doc.repls = append(doc.repls, r)
	case embeddedSecTombstones:
		doc.tombstones = append(doc.tombstones, Tombstone{
			ReplID: v.str("repl_id"), Owner: v.str("owner"), Slug: v.str("slug"),
			Cluster: v.str("cluster"), Generation: v.integer("generation", 0), MovedAt: v.timestamp("moved_at"),
		})
	case embeddedSecDomains:
		doc.domains = append(doc.domains, Domain{
			Name: v.str("name"), ReplID: v.str("repl_id"), Token: v.str("token"),
			VerifiedAt: v.timestamp("verified_at"), CreatedAt: v.timestamp("created_at"),
		})
	case embeddedSecChallenges:
		doc.challenges = append(doc.challenges, Challenge{
			Name: v.str("name"), Value: v.str("value"), ExpiresAt: v.timestamp("expires_at"),
		})
	}
}

// mapping returns the values of a mapping node by key, reporting unknown
// and repeated keys.
func (p *embeddedParser) mapping(n *yaml.Node, path string, known []string, hint string) map[string]*yaml.Node {
	fields := make(map[string]*yaml.Node, len(known))
	lines := make(map[string]int, len(known))
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := embeddedDeref(n.Content[i]), embeddedDeref(n.Content[i+1])
		field := k.Value
		if path != "" {
			field = path + "." + k.Value
		}
		if k.Kind != yaml.ScalarNode || !slices.Contains(known, k.Value) {
			p.fail(k.Line, "%s: unknown field; %s", field, hint)
			continue
		}
		if first, dup := lines[k.Value]; dup {
			p.fail(k.Line, "%s: given twice (first at line %d); keep one", field, first)
			continue
		}
		lines[k.Value] = k.Line
		fields[k.Value] = v
	}
	return fields
}

// yamlError reports a YAML syntax error in raw. The parser's own line is
// that of the enclosing block (and off by one), so the line reported is
// found again: the first line at which the file, cut there, stops parsing.
func (p *embeddedParser) yamlError(raw []byte, err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, after, ok := strings.Cut(rest, ": "); ok {
			if _, err := strconv.Atoi(num); err == nil {
				msg = after
			}
		}
	}
	p.fail(embeddedSyntaxLine(raw), "not valid YAML: %s", msg)
}

// embeddedSyntaxLine returns the smallest n such that the first n lines of
// raw are not valid YAML, by bisection, or 0 when raw is valid. Constructs
// that span lines (a quoted string, a flow list) may make it point at
// their first line.
func embeddedSyntaxLine(raw []byte) int {
	ends := []int{0} // ends[n] is the length of the first n lines
	for i, b := range raw {
		if b == '\n' {
			ends = append(ends, i+1)
		}
	}
	if ends[len(ends)-1] < len(raw) {
		ends = append(ends, len(raw))
	}
	bad := func(n int) bool {
		dec := yaml.NewDecoder(bytes.NewReader(raw[:ends[n]]))
		for {
			var doc yaml.Node
			if err := dec.Decode(&doc); err != nil {
				return !errors.Is(err, io.EOF)
			}
		}
	}
	good, broken := 0, len(ends)-1
	if !bad(broken) {
		return 0
	}
	for broken-good > 1 {
		mid := (good + broken) / 2
		if bad(mid) {
			broken = mid
		} else {
			good = mid
		}
	}
	return broken
}

// embeddedValues reads the fields of one item, recording where each was
// and reporting values of the wrong shape.
type embeddedValues struct {
	p      *embeddedParser
	path   string
	fields map[string]*yaml.Node
	pos    *embeddedPos
}

// scalar returns a field's node when it is a scalar; nil when it is
// missing or null.
func (v embeddedValues) scalar(key string) *yaml.Node {
	n, ok := v.fields[key]
	if !ok || embeddedIsNull(n) {
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		v.p.fail(n.Line, "%s.%s: must be a single value, not %s", v.path, key, embeddedNodeKind(n))
		v.pos.bad[key] = true
		return nil
	}
	v.pos.fields[key] = n.Line
	return n
}

func (v embeddedValues) str(key string) string {
	if n := v.scalar(key); n != nil {
		return n.Value
	}
	return ""
}

// integer reads a whole number; def != 0 makes the field optional.
func (v embeddedValues) integer(key string, def int64) int64 {
	n := v.scalar(key)
	if n == nil {
		if def != 0 && !v.pos.bad[key] {
			v.pos.fields[key] = v.pos.line // the default stands in
		}
		return def
	}
	var i int64
	if err := n.Decode(&i); err != nil || n.Tag != "!!int" {
		v.p.fail(n.Line, "%s.%s: %q is not a whole number", v.path, key, n.Value)
		v.pos.bad[key] = true
		return def
	}
	return i
}

// timestamp reads an optional RFC 3339 time.
func (v embeddedValues) timestamp(key string) time.Time {
	n := v.scalar(key)
	if n == nil {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, n.Value)
	if err != nil {
		v.p.fail(n.Line, "%s.%s: %q is not an RFC 3339 time such as 2026-11-29T10:00:00Z", v.path, key, n.Value)
		v.pos.bad[key] = true
		return time.Time{}
	}
	return t.UTC()
}

func (v embeddedValues) endpoints() []string {
	n, ok := v.fields["endpoints"]
	if !ok || embeddedIsNull(n) {
		return nil
	}
	v.pos.fields["endpoints"] = n.Line
	if n.Kind != yaml.SequenceNode {
		v.p.fail(n.Line, "%s.endpoints: must be a list of host:port, e.g. [127.0.0.1:9001], not %s", v.path, embeddedNodeKind(n))
		v.pos.bad["endpoints"] = true
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, e := range n.Content {
		e = embeddedDeref(e)
		if e.Kind != yaml.ScalarNode {
			v.p.fail(e.Line, "%s.endpoints[%d]: must be host:port, not %s", v.path, i, embeddedNodeKind(e))
			v.pos.bad["endpoints"] = true
			continue
		}
		out = append(out, e.Value)
		v.pos.elems = append(v.pos.elems, e.Line)
	}
	return out
}

// check applies the rules of the data model to doc, item by item and
// across items.
func (p *embeddedParser) check(d *embeddedDoc) {
	// field checks a field: missing, or broken by value.
	field := func(pos *embeddedPos, path, key string, hint string, check func() error) {
		if pos != nil && pos.bad[key] {
			return
		}
		if !pos.given(key) {
			p.fail(pos.lineOf(), "%s.%s: missing; %s", path, key, hint)
			return
		}
		if err := check(); err != nil {
			p.fail(pos.at(key), "%s.%s: %v", path, key, err)
		}
	}
	label := func(s string) func() error { return func() error { return ValidLabel(s) } }
	owner := func(s string) func() error { return func() error { return ValidOwner(s) } }
	generation := func(g int64) func() error {
		return func() error {
			if g < 1 {
				return fmt.Errorf("%d: must be 1 or more", g)
			}
			return nil
		}
	}
	present := func() error { return nil } // the value was read already
	name := func(sec, i int) string { return fmt.Sprintf("%s[%d]", embeddedSections[sec], i) }

	type seen struct {
		path string
		line int
	}
	live := make(map[string]seen, len(d.repls))
	liveNames := make(map[embeddedName]seen, len(d.repls))
	for i, r := range d.repls {
		pos, path := d.at(embeddedSecRepls, i), name(embeddedSecRepls, i)
		if pos != nil && pos.broken {
			continue
		}
		field(pos, path, "id", "give the repl's id, a DNS label", label(r.ID))
		field(pos, path, "owner", "give the repl's owner, a DNS label", owner(r.Owner))
		field(pos, path, "slug", "give the repl's slug, a DNS label", label(r.Slug))
		field(pos, path, "endpoints", "list the container addresses, e.g. [127.0.0.1:9001]", func() error {
			if len(r.Endpoints) == 0 {
				return CheckEndpoints(nil)
			}
			for j, e := range r.Endpoints {
				if err := CheckEndpoints([]string{e}); err != nil {
					p.fail(pos.elemAt(j), "%s.endpoints[%d]: %v", path, j, err)
				}
			}
			return nil
		})
		field(pos, path, "generation", "", generation(r.Generation))

		if r.ID != "" {
			if first, dup := live[r.ID]; dup {
				p.fail(pos.lineOf(), "%s: id %s is already used by %s%s", path, r.ID, first.path, embeddedAlso(first.line))
			} else {
				live[r.ID] = seen{path, pos.lineOf()}
			}
		}
		if r.Owner != "" && r.Slug != "" {
			n := embeddedName{r.Owner, r.Slug}
			if first, dup := liveNames[n]; dup {
				p.fail(pos.lineOf(), "%s: owner/slug %s/%s is already used by %s%s", path, r.Owner, r.Slug, first.path, embeddedAlso(first.line))
			} else {
				liveNames[n] = seen{path, pos.lineOf()}
			}
		}
	}

	tombs := make(map[string]seen, len(d.tombstones))
	for i, t := range d.tombstones {
		pos, path := d.at(embeddedSecTombstones, i), name(embeddedSecTombstones, i)
		if pos != nil && pos.broken {
			continue
		}
		field(pos, path, "repl_id", "give the id of the repl that moved", label(t.ReplID))
		field(pos, path, "owner", "give the repl's owner", owner(t.Owner))
		field(pos, path, "slug", "give the repl's slug", label(t.Slug))
		field(pos, path, "cluster", "give the cluster the repl moved to", label(t.Cluster))
		field(pos, path, "generation", "give the repl's generation in that cluster", generation(t.Generation))
		field(pos, path, "moved_at", "give the time of the move (RFC 3339), e.g. 2026-11-29T10:00:00Z", present)

		if t.ReplID == "" {
			continue
		}
		if first, dup := tombs[t.ReplID]; dup {
			p.fail(pos.lineOf(), "%s: repl %s already has a tombstone, %s%s; keep one", path, t.ReplID, first.path, embeddedAlso(first.line))
		} else {
			tombs[t.ReplID] = seen{path, pos.lineOf()}
		}
		if l, ok := live[t.ReplID]; ok {
			p.fail(pos.lineOf(), "%s: repl %s is both live, as %s%s, and tombstoned; remove one of them",
				path, t.ReplID, l.path, embeddedAlso(l.line))
		}
	}

	domains := make(map[string]seen, len(d.domains))
	for i, dom := range d.domains {
		pos, path := d.at(embeddedSecDomains, i), name(embeddedSecDomains, i)
		if pos != nil && pos.broken {
			continue
		}
		field(pos, path, "name", "give the custom domain, e.g. www.example.com", func() error { return ValidDomain(dom.Name) })
		field(pos, path, "repl_id", "give the id of the repl the domain is linked to", label(dom.ReplID))
		field(pos, path, "token", "give a verification token of 1 to 128 of A-Z, a-z, 0-9, '_' and '-', e.g. "+NewToken(),
			func() error { return CheckToken(dom.Token) })

		if dom.Name != "" {
			if first, dup := domains[dom.Name]; dup {
				p.fail(pos.lineOf(), "%s: domain %s is already linked by %s%s; keep one", path, dom.Name, first.path, embeddedAlso(first.line))
			} else {
				domains[dom.Name] = seen{path, pos.lineOf()}
			}
		}
		if _, isLive := live[dom.ReplID]; dom.ReplID != "" && !isLive {
			if _, tombstoned := tombs[dom.ReplID]; !tombstoned {
				p.fail(pos.at("repl_id"), "%s: repl %s is neither live nor tombstoned here; link the domain to a repl in this file", path, dom.ReplID)
			}
		}
	}

	challenges := make(map[embeddedChallengeKey]seen, len(d.challenges))
	for i, c := range d.challenges {
		pos, path := d.at(embeddedSecChallenges, i), name(embeddedSecChallenges, i)
		if pos != nil && pos.broken {
			continue
		}
		// CheckChallenge checks both; give each half the other's
		// good example so that each problem gets its own line.
		field(pos, path, "name", "give the record's name, e.g. _acme-challenge.alice.repl.test", func() error {
			return CheckChallenge(Challenge{Name: c.Name, Value: "x"})
		})
		field(pos, path, "value", "give the record's value", func() error {
			return CheckChallenge(Challenge{Name: ChallengePrefix + "x", Value: c.Value})
		})
		field(pos, path, "expires_at", "give the record's expiry (RFC 3339), e.g. 2026-11-29T11:00:00Z", present)

		k := embeddedChallengeKey{c.Name, c.Value}
		if first, dup := challenges[k]; dup {
			p.fail(pos.lineOf(), "%s: the record %s %q is already given as %s%s; keep one", path, c.Name, c.Value, first.path, embeddedAlso(first.line))
		} else {
			challenges[k] = seen{path, pos.lineOf()}
		}
	}
}

func embeddedDeref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func embeddedIsNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func embeddedNodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("the value %q", n.Value)
	}
	return "something else"
}

// The file as written: the canonical form of the data.

type embeddedFile struct {
	Repls      []embeddedFileRepl      `yaml:"repls"`
	Tombstones []embeddedFileTombstone `yaml:"tombstones"`
	Domains    []embeddedFileDomain    `yaml:"domains"`
	Challenges []embeddedFileChallenge `yaml:"challenges"`
}

type embeddedFileRepl struct {
	ID         string   `yaml:"id"`
	Owner      string   `yaml:"owner"`
	Slug       string   `yaml:"slug"`
	Endpoints  []string `yaml:"endpoints,flow"`
	Generation int64    `yaml:"generation"`
	CreatedAt  string   `yaml:"created_at,omitempty"`
	UpdatedAt  string   `yaml:"updated_at,omitempty"`
}

type embeddedFileTombstone struct {
	ReplID     string `yaml:"repl_id"`
	Owner      string `yaml:"owner"`
	Slug       string `yaml:"slug"`
	Cluster    string `yaml:"cluster"`
	Generation int64  `yaml:"generation"`
	MovedAt    string `yaml:"moved_at"`
}

type embeddedFileDomain struct {
	Name       string `yaml:"name"`
	ReplID     string `yaml:"repl_id"`
	Token      string `yaml:"token"`
	VerifiedAt string `yaml:"verified_at,omitempty"`
	CreatedAt  string `yaml:"created_at,omitempty"`
}

type embeddedFileChallenge struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ExpiresAt string `yaml:"expires_at"`
}

// embeddedFormatTime writes a time in RFC 3339, "" for the zero time.
func embeddedFormatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func embeddedMarshal(d *embeddedDoc) ([]byte, error) {
	f := embeddedFile{
		Repls:      make([]embeddedFileRepl, 0, len(d.repls)),
		Tombstones: make([]embeddedFileTombstone, 0, len(d.tombstones)),
		Domains:    make([]embeddedFileDomain, 0, len(d.domains)),
		Challenges: make([]embeddedFileChallenge, 0, len(d.challenges)),
	}
	for _, r := range d.repls {
		f.Repls = append(f.Repls, embeddedFileRepl{
			ID: r.ID, Owner: r.Owner, Slug: r.Slug, Endpoints: r.Endpoints, Generation: r.Generation,
			CreatedAt: embeddedFormatTime(r.CreatedAt), UpdatedAt: embeddedFormatTime(r.UpdatedAt),
		})
	}
	for _, t := range d.tombstones {
		f.Tombstones = append(f.Tombstones, embeddedFileTombstone{
			ReplID: t.ReplID, Owner: t.Owner, Slug: t.Slug, Cluster: t.Cluster, Generation: t.Generation,
			MovedAt: t.MovedAt.UTC().Format(time.RFC3339Nano),
		})
	}
	for _, dom := range d.domains {
		f.Domains = append(f.Domains, embeddedFileDomain{
			Name: dom.Name, ReplID: dom.ReplID, Token: dom.Token,
			VerifiedAt: embeddedFormatTime(dom.VerifiedAt), CreatedAt: embeddedFormatTime(dom.CreatedAt),
		})
	}
	for _, c := range d.challenges {
		f.Challenges = append(f.Challenges, embeddedFileChallenge{
			Name: c.Name, Value: c.Value, ExpiresAt: c.ExpiresAt.UTC().Format(time.RFC3339Nano),
		})
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&f); err != nil {
		return nil, fmt.Errorf("encode embedded store: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode embedded store: %w", err)
	}
	return b.Bytes(), nil
}
