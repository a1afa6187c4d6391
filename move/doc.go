// Package move moves a repl from one cluster to another without dropping a
// request (DESIGN.md, "Moving a repl"). replctl move drives it, and so can
// tests and demos, in-process.
//
// A move has three steps, each idempotent, and every request is served
// after each of them:
//
//  1. Activate: the repl is made live in the destination with a generation
//     one above any the repl has anywhere (store.Store.Activate, which also
//     removes a tombstone the destination may hold: a repl moving back), and
//     its custom domains are linked there. From here on replns answers the
//     destination, since the highest generation wins.
//  2. Repoint: every other cluster's tombstone for the repl is made to name
//     the destination (store.Store.Repoint), so that no proxy is ever more
//     than one hop away.
//  3. Retire: in the source, in one transaction, the live row goes and a
//     tombstone to the destination comes (store.Store.Retire).
//
// Before steps 2 and 3 the destination is read again: requests are sent
// away from where the repl is served only once the destination is seen
// serving it (and no other move has moved it on).
//
// DESIGN.md lists Retire before Repoint. They run the other way round here
// because a proxy forwards a request at most once: with Retire first, a
// crash between the two would leave a third cluster's tombstone naming the
// source, which no longer has the repl live, and requests that reach that
// third cluster would meet a second tombstone and get 508. Repointing first
// sends them straight to the destination, which is live from step 1 on.
//
// The source is not an argument: a Mover looks the repl up in every cluster
// of the registry (Survey) and works out what is left to do (Plan). That is
// what makes a rerun finish an interrupted move: a repl already live in the
// destination with the highest generation keeps that generation (the rerun
// does not bump it again), live rows elsewhere are retired to it, and
// tombstones elsewhere are repointed to it. A rerun of a finished move does
// nothing and succeeds.
//
// Before its first write a move claims the repl in every cluster (see
// Mover.Move), so that of two moves of one repl to different clusters
// only one proceeds. model/move.pml is the protocol as a spin model, its
// steps named as in the comments here; `make model` checks it exhaustively
// (crashes between any two actions, reruns, two operators, notifications
// in any order, clients with stale DNS answers).
//
// Check and CheckSettled test the invariant the steps keep: every lookup of
// the repl in every cluster that knows it ends at the live repl, directly or
// through one tombstone.
//
//	mover, err := move.New(reg, stores, move.Hooks{}, logger)
//	...
//	plan, err := mover.Move(ctx, move.Request{Repl: "r1a2b3", To: "west", Endpoints: []string{"10.1.0.7:8080"}})
//	var stopped *move.Error
//	if errors.As(err, &stopped) {
//		// some steps are done: run the same move again to finish it
//	}
package move
