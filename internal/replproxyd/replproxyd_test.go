package replproxyd

import (
	"context"
	"io"
	"net/netip"
	"path/filepath"
	"runtime/debug"
	"slices"
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

// TestProxyProtocolFlags: -proxy-protocol-from takes addresses and CIDR
// ranges, from the command line or REPLPROXY_PROXY_PROTOCOL_FROM; a bad
// entry is named with its flag; -proxy-protocol-required needs it.
func TestProxyProtocolFlags(t *testing.T) {
	base := []string{"-zone", "repl.test", "-cluster", "east", "-registry", "r.yaml", "-hop-secret-file", "hop", "-forward-plaintext"}
	noEnv := func(string) (string, bool) { return "", false }
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("198.51.100.0/24")}
	const list = "10.1.2.3/8, 192.0.2.7,2001:db8::/32,::ffff:198.51.100.0/120"
	o, err := parse(append(base, "-proxy-protocol-from", list, "-proxy-protocol-required"), noEnv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.server.ProxyProtocolFrom, want) || !o.server.ProxyProtocolRequired {
		t.Errorf("parsed %v, required %v; want %v, required", o.server.ProxyProtocolFrom, o.server.ProxyProtocolRequired, want)
	}
	env := func(name string) (string, bool) { return list, name == "REPLPROXY_PROXY_PROTOCOL_FROM" }
	if o, err := parse(base, env, io.Discard); err != nil || !slices.Equal(o.server.ProxyProtocolFrom, want) {
		t.Errorf("from the environment: %v, %v", o, err)
	}
	if o, err := parse(base, noEnv, io.Discard); err != nil || o.server.ProxyProtocolFrom != nil {
		t.Errorf("by default: %v, %v; want no PROXY protocol", o.server.ProxyProtocolFrom, err)
	}
	for _, bad := range []string{"10.0.0.300/24", "10.0.0.0/33", "lb.example", "10.0.0.1:80"} {
		_, err := parse(append(base, "-proxy-protocol-from", "10.0.0.1,"+bad), noEnv, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "-proxy-protocol-from") || !strings.Contains(err.Error(), bad) {
			t.Errorf("%q: %v, want an error naming the flag and the value", bad, err)
		}
	}
	if _, err := parse(append(base, "-proxy-protocol-required"), noEnv, io.Discard); err == nil || !strings.Contains(err.Error(), "-proxy-protocol-from") {
		t.Errorf("-proxy-protocol-required alone: %v", err)
	}
}

// TestMemoryLimit: -memory-limit and -gc-percent are in effect, and
// logged, before anything else is loaded (here a registry that is not
// there); GOMEMLIMIT and GOGC are left in effect when the flags are not
// given; bad values are refused naming the flag.
func TestMemoryLimit(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	base := []string{"-zone", "repl.test", "-cluster", "east", "-registry", filepath.Join(t.TempDir(), "none.yaml"), "-hop-secret-file", "hop", "-forward-plaintext"}
	noEnv := func(string) (string, bool) { return "", false }
	var logs strings.Builder
	if err := Main(context.Background(), append(base, "-memory-limit", "300MiB", "-gc-percent", "250"), noEnv, &logs); err == nil {
		t.Fatal("started without a registry")
	}
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("memory limit in effect %d, want 300MiB", got)
	}
	if got := debug.SetGCPercent(100); got != 250 {
		t.Errorf("GOGC in effect %d, want 250", got)
	}
	if !strings.Contains(logs.String(), `"memory_limit":"300MiB","memory_limit_bytes":314572800,"memory_limit_from":"-memory-limit 300MiB","gc_percent":250`) {
		t.Errorf("start log:\n%s", logs.String())
	}

	logs.Reset()
	env := func(name string) (string, bool) {
		v, ok := map[string]string{"GOMEMLIMIT": "700MiB", "GOGC": "off"}[name]
		return v, ok
	}
	_ = Main(context.Background(), base, env, &logs)
	if got := debug.SetMemoryLimit(-1); got != 300<<20 || !strings.Contains(logs.String(), `"memory_limit_from":"GOMEMLIMIT=700MiB","gc_percent":100,"gc_percent_from":"GOGC=off"`) {
		t.Errorf("with GOMEMLIMIT and GOGC: limit %d (want it left alone), log:\n%s", got, logs.String())
	}

	for _, bad := range [][]string{{"-memory-limit", "2G"}, {"-memory-limit", "0%"}, {"-gc-percent", "-5"}} {
		if _, err := parse(append(append([]string(nil), base...), bad...), noEnv, io.Discard); err == nil || !strings.Contains(err.Error(), bad[0]) {
			t.Errorf("%v: %v; want an error naming %s", bad, err, bad[0])
		}
	}
	envBad := func(name string) (string, bool) { return "lots", name == "REPLPROXY_MEMORY_LIMIT" }
	if _, err := parse(base, envBad, io.Discard); err == nil || !strings.Contains(err.Error(), "REPLPROXY_MEMORY_LIMIT") || !strings.Contains(err.Error(), "-memory-limit") {
		t.Errorf("REPLPROXY_MEMORY_LIMIT=lots: %v", err)
	}
}
