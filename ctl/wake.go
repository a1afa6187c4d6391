package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/replproxy/replproxy/store"
)

// Sleep and wake (README, "Wake on request"): replctl does by hand what
// the container manager (sleep) and a proxy (wake) do.

// wakeOut is a repl's wake in -o json output.
type wakeOut struct {
	State       string     `json:"state"` // requested, claimed, failed
	RequestedAt time.Time  `json:"requested_at"`
	RequestedBy string     `json:"requested_by"`
	ClaimedBy   string     `json:"claimed_by,omitempty"`
	ClaimedAt   *time.Time `json:"claimed_at,omitempty"`
	Failed      string     `json:"failed,omitempty"`
	FailedAt    *time.Time `json:"failed_at,omitempty"`
}

func wakeOutOf(w store.Wake) *wakeOut {
	out := &wakeOut{State: "requested", RequestedAt: w.RequestedAt, RequestedBy: w.RequestedBy,
		ClaimedBy: w.ClaimedBy, ClaimedAt: timePtr(w.ClaimedAt), Failed: w.Failed, FailedAt: timePtr(w.FailedAt)}
	switch {
	case w.Failed != "":
		out.State = "failed"
	case w.ClaimedBy != "":
		out.State = "claimed"
	}
	return out
}

func (w *wakeOut) describe() string {
	s := fmt.Sprintf("requested by %s at %s", w.RequestedBy, stamp(w.RequestedAt))
	if w.ClaimedBy != "" {
		s += fmt.Sprintf(", claimed by %s at %s", w.ClaimedBy, stamp(deref(w.ClaimedAt)))
	}
	if w.Failed != "" {
		s += fmt.Sprintf(", FAILED at %s: %s", stamp(deref(w.FailedAt)), w.Failed)
	}
	return s
}

func awakeState(asleep bool) string {
	if asleep {
		return "asleep"
	}
	return "awake"
}

// liveRepl opens the cluster --cluster names, or every cluster, and finds
// the one where the repl is live. The caller calls closeAll.
func (a *app) liveRepl(ctx context.Context, doing, cluster, arg string) (s store.Store, where string, r store.Repl, closeAll func(), err error) {
	var stores map[string]store.Store
	if cluster != "" {
		c, err := a.cluster(cluster)
		if err != nil {
			return nil, "", store.Repl{}, nil, err
		}
		all, closeOne, err := a.openStores(ctx, c.Name)
		if err != nil {
			return nil, "", store.Repl{}, nil, err
		}
		if all[0].err != nil {
			closeOne()
			return nil, "", store.Repl{}, nil, all[0].err
		}
		stores, closeAll = map[string]store.Store{c.Name: all[0].store}, closeOne
	} else if stores, closeAll, err = a.openAll(ctx, doing+" without --cluster (to find where the repl is live)"); err != nil {
		return nil, "", store.Repl{}, nil, err
	}
	fail := func(err error) (store.Store, string, store.Repl, func(), error) {
		closeAll()
		return nil, "", store.Repl{}, nil, err
	}
	id, err := a.replID(ctx, stores, arg)
	if err != nil {
		return fail(err)
	}
	var live []string
	for name, st := range stores {
		if got, err := st.GetRepl(ctx, id); err == nil {
			live, r = append(live, name), got
		} else if !errors.Is(err, store.ErrNotFound) {
			return fail(fmt.Errorf("%s: cluster %s: %w", doing, name, err))
		}
	}
	slices.Sort(live)
	switch {
	case len(live) == 0:
		return fail(fmt.Errorf("%s: %w: repl %s is not live in %s", doing, store.ErrNotFound, id, join(slices.Sorted(maps.Keys(stores)))))
	case len(live) > 1:
		return fail(fmt.Errorf("%s: %w: repl %s is live in %s: a move is not finished; finish it with replctl move, or give --cluster", doing, store.ErrConflict, id, join(live)))
	}
	return stores[live[0]], live[0], r, closeAll, nil
}

