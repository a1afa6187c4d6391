package replproxyd

import (
	"io"
	"strings"
	"testing"
	"time"
)

// TestWakeFlags: the wake flags reach proxy.Config, and values that would
// silently mean a default, or contradict each other, are refused.
func TestWakeFlags(t *testing.T) {
	base := []string{"-zone", "repl.test", "-cluster", "east", "-registry", "r.yaml", "-hop-secret-file", "hop", "-forward-plaintext"}
	noEnv := func(string) (string, bool) { return "", false }
	o, err := parse(append(base, "-wake-timeout", "10s", "-wake-page-after", "1s", "-wake-max-held", "50", "-wake-max-held-per-repl", "5",
		"-wake-rate", "2.5", "-wake-burst", "4", "-activity-flush", "3s"), noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	p := o.proxy
	if !o.wake || p.WakeTimeout != 10*time.Second || p.WakePageAfter != time.Second || p.MaxHeld != 50 || p.MaxHeldPerRepl != 5 ||
		p.WakeRate != 2.5 || p.WakeBurst != 4 || p.ActivityFlush != 3*time.Second {
		t.Errorf("parsed %+v", p)
	}
	for _, bad := range [][]string{
		{"-wake-timeout", "0s"}, {"-wake-page-after", "-1s"}, {"-activity-flush", "0s"},
		{"-wake-max-held", "0"}, {"-wake-max-held-per-repl", "-3"}, {"-wake-burst", "0"}, {"-wake-rate", "0"}, {"-wake-rate", "NaN"},
		{"-wake-max-held", "10", "-wake-max-held-per-repl", "11"},
		{"-wake-timeout", "1s", "-wake-page-after", "2s"},
	} {
		if _, err := parse(append(append([]string(nil), base...), bad...), noEnv, io.Discard); err == nil || !strings.Contains(err.Error(), "-") {
			t.Errorf("%v: accepted (err %v)", bad, err)
		}
	}
}
