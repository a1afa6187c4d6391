/*
 * The move protocol (package move), checked with spin: every interleaving
 * of two operators' moves, crashes between any two actions and reruns,
 * each cluster's change notifications reaching each proxy and replns in
 * any order and after any delay (or a cache entry's TTL running out), and
 * clients that ask replns or keep an old answer.
 *
 * Properties:
 *   - every request is answered by the repl, directly or through one
 *     forward (a bounce back to a source whose own store has the repl live
 *     counts: the proxy serves it itself, staleForward); replns always has
 *     an answer;
 *   - once the movers have stopped, the repl is settled: live in exactly
 *     one cluster, every tombstone naming it.
 *
 * Run: make model (spin -a; cc; ./pan). Variants, each expected to fail:
 *   -DNOCLAIM        moves do not claim the repl first: two moves split it;
 *   -DRETIRE_FIRST   step 3 (retire) before step 2 (repoint), as DESIGN.md
 *                    lists them: a request meets two tombstones;
 *   -DLOCAL_ONLY     a forward answered 508 is served by the source only
 *                    when the repl is live there (replproxy before this
 *                    model): a third cluster's tombstone met in the moment
 *                    its move is repointed, or a move that ended while the
 *                    request was on its way, gets 508;
 *   -DINDEX          the proxies' name index (a name it does not know is
 *                    404 with no store query; a forwarded request asks the
 *                    store past it: RefreshStale). With -DTARGET_FIRST it
 *                    fails (found by this model): replns learns the
 *                    destination from the source's tombstone (step 3) while
 *                    the destination's proxies have not yet seen their own
 *                    step 1, and a client that resolves then gets a 404
 *                    there; replns now answers the tombstone's own cluster
 *                    until it has heard of the repl at the destination. With
 *                    -DDNS_AHEAD as well it still fails: replns's index of
 *                    the destination may be ahead of the destination's
 *                    proxies' (separate change feeds); -DHOLD mends that.
 *                    By default a proxy that does not know a name asks its
 *                    store.
 *   -DDNS_AHEAD      replns may see a cluster's change before that
 *                    cluster's own proxies do (by default they see it at the
 *                    same instant).
 *   -DHOLD           replns's move hold (nameserver.ClustersConfig.MoveHold):
 *                    a repl that has just become live in a cluster is
 *                    "arriving" there, and loses to any candidate that is
 *                    not, until that cluster's proxies have caught up with
 *                    their store (the hold outlasts their lag behind
 *                    replns: the assumption the hold's length stands for).
 *                    With -DINDEX -DDNS_AHEAD it holds.
 *
 * Clusters are 0, 1, 2 in registry order; the repl starts live in 0 at
 * generation 1 (see the configurations at the end). The names of the steps
 * are those of move/move.go, which names the model's steps it implements.
 */

#define N 3
#define NONE 255

/* Each cluster's store. */
byte lgen[N];   /* the live row's generation; 0: no live row */
byte tgen[N];   /* the tombstone's generation; 0: no tombstone */
byte tto[N];    /* the cluster the tombstone names */
byte claim[N];  /* the move claim: the operator holding it; 0: none */
byte cto[N];    /* the destination of that claim */

/* Each cluster's proxies' cache entry for the repl. */
#define UNLOADED 0
#define LIVE 1
#define TOMB 2
#define ABSENT 3
byte pk[N];     /* kind */
byte pt[N];     /* a tombstone's target */
byte pg[N];     /* a tombstone's generation */

/* replns's view of each cluster: what it last read of it. */
byte nl[N];     /* live generation */
byte ng[N];     /* tombstone generation */
byte nt[N];     /* tombstone target */

bool arriving[N]; /* -DHOLD: replns holds the live row it saw back */

bool done[3];   /* operators 1 and 2 have stopped */

