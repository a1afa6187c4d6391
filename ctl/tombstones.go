package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"
)

// tombstoneJSON is a tombstone in -o json output.
type tombstoneJSON struct {
	Cluster    string    `json:"cluster"`
	ReplID     string    `json:"repl_id"`
	Owner      string    `json:"owner"`
	Slug       string    `json:"slug"`
	To         string    `json:"to"`
	Generation int64     `json:"generation"`
	MovedAt    time.Time `json:"moved_at"`
}

// tombstones lists the tombstones of the clusters, those that moved before
// cutoff when it is not zero.
func tombstones(ctx context.Context, all []opened, cutoff time.Time) ([]tombstoneJSON, []error) {
	out := []tombstoneJSON{}
	var errs []error
	for _, o := range all {
		if o.err != nil {
			errs = append(errs, o.err)
			continue
		}
		ts, err := o.store.ListTombstones(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: %w", o.cluster.Name, err))
			continue
		}
		for _, t := range ts {
			if cutoff.IsZero() || t.MovedAt.Before(cutoff) {
				out = append(out, tombstoneJSON{Cluster: o.cluster.Name, ReplID: t.ReplID, Owner: t.Owner, Slug: t.Slug,
					To: t.Cluster, Generation: t.Generation, MovedAt: t.MovedAt.UTC()})
			}
		}
	}
	return out, errs
}

func tombstoneTable(w io.Writer, ts []tombstoneJSON) {
	row(w, "CLUSTER", "REPL", "OWNER", "SLUG", "TO", "GENERATION", "MOVED")
	for _, t := range ts {
		row(w, t.Cluster, t.ReplID, t.Owner, t.Slug, t.To, t.Generation, stamp(t.MovedAt))
	}
}

func clustersFlag(cluster string) []string {
	if cluster == "" {
		return nil
	}
	return []string{cluster}
}

func tombstonesListCommand() command {
	var cluster string
	return command{
		name:    "tombstones list",
		summary: "Lists the tombstones of every cluster (or of one): repls that moved away, and where to.",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cluster, "cluster", "", "list the cluster `NAME` only")
		},
		run: func(ctx context.Context, a *app, _ []string) error {
			all, closeAll, err := a.openStores(ctx, clustersFlag(cluster)...)
			if err != nil {
				return err
			}
			defer closeAll()
			out, errs := tombstones(ctx, all, time.Time{})
			if err := a.emit(out, func(w io.Writer) { tombstoneTable(w, out) }); err != nil {
				return err
			}
			if len(errs) > 0 {
				return fmt.Errorf("tombstones list is incomplete:\n%w", errors.Join(errs...))
			}
			return nil
		},
	}
}

// gcJSON is one cluster's line of tombstones gc.
type gcJSON struct {
	Cluster string `json:"cluster"`
	Removed int    `json:"removed"`
	Error   string `json:"error,omitempty"`
}

func tombstonesGCCommand() command {
	var (
		cluster   string
		olderThan time.Duration
		dryRun    bool
	)
	return command{
		name: "tombstones gc",
		summary: "Removes the tombstones that moved more than --older-than ago, in every cluster (or one), with\n" +
			"the custom domains that named only them. Keep the age far above any DNS TTL a resolver could\n" +
			"still hold (replns answers with 60 s): a client with an older answer still reaches the old cluster.",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cluster, "cluster", "", "collect in the cluster `NAME` only")
			fs.DurationVar(&olderThan, "older-than", 24*time.Hour, "remove tombstones that moved more than this long ago")
			fs.BoolVar(&dryRun, "dry-run", false, "list what would be removed, and remove nothing")
		},
		run: func(ctx context.Context, a *app, _ []string) error {
			if olderThan <= 0 {
				return usagef("tombstones gc: --older-than %s: want a positive duration", olderThan)
			}
			if olderThan < time.Hour {
				a.logger.Warn("--older-than is short: clients holding an older DNS answer lose the repl", zap.Duration("older_than", olderThan))
			}
			all, closeAll, err := a.openStores(ctx, clustersFlag(cluster)...)
			if err != nil {
				return err
			}
			defer closeAll()
			cutoff := time.Now().Add(-olderThan)
			if dryRun {
				out, errs := tombstones(ctx, all, cutoff)
				if err := a.emit(out, func(w io.Writer) {
					fmt.Fprintf(w, "would remove %d tombstone(s) that moved before %s:\n", len(out), stamp(cutoff))
					tombstoneTable(w, out)
				}); err != nil {
					return err
				}
				if len(errs) > 0 {
					return fmt.Errorf("tombstones gc --dry-run is incomplete:\n%w", errors.Join(errs...))
				}
				return nil
			}
			out := []gcJSON{}
			var errs []error
			for _, o := range all {
				g := gcJSON{Cluster: o.cluster.Name}
				err := o.err
				if err == nil {
					if g.Removed, err = o.store.CollectTombstones(ctx, cutoff); err != nil {
						err = fmt.Errorf("cluster %s: %w", o.cluster.Name, err)
					}
				}
				if err != nil {
					g.Error = err.Error()
					errs = append(errs, err)
				}
				out = append(out, g)
			}
			err = a.emit(out, func(w io.Writer) {
				row(w, "CLUSTER", "REMOVED")
				for _, g := range out {
					n := fmt.Sprint(g.Removed)
					if g.Error != "" {
						n = "failed"
					}
					row(w, g.Cluster, n)
				}
			})
			if err != nil {
				return err
			}
			if len(errs) > 0 {
				return fmt.Errorf("tombstones gc failed in some clusters; run it again when they are reachable:\n%w", errors.Join(errs...))
			}
			return nil
		},
	}
}
