package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/platformtest"
)

// TestMovesKilledAtRandomInstants moves a repl back and forth 30 times
// under load, each time SIGKILLing replctl at an instant drawn uniformly
// over a measured move's duration (seeded; the seed is printed, and
// REPLPROXY_KILL_SEED replays it), then running the same move again. Not
// one request may fail, and the repl ends settled. Where the kills landed
// (how many steps the killed process had logged done) is printed.
func TestMovesKilledAtRandomInstants(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute of moves under load")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("REPLPROXY_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("REPLPROXY_KILL_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (REPLPROXY_KILL_SEED=%d replays it)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	p := startPlatform(t, platformtest.Options{})
	p.createRepl(t)
	host := "blog.alice.repl.test"
	stop := make(chan struct{})
	wait := p.load(t, host, 100, stop)
	moveCmd := func(to string) *exec.Cmd {
		return p.command("move", "blog1", "--to", to, "--endpoint", p.apps[to])
	}
	// The duration of a move, from exec to exit, and when its first step
	// begins (replctl logs "move started" once it holds the claims).
	first := moveCmd("west")
	stderr, err := first.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	var began time.Duration
	var log bytes.Buffer
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if began == 0 && strings.Contains(sc.Text(), "move started") {
			began = time.Since(start)
		}
		log.WriteString(sc.Text() + "\n")
	}
	if err := first.Wait(); err != nil || began == 0 {
		t.Fatalf("a first move: %v\n%s", err, log.String())
	}
	d := time.Since(start)
	t.Logf("a move takes %v from exec to exit, its steps from %v on; every other kill is drawn over [0, %v), the others over [%v, %v)",
		d.Round(time.Millisecond), began.Round(time.Millisecond), d.Round(time.Millisecond), (began / 2).Round(time.Millisecond), d.Round(time.Millisecond))

	landed := map[string]int{}
	to := "east"
	kills := 0
	for i := range 30 {
		cmd := moveCmd(to)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		started := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		at := time.Duration(rng.Int64N(int64(d)))
		if i%2 == 1 { // from the claims on: the steps, inside their transactions or between
			at = began/2 + time.Duration(rng.Int64N(int64(d-began/2)))
		}
		timer := time.AfterFunc(at, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
		err := cmd.Wait()
		timer.Stop()
		var where string
		if ee, ok := err.(*exec.ExitError); ok && ee.Sys().(syscall.WaitStatus).Signaled() {
			kills++
			steps := strings.Count(out.String(), "step done")
			switch {
			case steps == 3:
				where = "after step 3, before exit"
			case strings.Contains(out.String(), "move started"):
				where = fmt.Sprintf("in step %d", steps+1)
			default:
				where = "before the move started"
			}
		} else if err != nil {
			t.Fatalf("move to %s: %v\n%s", to, err, out.String())
		} else {
			where = "not killed: done first"
			// Moves get faster once the machine is warm (or slower under
			// load): draw the next instants over the last whole move.
			d = time.Since(started)
			began = min(began, d/2)
		}
		landed[where]++
		prev := out.String()
		// The rerun finishes what the killed one began.
		if out, err := moveCmd(to).CombinedOutput(); err != nil {
			t.Logf("repl show:\n%s", p.ctl(t, true, "repl", "show", "blog1"))
			t.Fatalf("rerun of the move to %s (the killed one %s, at %v, printed %q): %v\n%s", to, where, at, prev, err, out)
		}
		time.Sleep(200 * time.Millisecond)
		to = map[string]string{"west": "east", "east": "west"}[to]
	}
	close(stop)
	failures := wait()
	t.Logf("%d requests during 31 moves, %d replctl processes killed; where the kills landed: %v", p.requests.Load(), kills, landed)
	if len(failures) > 0 {
		t.Fatalf("%d of %d requests failed, e.g. %q", len(failures), p.requests.Load(), failures[0])
	}
	if out := p.ctl(t, false, "repl", "show", "blog1"); strings.Contains(out, "NOT SETTLED") || strings.Contains(out, "move in progress") {
		t.Fatalf("after the moves:\n%s", out)
	}
	if kills < 10 {
		t.Fatalf("only %d of 30 moves were killed: the drawn instants do not cover the moves", kills)
	}
}
