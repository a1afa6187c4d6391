package move

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/replproxy/replproxy/store"
)

// Step is one step of a move, numbered in the order the steps run.
type Step int

// The steps of a move (see the package documentation).
const (
	// StepActivate: the repl is live in the destination, with its domains.
	StepActivate Step = iota + 1
	// StepRepoint: every other tombstone names the destination.
	StepRepoint
	// StepRetire: the source's live row is a tombstone to the destination.
	StepRetire
)

func (s Step) String() string {
	switch s {
	case StepActivate:
		return "activate"
	case StepRepoint:
		return "repoint"
	case StepRetire:
		return "retire"
	}
	return fmt.Sprintf("step(%d)", int(s))
}

// Status says whether an action has been carried out.
type Status string

// The statuses of an action.
const (
	StatusPending     Status = "to do"        // not done yet
	StatusDone        Status = "done"         // done by this run
	StatusAlreadyDone Status = "already done" // found done (by an earlier run)
)

type actionKind uint8

const (
	doActivate actionKind = iota + 1
	doLink
	doMarkVerified
	doRepoint
	doRetire
)

// Action is one write of a move, in one cluster.
type Action struct {
	Step    Step
	Cluster string
	What    string // e.g. "replace the live row (generation 2) with a tombstone to west at generation 3"
	Status  Status

	kind   actionKind
	domain store.Domain // doLink, doMarkVerified
}

// Plan is what a move does, step by step. Mover.Plan returns it with the
// actions still to do pending; Mover.Move returns it with what it did.
type Plan struct {
	ReplID, Owner, Slug string
	// From is the cluster the repl is served from before the move: where
	// it is live with the highest generation, other than To. When an
	// earlier run retired it already, it is the cluster whose tombstone
	// to To was written last, or "" when there is none.
	From string
	To   string
	// Generation is the repl's generation in To once moved: one above
	// any generation the repl had anywhere, or, when an earlier run did
	// step 1, the generation it gave.
	Generation int64
	Endpoints  []string // the repl's endpoints in To
	// Actions are every action of the three steps, in the order they run.
	Actions []Action
	// AlreadyDone: an earlier run completed this move; nothing was to do.
	AlreadyDone bool
}

// stepSummary says what step s does, e.g. "retire in east".
func (p Plan) stepSummary(s Step) string {
	var clusters []string
	for _, a := range p.Actions {
		if a.Step == s && !slices.Contains(clusters, a.Cluster) {
			clusters = append(clusters, a.Cluster)
		}
	}
	if len(clusters) == 0 {
		return fmt.Sprintf("step %d (%s: nothing to do)", s, s)
	}
	return fmt.Sprintf("step %d (%s in %s)", s, s, strings.Join(clusters, ", "))
}

// Request asks for a move.
type Request struct {
	Repl      string   // the repl's id
	To        string   // the destination cluster, as named in the registry
	Endpoints []string // the repl's container addresses (host:port) in To
	// Holder says who runs the move, in its claims (Mover.Move): e.g.
	// "replctl on ops-1, pid 4242, by alice". Empty: "a move".
	Holder string
	// Force takes the repl's claims from a move to another destination
	// that holds them (one that died: a rerun of the same move takes its
	// claims over without Force).
	Force bool
}

// ErrAlreadyThere: the repl is live in the destination already and no
// earlier move to it is left to finish. Errors wrapping it also wrap
// store.ErrConflict.
var ErrAlreadyThere = errors.New("already live in the destination")

// makePlan works out what is left to do to move the repl of st to
// req.To. It reads nothing: Mover.Plan adds the checks that need the
// destination's store.
func makePlan(st State, req Request) (Plan, error) {
	fail := func(kind error, format string, args ...any) (Plan, error) {
		return Plan{}, fmt.Errorf("move repl %s to %s: %w: %s; nothing was changed", req.Repl, req.To, kind, fmt.Sprintf(format, args...))
	}
	cur, ok := st.Current()
	if !ok {
		var tombs []string
		for _, r := range st.Rows {
			if r.Tombstone != nil {
				tombs = append(tombs, r.Cluster)
			}
		}
		if len(tombs) > 0 {
			return fail(store.ErrNotFound, "repl %s is not live in any cluster (only tombstones, in %s: it was deleted)", req.Repl, strings.Join(tombs, ", "))
		}
		return fail(store.ErrNotFound, "no cluster has a repl %s; check the id with `replctl repl list`", req.Repl)
	}
	dst, _ := st.Row(req.To)
	p := Plan{ReplID: st.ReplID, Owner: cur.Live.Owner, Slug: cur.Live.Slug, To: req.To}
	current := activated(st, dst)
	if current {
		p.Generation = dst.Live.Generation
		p.Endpoints = slices.Clone(dst.Live.Endpoints)
	} else {
		p.Generation = st.MaxGeneration() + 1
		p.Endpoints = slices.Clone(req.Endpoints)
	}
	p.From = source(st, dst, p.Generation)

	p.activate(st, dst, current)
	p.repoint(st, dst)
	p.retire(st, dst)

	pending := slices.ContainsFunc(p.Actions, func(a Action) bool { return a.Status == StatusPending })
	if current && !sameEndpoints(dst.Live.Endpoints, req.Endpoints) {
		if pending {
			return fail(store.ErrConflict, "an earlier move of repl %s to %s stopped after step 1: it is live there at generation %d with endpoints %s, not %s; run the move again with those endpoints to finish it",
				req.Repl, req.To, p.Generation, strings.Join(dst.Live.Endpoints, ", "), strings.Join(req.Endpoints, ", "))
		}
		return fail(fmt.Errorf("%w: %w", ErrAlreadyThere, store.ErrConflict), "repl %s is live in %s already (generation %d) with endpoints %s; a move does not change endpoints in place",
			req.Repl, req.To, p.Generation, strings.Join(dst.Live.Endpoints, ", "))
	}
	if !pending {
		finished := slices.ContainsFunc(st.Rows, func(r Row) bool {
			return r.Tombstone != nil && r.Tombstone.Cluster == dst.Cluster && r.Tombstone.Generation == p.Generation
		})
		if !finished {
			return fail(fmt.Errorf("%w: %w", ErrAlreadyThere, store.ErrConflict), "repl %s is live in %s already (generation %d); nothing to move",
				req.Repl, req.To, p.Generation)
		}
		p.AlreadyDone = true
	}
	return p, nil
}

