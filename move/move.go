package move

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// Hooks let tests stop a move between steps, as a crash would.
type Hooks struct {
	// AfterStep, when set, is called after each step is done, in order,
	// also when the step had nothing to do. An error stops the move
	// there: Move returns an *Error wrapping it, as for a failed step.
	AfterStep func(ctx context.Context, s Step) error
}

// Mover moves repls between the clusters of a registry.
type Mover struct {
	reg    *cluster.Registry
	stores map[string]store.Store
	hooks  Hooks
	logger *zap.Logger
}

// New returns a Mover over the clusters of reg, whose stores are in
// stores by cluster name: one for every cluster of the registry, since a
// move looks at all of them. A nil logger means zap.NewNop().
func New(reg *cluster.Registry, stores map[string]store.Store, hooks Hooks, logger *zap.Logger) (*Mover, error) {
	if err := checkStores(reg, stores); err != nil {
		return nil, fmt.Errorf("new mover: %w", err)
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	return &Mover{reg: reg, stores: stores, hooks: hooks, logger: logger.Named("move")}, nil
}

// Error is a move that stopped after it had begun: some actions may be
// done, and running the same move again finishes it.
type Error struct {
	Plan Plan   // with the status of every action
	Done []Step // the steps done, in order; the others are not (or only partly)
	Err  error
}

func (e *Error) Error() string {
	var done, todo []string
	for s := StepActivate; s <= StepRetire; s++ {
		if slices.Contains(e.Done, s) {
			done = append(done, e.Plan.stepSummary(s))
		} else {
			todo = append(todo, e.Plan.stepSummary(s))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "move repl %s to %s stopped: %v\n", e.Plan.ReplID, e.Plan.To, e.Err)
	if len(done) == 0 {
		b.WriteString("  done: no step yet\n")
	} else {
		fmt.Fprintf(&b, "  done: %s\n", strings.Join(done, ", "))
	}
	fmt.Fprintf(&b, "  not done: %s\n", strings.Join(todo, ", "))
	b.WriteString("Every step is idempotent: run the same move again, once the cause is fixed, to finish it.")
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Plan looks the repl up in every cluster and returns what moving it to
// req.To would do, without changing anything. Bad requests, a repl that is
// not live anywhere, a destination that has it already, a name or domain
// taken in the destination, and an unreadable cluster are errors.
func (m *Mover) Plan(ctx context.Context, req Request) (Plan, error) {
	req, err := m.check(req)
	if err != nil {
		return Plan{}, err
	}
	st, err := Survey(ctx, m.reg, m.stores, req.Repl)
	if err != nil {
		return Plan{}, fmt.Errorf("move repl %s to %s: %w; nothing was changed", req.Repl, req.To, err)
	}
	p, err := makePlan(st, req)
	if err != nil {
		return Plan{}, err
	}
	if err := m.checkDestination(ctx, p); err != nil {
		return Plan{}, fmt.Errorf("move repl %s to %s: %w; nothing was changed", req.Repl, req.To, err)
	}
	return p, nil
}

// check validates a request and returns it normalised.
func (m *Mover) check(req Request) (Request, error) {
	if err := store.ValidLabel(req.Repl); err != nil {
		return req, fmt.Errorf("move repl %q: repl id: %w", req.Repl, err)
	}
	c, ok := m.reg.Cluster(strings.ToLower(req.To))
	if !ok {
		return req, fmt.Errorf("move repl %s: %w: cluster %q is not in the registry (it has %s); nothing was changed",
			req.Repl, store.ErrNotFound, req.To, strings.Join(m.reg.Names(), ", "))
	}
	req.To = c.Name
	if err := store.CheckEndpoints(req.Endpoints); err != nil {
		return req, fmt.Errorf("move repl %s to %s: %w; nothing was changed", req.Repl, req.To, err)
	}
	return req, nil
}

// checkDestination looks for what would make step 1 fail in the
// destination: its owner/slug or a domain taken there by another repl.
func (m *Mover) checkDestination(ctx context.Context, p Plan) error {
	dst := m.stores[p.To]
	for _, a := range p.Actions {
		if a.Status != StatusPending {
			continue
		}
		switch a.kind {
		case doActivate:
			r, err := dst.Lookup(ctx, store.ReplKey(p.Owner, p.Slug))
			switch {
			case err == nil && r.Kind == store.RouteLocal && r.ReplID != p.ReplID:
				return fmt.Errorf("%w: %s/%s is taken in %s by repl %s", store.ErrConflict, p.Owner, p.Slug, p.To, r.ReplID)
			case err != nil && !errors.Is(err, store.ErrNotFound):
				return fmt.Errorf("read cluster %s: %w", p.To, err)
			}
		case doLink:
			d, err := dst.GetDomain(ctx, a.domain.Name)
			switch {
			case err == nil && d.ReplID != p.ReplID:
				return fmt.Errorf("%w: custom domain %s is linked to repl %s in %s", store.ErrConflict, d.Name, d.ReplID, p.To)
			case err != nil && !errors.Is(err, store.ErrNotFound):
				return fmt.Errorf("read cluster %s: %w", p.To, err)
			}
		}
	}
	return nil
}

// Move moves the repl to req.To, or finishes an earlier move there that
// stopped part way. It returns the plan with each action's status. An
// error before the first write leaves everything as it was and says so;
// an error after it is an *Error, saying which steps are done.
func (m *Mover) Move(ctx context.Context, req Request) (Plan, error) {
	p, err := m.Plan(ctx, req)
	if err != nil {
		return Plan{}, err
	}
	if p.AlreadyDone {
		// A mover killed after its last step left its claims: this rerun
		// of its move takes them over and releases them (a claim of a
		// move to another cluster is left alone).
		req.To = p.To
		if m.claim(ctx, req) == nil {
			m.release(ctx, req)
		}
		m.logger.Info("move already done: nothing to do", zap.String("repl_id", p.ReplID), zap.String("to", p.To))
		return p, nil
	}
	// Claim the repl in every cluster (model/move.pml: "claim"), then plan again ("plan again"):
	// the survey before the claims may predate a move that ended since.
	req.To = p.To
	if err := m.claim(ctx, req); err != nil {
		return Plan{}, err
	}
	if p, err = m.Plan(ctx, req); err != nil {
		m.release(ctx, req)
		return Plan{}, err
	}
	log := m.logger.With(zap.String("repl_id", p.ReplID), zap.String("from", p.From), zap.String("to", p.To), zap.Int64("generation", p.Generation))
	if p.AlreadyDone {
		m.release(ctx, req)
		log.Info("move already done: nothing to do")
		return p, nil
	}
	log.Info("move started", zap.String("owner", p.Owner), zap.String("slug", p.Slug), zap.Strings("endpoints", p.Endpoints))
	var done []Step
	for s := StepActivate; s <= StepRetire; s++ {
		pending := slices.ContainsFunc(p.Actions, func(a Action) bool { return a.Step == s && a.Status == StatusPending })
		if s != StepActivate && pending {
			// Send requests away from where the repl is served only
			// once the destination is seen serving it (model: "confirm").
			if err := m.confirm(ctx, p); err != nil {
				return p, &Error{Plan: p, Done: done, Err: fmt.Errorf("step %d (%s): %w", s, s, err)}
			}
		}
		for i := range p.Actions {
			a := &p.Actions[i]
			if a.Step != s {
				continue
			}
			alog := log.With(zap.Int("step", int(s)), zap.Stringer("step_name", s), zap.String("cluster", a.Cluster), zap.String("action", a.What))
			if a.Status != StatusPending {
				alog.Info("action already done")
				continue
			}
			if err := m.do(ctx, p, *a); err != nil {
				return p, &Error{Plan: p, Done: done, Err: fmt.Errorf("step %d (%s) in %s: %w", s, s, a.Cluster, err)}
			}
			a.Status = StatusDone
			alog.Info("action done")
		}
		log.Info("step done", zap.Int("step", int(s)), zap.Stringer("step_name", s))
		done = append(done, s)
		// Renew the claims; lost to a forced move, this one stops here.
		// (The model's claims do not expire while their mover runs.)
		if err := m.claim(ctx, req); err != nil {
			return p, &Error{Plan: p, Done: done, Err: fmt.Errorf("after step %d (%s): %w", s, s, err)}
		}
		if m.hooks.AfterStep != nil {
			if err := m.hooks.AfterStep(ctx, s); err != nil {
				return p, &Error{Plan: p, Done: done, Err: fmt.Errorf("after step %d (%s): %w", s, s, err)}
			}
		}
	}
	m.release(ctx, req) // model: "release"
	log.Info("move done")
	return p, nil
}

// ClaimTTL is how long a move's claims last without renewal: a move renews
// them after each step, and releases them when done; a mover that dies
// leaves them to expire (or to be taken over by a rerun of the same move).
const ClaimTTL = 2 * time.Minute

// claim claims the repl for req in every cluster of the registry, in
// registry order, so that any two moves of it meet in the first cluster
// and only one gets past it (a move that got claims and then meets
// another's releases its own). A move holds them from before its first
// write to after its last.
func (m *Mover) claim(ctx context.Context, req Request) error {
	c := store.MoveClaim{ReplID: req.Repl, Holder: holderOf(req), To: req.To}
	for i, cl := range m.reg.Clusters {
		if _, err := m.stores[cl.Name].ClaimMove(ctx, c, ClaimTTL, req.Force); err != nil {
			for _, taken := range m.reg.Clusters[:i] {
				_ = m.stores[taken.Name].ReleaseMove(context.WithoutCancel(ctx), req.Repl, c.Holder)
			}
			var held *store.ClaimedError
			if errors.As(err, &held) {
				return fmt.Errorf("move repl %s to %s refused in cluster %s: %w; nothing was changed: wait for that move to finish, "+
					"or, if it is dead, for its claim to expire, or run this again with --force", req.Repl, req.To, cl.Name, held)
			}
			return fmt.Errorf("move repl %s to %s: claim it in cluster %s: %w; nothing was changed", req.Repl, req.To, cl.Name, err)
		}
	}
	return nil
}

// release removes req's claims, once the move is done (best effort: an
// unreleased claim expires).
func (m *Mover) release(ctx context.Context, req Request) {
	for _, cl := range m.reg.Clusters {
		if err := m.stores[cl.Name].ReleaseMove(context.WithoutCancel(ctx), req.Repl, holderOf(req)); err != nil {
			m.logger.Warn("could not release a move claim; it expires by itself", zap.String("repl_id", req.Repl),
				zap.String("cluster", cl.Name), zap.Error(err))
		}
	}
}

func holderOf(req Request) string {
	if req.Holder == "" {
		return "a move"
	}
	return req.Holder
}

// confirm checks that the destination has the repl live at the move's
// generation: that its database answers, and that no other move has
// moved the repl on since.
func (m *Mover) confirm(ctx context.Context, p Plan) error {
	r, err := m.stores[p.To].GetRepl(ctx, p.ReplID)
	if err != nil {
		return fmt.Errorf("confirm that %s serves the repl: %w", p.To, err)
	}
	if r.Generation != p.Generation {
		return fmt.Errorf("confirm that %s serves the repl: %w: it is live there at generation %d, not %d: another move ran meanwhile; see `replctl repl show %s`",
			p.To, store.ErrConflict, r.Generation, p.Generation, p.ReplID)
	}
	return nil
}

// do carries out one action.
func (m *Mover) do(ctx context.Context, p Plan, a Action) error {
	s := m.stores[a.Cluster]
	switch a.kind {
	case doActivate: // model: "activate (step 1)", one atomic block
		// The repl's domains go in the same transaction, so that a move
		// stopped here leaves none of them unknown in the destination; the
		// link actions after it then find them there.
		var domains []store.Domain
		for _, l := range p.Actions {
			if l.kind == doLink {
				domains = append(domains, store.Domain{Name: l.domain.Name, Token: l.domain.Token, VerifiedAt: l.domain.VerifiedAt})
			}
		}
		r, err := s.ActivateWithDomains(ctx, store.Repl{ID: p.ReplID, Owner: p.Owner, Slug: p.Slug, Endpoints: p.Endpoints, Generation: p.Generation}, domains)
		if err != nil {
			return err
		}
		if r.Generation != p.Generation {
			return fmt.Errorf("%w: the repl is live there at generation %d already: another move ran meanwhile; see `replctl repl show %s`", store.ErrConflict, r.Generation, p.ReplID)
		}
	case doLink:
		d := a.domain
		_, err := s.LinkDomain(ctx, store.Domain{Name: d.Name, ReplID: p.ReplID, Token: d.Token})
		if errors.Is(err, store.ErrConflict) {
			got, gerr := s.GetDomain(ctx, d.Name)
			if gerr != nil || got.ReplID != p.ReplID {
				return err
			}
		} else if err != nil {
			return err
		}
		if !d.VerifiedAt.IsZero() {
			return s.MarkDomainVerified(ctx, d.Name, d.VerifiedAt)
		}
	case doMarkVerified:
		return s.MarkDomainVerified(ctx, a.domain.Name, a.domain.VerifiedAt)
	case doRepoint: // model: "repoint (step 2)", one atomic block per cluster
		return s.Repoint(ctx, p.ReplID, p.To, p.Generation)
	case doRetire: // model: "retire (step 3)", one atomic block per cluster
		t, err := s.Retire(ctx, p.ReplID, p.To, p.Generation)
		if err != nil {
			return err
		}
		if t.Cluster != p.To || t.Generation != p.Generation {
			return fmt.Errorf("%w: its tombstone names %s at generation %d: another move ran meanwhile; see `replctl repl show %s`", store.ErrConflict, t.Cluster, t.Generation, p.ReplID)
		}
	}
	return nil
}
