package ctl

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/replproxy/replproxy/move"
	"github.com/replproxy/replproxy/store"
)

// replJSON is a live repl in -o json output.
type replJSON struct {
	Cluster    string     `json:"cluster"`
	ID         string     `json:"id"`
	Owner      string     `json:"owner"`
	Slug       string     `json:"slug"`
	Endpoints  []string   `json:"endpoints"`
	Generation int64      `json:"generation"`
	Asleep     bool       `json:"asleep"`
	CreatedAt  *time.Time `json:"created_at,omitempty"`
	UpdatedAt  *time.Time `json:"updated_at,omitempty"`
	Names      []string   `json:"names,omitempty"`
}

func (a *app) replJSON(cluster string, r store.Repl) replJSON {
	return replJSON{Cluster: cluster, ID: r.ID, Owner: r.Owner, Slug: r.Slug, Endpoints: r.Endpoints,
		Generation: r.Generation, Asleep: r.Asleep, CreatedAt: timePtr(r.CreatedAt), UpdatedAt: timePtr(r.UpdatedAt), Names: a.names(r.ID, r.Owner, r.Slug)}
}

// names returns the repl's names under -zone, if given.
func (a *app) names(id, owner, slug string) []string {
	if !a.hasZone {
		return nil
	}
	return []string{a.zoneV.Format(store.ReplKey(owner, slug)), a.zoneV.Format(store.ReplIDKey(id))}
}

// replKey parses a REPL argument: an id, OWNER/SLUG, or a name under -zone.
func (a *app) replKey(arg string) (store.Key, error) {
	if owner, slug, ok := strings.Cut(arg, "/"); ok {
		owner, slug = strings.ToLower(owner), strings.ToLower(slug)
		if err := store.ValidOwner(owner); err != nil {
			return store.Key{}, usagef("repl %q: owner: %v", arg, err)
		}
		if err := store.ValidLabel(slug); err != nil {
			return store.Key{}, usagef("repl %q: slug: %v", arg, err)
		}
		return store.ReplKey(owner, slug), nil
	}
	if strings.Contains(arg, ".") {
		if !a.hasZone {
			return store.Key{}, usagef("repl %q: a name needs -zone (or %s); or give the repl's id or OWNER/SLUG", arg, "REPLCTL_ZONE")
		}
		k, err := a.zoneV.ParseName(arg)
		if err != nil {
			return store.Key{}, usagef("repl %q: %v", arg, err)
		}
		if k.Kind != store.KeyRepl && k.Kind != store.KeyReplID {
			return store.Key{}, usagef("repl %q: not a repl's name: want <slug>.<owner>.%s or <id>.id.%s", arg, a.zone, a.zone)
		}
		return k, nil
	}
	id := strings.ToLower(arg)
	if err := store.ValidLabel(id); err != nil {
		return store.Key{}, usagef("repl %q: want a repl id, OWNER/SLUG or a name under -zone: %v", arg, err)
	}
	return store.ReplIDKey(id), nil
}

// replID resolves a REPL argument to a repl id, looking an owner/slug up
// in the given clusters: the live repl with the highest generation, or
// else one with a tombstone.
func (a *app) replID(ctx context.Context, stores map[string]store.Store, arg string) (string, error) {
	k, err := a.replKey(arg)
	if err != nil {
		return "", err
	}
	if k.Kind == store.KeyReplID {
		return k.ID, nil
	}
	live := map[string][]string{} // repl id → clusters
	var tomb store.Route
	for _, name := range slices.Sorted(maps.Keys(stores)) {
		r, err := stores[name].Lookup(ctx, k)
		switch {
		case errors.Is(err, store.ErrNotFound):
			continue
		case err != nil:
			return "", fmt.Errorf("look up %s/%s in cluster %s: %w", k.Owner, k.Slug, name, err)
		case r.Kind == store.RouteLocal:
			live[r.ReplID] = append(live[r.ReplID], name)
		case r.Generation > tomb.Generation:
			tomb = r
		}
	}
	switch {
	case len(live) > 1:
		var which []string
		for id, in := range live {
			which = append(which, id+" in "+join(in))
		}
		slices.Sort(which)
		return "", fmt.Errorf("%w: %s/%s names different repls in different clusters (%s): give the repl's id", store.ErrConflict, k.Owner, k.Slug, strings.Join(which, "; "))
	case len(live) == 1:
		for id := range live {
			return id, nil
		}
	case tomb.ReplID != "":
		return tomb.ReplID, nil
	}
	return "", fmt.Errorf("%w: no repl %s/%s in any cluster", store.ErrNotFound, k.Owner, k.Slug)
}

