package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replproxy/replproxy/platformtest"
	"github.com/replproxy/replproxy/store"
)

// TestMovesKilledAtRandomInstants moves a repl around three clusters
// (east → west → north → east ..., so that every move after the first has
// a tombstone to repoint in step 2) 30 times under load, SIGKILLing
// replctl at an instant drawn uniformly over a move's duration (every
// other one from a little before its steps to its end), seeded: the seed
// is printed, and REPLPROXY_KILL_SEED replays the draws. The duration is
// measured again and again, from the moves that finish before their kill
// and from the reruns that redo a whole move (the median of the last
// five), so that the instants follow the moves as the machine warms up or
// gets busy, and scale with them. After each kill the same move is run
// again to finish it. Not one request may fail, the repl ends settled, and
// at least 10 moves must be killed, 5 of them inside the steps (from step 1
// to step 3's commit, inside a transaction or between). The log prints a
// table of where the kills landed (killLanding).
func TestMovesKilledAtRandomInstants(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s of moves under load")
	}
	rng := seeded(t, "REPLPROXY_KILL_SEED")
	p := startPlatform(t, platformtest.Options{Clusters: []string{"north", "east", "west"}})
	dbs := p.databases(t)
	p.createRepl(t)
	stop := make(chan struct{})
	wait := p.load(t, "blog.alice.repl.test", 100, stop)
	var failures []string
	stopLoad := sync.OnceFunc(func() { close(stop); failures = wait() })
	defer stopLoad() // also when the test fails on the way
	moveCmd := func(to string) *exec.Cmd {
		return p.command("move", "blog1", "--to", to, "--endpoint", p.apps[to])
	}
	next := map[string]string{"east": "west", "west": "north", "north": "east"}

	// A first move, not killed, measures one.
	var times moveTimes
	if r := runMove(moveCmd("west"), 0); r.err != nil || r.began == 0 {
		t.Fatalf("a first move: %v\n%s", r.err, r.out)
	} else {
		times.add(r)
	}
	landed := map[string]int{}
	kills, inSteps, reruns := 0, 0, 0
	from, to := "west", "north"
	for i := range 30 {
		d, began := times.estimate()
		lo, hi := time.Duration(0), d+d/5 // the whole move, and past it: some finish, and measure
		if i%2 == 1 && began*3/4 < d {
			lo, hi = began*3/4, d // from the claims on: the steps, inside their transactions or between
		}
		at := lo + time.Duration(rng.Int64N(int64(hi-lo)))
		marks := dbs.logSizes(t)
		r := runMove(moveCmd(to), at)
		if !r.killed {
			if r.err != nil {
				t.Fatalf("move %d, %s to %s: %v\n%s", i, from, to, r.err, r.out)
			}
			times.add(r)
			landed[landingNotKilled]++
			t.Logf("move %2d %s → %s: not killed at %v: done in %v", i, from, to, at.Round(time.Millisecond), r.took.Round(time.Millisecond))
		} else {
			kills++
			dbs.waitGone(t) // the killed replctl's transactions are over, its server log lines written
			where, inStep := killLanding(r.out, from, to, p.storeState(t, "blog1"), dbs.openTransactionsSince(t, marks))
			landed[where]++
			if inStep {
				inSteps++
			}
			t.Logf("move %2d %s → %s: killed at %v (of about %v): %s", i, from, to, at.Round(time.Millisecond), d.Round(time.Millisecond), where)
			// The rerun finishes what the killed one began; after a kill
			// that wrote nothing it is a whole move, and measures one.
			reruns++
			rr := runMove(moveCmd(to), 0)
			if rr.err != nil {
				t.Logf("repl show:\n%s", p.ctl(t, true, "repl", "show", "blog1"))
				t.Fatalf("rerun of move %d to %s (the killed one: %s, at %v, printed %q): %v\n%s", i, to, where, at, r.out, rr.err, rr.out)
			}
			if !strings.Contains(r.out, "move started") {
				times.add(rr)
			}
		}
		time.Sleep(200 * time.Millisecond)
		from, to = to, next[to]
	}
	stopLoad()
	t.Logf("%d requests during %d moves (1 measuring, 30 drawn, %d reruns); %d replctl processes killed, %d of them inside the steps; where the kills landed:\n%s",
		p.requests.Load(), 31+reruns, reruns, kills, inSteps, landingTable(landed))
	if len(failures) > 0 {
		t.Fatalf("%d of %d requests failed, e.g. %q", len(failures), p.requests.Load(), failures[0])
	}
	p.settled(t, "blog1")
	if kills < 10 {
		t.Fatalf("only %d of 30 moves were killed: the drawn instants do not cover the moves", kills)
	}
	if inSteps < 5 {
		t.Fatalf("only %d kills landed inside the steps (from activate to retire committed): the drawn instants miss them", inSteps)
	}
}

// moveRun is one run of replctl move.
type moveRun struct {
	out    string        // stdout and stderr
	took   time.Duration // from exec to exit
	began  time.Duration // from exec to its "move started" line; 0 without one
	killed bool          // by the SIGKILL runMove sent
	err    error         // from Wait, unless killed
}

