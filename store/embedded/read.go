package embedded

import (
	"context"
	"fmt"
	"slices"

	"github.com/replproxy/replproxy/store"
)

// Reads: from the snapshot, without locks. Slices handed out are copies,
// except Route's, which the Reader contract says are shared.

// Lookup implements Reader.
func (s *Store) Lookup(_ context.Context, k store.Key) (store.Route, error) {
	snap := s.snap.Load()
	var (
		r  store.Route
		ok bool
	)
	switch k.Kind {
	case store.KeyRepl:
		r, ok = snap.routeByName[replName{k.Owner, k.Slug}]
	case store.KeyReplID:
		r, ok = snap.routeByID[k.ID]
	case store.KeyDomain:
		r, ok = snap.routeByDomain[k.Name]
	default:
		return store.Route{}, fmt.Errorf("lookup %s: %w: not a routable name", k, store.ErrInvalid)
	}
	if !ok {
		return store.Route{}, fmt.Errorf("lookup %s: %w", k, store.ErrNotFound)
	}
	return r, nil
}

// Challenges implements Reader.
func (s *Store) Challenges(_ context.Context, name string) ([]store.Challenge, error) {
	all := s.snap.Load().challengesByName[name]
	now := s.now()
	var out []store.Challenge
	for _, c := range all {
		if c.ExpiresAt.After(now) {
			out = append(out, c)
		}
	}
	return out, nil
}

// GetRepl implements Store.
func (s *Store) GetRepl(_ context.Context, id string) (store.Repl, error) {
	snap := s.snap.Load()
	i, ok := snap.replByID[id]
	if !ok {
		return store.Repl{}, fmt.Errorf("get repl %s: %w", id, store.ErrNotFound)
	}
	return cloneRepl(snap.repls[i]), nil
}

// ListRepls implements Store.
func (s *Store) ListRepls(_ context.Context, owner string) ([]store.Repl, error) {
	var out []store.Repl
	for _, r := range s.snap.Load().repls {
		if owner == "" || r.Owner == owner {
			out = append(out, cloneRepl(r))
		}
	}
	return out, nil
}

// GetTombstone implements Store.
func (s *Store) GetTombstone(_ context.Context, replID string) (store.Tombstone, error) {
	snap := s.snap.Load()
	i, ok := snap.tombByID[replID]
	if !ok {
		return store.Tombstone{}, fmt.Errorf("get tombstone %s: %w", replID, store.ErrNotFound)
	}
	return snap.tombstones[i], nil
}

// ListTombstones implements Store.
func (s *Store) ListTombstones(context.Context) ([]store.Tombstone, error) {
	return slices.Clone(s.snap.Load().tombstones), nil
}

// GetDomain implements Store.
func (s *Store) GetDomain(_ context.Context, name string) (store.Domain, error) {
	snap := s.snap.Load()
	i, ok := snap.domainByName[name]
	if !ok {
		return store.Domain{}, fmt.Errorf("get domain %s: %w", name, store.ErrNotFound)
	}
	return snap.domains[i], nil
}

// ListDomains implements Store.
func (s *Store) ListDomains(_ context.Context, replID string) ([]store.Domain, error) {
	var out []store.Domain
	for _, d := range s.snap.Load().domains {
		if replID == "" || d.ReplID == replID {
			out = append(out, d)
		}
	}
	return out, nil
}

// Stats implements Store.
func (s *Store) Stats(context.Context) (store.Stats, error) {
	snap := s.snap.Load()
	return store.Stats{
		Repls:      len(snap.repls),
		Tombstones: len(snap.tombstones),
		Domains:    len(snap.domains),
		Challenges: len(snap.challenges),
	}, nil
}

func cloneRepl(r store.Repl) store.Repl {
	r.Endpoints = slices.Clone(r.Endpoints)
	return r
}

// ListAll implements Store, from one immutable snapshot of the file.
func (s *Store) ListAll(context.Context) (store.Snapshot, error) {
	snap := s.snap.Load()
	out := store.Snapshot{Repls: make([]store.Repl, 0, len(snap.repls)), Tombstones: slices.Clone(snap.tombstones), Domains: slices.Clone(snap.domains)}
	for _, r := range snap.repls {
		out.Repls = append(out.Repls, cloneRepl(r))
	}
	now := s.now()
	for _, c := range snap.challenges {
		if c.ExpiresAt.After(now) {
			out.Challenges = append(out.Challenges, c)
		}
	}
	return out, nil
}