func replCreateCommand() command {
	var (
		cluster, id string
		endpoints   listFlag
	)
	return command{
		name:    "repl create",
		args:    "OWNER/SLUG",
		nargs:   1,
		summary: "Creates a repl, live in one cluster at generation 1. Every cluster is asked first, so that\nits id and OWNER/SLUG are not live anywhere else.",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cluster, "cluster", "", "the `NAME` of the cluster to create it in (required)")
			fs.Var(&endpoints, "endpoint", "the container's `HOST:PORT` in that cluster (required; repeat for several)")
			fs.StringVar(&id, "id", "", "the repl's `ID`, a DNS label unique across clusters (default: a random one)")
		},
		run: func(ctx context.Context, a *app, args []string) error {
			owner, slug, ok := strings.Cut(args[0], "/")
			if !ok {
				return usagef("repl create: %q: want OWNER/SLUG, e.g. alice/blog", args[0])
			}
			if cluster == "" {
				return usagef("repl create: give --cluster NAME")
			}
			if id == "" {
				id = newReplID()
			}
			r := store.Repl{ID: strings.ToLower(id), Owner: strings.ToLower(owner), Slug: strings.ToLower(slug), Endpoints: endpoints}
			if err := store.CheckRepl(r); err != nil {
				return fmt.Errorf("repl create: %w", err)
			}
			c, err := a.cluster(cluster)
			if err != nil {
				return err
			}
			stores, closeAll, err := a.openAll(ctx, "repl create (to check that the id and name are free in every cluster)")
			if err != nil {
				return err
			}
			defer closeAll()
			for name, s := range stores {
				if _, err := s.GetRepl(ctx, r.ID); err == nil {
					return fmt.Errorf("repl create: %w: id %s is live in cluster %s; pick another --id", store.ErrConflict, r.ID, name)
				}
				if t, err := s.GetTombstone(ctx, r.ID); err == nil {
					return fmt.Errorf("repl create: %w: id %s has a tombstone in cluster %s (it moved to %s); pick another --id", store.ErrConflict, r.ID, name, t.Cluster)
				}
				rt, err := s.Lookup(ctx, store.ReplKey(r.Owner, r.Slug))
				switch {
				case err == nil && rt.Kind == store.RouteLocal:
					return fmt.Errorf("repl create: %w: %s/%s is live in cluster %s as repl %s", store.ErrConflict, r.Owner, r.Slug, name, rt.ReplID)
				case err != nil && !errors.Is(err, store.ErrNotFound):
					return fmt.Errorf("repl create: check cluster %s: %w", name, err)
				}
			}
			created, err := stores[c.Name].CreateRepl(ctx, r)
			if err != nil {
				return fmt.Errorf("repl create in %s: %w", c.Name, err)
			}
			out := a.replJSON(c.Name, created)
			return a.emit(out, func(w io.Writer) {
				fmt.Fprintf(w, "created repl %s (%s/%s) in %s at generation %d, endpoints %s\n",
					created.ID, created.Owner, created.Slug, c.Name, created.Generation, join(created.Endpoints))
				if len(out.Names) > 0 {
					fmt.Fprintf(w, "names: %s\n", join(out.Names))
				}
			})
		},
	}
}

// newReplID returns a random repl id: "r" and 12 hex digits.
func newReplID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // never fails on Linux
	return "r" + hex.EncodeToString(b)
}

