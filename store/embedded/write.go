package embedded

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/replproxy/replproxy/store"
)

// Writes: each one is a whole read-change-check-replace of the file under
// the lock (see write).

// CreateRepl implements Store.
func (s *Store) CreateRepl(ctx context.Context, r store.Repl) (store.Repl, error) {
	doing := "create repl " + r.ID
	if err := store.CheckRepl(r); err != nil {
		return store.Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	if r.Generation == 0 {
		r.Generation = 1
	}
	var out store.Repl
	err := s.write(ctx, doing, func(d *tables) error {
		if _, ok := d.repls[r.ID]; ok {
			return fmt.Errorf("%w: repl %s is already live here", store.ErrConflict, r.ID)
		}
		if _, ok := d.tombstones[r.ID]; ok {
			return fmt.Errorf("%w: repl %s has a tombstone here: it moved away; move it back instead", store.ErrConflict, r.ID)
		}
		if other, ok := d.liveByName(r.Owner, r.Slug); ok {
			return fmt.Errorf("%w: owner/slug %s/%s is already used by repl %s", store.ErrConflict, r.Owner, r.Slug, other.ID)
		}
		now := s.stamp()
		out = store.Repl{
			ID: r.ID, Owner: r.Owner, Slug: r.Slug,
			Endpoints:  slices.Clone(r.Endpoints),
			Generation: r.Generation,
			Asleep:     r.Asleep,
			CreatedAt:  now, UpdatedAt: now,
		}
		d.repls[r.ID] = out
		return nil
	})
	if err != nil {
		return store.Repl{}, err
	}
	return cloneRepl(out), nil
}

// SetEndpoints implements Store.
func (s *Store) SetEndpoints(ctx context.Context, id string, endpoints []string) (store.Repl, error) {
	doing := "set endpoints of repl " + id
	if err := store.CheckEndpoints(endpoints); err != nil {
		return store.Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	var out store.Repl
	err := s.write(ctx, doing, func(d *tables) error {
		r, ok := d.repls[id]
		if !ok {
			return fmt.Errorf("%w: repl %s is not live here", store.ErrNotFound, id)
		}
		r.Endpoints = slices.Clone(endpoints)
		r.UpdatedAt = s.stamp()
		d.repls[id] = r
		out = r
		return nil
	})
	if err != nil {
		return store.Repl{}, err
	}
	return cloneRepl(out), nil
}

// DeleteRepl implements Store.
func (s *Store) DeleteRepl(ctx context.Context, id string) error {
	err := s.write(ctx, "delete repl "+id, func(d *tables) error {
		if _, ok := d.repls[id]; !ok {
			return fmt.Errorf("%w: repl %s is not live here", store.ErrNotFound, id)
		}
		delete(d.repls, id)
		d.dropOrphanDomains()
		return nil
	})
	if err == nil {
		s.forgetActivity(ctx, id)
	}
	return err
}

// Activate implements Store.
func (s *Store) Activate(ctx context.Context, r store.Repl) (store.Repl, error) {
	return s.ActivateWithDomains(ctx, r, nil)
}

// ActivateWithDomains implements Store.
func (s *Store) ActivateWithDomains(ctx context.Context, r store.Repl, domains []store.Domain) (store.Repl, error) {
	doing := fmt.Sprintf("activate repl %s at generation %d", r.ID, r.Generation)
	if err := store.CheckActivation(r, domains); err != nil {
		return store.Repl{}, fmt.Errorf("%s: %w", doing, err)
	}
	var out store.Repl
	err := s.write(ctx, doing, func(d *tables) error {
		if t, ok := d.tombstones[r.ID]; ok {
			if t.Generation >= r.Generation {
				return fmt.Errorf("%w: repl %s moved on since: tombstone here has generation %d", store.ErrConflict, r.ID, t.Generation)
			}
			delete(d.tombstones, r.ID)
		}
		for _, dom := range domains {
			if old, ok := d.domains[dom.Name]; ok && old.ReplID != r.ID {
				return fmt.Errorf("%w: domain %s is already linked to repl %s here", store.ErrConflict, dom.Name, old.ReplID)
			}
		}
		link := func() {
			for _, dom := range domains {
				if _, ok := d.domains[dom.Name]; !ok {
					d.domains[dom.Name] = store.Domain{Name: dom.Name, ReplID: r.ID, Token: dom.Token, VerifiedAt: dom.VerifiedAt, CreatedAt: s.stamp()}
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
			return fmt.Errorf("%w: owner/slug %s/%s is already used by repl %s", store.ErrConflict, r.Owner, r.Slug, other.ID)
		}
		now := s.stamp()
		created := now
		if live {
			created = cur.CreatedAt
		}
		out = store.Repl{
			ID: r.ID, Owner: r.Owner, Slug: r.Slug,
			Endpoints:  slices.Clone(r.Endpoints),
			Generation: r.Generation,
			Asleep:     r.Asleep,
			CreatedAt:  created, UpdatedAt: now,
		}
		d.repls[r.ID] = out
		link()
		return nil
	})
	if err != nil {
		return store.Repl{}, err
	}
	return cloneRepl(out), nil
}

// Retire implements Store.
func (s *Store) Retire(ctx context.Context, replID, cluster string, generation int64) (store.Tombstone, error) {
	doing := fmt.Sprintf("retire repl %s to cluster %s at generation %d", replID, cluster, generation)
	if err := store.ValidLabel(cluster); err != nil {
		return store.Tombstone{}, fmt.Errorf("%s: cluster: %w", doing, err)
	}
	var out store.Tombstone
	err := s.write(ctx, doing, func(d *tables) error {
		t, tombstoned := d.tombstones[replID]
		if tombstoned && t.Generation >= generation {
			out = t
			return nil
		}
		r, live := d.repls[replID]
		switch {
		case live && r.Generation >= generation:
			return fmt.Errorf("%w: repl %s is live here at generation %d, not below %d: it came back since",
				store.ErrConflict, replID, r.Generation, generation)
		case live:
			delete(d.repls, replID)
			t = store.Tombstone{ReplID: replID, Owner: r.Owner, Slug: r.Slug}
		case !tombstoned:
			return fmt.Errorf("%w: repl %s is neither live nor tombstoned here", store.ErrNotFound, replID)
		}
		t.Cluster, t.Generation, t.MovedAt = cluster, generation, s.stamp()
		d.tombstones[replID] = t
		out = t
		return nil
	})
	if err != nil {
		return store.Tombstone{}, err
	}
	s.forgetActivity(ctx, replID)
	return out, nil
}

// Repoint implements Store. Like Retire, it sets the tombstone's MovedAt
// to now when it changes it.
func (s *Store) Repoint(ctx context.Context, replID, cluster string, generation int64) error {
	doing := fmt.Sprintf("repoint tombstone of repl %s to cluster %s at generation %d", replID, cluster, generation)
	if err := store.ValidLabel(cluster); err != nil {
		return fmt.Errorf("%s: cluster: %w", doing, err)
	}
	return s.write(ctx, doing, func(d *tables) error {
		t, ok := d.tombstones[replID]
		if !ok {
			return fmt.Errorf("%w: no tombstone for the repl here", store.ErrNotFound)
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
func (s *Store) CollectTombstones(ctx context.Context, cutoff time.Time) (int, error) {
	var n int
	err := s.write(ctx, "collect tombstones", func(d *tables) error {
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
func (s *Store) LinkDomain(ctx context.Context, d store.Domain) (store.Domain, error) {
	doing := "link domain " + d.Name
	if err := store.ValidDomain(d.Name); err != nil {
		return store.Domain{}, fmt.Errorf("%s: %w", doing, err)
	}
	if d.Token == "" {
		d.Token = store.NewToken()
	} else if err := store.CheckToken(d.Token); err != nil {
		return store.Domain{}, fmt.Errorf("%s: %w", doing, err)
	}
	var out store.Domain
	err := s.write(ctx, doing, func(data *tables) error {
		if old, ok := data.domains[d.Name]; ok {
			return fmt.Errorf("%w: domain %s is already linked to repl %s", store.ErrConflict, d.Name, old.ReplID)
		}
		if !data.knows(d.ReplID) {
			return fmt.Errorf("%w: repl %s is neither live nor tombstoned here", store.ErrNotFound, d.ReplID)
		}
		out = store.Domain{Name: d.Name, ReplID: d.ReplID, Token: d.Token, CreatedAt: s.stamp()}
		data.domains[d.Name] = out
		return nil
	})
	if err != nil {
		return store.Domain{}, err
	}
	return out, nil
}

// UnlinkDomain implements Store.
func (s *Store) UnlinkDomain(ctx context.Context, name string) error {
	return s.write(ctx, "unlink domain "+name, func(d *tables) error {
		if _, ok := d.domains[name]; !ok {
			return fmt.Errorf("%w: domain %s is not linked", store.ErrNotFound, name)
		}
		delete(d.domains, name)
		return nil
	})
}

// MarkDomainVerified implements Store.
func (s *Store) MarkDomainVerified(ctx context.Context, name string, at time.Time) error {
	return s.write(ctx, "mark domain "+name+" verified", func(d *tables) error {
		dom, ok := d.domains[name]
		if !ok {
			return fmt.Errorf("%w: domain %s is not linked", store.ErrNotFound, name)
		}
		dom.VerifiedAt = storedTime(at)
		d.domains[name] = dom
		return nil
	})
}

// PutChallenge implements Store.
func (s *Store) PutChallenge(ctx context.Context, c store.Challenge) error {
	if err := store.CheckChallenge(c); err != nil {
		return fmt.Errorf("put challenge: %w", err)
	}
	c.ExpiresAt = storedTime(c.ExpiresAt)
	return s.write(ctx, "put challenge "+c.Name, func(d *tables) error {
		d.challenges[challengeKey{c.Name, c.Value}] = c
		return nil
	})
}

// DeleteChallenge implements Store.
func (s *Store) DeleteChallenge(ctx context.Context, name, value string) error {
	return s.write(ctx, "delete challenge "+name, func(d *tables) error {
		delete(d.challenges, challengeKey{name, value})
		return nil
	})
}

// DeleteExpiredChallenges implements Store. Like Challenges, it takes a
// record that expires at now as expired.
func (s *Store) DeleteExpiredChallenges(ctx context.Context, now time.Time) (int, error) {
	var n int
	err := s.write(ctx, "delete expired challenges", func(d *tables) error {
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
func (s *Store) stamp() time.Time { return storedTime(s.now()) }

func storedTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }
