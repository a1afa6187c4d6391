package move_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/move"
	"github.com/replproxy/replproxy/store"
)

func TestMove(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newFleet backend) {
		f := newFleet(t, "a", "b", "c")
		f.create(t, "a", "r1")
		p := f.move(t, "r1", "b")
		if p.From != "a" || p.To != "b" || p.Generation != 2 || p.Owner != "alice" || p.Slug != "r1" || p.AlreadyDone {
			t.Errorf("plan = %+v", p)
		}
		var got []string
		for _, a := range p.Actions {
			got = append(got, a.Step.String()+" "+a.Cluster+" "+string(a.Status))
		}
		want := []string{"activate b done", "activate b done", "retire a done"}
		if strings.Join(got, "; ") != strings.Join(want, "; ") {
			t.Errorf("actions = %q, want %q", got, want)
		}
		f.settled(t, "r1", "b", 2)
		tomb, err := f.stores["a"].GetTombstone(t.Context(), "r1")
		if err != nil || tomb.Cluster != "b" || tomb.Generation != 2 || tomb.Owner != "alice" || tomb.Slug != "r1" {
			t.Errorf("tombstone in a = %+v, %v", tomb, err)
		}
		// The source keeps its domain, so that stale DNS is forwarded; the
		// third cluster never knew the repl and still does not.
		if _, err := f.stores["a"].GetDomain(t.Context(), "r1.example.com"); err != nil {
			t.Errorf("domain in a: %v", err)
		}
		if s, _ := f.stores["c"].Stats(t.Context()); s != (store.Stats{}) {
			t.Errorf("c = %+v, want empty", s)
		}
	})
}

func TestMoveRerunIsNoOp(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newFleet backend) {
		f := newFleet(t, "a", "b")
		f.create(t, "a", "r1")
		f.move(t, "r1", "b")
		before := f.dump(t)
		p := f.move(t, "r1", "b")
		if !p.AlreadyDone {
			t.Errorf("rerun: AlreadyDone = false, plan %+v", p)
		}
		for _, a := range p.Actions {
			if a.Status != move.StatusAlreadyDone {
				t.Errorf("rerun: action %s in %s: %s", a.What, a.Cluster, a.Status)
			}
		}
		if after := f.dump(t); after != before {
			t.Errorf("rerun changed the stores:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		f.settled(t, "r1", "b", 2)
	})
}

func TestMoveBackAndOnward(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newFleet backend) {
		f := newFleet(t, "a", "b", "c")
		f.create(t, "a", "r1")
		visited := map[string]bool{"a": true}
		for i, to := range []string{"b", "a", "c", "b", "a", "c"} {
			f.move(t, "r1", to)
			visited[to] = true
			f.settled(t, "r1", to, int64(i+2))
			var tombs int
			for _, s := range f.stores {
				st, err := s.Stats(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				tombs += st.Tombstones
			}
			if tombs != len(visited)-1 {
				t.Fatalf("after the move to %s: %d tombstones, want %d\n%s", to, tombs, len(visited)-1, f.dump(t))
			}
		}
	})
}

// scenario sets up a fleet of a, b and c and returns the move to test,
// with the cluster and generation it must end at.
type scenario struct {
	name  string
	setup func(t *testing.T, f *fleet) // before the move under test
	to    string
	gen   int64
}

var scenarios = []scenario{
	{"a to b", func(t *testing.T, f *fleet) { f.create(t, "a", "r1") }, "b", 2},
	{"back: a to b to a", func(t *testing.T, f *fleet) { f.create(t, "a", "r1"); f.move(t, "r1", "b") }, "a", 3},
	{"onward: a to b to c", func(t *testing.T, f *fleet) { f.create(t, "a", "r1"); f.move(t, "r1", "b") }, "c", 3},
	{"onward from a move to b stopped after step 1", func(t *testing.T, f *fleet) {
		f.create(t, "a", "r1")
		stop := move.Hooks{AfterStep: func(context.Context, move.Step) error { return errStop }}
		if _, err := f.mover(t, stop).Move(t.Context(), move.Request{Repl: "r1", To: "b", Endpoints: endpointsIn("b")}); !errors.Is(err, errStop) {
			t.Fatalf("setup: %v", err)
		}
	}, "c", 3},
}

var errStop = errors.New("stopped by the test")

// TestMoveStoppedAnywhere stops a move after each step, and at each write
// of each step, checks that every request is still served, then reruns it
// and checks that it ends where it should, once.
func TestMoveStoppedAnywhere(t *testing.T) {
	type stop struct {
		name   string
		hook   move.Step // stop after this step
		method string    // or make this store method fail (where it is used)
	}
	stops := []stop{
		{name: "after step 1", hook: move.StepActivate},
		{name: "after step 2", hook: move.StepRepoint},
		{name: "after step 3", hook: move.StepRetire},
		{name: "activate fails", method: "Activate"},
		{name: "domain link fails", method: "LinkDomain"},
		{name: "repoint fails", method: "Repoint"},
		{name: "retire fails", method: "Retire"},
	}
	forEachBackend(t, func(t *testing.T, newFleet backend) {
		for _, sc := range scenarios {
			for _, st := range stops {
				t.Run(sc.name+"/"+st.name, func(t *testing.T) {
					t.Parallel()
					ctx := t.Context()
					f := newFleet(t, "a", "b", "c")
					sc.setup(t, f)
					var hooks move.Hooks
					if st.hook != 0 {
						hooks.AfterStep = func(_ context.Context, s move.Step) error {
							if s == st.hook {
								return errStop
							}
							return nil
						}
					}
					for _, fs := range f.faults {
						fs.failOn(st.method)
					}
					// Force: a scenario's setup may have left an earlier,
					// interrupted move's claims (TestMoveConcurrent covers them).
					req := move.Request{Repl: "r1", To: sc.to, Endpoints: endpointsIn(sc.to), Force: true}
					p, err := f.mover(t, hooks).Move(ctx, req)
					var stopped *move.Error
					switch {
					case err == nil:
						// The failing method was not needed by this move.
						if st.hook != 0 || used(p, st.method) {
							t.Fatalf("move did not stop: %+v", p)
						}
					case !errors.As(err, &stopped) || !(errors.Is(err, errStop) || errors.Is(err, errInjected)):
						t.Fatalf("move: %v; want a *move.Error wrapping the cause", err)
					case !strings.Contains(err.Error(), "run the same move again"):
						t.Errorf("error does not say to rerun:\n%v", err)
					default:
						last := st.hook // the last step done
						if st.hook == 0 {
							last = map[string]move.Step{"Activate": 1, "LinkDomain": 1, "Repoint": 2, "Retire": 3}[st.method] - 1
						}
						var want []move.Step
						for s := move.StepActivate; s <= last; s++ {
							want = append(want, s)
						}
						if !slices.Equal(stopped.Done, want) {
							t.Errorf("Done = %v, want %v", stopped.Done, want)
						}
					}
					for _, fs := range f.faults {
						fs.failOn()
					}
					// Every lookup is served, custom domains included:
					// the destination links them with the activation.
					if err := move.Check(ctx, f.reg, f.stores, "r1"); err != nil {
						t.Fatalf("stopped move leaves requests unserved:\n%v\n%s", err, f.dump(t))
					}

					f.open(t) // a new process reruns it
					p = f.move(t, "r1", sc.to)
					if p.Generation != sc.gen {
						t.Errorf("rerun: generation %d, want %d", p.Generation, sc.gen)
					}
					f.settled(t, "r1", sc.to, sc.gen)
					before := f.dump(t)
					if p := f.move(t, "r1", sc.to); !p.AlreadyDone {
						t.Errorf("second rerun: AlreadyDone = false: %+v", p)
					}
					if after := f.dump(t); after != before {
						t.Errorf("second rerun changed the stores:\nbefore:\n%s\nafter:\n%s", before, after)
					}
				})
			}
		}
	})
}