/* Never set: assert(no_404) and assert(no_508) are a request answered 404
 * or 508, named so in pan's report ("assertion violated no_508"), which
 * model/check.sh reads. Hidden: they are not part of the state. */
hidden byte no_404, no_508;

/* A cache (re)load: what the cluster's store says now. */
inline load(c) {
	if
	:: lgen[c] > 0 -> pk[c] = LIVE
	:: lgen[c] == 0 && tgen[c] > 0 -> pk[c] = TOMB; pt[c] = tto[c]; pg[c] = tgen[c]
	:: else -> pk[c] = ABSENT
	fi
}

/* Notifications and TTLs: at any moment, a proxy's cache entry is dropped
 * (the next request loads it again), and replns reads a cluster again. */
proctype feeds() {
	byte c;
end:
	do
	:: select(c : 0 .. N-1);
		atomic {
			pk[c] = UNLOADED;
#ifndef DNS_AHEAD
			nl[c] = lgen[c]; ng[c] = tgen[c]; nt[c] = tto[c]
#endif
		}
#ifdef DNS_AHEAD
	:: select(c : 0 .. N-1);
		atomic {
#ifdef HOLD
			/* A live row at a generation replns did not hold live
			 * arrives (routecache's arrivals). */
			arriving[c] = (lgen[c] > 0 && (arriving[c] || lgen[c] != nl[c]));
#endif
			nl[c] = lgen[c]; ng[c] = tgen[c]; nt[c] = tto[c]
		}
#ifdef HOLD
	/* The cluster's proxies are notified: they read their store again,
	 * so they know at least what replns saw of it, and the hold may end. */
	:: select(c : 0 .. N-1); atomic { pk[c] = UNLOADED; arriving[c] = 0 }
#endif
#endif
	od
}

/* replns's answer: each cluster that knows the repl offers itself (live)
 * or its tombstone's target, at that generation; the highest wins, ties
 * going to registry order (nameserver.Clusters.Host). A tombstone whose
 * target replns knows nothing of yet (its index has not seen the repl)
 * offers its own cluster, whose proxies forward (-DTARGET_FIRST: the
 * target, as replns did before). */
#ifndef HOLD
inline answer(t) {
	d_step {
		byte i = 0, best = 0;
		t = NONE;
		do
		:: i < N ->
			if
			:: nl[i] > best -> best = nl[i]; t = i
			:: nl[i] == 0 && ng[i] > best -> best = ng[i]; t = nt[i];
#ifndef TARGET_FIRST
				if :: nl[t] == 0 && ng[t] == 0 -> t = i :: else fi
#endif
			:: else
			fi;
			i++
		:: else -> break
		od;
		i = 0; best = 0
	}
}
#else
/* -DHOLD: a candidate still arriving loses to one that is not; a tombstone
 * whose target is unknown or arriving offers its own cluster. */
inline answer(t) {
	d_step {
		byte i = 0, best = 0, cu, cg;
		bool carr = 1, ca;
		t = NONE;
		do
		:: i < N ->
			cu = NONE;
			if
			:: nl[i] > 0 -> cu = i; cg = nl[i]; ca = arriving[i]
			:: nl[i] == 0 && ng[i] > 0 -> cu = nt[i]; cg = ng[i]; ca = 0;
				if :: (nl[cu] == 0 && ng[cu] == 0) || arriving[cu] -> cu = i :: else fi
			:: else
			fi;
			if
			:: cu != NONE && (t == NONE || (carr && !ca) || (carr == ca && cg > best)) -> t = cu; carr = ca; best = cg
			:: else
			fi;
			i++
		:: else -> break
		od;
		i = 0; best = 0; cu = 0; cg = 0; carr = 0; ca = 0
	}
}
#endif