func replListCommand() command {
	var cluster, owner string
	return command{
		name:    "repl list",
		summary: "Lists the live repls of every cluster, or of one (--cluster), ordered by owner and slug.\nA cluster that cannot be reached is reported on stderr and the exit status is 1.",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cluster, "cluster", "", "list the cluster `NAME` only")
			fs.StringVar(&owner, "owner", "", "list the repls of `OWNER` only")
		},
		run: func(ctx context.Context, a *app, _ []string) error {
			var names []string
			if cluster != "" {
				names = []string{cluster}
			}
			all, closeAll, err := a.openStores(ctx, names...)
			if err != nil {
				return err
			}
			defer closeAll()
			out := []replJSON{}
			var errs []error
			for _, o := range all {
				if o.err != nil {
					errs = append(errs, o.err)
					continue
				}
				rs, err := o.store.ListRepls(ctx, strings.ToLower(owner))
				if err != nil {
					errs = append(errs, fmt.Errorf("cluster %s: %w", o.cluster.Name, err))
					continue
				}
				for _, r := range rs {
					out = append(out, a.replJSON(o.cluster.Name, r))
				}
			}
			err = a.emit(out, func(w io.Writer) {
				row(w, "CLUSTER", "ID", "OWNER", "SLUG", "GENERATION", "STATE", "ENDPOINTS", "UPDATED")
				for _, r := range out {
					row(w, r.Cluster, r.ID, r.Owner, r.Slug, r.Generation, awakeState(r.Asleep), join(r.Endpoints), stamp(deref(r.UpdatedAt)))
				}
			})
			if err != nil {
				return err
			}
			if len(errs) > 0 {
				return fmt.Errorf("repl list is incomplete:\n%w", errors.Join(errs...))
			}
			return nil
		},
	}
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// replShow is the output of repl show.
type replShow struct {
	ID       string          `json:"id"`
	Owner    string          `json:"owner"`
	Slug     string          `json:"slug"`
	Names    []string        `json:"names,omitempty"`
	Clusters []replInCluster `json:"clusters"`
	Domains  []domainJSON    `json:"domains"`
	LiveIn   []string        `json:"live_in"`
	Serving  string          `json:"serving,omitempty"` // the cluster replns answers
	Settled  bool            `json:"settled"`
	Problems []string        `json:"problems,omitempty"`
	// Moving is the claim of a move in progress (or of one that died and
	// has not expired), from the first cluster that has one.
	Moving *moveClaimOut `json:"moving,omitempty"`
}

type moveClaimOut struct {
	To      string    `json:"to"`
	Holder  string    `json:"holder"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"`
}

type replInCluster struct {
	Cluster    string     `json:"cluster"`
	State      string     `json:"state"` // live, tombstone, none, unreachable
	Generation int64      `json:"generation,omitempty"`
	Endpoints  []string   `json:"endpoints,omitempty"`
	Asleep     bool       `json:"asleep,omitempty"` // live
	Wake       *wakeOut   `json:"wake,omitempty"`   // live: its wake, pending or failed
	To         string     `json:"to,omitempty"`     // tombstone
	Since      *time.Time `json:"since,omitempty"`
	Error      string     `json:"error,omitempty"`
}

func replShowCommand() command {
	return command{
		name:  "repl show",
		args:  "REPL",
		nargs: 1,
		summary: "Shows the repl in every cluster (live, a tombstone, or nothing), its custom domains, and\n" +
			"whether every lookup of it reaches it in at most one hop. A move that stopped part way shows\n" +
			"here: the repl is live in two clusters, or a tombstone names the wrong cluster.",
		run: func(ctx context.Context, a *app, args []string) error { return a.replShow(ctx, args[0]) },
	}
}