// used reports whether the plan needed store method m.
func used(p move.Plan, m string) bool {
	for _, a := range p.Actions {
		if a.Status != move.StatusDone {
			continue
		}
		switch {
		case m == "Activate" && a.Step == move.StepActivate && strings.HasPrefix(a.What, "make live"),
			m == "LinkDomain" && strings.HasPrefix(a.What, "link"),
			m == "Repoint" && a.Step == move.StepRepoint,
			m == "Retire" && a.Step == move.StepRetire:
			return true
		}
	}
	return false
}

func TestMoveBadInput(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newFleet backend) {
		f := newFleet(t, "a", "b", "c")
		ctx := t.Context()
		f.create(t, "a", "r1")
		f.create(t, "a", "r2")
		f.move(t, "r2", "c")
		// r3 in b takes alice/r1, r4 in c takes r1's domain.
		if _, err := f.stores["b"].CreateRepl(ctx, store.Repl{ID: "r3", Owner: "alice", Slug: "r1", Endpoints: []string{"10.0.0.3:80"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.stores["c"].CreateRepl(ctx, store.Repl{ID: "r4", Owner: "bob", Slug: "r4", Endpoints: []string{"10.0.0.4:80"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.stores["c"].LinkDomain(ctx, store.Domain{Name: "r1.example.com", ReplID: "r4"}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			req  move.Request
			want error
			says string
		}{
			{"missing everywhere", move.Request{Repl: "nope", To: "b", Endpoints: endpointsIn("b")}, store.ErrNotFound, "no cluster has a repl nope"},
			{"already there", move.Request{Repl: "r1", To: "a", Endpoints: []string{"10.0.0.1:8080"}}, move.ErrAlreadyThere, "live in a already"},
			{"already there, other endpoints", move.Request{Repl: "r1", To: "a", Endpoints: endpointsIn("a")}, move.ErrAlreadyThere, "does not change endpoints"},
			{"cluster not in registry", move.Request{Repl: "r1", To: "zz", Endpoints: endpointsIn("b")}, store.ErrNotFound, `cluster "zz" is not in the registry (it has a, b, c)`},
			{"bad endpoint", move.Request{Repl: "r1", To: "c", Endpoints: []string{"10.0.0.1"}}, store.ErrInvalid, "host:port"},
			{"bad port", move.Request{Repl: "r1", To: "c", Endpoints: []string{"10.0.0.1:0"}}, store.ErrInvalid, "port"},
			{"no endpoint", move.Request{Repl: "r1", To: "c"}, store.ErrInvalid, "at least one"},
			{"bad repl id", move.Request{Repl: "R_1", To: "c", Endpoints: endpointsIn("c")}, store.ErrInvalid, "repl id"},
			{"name taken in destination", move.Request{Repl: "r1", To: "b", Endpoints: endpointsIn("b")}, store.ErrConflict, "alice/r1 is taken in b by repl r3"},
			{"domain taken in destination", move.Request{Repl: "r1", To: "c", Endpoints: endpointsIn("c")}, store.ErrConflict, "r1.example.com is linked to repl r4 in c"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before := f.dump(t)
				_, err := f.mover(t, move.Hooks{}).Move(ctx, tc.req)
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
					t.Errorf("err = %v; want %v saying %q", err, tc.want, tc.says)
				}
				var stopped *move.Error
				if errors.As(err, &stopped) {
					t.Errorf("err is a *move.Error, but nothing was done: %v", err)
				} else if err != nil && !strings.Contains(err.Error(), "nothing was changed") && !errors.Is(err, store.ErrInvalid) {
					t.Errorf("err does not say that nothing was changed: %v", err)
				}
				if after := f.dump(t); after != before {
					t.Errorf("stores changed:\nbefore:\n%s\nafter:\n%s", before, after)
				}
			})
		}
	})
}

// TestMoveInterruptedWithOtherEndpoints: the rerun of a move stopped after
// step 1 must give the same endpoints; other ones change nothing.
func TestMoveInterruptedWithOtherEndpoints(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newFleet backend) {
		f := newFleet(t, "a", "b")
		f.create(t, "a", "r1")
		stop := move.Hooks{AfterStep: func(context.Context, move.Step) error { return errStop }}
		if _, err := f.mover(t, stop).Move(t.Context(), move.Request{Repl: "r1", To: "b", Endpoints: endpointsIn("b")}); !errors.Is(err, errStop) {
			t.Fatal(err)
		}
		before := f.dump(t)
		_, err := f.mover(t, move.Hooks{}).Move(t.Context(), move.Request{Repl: "r1", To: "b", Endpoints: []string{"10.9.9.9:1"}})
		if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "stopped after step 1") || !strings.Contains(err.Error(), endpointsIn("b")[0]) {
			t.Errorf("err = %v", err)
		}
		if after := f.dump(t); after != before {
			t.Errorf("stores changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		f.move(t, "r1", "b")
		f.settled(t, "r1", "b", 2)
	})
}

// TestMoveUnreachable: a cluster's database down before the move changes
// nothing; down in the middle stops the move with an error that says which
// steps are done; once it is back, rerunning finishes the move.
func TestMoveUnreachable(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newFleet backend) {
		for _, tc := range []struct {
			name      string
			down      string    // the cluster that goes down
			afterStep move.Step // 0: before the move
			says      []string
		}{
			{"destination before", "b", 0, []string{"read cluster b", "nothing was changed"}},
			{"source before", "a", 0, []string{"read cluster a", "nothing was changed"}},
			{"bystander before", "c", 0, []string{"read cluster c", "nothing was changed"}},
			{"bystander after step 1", "c", move.StepActivate, []string{"step 2 (repoint) in c", "done: step 1 (activate in b)", "not done: step 2 (repoint in c), step 3 (retire in a)"}},
			{"destination after step 1", "b", move.StepActivate, []string{"step 2 (repoint): confirm that b serves the repl", "done: step 1 (activate in b)", "not done: step 2 (repoint in c), step 3 (retire in a)"}},
			{"source after step 2", "a", move.StepRepoint, []string{"step 3 (retire) in a", "done: step 1 (activate in b), step 2 (repoint in c)", "not done: step 3 (retire in a)"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := t.Context()
				f := newFleet(t, "a", "b", "c")
				f.create(t, "a", "r1")
				f.move(t, "r1", "c")
				f.move(t, "r1", "a") // c has a tombstone to a
				before := f.dump(t)
				hooks := move.Hooks{AfterStep: func(_ context.Context, s move.Step) error {
					if s == tc.afterStep {
						f.down(t, tc.down)
					}
					return nil
				}}
				if tc.afterStep == 0 {
					f.down(t, tc.down)
				}
				_, err := f.mover(t, hooks).Move(ctx, move.Request{Repl: "r1", To: "b", Endpoints: endpointsIn("b")})
				if !errors.Is(err, store.ErrUnavailable) {
					t.Fatalf("err = %v, want ErrUnavailable", err)
				}
				for _, s := range tc.says {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error does not say %q:\n%v", s, err)
					}
				}
				t.Logf("the error:\n%v", err)
				f.up(t, tc.down)
				if tc.afterStep == 0 {
					if after := f.dump(t); after != before {
						t.Errorf("stores changed:\nbefore:\n%s\nafter:\n%s", before, after)
					}
				} else if err := move.Check(ctx, f.reg, f.stores, "r1"); err != nil {
					t.Errorf("requests not served: %v\n%s", err, f.dump(t))
				}
				f.move(t, "r1", "b")
				f.settled(t, "r1", "b", 4)
			})
		}
	})
}

