package e2e

import (
	"strings"
	"testing"

	"github.com/replproxy/replproxy/platformtest"
)

// TestConcurrentOperators: one operator's move of a repl to west stops
// after step 1 (as a killed replctl would); a second operator's move of it
// to east is refused with nothing changed, naming the first move, and
// `repl show` says a move is in progress; the first operator's rerun
// finishes, after which the second operator's move goes through.
func TestConcurrentOperators(t *testing.T) {
	p := startPlatform(t, platformtest.Options{})
	p.createRepl(t)
	out := p.ctl(t, true, "move", "blog1", "--to", "west", "--endpoint", p.apps["west"], "--stop-after", "1")
	if !strings.Contains(out, "stopped by --stop-after") {
		t.Fatalf("the first operator's move did not stop:\n%s", out)
	}
	show := p.ctl(t, false, "repl", "show", "blog1")
	if !strings.Contains(show, "move in progress: to west by replctl on ") {
		t.Fatalf("repl show during the move:\n%s", show)
	}
	out = p.ctl(t, true, "move", "blog1", "--to", "east", "--endpoint", p.apps["east"])
	for _, want := range []string{"refused", "is being moved to west by replctl on", "nothing was changed", "--force"} {
		if !strings.Contains(out, want) {
			t.Fatalf("the second operator's move, meanwhile: %q missing from\n%s", want, out)
		}
	}
	if after := p.ctl(t, false, "repl", "show", "blog1"); after != show {
		t.Fatalf("the refused move changed something:\nbefore:\n%s\nafter:\n%s", show, after)
	}
	p.ctl(t, false, "move", "blog1", "--to", "west", "--endpoint", p.apps["west"])
	p.ctl(t, false, "move", "blog1", "--to", "east", "--endpoint", p.apps["east"])
	if show := p.ctl(t, false, "repl", "show", "blog1"); strings.Contains(show, "NOT SETTLED") || strings.Contains(show, "move in progress") ||
		!strings.Contains(show, "served by east") {
		t.Fatalf("after both moves:\n%s", show)
	}
	t.Logf("the second operator saw:\n%s", out)
}