// replShow is repl show: the survey, its checks, and the report.
func (a *app) replShow(ctx context.Context, name string) error {
	all, closeAll, err := a.openStores(ctx)
	if err != nil {
		return err
	}
	defer closeAll()
	reachable := map[string]store.Store{}
	var down []string
	for _, o := range all {
		if o.err == nil {
			reachable[o.cluster.Name] = o.store
		} else {
			down = append(down, o.cluster.Name)
		}
	}
	id, err := a.replID(ctx, reachable, name)
	if errors.Is(err, store.ErrNotFound) && len(down) > 0 {
		return fmt.Errorf("%v in the clusters that could be reached; %w: %s could not", err, store.ErrUnavailable, join(down))
	}
	if err != nil {
		return err
	}
	out, st, errs := surveyRepl(ctx, all, id)
	if !slices.ContainsFunc(st.Rows, move.Row.Known) {
		if len(errs) > 0 {
			return fmt.Errorf("repl %s is in no reachable cluster:\n%w", id, errors.Join(errs...))
		}
		return fmt.Errorf("%w: no cluster has a repl %s", store.ErrNotFound, id)
	}
	out.Owner, out.Slug = st.Name()
	out.Names = a.names(id, out.Owner, out.Slug)
	out.LiveIn = append(out.LiveIn, st.Live()...)
	if cur, ok := st.Current(); ok {
		out.Serving = cur.Cluster
	}
	for _, o := range all {
		if o.err != nil {
			continue
		}
		if c, err := o.store.GetMoveClaim(ctx, id); err == nil && time.Now().Before(c.Expires) {
			out.Moving = &moveClaimOut{To: c.To, Holder: c.Holder, Since: c.Since, Expires: c.Expires}
			break
		}
	}
	for _, d := range st.Domains() {
		var in []string
		for _, r := range st.Rows {
			if slices.ContainsFunc(r.Domains, func(x store.Domain) bool { return x.Name == d.Name }) {
				in = append(in, r.Cluster)
			}
		}
		out.Domains = append(out.Domains, domainOut(d, in))
	}
	if len(errs) == 0 {
		reg, _ := a.registry()
		if err := move.CheckSettled(ctx, reg, reachable, id); err != nil {
			for p := range strings.SplitSeq(err.Error(), "\n") {
				out.Problems = append(out.Problems, p)
			}
		} else {
			out.Settled = true
		}
	}
	if err := a.emit(out, func(w io.Writer) { out.print(w, len(errs) > 0) }); err != nil {
		return err
	}
	if len(errs) > 0 {
		return fmt.Errorf("repl show is incomplete:\n%w", errors.Join(errs...))
	}
	return nil
}

// surveyRepl reads the repl's rows in every cluster: what each holds, as
// shown and as the move package sees it, and the clusters that failed.
func surveyRepl(ctx context.Context, all []opened, id string) (replShow, move.State, []error) {
	out := replShow{ID: id, Clusters: []replInCluster{}, Domains: []domainJSON{}, LiveIn: []string{}}
	st := move.State{ReplID: id}
	var errs []error
	for _, o := range all {
		c := replInCluster{Cluster: o.cluster.Name, State: "none"}
		var r move.Row
		if o.err == nil {
			var err error
			r, err = move.SurveyCluster(ctx, o.cluster.Name, o.store, id)
			o.err = err
		}
		switch {
		case o.err != nil:
			c.State, c.Error = "unreachable", o.err.Error()
			errs = append(errs, o.err)
		case r.Live != nil:
			c.State, c.Generation, c.Endpoints, c.Since = "live", r.Live.Generation, r.Live.Endpoints, timePtr(r.Live.UpdatedAt)
			c.Asleep = r.Live.Asleep
			if w, err := o.store.GetWake(ctx, id); err == nil {
				c.Wake = wakeOutOf(w)
			} else if !errors.Is(err, store.ErrNotFound) {
				c.Error = "read its wake: " + err.Error()
			}
		case r.Tombstone != nil:
			c.State, c.Generation, c.To, c.Since = "tombstone", r.Tombstone.Generation, r.Tombstone.Cluster, timePtr(r.Tombstone.MovedAt)
		}
		out.Clusters = append(out.Clusters, c)
		st.Rows = append(st.Rows, r)
	}
	return out, st, errs
}