// down makes cluster c's database unreachable: a stopped server, or a
// store whose every call fails.
func (f *fleet) down(t *testing.T, c string) {
	if srv := f.pg[c]; srv != nil {
		srv.Stop(t)
		return
	}
	f.faults[c].failOn("*")
}

// up undoes down and reopens the stores, as a new process would.
func (f *fleet) up(t *testing.T, c string) {
	if srv := f.pg[c]; srv != nil {
		srv.Restart(t)
	}
	f.open(t)
}

// TestMoveConcurrent: a second move of the repl, to another cluster, that
// starts while the first is between steps is refused before it writes
// anything, naming the first; the first finishes. A forced second move
// wins instead: the first stops at its next step without undoing it, and
// running it again moves the repl on.
func TestMoveConcurrent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, newFleet backend) {
		f := newFleet(t, "a", "b", "c")
		f.create(t, "a", "r1")
		var second error
		meanwhile := move.Hooks{AfterStep: func(ctx context.Context, s move.Step) error {
			if s == move.StepActivate {
				_, second = f.mover(t, move.Hooks{}).Move(ctx, move.Request{Repl: "r1", To: "c", Endpoints: endpointsIn("c"), Holder: "operator 2"})
			}
			return nil
		}}
		if _, err := f.mover(t, meanwhile).Move(t.Context(), move.Request{Repl: "r1", To: "b", Endpoints: endpointsIn("b"), Holder: "operator 1"}); err != nil {
			t.Fatalf("the first move: %v", err)
		}
		var held *store.ClaimedError
		if !errors.As(second, &held) || !strings.Contains(second.Error(), "being moved to b by operator 1") || !strings.Contains(second.Error(), "nothing was changed") {
			t.Fatalf("the second move: %v, want it refused, naming the first", second)
		}
		f.settled(t, "r1", "b", 2)
		f.move(t, "r1", "c") // the claims were released
		f.settled(t, "r1", "c", 3)

		forced := move.Hooks{AfterStep: func(ctx context.Context, s move.Step) error {
			if s == move.StepActivate {
				_, second = f.mover(t, move.Hooks{}).Move(ctx, move.Request{Repl: "r1", To: "a", Endpoints: endpointsIn("a"), Holder: "operator 2", Force: true})
			}
			return nil
		}}
		_, err := f.mover(t, forced).Move(t.Context(), move.Request{Repl: "r1", To: "b", Endpoints: endpointsIn("b"), Holder: "operator 1"})
		var stopped *move.Error
		if second != nil || !errors.As(err, &stopped) {
			t.Fatalf("a forced second move: %v; the first: %v, want the first stopped", second, err)
		}
		f.settled(t, "r1", "a", 5)
		if _, err := f.mover(t, move.Hooks{}).Move(t.Context(), move.Request{Repl: "r1", To: "b", Endpoints: endpointsIn("b"), Holder: "operator 1"}); err != nil {
			t.Fatal(err)
		}
		f.settled(t, "r1", "b", 6)
	})
}

// TestRepointBeforeRetire shows why step 2 repoints before step 3 retires
// (DESIGN.md lists them the other way round): retiring first, for a repl
// that moved a to b and now moves on to c, leaves a's tombstone naming b
// while b's names c, and a proxy answers such a second hop with 508.
func TestRepointBeforeRetire(t *testing.T) {
	f := newFleet(t, []string{"a", "b", "c"}, embeddedAddrs(t, "a", "b", "c"), nil)
	ctx := t.Context()
	f.create(t, "a", "r1")
	f.move(t, "r1", "b")
	if _, err := f.stores["c"].Activate(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "r1", Endpoints: endpointsIn("c"), Generation: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.stores["b"].Retire(ctx, "r1", "c", 3); err != nil {
		t.Fatal(err)
	}
	err := move.Check(ctx, f.reg, f.stores, "r1")
	if err == nil || !strings.Contains(err.Error(), "cluster a: repl-id:r1: tombstone to b, whose tombstone sends it on to c: two hops") {
		t.Fatalf("check = %v, want two hops from a", err)
	}
	f.move(t, "r1", "c") // a rerun repoints a
	f.settled(t, "r1", "c", 3)
}
