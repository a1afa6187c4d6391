package move

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// Row is what one cluster holds for a repl: a live row, a tombstone (at
// most one of the two, as the stores keep it), and the custom domains
// linked to it there.
type Row struct {
	Cluster   string
	Live      *store.Repl
	Tombstone *store.Tombstone
	Domains   []store.Domain
}

// Known reports whether the cluster has anything for the repl.
func (r Row) Known() bool { return r.Live != nil || r.Tombstone != nil || len(r.Domains) > 0 }

// State is what every cluster of a registry holds for one repl.
type State struct {
	ReplID string
	Rows   []Row // one per cluster, in registry order
}

// Survey reads the repl's live row, tombstone and domains in every cluster
// of the registry, concurrently. It fails when a cluster cannot be read,
// naming it: a move must see every cluster before it changes any.
func Survey(ctx context.Context, reg *cluster.Registry, stores map[string]store.Store, replID string) (State, error) {
	if err := checkStores(reg, stores); err != nil {
		return State{}, err
	}
	st := State{ReplID: replID, Rows: make([]Row, len(reg.Clusters))}
	errs := make([]error, len(reg.Clusters))
	var wg sync.WaitGroup
	for i, c := range reg.Clusters {
		wg.Go(func() {
			st.Rows[i], errs[i] = SurveyCluster(ctx, c.Name, stores[c.Name], replID)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return State{}, err
	}
	return st, nil
}

// SurveyCluster reads what one cluster holds for the repl, as Survey does
// for every cluster. Errors name the cluster.
func SurveyCluster(ctx context.Context, cluster string, s store.Store, replID string) (Row, error) {
	row := Row{Cluster: cluster}
	live, err := s.GetRepl(ctx, replID)
	switch {
	case err == nil:
		row.Live = &live
	case !errors.Is(err, store.ErrNotFound):
		return row, fmt.Errorf("read cluster %s: %w", cluster, err)
	}
	t, err := s.GetTombstone(ctx, replID)
	switch {
	case err == nil:
		row.Tombstone = &t
	case !errors.Is(err, store.ErrNotFound):
		return row, fmt.Errorf("read cluster %s: %w", cluster, err)
	}
	if row.Domains, err = s.ListDomains(ctx, replID); err != nil {
		return row, fmt.Errorf("read cluster %s: %w", cluster, err)
	}
	return row, nil
}

// checkStores checks that there is one store per cluster of the registry
// and no other.
func checkStores(reg *cluster.Registry, stores map[string]store.Store) error {
	if reg == nil || len(reg.Clusters) == 0 {
		return fmt.Errorf("%w: no clusters: the registry is empty", store.ErrInvalid)
	}
	for _, c := range reg.Clusters {
		if stores[c.Name] == nil {
			return fmt.Errorf("%w: no store for cluster %s of the registry", store.ErrInvalid, c.Name)
		}
	}
	for name := range stores {
		if _, ok := reg.Cluster(name); !ok {
			return fmt.Errorf("%w: store for cluster %q, which is not in the registry (it has %v)", store.ErrInvalid, name, reg.Names())
		}
	}
	return nil
}

// Row returns the row of the named cluster.
func (s State) Row(cluster string) (Row, bool) {
	i := slices.IndexFunc(s.Rows, func(r Row) bool { return r.Cluster == cluster })
	if i < 0 {
		return Row{}, false
	}
	return s.Rows[i], true
}

// Current returns the row where the repl is live with the highest
// generation: the cluster replns answers for it. The first such row in
// registry order wins a tie (which Check reports as a problem).
func (s State) Current() (Row, bool) {
	var cur Row
	for _, r := range s.Rows {
		if r.Live != nil && (cur.Live == nil || r.Live.Generation > cur.Live.Generation) {
			cur = r
		}
	}
	return cur, cur.Live != nil
}

// Live returns the clusters where the repl is live.
func (s State) Live() []string {
	var out []string
	for _, r := range s.Rows {
		if r.Live != nil {
			out = append(out, r.Cluster)
		}
	}
	return out
}

// MaxGeneration returns the highest generation of the repl's live rows and
// tombstones anywhere (0 when there are none).
func (s State) MaxGeneration() int64 {
	var g int64
	for _, r := range s.Rows {
		if r.Live != nil {
			g = max(g, r.Live.Generation)
		}
		if r.Tombstone != nil {
			g = max(g, r.Tombstone.Generation)
		}
	}
	return g
}

// Name returns the repl's owner and slug, from its current live row or
// else from any tombstone.
func (s State) Name() (owner, slug string) {
	if cur, ok := s.Current(); ok {
		return cur.Live.Owner, cur.Live.Slug
	}
	for _, r := range s.Rows {
		if r.Tombstone != nil {
			return r.Tombstone.Owner, r.Tombstone.Slug
		}
	}
	return "", ""
}

// Domains returns the custom domains linked to the repl in any cluster,
// ordered by name, each once: the record of the current cluster when it
// has the domain, else the first in registry order.
func (s State) Domains() []store.Domain {
	seen := map[string]bool{}
	var out []store.Domain
	add := func(ds []store.Domain) {
		for _, d := range ds {
			if !seen[d.Name] {
				seen[d.Name] = true
				out = append(out, d)
			}
		}
	}
	if cur, ok := s.Current(); ok {
		add(cur.Domains)
	}
	for _, r := range s.Rows {
		add(r.Domains)
	}
	slices.SortFunc(out, func(a, b store.Domain) int { return strings.Compare(a.Name, b.Name) })
	return out
}