/* A client: asks replns, or keeps an answer it had, and sends a request. */
proctype client() {
	byte t, u, g, stale = 0;
end:
	do
	:: answer(t); assert(t != NONE); stale = t	/* replns has an answer */
	:: t = stale
	:: true ->
		/* At the proxy of t: its cache, loaded when empty. */
		atomic { if :: pk[t] == UNLOADED -> load(t) :: else fi };
		if
		:: pk[t] == LIVE	/* served (a container outlives its repl's move a while) */
		:: pk[t] == ABSENT -> assert(no_404)
		:: pk[t] == TOMB ->
			u = pt[t]; g = pg[t];
			/* Forwarded to u's proxy: its cache, or, when the cache would
			 * not serve it, u's store (Refresh). */
			atomic { if :: pk[u] == UNLOADED -> load(u) :: else fi };
			if
			:: pk[u] == LIVE
			:: else ->
				atomic {
					load(u);
					if
					:: pk[u] == LIVE
					:: pk[u] == TOMB -> skip	/* 508, naming where u's tombstone points */
					:: else -> assert(no_404)
					fi
				};
				if
				:: pk[u] == TOMB ->
					/* The 508 comes back to t, which asks its store
					 * (staleForward): live, it serves the request
					 * itself; a tombstone newer than the one it
					 * forwarded on (a move ran meanwhile), it sends the
					 * request where that one points, once, and there
					 * the repl must be live. */
					atomic {
						load(t);
						if
						:: pk[t] == LIVE
#ifndef LOCAL_ONLY
						:: pk[t] == TOMB && pg[t] > g -> u = pt[t]; load(u); assert(pk[u] == LIVE)
#endif
						:: else -> assert(no_508)	/* a real loop */
						fi
					};
					g = 0
				:: else
				fi
			fi
		fi
	od
}

bool fin[4];	/* the moves below, by slot, have stopped */

inline survey(dest, hi, c, g) {
	d_step {
		hi = 0; c = 0;
		do
		:: c < N -> if :: lgen[c] > hi -> hi = lgen[c] :: else fi; if :: tgen[c] > hi -> hi = tgen[c] :: else fi; c++
		:: else -> break
		od;
		g = (lgen[dest] == hi -> hi : hi + 1);
		hi = 0; c = 0
	}
}

/* One operator's move of the repl to dest (Mover.Move); it may crash
 * between any two actions, once, and is run again; its claims may expire
 * while it is away. */