func replSleepCommand() command {
	var cluster string
	return command{
		name:  "repl sleep",
		args:  "REPL",
		nargs: 1,
		summary: "Marks a repl asleep in the cluster where it is live (or in --cluster) and clears its\n" +
			"endpoints, as the container manager does with an idle repl: the proxies stop sending to\n" +
			"them and a request asks for a wake. It does not stop the container; the manager does that.",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cluster, "cluster", "", "the cluster `NAME` (default: where the repl is live)")
		},
		run: func(ctx context.Context, a *app, args []string) error {
			s, where, live, closeAll, err := a.liveRepl(ctx, "repl sleep", cluster, args[0])
			if err != nil {
				return err
			}
			defer closeAll()
			r, err := s.Sleep(ctx, live.ID)
			if err != nil {
				return fmt.Errorf("repl sleep in %s: %w", where, err)
			}
			return a.emit(a.replJSON(where, r), func(w io.Writer) {
				fmt.Fprintf(w, "repl %s (%s/%s) is asleep in %s; a request for it asks its container manager for a wake\n", r.ID, r.Owner, r.Slug, where)
			})
		},
	}
}

// wakeResult is the output of repl wake.
type wakeResult struct {
	Cluster   string   `json:"cluster"`
	ID        string   `json:"id"`
	Requested bool     `json:"requested"` // this call made the wake
	Asleep    bool     `json:"asleep"`
	Endpoints []string `json:"endpoints,omitempty"`
	Wake      *wakeOut `json:"wake,omitempty"`
}

func replWakeCommand() command {
	var (
		cluster string
		wait    time.Duration
	)
	return command{
		name:  "repl wake",
		args:  "REPL",
		nargs: 1,
		summary: "Asks the container manager of the cluster where the repl is live (or --cluster) to wake it,\n" +
			"as a proxy does on a request: a wake is recorded unless one is pending (a failed one is\n" +
			"replaced). With --wait, waits until the repl is awake (exit 0) or the wake failed (exit 1).",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cluster, "cluster", "", "the cluster `NAME` (default: where the repl is live)")
			fs.DurationVar(&wait, "wait", 0, "wait up to `DURATION` for the repl to be awake (0: do not wait)")
		},
		run: func(ctx context.Context, a *app, args []string) error {
			if wait < 0 {
				return usagef("repl wake: --wait %v: want a positive duration or 0", wait)
			}
			s, where, r, closeAll, err := a.liveRepl(ctx, "repl wake", cluster, args[0])
			if err != nil {
				return err
			}
			defer closeAll()
			made, err := s.RequestWake(ctx, r.ID, moveHolder())
			if err != nil {
				return fmt.Errorf("repl wake in %s: %w", where, err)
			}
			out := wakeResult{Cluster: where, ID: r.ID, Requested: made}
			var failed error
			for deadline := time.Now().Add(wait); ; {
				if r, err = s.GetRepl(ctx, r.ID); err != nil {
					return fmt.Errorf("repl wake in %s: %w", where, err)
				}
				out.Asleep, out.Endpoints, out.Wake = r.Asleep, r.Endpoints, nil
				if w, err := s.GetWake(ctx, r.ID); err == nil {
					out.Wake = wakeOutOf(w)
				} else if !errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("repl wake in %s: %w", where, err)
				}
				if out.Wake != nil && out.Wake.State == "failed" {
					failed = fmt.Errorf("repl wake: the wake of repl %s in %s failed: %s", r.ID, where, out.Wake.Failed)
					break
				}
				if !r.Asleep || wait == 0 || !time.Now().Before(deadline) {
					break
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("repl wake: waiting for repl %s in %s: %w", r.ID, where, ctx.Err())
				case <-time.After(100 * time.Millisecond):
				}
			}
			if err := a.emit(out, func(w io.Writer) { out.print(w) }); err != nil {
				return err
			}
			if failed != nil {
				return failed
			}
			if wait > 0 && out.Asleep {
				return fmt.Errorf("repl wake: repl %s in %s is still asleep after %v", r.ID, where, wait)
			}
			return nil
		},
	}
}

func (out wakeResult) print(w io.Writer) {
	switch {
	case !out.Asleep:
		fmt.Fprintf(w, "repl %s is awake in %s, endpoints %s\n", out.ID, out.Cluster, join(out.Endpoints))
	case out.Requested:
		fmt.Fprintf(w, "asked the container manager of %s to wake repl %s\n", out.Cluster, out.ID)
	default:
		fmt.Fprintf(w, "repl %s in %s is asleep; a wake was already pending\n", out.ID, out.Cluster)
	}
	if out.Wake != nil {
		fmt.Fprintf(w, "wake: %s\n", out.Wake.describe())
	}
}
