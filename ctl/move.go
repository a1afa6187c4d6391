package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"

	"github.com/replproxy/replproxy/move"
	"github.com/replproxy/replproxy/store"
)

// isStopped reports whether err is a move that stopped part way.
func isStopped(err error) bool {
	var stopped *move.Error
	return errors.As(err, &stopped)
}

// moveJSON is the output of move.
type moveJSON struct {
	ReplID      string       `json:"repl_id"`
	Owner       string       `json:"owner"`
	Slug        string       `json:"slug"`
	From        string       `json:"from,omitempty"`
	To          string       `json:"to"`
	Generation  int64        `json:"generation"`
	Endpoints   []string     `json:"endpoints"`
	DryRun      bool         `json:"dry_run,omitempty"`
	AlreadyDone bool         `json:"already_done"`
	Actions     []actionJSON `json:"actions"`
}

type actionJSON struct {
	Step     int    `json:"step"`
	StepName string `json:"step_name"`
	Cluster  string `json:"cluster"`
	Action   string `json:"action"`
	Status   string `json:"status"`
}

func moveOut(p move.Plan, dryRun bool) moveJSON {
	out := moveJSON{ReplID: p.ReplID, Owner: p.Owner, Slug: p.Slug, From: p.From, To: p.To, Generation: p.Generation,
		Endpoints: p.Endpoints, DryRun: dryRun, AlreadyDone: p.AlreadyDone, Actions: []actionJSON{}}
	for _, a := range p.Actions {
		out.Actions = append(out.Actions, actionJSON{Step: int(a.Step), StepName: a.Step.String(), Cluster: a.Cluster, Action: a.What, Status: string(a.Status)})
	}
	return out
}

func moveCommand() command {
	var (
		to        string
		endpoints listFlag
		dryRun    bool
		force     bool
		stopAfter int
	)
	return command{
		name:  "move",
		args:  "REPL",
		nargs: 1,
		summary: `Moves a repl to another cluster without dropping a request:
  1. activate: the repl is made live in the destination, at a generation one above any it had,
     with its custom domains (replns answers the destination from now on);
  2. repoint: every other cluster's tombstone for it is made to name the destination;
  3. retire: in the source, in one transaction, the live row becomes a tombstone to the destination.
Every cluster is read first; each step is idempotent and logged. When a move stops part way (a
database unreachable, the command killed), every request is still served, and running the same
command again finishes it without bumping the generation again. Running it once more does nothing.
A move claims the repl in every cluster before it changes anything: a move of it to another cluster
that is in progress (or that died less than 2 minutes ago) makes this one fail, naming it, with
nothing changed; a rerun of the same move takes its claims over.`,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&to, "to", "", "the destination `CLUSTER` (required)")
			fs.Var(&endpoints, "endpoint", "the container's `HOST:PORT` in the destination (required; repeat for several)")
			fs.BoolVar(&dryRun, "dry-run", false, "print what the move would do, and change nothing")
			fs.BoolVar(&force, "force", false, "take the repl's claims from a move to another cluster that died (check that no one is running it: two moves at once split the repl)")
			fs.IntVar(&stopAfter, "stop-after", 0, "stop after step `N` (1-3) as a crash would, with exit status 1: for tests and recovery drills; run the move again without it to finish")
		},
		run: func(ctx context.Context, a *app, args []string) error {
			if to == "" {
				return usagef("move: give --to CLUSTER")
			}
			if len(endpoints) == 0 {
				return usagef("move: give --endpoint HOST:PORT, the repl's container in %s", to)
			}
			if stopAfter < 0 || stopAfter > int(move.StepRetire) {
				return usagef("move: --stop-after %d: want a step from 1 to %d", stopAfter, int(move.StepRetire))
			}
			reg, err := a.registry()
			if err != nil {
				return err
			}
			if _, err := a.cluster(to); err != nil {
				return fmt.Errorf("move: %w", err)
			}
			if err := store.CheckEndpoints(endpoints); err != nil {
				return fmt.Errorf("move: %w", err)
			}
			stores, closeAll, err := a.openAll(ctx, "a move")
			if err != nil {
				return err
			}
			defer closeAll()
			id, err := a.replID(ctx, stores, args[0])
			if err != nil {
				return err
			}
			var hooks move.Hooks
			if stopAfter > 0 {
				hooks.AfterStep = func(_ context.Context, s move.Step) error {
					if int(s) == stopAfter {
						return errors.New("stopped by --stop-after")
					}
					return nil
				}
			}
			m, err := move.New(reg, stores, hooks, a.logger)
			if err != nil {
				return err
			}
			req := move.Request{Repl: id, To: to, Endpoints: endpoints, Holder: moveHolder(), Force: force}
			var p move.Plan
			if dryRun {
				p, err = m.Plan(ctx, req)
			} else {
				p, err = m.Move(ctx, req)
			}
			if err != nil && !isStopped(err) {
				return err
			}
			if eerr := a.emit(moveOut(p, dryRun), func(w io.Writer) { moveTable(w, p, dryRun, err != nil) }); eerr != nil {
				return eerr
			}
			return err
		},
	}
}

func moveTable(w io.Writer, p move.Plan, dryRun, stopped bool) {
	from := p.From
	if from == "" {
		from = "?"
	}
	switch {
	case p.AlreadyDone:
		fmt.Fprintf(w, "repl %s (%s/%s) is in %s at generation %d already: an earlier move finished; nothing to do\n", p.ReplID, p.Owner, p.Slug, p.To, p.Generation)
	case dryRun:
		fmt.Fprintf(w, "would move repl %s (%s/%s) from %s to %s at generation %d:\n", p.ReplID, p.Owner, p.Slug, from, p.To, p.Generation)
	case stopped:
		fmt.Fprintf(w, "the move of repl %s (%s/%s) from %s to %s stopped part way:\n", p.ReplID, p.Owner, p.Slug, from, p.To)
	default:
		fmt.Fprintf(w, "moved repl %s (%s/%s) from %s to %s at generation %d\n", p.ReplID, p.Owner, p.Slug, from, p.To, p.Generation)
	}
	row(w, "STEP", "CLUSTER", "ACTION", "STATUS")
	for _, a := range p.Actions {
		row(w, fmt.Sprintf("%d %s", a.Step, a.Step), a.Cluster, a.What, a.Status)
	}
}

// moveHolder says who runs this move, for its claims: the command, the
// host, the process and the user.
func moveHolder() string {
	host, _ := os.Hostname()
	who := "?"
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	return fmt.Sprintf("replctl on %s, pid %d, by %s", host, os.Getpid(), who)
}