proctype mover(byte id; byte dest; byte slot) {
	byte runs = 0, g, c, hi;
start:
	runs++;
	/* Survey and plan: the generation is one above any the repl has
	 * anywhere, or, when an earlier run did step 1 (dest live with the
	 * highest), that one. (Read at one instant: the plan that writes is
	 * the one made again once the claims are held, when no other move
	 * writes.) */
	survey(dest, hi, c, g);
#ifndef NOCLAIM
	/* claim: in every cluster, in registry order; a claim of a move to
	 * another cluster refuses this one, which gives back what it took. */
	c = 0;
	do
	:: c < N ->
		atomic {
			if
			:: claim[c] == 0 || cto[c] == dest -> claim[c] = id; cto[c] = dest; c++
			:: else -> goto refused
			fi
		}
	:: else -> break
	od;
	/* plan again, holding the claims */
	survey(dest, hi, c, g);
#endif
	if :: runs == 1 -> goto crashed :: true fi;
	/* activate (step 1) in dest, one transaction */
	atomic {
		if
		:: tgen[dest] > g || lgen[dest] > g -> goto stopped	/* another move ran meanwhile */
		:: else -> lgen[dest] = g; tgen[dest] = 0
		fi
	}
	if :: runs == 1 -> goto crashed :: true fi;
	atomic { if :: lgen[dest] != g -> goto stopped :: else fi }	/* confirm */
#ifdef RETIRE_FIRST
	c = 0;
	do
	:: c < N ->
		atomic {
			if
			:: c != dest && lgen[c] > 0 && lgen[c] < g -> lgen[c] = 0; tgen[c] = g; tto[c] = dest
			:: c != dest && lgen[c] >= g -> goto stopped
			:: else
			fi
		};
		if :: runs == 1 -> goto crashed :: true fi;
		c++
	:: else -> break
	od;
#endif
	/* repoint (step 2): every other cluster's tombstone names dest */
	c = 0;
	do
	:: c < N ->
		atomic { if :: c != dest && tgen[c] > 0 && tgen[c] < g -> tgen[c] = g; tto[c] = dest :: else fi };
		if :: runs == 1 -> goto crashed :: true fi;
		c++
	:: else -> break
	od;
	atomic { if :: lgen[dest] != g -> goto stopped :: else fi }	/* confirm */
#ifndef RETIRE_FIRST
	/* retire (step 3): a live row elsewhere becomes a tombstone to dest */
	c = 0;
	do
	:: c < N ->
		atomic {
			if
			:: c != dest && lgen[c] > 0 && lgen[c] < g -> lgen[c] = 0; tgen[c] = g; tto[c] = dest
			:: c != dest && lgen[c] >= g -> goto stopped
			:: else
			fi
		};
		if :: runs == 1 -> goto crashed :: true fi;
		c++
	:: else -> break
	od;
#endif
	/* release */
	c = 0;
	do
	:: c < N -> atomic { if :: claim[c] == id -> claim[c] = 0 :: else fi }; c++
	:: else -> break
	od;
	goto moved;
stopped:
crashed:
	/* Its claims stay (a rerun of the same move takes them over) or
	 * expire; the operator runs the same move again, once. */
	if
	:: true
	:: atomic { c = 0; do :: c < N -> if :: claim[c] == id -> claim[c] = 0 :: else fi; c++ :: else -> break od }
	fi;
	if
	:: runs < 2 -> goto start
	:: else -> goto moved
	fi;
refused:
	c = 0;
	do
	:: c < N -> atomic { if :: claim[c] == id -> claim[c] = 0 :: else fi }; c++
	:: else -> break
	od;
moved:
	fin[slot] = true
}

/* Two configurations, each checked whole (make model):
 *   SEQUENCE: one operator moves the repl 0 -> 1, on to 2, and back to 0,
 *     with requests throughout: every routing race of a move, the move
 *     back's bounce and a third cluster's tombstone included;
 *     (-DONE: the first of those moves only);
 *   the default: two operators move it at once, to 1 and to 2; only the
 *     stores are checked (the claims leave one move writing at a time,
 *     whose requests SEQUENCE checks). */
proctype operator1() {
	run mover(1, 1, 0); fin[0];
#if defined(SEQUENCE) && !defined(ONE)
	run mover(1, 2, 1); fin[1];	/* on to a third cluster */
	run mover(1, 0, 3); fin[3];	/* and back */
#endif
	done[1] = true
}

proctype operator2() {
#ifndef SEQUENCE
	run mover(2, 2, 2); fin[2];
#endif
	done[2] = true
}

/* Once both operators stopped, the repl is settled. */
proctype settled() {
	byte c, home = NONE, lives = 0;
	(done[1] && done[2]);
	d_step {
		c = 0;
		do
		:: c < N -> if :: lgen[c] > 0 -> home = c; lives++ :: else fi; c++
		:: else -> break
		od
	}
	assert(lives == 1);
	d_step {
		c = 0;
		do
		:: c < N -> assert(c == home || tgen[c] == 0 || tto[c] == home); c++
		:: else -> break
		od
	}
}

init {
	atomic {
		lgen[0] = 1; nl[0] = 1;
#ifdef INDEX
		/* The proxies' name indexes start current: 1 and 2 answer 404
		 * for the repl without asking their store until a notification
		 * (routecache.Index). */
		pk[0] = LIVE; pk[1] = ABSENT; pk[2] = ABSENT;
#endif
#ifdef SEQUENCE
		run feeds(); run client();
#endif
		run operator1(); run operator2(); run settled()
	}
}