// print writes the report for a terminal; unreachable says that routing
// could not be checked.
func (out replShow) print(w io.Writer, unreachable bool) {
	fmt.Fprintf(w, "repl %s (%s/%s)\n", out.ID, out.Owner, out.Slug)
	if len(out.Names) > 0 {
		fmt.Fprintf(w, "names: %s\n", join(out.Names))
	}
	fmt.Fprintln(w)
	row(w, "CLUSTER", "STATE", "GENERATION", "ENDPOINTS / TO", "SINCE")
	for _, c := range out.Clusters {
		where := join(c.Endpoints)
		if c.State == "tombstone" {
			where = "-> " + c.To
		}
		gen := fmt.Sprint(c.Generation)
		if c.Generation == 0 {
			gen = ""
		}
		state := c.State
		if c.State == "live" && c.Asleep {
			state, where = "live, asleep", "-"
		}
		row(w, c.Cluster, state, gen, where, stamp(deref(c.Since)))
	}
	for _, c := range out.Clusters {
		if c.Wake != nil {
			fmt.Fprintf(w, "\nwake in %s: %s\n", c.Cluster, c.Wake.describe())
		}
	}
	if len(out.Domains) > 0 {
		fmt.Fprintln(w)
		row(w, "DOMAIN", "IN", "VERIFIED", "TOKEN")
		for _, d := range out.Domains {
			row(w, d.Name, join(d.Clusters), stamp(deref(d.VerifiedAt)), d.Token)
		}
	}
	fmt.Fprintln(w)
	if m := out.Moving; m != nil {
		fmt.Fprintf(w, "move in progress: to %s by %s since %s (its claim lasts until %s)\n", m.To, m.Holder, stamp(m.Since), stamp(m.Expires))
	}
	switch {
	case unreachable:
		fmt.Fprintln(w, "routing: not checked: a cluster is unreachable")
	case out.Settled:
		fmt.Fprintf(w, "routing: ok: served by %s; every lookup reaches it in at most one hop\n", out.Serving)
	default:
		fmt.Fprintf(w, "routing: NOT SETTLED (served by %s):\n", out.Serving)
		for _, p := range out.Problems {
			fmt.Fprintf(w, "  %s\n", p)
		}
		if len(out.LiveIn) > 1 || out.Serving != "" {
			fmt.Fprintf(w, "A move that stopped part way is finished by running it again: replctl move %s --to %s --endpoint ...\n", out.ID, out.Serving)
		}
	}
}

func replDeleteCommand() command {
	var cluster string
	return command{
		name:  "repl delete",
		args:  "REPL",
		nargs: 1,
		summary: "Deletes a repl's live row and its custom domains in the cluster where it is live (or in\n" +
			"--cluster). Tombstones for it in other clusters stay until tombstones gc collects them.",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cluster, "cluster", "", "delete it in the cluster `NAME` (default: where it is live)")
		},
		run: func(ctx context.Context, a *app, args []string) error {
			var (
				stores   map[string]store.Store
				closeAll func()
				err      error
			)
			if cluster != "" {
				c, err := a.cluster(cluster)
				if err != nil {
					return err
				}
				all, closeOne, err := a.openStores(ctx, c.Name)
				if err != nil {
					return err
				}
				closeAll = closeOne
				if all[0].err != nil {
					closeAll()
					return all[0].err
				}
				stores = map[string]store.Store{c.Name: all[0].store}
			} else if stores, closeAll, err = a.openAll(ctx, "repl delete without --cluster (to find where the repl is live)"); err != nil {
				return err
			}
			defer closeAll()
			id, err := a.replID(ctx, stores, args[0])
			if err != nil {
				return err
			}
			var live []string
			var deleted store.Repl
			for name, s := range stores {
				if r, err := s.GetRepl(ctx, id); err == nil {
					live, deleted = append(live, name), r
				} else if !errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("repl delete: cluster %s: %w", name, err)
				}
			}
			slices.Sort(live)
			switch {
			case len(live) == 0:
				return fmt.Errorf("repl delete: %w: repl %s is not live in %s", store.ErrNotFound, id, join(slices.Sorted(maps.Keys(stores))))
			case len(live) > 1:
				return fmt.Errorf("repl delete: %w: repl %s is live in %s: a move is not finished; finish it with replctl move, or give --cluster", store.ErrConflict, id, join(live))
			}
			if err := stores[live[0]].DeleteRepl(ctx, id); err != nil {
				return fmt.Errorf("repl delete in %s: %w", live[0], err)
			}
			out := a.replJSON(live[0], deleted)
			return a.emit(struct {
				Deleted replJSON `json:"deleted"`
			}{out}, func(w io.Writer) {
				fmt.Fprintf(w, "deleted repl %s (%s/%s) from %s\n", id, deleted.Owner, deleted.Slug, live[0])
			})
		},
	}
}