// runMove runs cmd, and SIGKILLs it after killAt unless killAt is 0.
func runMove(cmd *exec.Cmd, killAt time.Duration) moveRun {
	w := &stampedWriter{start: time.Now()}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return moveRun{err: err}
	}
	if killAt > 0 {
		timer := time.AfterFunc(killAt, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
		defer timer.Stop()
	}
	err := cmd.Wait()
	r := moveRun{out: w.buf.String(), took: time.Since(w.start), began: w.began, err: err}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled() {
		r.killed, r.err = true, nil
	}
	return r
}

// stampedWriter keeps what a move prints, and when its "move started"
// line came (replctl logs it once it holds the claims and has planned
// again, before step 1). Both of the command's outputs are one writer, so
// exec copies them from one goroutine, done when Wait returns.
type stampedWriter struct {
	start time.Time
	buf   bytes.Buffer
	began time.Duration
}

func (w *stampedWriter) Write(b []byte) (int, error) {
	n, _ := w.buf.Write(b)
	if w.began == 0 && bytes.Contains(w.buf.Bytes(), []byte("move started")) {
		w.began = time.Since(w.start)
	}
	return n, nil
}

var _ io.Writer = (*stampedWriter)(nil)

// moveTimes are the durations of whole moves seen lately.
type moveTimes struct{ took, began []time.Duration }

func (m *moveTimes) add(r moveRun) {
	keep := func(s []time.Duration, d time.Duration) []time.Duration {
		return append(s[max(0, len(s)-4):], d) // the last 5
	}
	m.took = keep(m.took, r.took)
	if r.began > 0 {
		m.began = keep(m.began, r.began)
	}
}

// estimate returns the median of the last moves' durations, from exec to
// exit and to their "move started".
func (m *moveTimes) estimate() (took, began time.Duration) {
	median := func(s []time.Duration) time.Duration {
		s = slices.Clone(s)
		slices.Sort(s)
		return s[len(s)/2]
	}
	return median(m.took), median(m.began)
}

// databases are the platform's PostgreSQL servers as the kill test reads
// them: a connection to each, and each one's log.
type databases struct {
	names []string
	conns map[string]*pgx.Conn
	logs  map[string]string // "" without a server log (pgtest's EnvURL)
}