// activated reports whether an earlier run did step 1 in dst: it has the
// highest generation and no tombstone names anything else at it.
func activated(st State, dst Row) bool {
	if dst.Live == nil {
		return false
	}
	for _, r := range st.Rows {
		if r.Cluster == dst.Cluster {
			continue
		}
		if r.Live != nil && r.Live.Generation >= dst.Live.Generation {
			return false
		}
		if t := r.Tombstone; t != nil && (t.Generation > dst.Live.Generation || t.Generation == dst.Live.Generation && t.Cluster != dst.Cluster) {
			return false
		}
	}
	return true
}

// source returns the cluster the move is from: the live row with the
// highest generation other than the destination's, else the newest
// tombstone to the destination at generation, else "".
func source(st State, dst Row, generation int64) string {
	from, fromGen := "", int64(0)
	for _, r := range st.Rows {
		if r.Cluster != dst.Cluster && r.Live != nil && r.Live.Generation > fromGen {
			from, fromGen = r.Cluster, r.Live.Generation
		}
	}
	if from != "" {
		return from
	}
	var fromMoved time.Time
	for _, r := range st.Rows {
		if t := r.Tombstone; t != nil && r.Cluster != dst.Cluster && t.Cluster == dst.Cluster && t.Generation == generation && t.MovedAt.After(fromMoved) {
			from, fromMoved = r.Cluster, t.MovedAt
		}
	}
	return from
}

// activate adds step 1: the live row in dst, then the custom domains it
// lacks (the source's, then any other cluster's), by name.
func (p *Plan) activate(st State, dst Row, current bool) {
	act := Action{Step: StepActivate, Cluster: dst.Cluster, kind: doActivate, Status: StatusPending,
		What: fmt.Sprintf("make live at generation %d with endpoints %s", p.Generation, strings.Join(p.Endpoints, ", "))}
	if current {
		act.Status = StatusAlreadyDone
	} else if dst.Tombstone != nil {
		act.What += fmt.Sprintf(", removing its tombstone to %s", dst.Tombstone.Cluster)
	}
	p.Actions = append(p.Actions, act)
	have := map[string]store.Domain{}
	for _, d := range dst.Domains {
		have[d.Name] = d
	}
	wanted := map[string]store.Domain{}
	var names []string
	want := func(r Row) {
		for _, d := range r.Domains {
			if _, ok := wanted[d.Name]; !ok {
				wanted[d.Name] = d
				names = append(names, d.Name)
			}
		}
	}
	if from, ok := st.Row(p.From); ok {
		want(from)
	}
	for _, r := range st.Rows {
		if r.Cluster != dst.Cluster {
			want(r)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		d := wanted[name]
		got, ok := have[name]
		switch {
		case !ok:
			p.Actions = append(p.Actions, Action{Step: StepActivate, Cluster: dst.Cluster, kind: doLink, domain: d, Status: StatusPending,
				What: "link custom domain " + name})
		case got.VerifiedAt.IsZero() && !d.VerifiedAt.IsZero():
			p.Actions = append(p.Actions, Action{Step: StepActivate, Cluster: dst.Cluster, kind: doMarkVerified, domain: d, Status: StatusPending,
				What: "mark custom domain " + name + " verified"})
		}
	}
}

// repoint adds step 2: the tombstones of every other cluster name dst.
func (p *Plan) repoint(st State, dst Row) {
	for _, r := range st.Rows {
		t := r.Tombstone
		if r.Cluster == dst.Cluster || t == nil || r.Live != nil {
			continue
		}
		a := Action{Step: StepRepoint, Cluster: r.Cluster, kind: doRepoint, Status: StatusPending,
			What: fmt.Sprintf("repoint tombstone from %s (generation %d) to %s at generation %d", t.Cluster, t.Generation, dst.Cluster, p.Generation)}
		if t.Cluster == dst.Cluster && t.Generation >= p.Generation {
			a.Status = StatusAlreadyDone
			a.What = fmt.Sprintf("tombstone names %s at generation %d", dst.Cluster, t.Generation)
		}
		p.Actions = append(p.Actions, a)
	}
}

// retire adds step 3: every live row but dst's becomes a tombstone: the
// source's, and any left by an earlier move abandoned after step 1.
func (p *Plan) retire(st State, dst Row) {
	for _, r := range st.Rows {
		if r.Cluster == dst.Cluster || r.Live == nil {
			continue
		}
		p.Actions = append(p.Actions, Action{Step: StepRetire, Cluster: r.Cluster, kind: doRetire, Status: StatusPending,
			What: fmt.Sprintf("replace the live row (generation %d) with a tombstone to %s at generation %d", r.Live.Generation, dst.Cluster, p.Generation)})
	}
}

func sameEndpoints(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
