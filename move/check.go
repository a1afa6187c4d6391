package move

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// Check reports, as one error listing every problem, each way a request
// for the repl could fail to reach it: it looks up the repl's id, its
// owner/slug and each of its custom domains in every cluster that knows the
// repl, as a proxy there would, and follows a tombstone once. Each lookup
// must end at the repl live, either in that cluster or in the one its
// tombstone names. The cluster replns answers (the highest generation)
// must serve every domain linked anywhere, and no two clusters may tie for
// it. Clusters that never had the repl are not asked: no request is sent
// there.
//
// Check holds between any two steps of a move, and once it is done. An
// error reading a cluster is returned as is.
func Check(ctx context.Context, reg *cluster.Registry, stores map[string]store.Store, replID string) error {
	st, err := Survey(ctx, reg, stores, replID)
	if err != nil {
		return err
	}
	return check(ctx, st, stores)
}

// CheckSettled is Check, and also that the repl is live in one cluster
// only and that every tombstone names that cluster at its generation:
// the state a finished move leaves.
func CheckSettled(ctx context.Context, reg *cluster.Registry, stores map[string]store.Store, replID string) error {
	st, err := Survey(ctx, reg, stores, replID)
	if err != nil {
		return err
	}
	problems := []error{check(ctx, st, stores)}
	cur, ok := st.Current()
	if live := st.Live(); len(live) > 1 {
		problems = append(problems, fmt.Errorf("repl %s is live in %d clusters (%s): a move is not finished", replID, len(live), strings.Join(live, ", ")))
	}
	for _, r := range st.Rows {
		if t := r.Tombstone; ok && t != nil && (t.Cluster != cur.Cluster || t.Generation != cur.Live.Generation) {
			problems = append(problems, fmt.Errorf("cluster %s: tombstone names %s at generation %d, not %s at generation %d",
				r.Cluster, t.Cluster, t.Generation, cur.Cluster, cur.Live.Generation))
		}
	}
	return errors.Join(problems...)
}

func check(ctx context.Context, st State, stores map[string]store.Store) error {
	cur, ok := st.Current()
	if !ok {
		return fmt.Errorf("repl %s is not live in any cluster", st.ReplID)
	}
	var problems []error
	for _, r := range st.Rows {
		if r.Cluster != cur.Cluster && r.Live != nil && r.Live.Generation == cur.Live.Generation {
			problems = append(problems, fmt.Errorf("repl %s is live in %s and %s at the same generation %d: replns cannot tell which to answer",
				st.ReplID, cur.Cluster, r.Cluster, cur.Live.Generation))
		}
	}
	base := []store.Key{store.ReplIDKey(st.ReplID), store.ReplKey(cur.Live.Owner, cur.Live.Slug)}
	all := st.Domains()
	for _, r := range st.Rows {
		if !r.Known() {
			continue
		}
		keys := base
		domains := r.Domains
		if r.Cluster == cur.Cluster {
			domains = all
		}
		for _, d := range domains {
			keys = append(keys, store.DomainKey(d.Name))
		}
		for _, k := range keys {
			p, err := resolve(ctx, stores, r.Cluster, k, st.ReplID)
			if err != nil {
				return err
			}
			if p != nil {
				problems = append(problems, p)
			}
		}
	}
	return errors.Join(problems...)
}

// resolve looks k up in cluster c as its proxy would and follows a
// tombstone once. It returns a problem, or an error when a store cannot
// be read.
func resolve(ctx context.Context, stores map[string]store.Store, c string, k store.Key, replID string) (problem, err error) {
	r, err := stores[c].Lookup(ctx, k)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("cluster %s: %s: not found, though the cluster knows repl %s", c, k, replID), nil
	case err != nil:
		return nil, fmt.Errorf("check cluster %s: %w", c, err)
	case r.ReplID != replID:
		return fmt.Errorf("cluster %s: %s: routes to repl %s, not %s", c, k, r.ReplID, replID), nil
	case r.Kind == store.RouteLocal:
		return nil, nil
	}
	next := stores[r.Cluster]
	switch {
	case r.Cluster == c:
		return fmt.Errorf("cluster %s: %s: tombstone names the cluster itself", c, k), nil
	case next == nil:
		return fmt.Errorf("cluster %s: %s: tombstone names %s, which is not in the registry", c, k, r.Cluster), nil
	}
	r2, err := next.Lookup(ctx, k)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("cluster %s: %s: tombstone to %s, where it is not found", c, k, r.Cluster), nil
	case err != nil:
		return nil, fmt.Errorf("check cluster %s: %w", r.Cluster, err)
	case r2.ReplID != replID:
		return fmt.Errorf("cluster %s: %s: tombstone to %s, where it routes to repl %s", c, k, r.Cluster, r2.ReplID), nil
	case r2.Kind == store.RouteTombstone:
		return fmt.Errorf("cluster %s: %s: tombstone to %s, whose tombstone sends it on to %s: two hops (a proxy answers 508)", c, k, r.Cluster, r2.Cluster), nil
	}
	return nil, nil
}