// databases connects to every cluster's database (closed at cleanup).
func (p *platform) databases(t *testing.T) *databases {
	t.Helper()
	dbs := &databases{conns: map[string]*pgx.Conn{}, logs: map[string]string{}}
	for _, c := range p.Clusters() {
		cfg, err := pgx.ParseConfig(c.StoreAddr)
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["application_name"] = "e2e kill test"
		conn, err := pgx.ConnectConfig(t.Context(), cfg)
		if err != nil {
			t.Fatalf("connect to %s's database: %v", c.Name, err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		dbs.names = append(dbs.names, c.Name)
		dbs.conns[c.Name], dbs.logs[c.Name] = conn, p.DatabaseLog(t, c.Name)
	}
	return dbs
}

// waitGone waits until no backend of replctl (application_name replctl)
// is left in any cluster's database: a killed replctl's backends have then
// seen their connections close, rolled back what they had open (or
// committed the statement in flight), and logged it.
func (dbs *databases) waitGone(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, name := range dbs.names {
		for {
			var n int
			if err := dbs.conns[name].QueryRow(t.Context(),
				`SELECT count(*) FROM pg_stat_activity WHERE application_name = 'replctl'`).Scan(&n); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d backends of a killed replctl still there after 10 s", name, n)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}

// logSizes returns how long each server log is now.
func (dbs *databases) logSizes(t *testing.T) map[string]int64 {
	t.Helper()
	sizes := map[string]int64{}
	for name, path := range dbs.logs {
		if path == "" {
			continue
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		sizes[name] = fi.Size()
	}
	return sizes
}

// openTransactionsSince counts, per cluster, the lines PostgreSQL logged
// after marks saying that a client went away inside a transaction (a
// client that goes away outside one is not logged); nil when a cluster has
// no server log to read.
func (dbs *databases) openTransactionsSince(t *testing.T, marks map[string]int64) map[string]int {
	t.Helper()
	n := map[string]int{}
	for name, path := range dbs.logs {
		if path == "" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		n[name] = bytes.Count(b[marks[name]:], []byte("unexpected EOF on client connection with an open transaction"))
	}
	return n
}

// clusterState is what a cluster's store holds of a repl.
type clusterState struct {
	live     int64  // the live row's generation; 0: none
	tomb     int64  // the tombstone's generation; 0: none
	tombTo   string // where the tombstone points
	claimsTo string // an unexpired move claim's destination; "": none
}

// storeState reads repl id in every cluster's store (PostgreSQL: afresh).
func (p *platform) storeState(t *testing.T, id string) map[string]clusterState {
	t.Helper()
	st := map[string]clusterState{}
	for _, c := range p.Clusters() {
		var s clusterState
		r, err := c.Store.GetRepl(t.Context(), id)
		if err == nil {
			s.live = r.Generation
		} else if !errors.Is(err, store.ErrNotFound) {
			t.Fatal(err)
		}
		tb, err := c.Store.GetTombstone(t.Context(), id)
		if err == nil {
			s.tomb, s.tombTo = tb.Generation, tb.Cluster
		} else if !errors.Is(err, store.ErrNotFound) {
			t.Fatal(err)
		}
		if m, ok := c.Store.(store.Moves); ok {
			cl, err := m.GetMoveClaim(t.Context(), id)
			if err == nil && time.Now().Before(cl.Expires) {
				s.claimsTo = cl.To
			} else if err != nil && !errors.Is(err, store.ErrNotFound) {
				t.Fatal(err)
			}
		}
		st[c.Name] = s
	}
	return st
}

// Where a kill can land, in the order a move runs.
const (
	landingBeforeClaims = "before the claims: exec, connect, survey, plan"
	landingClaims       = "taking the claims, or planning again"
	landingActivate0    = "step 1 activate: before its transaction"
	landingActivateIn   = "step 1 activate: inside its transaction (rolled back)"
	landingActivate1    = "step 1 activate: committed, not logged yet"
	landingAfter1       = "between steps 1 and 2: claim renewal, confirm"
	landingRepoint1     = "step 2 repoint: committed (one statement), not logged yet"
	landingAfter2       = "between steps 2 and 3: claim renewal, confirm"
	landingRetireIn     = "step 3 retire: inside its transaction (rolled back)"
	landingRetire1      = "step 3 retire: committed, not logged yet"
	landingAfter3       = "after step 3: claim renewal, release, output"
	landingNotKilled    = "not killed: the move finished first"
)

var landings = []string{landingBeforeClaims, landingClaims, landingActivate0, landingActivateIn, landingActivate1,
	landingAfter1, landingRepoint1, landingAfter2, landingRetireIn, landingRetire1, landingAfter3, landingNotKilled}

var generationField = regexp.MustCompile(`\tmove started\t.*"generation": (\d+)`)

// killLanding says where the kill of a move from → to landed, from what
// the killed replctl printed (its "move started" and "step done" lines),
// the stores once its backends were gone (what committed: a statement
// that reached the server commits even when its client dies waiting), and
// PostgreSQL's lines about clients gone inside a transaction (activate
// and retire are each one transaction; claims, repoint and the reads are
// single statements). inStep is a landing from step 1 to step 3's commit.
// An open transaction that fits no step is added to the answer.
func killLanding(out, from, to string, st map[string]clusterState, openTx map[string]int) (where string, inStep bool) {
	var other string
	for c := range st {
		if c != from && c != to {
			other = c
		}
	}
	var gen int64
	if m := generationField.FindStringSubmatch(out); m != nil {
		gen, _ = strconv.ParseInt(m[1], 10, 64)
	}
	steps := strings.Count(out, "\tstep done\t")
	inTx := func(c string) (bool, bool) { // inside, known
		if openTx == nil {
			return false, false
		}
		n := openTx[c]
		delete(openTx, c) // what is left is unexplained
		return n > 0, true
	}
	unknown := func(s string) string { return s + " (no server log: maybe inside its transaction)" }
	switch {
	case gen == 0 && slices.ContainsFunc(slices.Collect(maps.Values(st)), func(s clusterState) bool { return s.claimsTo == to }):
		where = landingClaims
	case gen == 0:
		where = landingBeforeClaims
	case steps == 0:
		in, known := inTx(to)
		switch {
		case in:
			where = landingActivateIn
		case st[to].live == gen:
			where = landingActivate1
		case !known:
			where = unknown(landingActivate0)
		default:
			where = landingActivate0
		}
	case steps == 1 && st[other].tomb == gen:
		where = landingRepoint1
	case steps == 1:
		where = landingAfter1
	case steps == 2:
		in, known := inTx(from)
		switch {
		case in:
			where = landingRetireIn
		case st[from].tomb == gen:
			where = landingRetire1
		case !known:
			where = unknown(landingAfter2)
		default:
			where = landingAfter2
		}
	default:
		where = landingAfter3
	}
	i := slices.Index(landings, strings.TrimSuffix(where, unknown("")))
	inStep = i >= slices.Index(landings, landingActivate0) && i <= slices.Index(landings, landingRetire1)
	for c, n := range openTx {
		if n > 0 {
			where += fmt.Sprintf("; and %d open transactions in %s, unexplained", n, c)
		}
	}
	return where, inStep
}

// landingTable prints the counts of landed in the order of landings, any
// other landing after them.
func landingTable(landed map[string]int) string {
	var b strings.Builder
	row := func(where string) {
		fmt.Fprintf(&b, "  %5d  %s\n", landed[where], where)
	}
	fmt.Fprintf(&b, "  %5s  %s\n", "moves", "where the kill landed")
	for _, where := range landings {
		row(where)
	}
	var others []string
	for where := range landed {
		if !slices.Contains(landings, where) {
			others = append(others, where)
		}
	}
	slices.Sort(others)
	for _, where := range others {
		row(where)
	}
	return b.String()
}
