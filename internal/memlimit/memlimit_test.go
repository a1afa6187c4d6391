package memlimit

import (
	"flag"
	"io"
	"math"
	"runtime/debug"
	"strings"
	"testing"
	"testing/fstest"
)

func TestParseLimit(t *testing.T) {
	for _, tc := range []struct {
		in    string
		bytes int64 // with 1 GiB available
		err   string
	}{
		{in: "512MiB", bytes: 512 << 20},
		{in: "2GiB", bytes: 2 << 30},
		{in: "1.5GiB", bytes: 3 << 29},
		{in: "1.5GB", bytes: 1_500_000_000},
		{in: "64 MiB", bytes: 64 << 20},
		{in: "100000000", bytes: 100_000_000},
		{in: "75%", bytes: 3 << 28},
		{in: "100%", bytes: 1 << 30},
		{in: "12.5%", bytes: 1 << 27},
		{in: "0"}, {in: "off"},
		{in: "2G", err: "want a size"},
		{in: "lots", err: "want a size"},
		{in: "-1GiB", err: "want a size"},
		{in: "1e9", err: "want a size"},
		{in: "NaNGiB", err: "want a size"},
		{in: "0%", err: "more than 0%"},
		{in: "101%", err: "at most 100%"},
		{in: "1MiB", err: "below the smallest limit"},
		{in: "9000000TiB", err: "more than any memory"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			l, err := ParseLimit(tc.in)
			switch {
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseLimit(%q) = %v, %v; want an error saying %q", tc.in, l, err, tc.err)
				}
			case err != nil:
				t.Fatal(err)
			case l.Of(1<<30) != tc.bytes:
				t.Errorf("ParseLimit(%q).Of(1GiB) = %d, want %d", tc.in, l.Of(1<<30), tc.bytes)
			}
		})
	}
}

// TestBadFlags: a bad -memory-limit or -gc-percent is refused with an
// error naming the flag.
func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"-memory-limit", "2G"}, {"-memory-limit", "150%"}, {"-gc-percent", "-1"}, {"-gc-percent", "lots"}} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var f Flags
		f.Register(fs)
		err := fs.Parse(args)
		if err == nil {
			err = f.Parsed(fs)
		}
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: %v; want an error naming %s", args, err, args[0])
		}
	}
}

// sys is a root file system in a cgroup v2 with the given limits.
func sys(max, high string) fstest.MapFS {
	m := fstest.MapFS{
		"proc/meminfo":     {Data: []byte("MemTotal:       24683584 kB\nMemFree: 1 kB\n")},
		"proc/self/cgroup": {Data: []byte("0::/system.slice/replproxy@a.service\n")},
		"sys/fs/cgroup/system.slice/replproxy@a.service/memory.max":  {Data: []byte(max + "\n")},
		"sys/fs/cgroup/system.slice/replproxy@a.service/memory.high": {Data: []byte(high + "\n")},
	}
	return m
}

func TestAvailable(t *testing.T) {
	v1 := fstest.MapFS{
		"proc/meminfo":     {Data: []byte("MemTotal: 2097152 kB\n")},
		"proc/self/cgroup": {Data: []byte("4:memory:/docker/abc\n0::/\n")},
		"sys/fs/cgroup/memory/memory.limit_in_bytes": {Data: []byte("536870912\n")}, // a container: its cgroup at the root
	}
	slice := sys("max", "max")
	slice["sys/fs/cgroup/system.slice/memory.max"] = &fstest.MapFile{Data: []byte("3221225472\n")}
	for _, tc := range []struct {
		name string
		sys  fstest.MapFS
		want int64
		from string
	}{
		{"memory.max", sys("4294967296", "max"), 4 << 30, "cgroup /system.slice/replproxy@a.service/memory.max"},
		{"memory.high lower", sys("4294967296", "2147483648"), 2 << 30, "memory.high"},
		{"no cgroup limit", sys("max", "max"), 24683584 << 10, "the machine's memory"},
		{"more than the machine", sys("107374182400", "max"), 24683584 << 10, "the machine's memory"},
		{"a parent's", slice, 3 << 30, "cgroup /system.slice/memory.max"},
		{"cgroup v1", v1, 512 << 20, "cgroup /memory.limit_in_bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, from, err := Available(tc.sys)
			if err != nil || n != tc.want || !strings.Contains(from, tc.from) {
				t.Errorf("Available = %d, %q, %v; want %d from %q", n, from, err, tc.want, tc.from)
			}
		})
	}
	if _, _, err := Available(fstest.MapFS{}); err == nil {
		t.Error("Available with nothing to read: no error")
	}
}

// TestResolve: a flag given wins over GOMEMLIMIT and GOGC, which win over
// the defaults; a share is of the memory available.
func TestResolve(t *testing.T) {
	env := func(kv ...string) func(string) (string, bool) {
		return func(name string) (string, bool) {
			for i := 0; i < len(kv); i += 2 {
				if kv[i] == name {
					return kv[i+1], true
				}
			}
			return "", false
		}
	}
	for _, tc := range []struct {
		name      string
		args      []string
		env       func(string) (string, bool)
		limit, gc int // 0: left alone
		from      string
	}{
		{"defaults", nil, env(), 3 << 30, 400, "75% (default) of cgroup"},
		{"a size", []string{"-memory-limit", "1GiB", "-gc-percent", "200"}, env(), 1 << 30, 200, "-memory-limit 1GiB"},
		{"a share", []string{"-memory-limit", "50%"}, env(), 2 << 30, 400, "50% of cgroup"},
		{"GOMEMLIMIT and GOGC", nil, env("GOMEMLIMIT", "700MiB", "GOGC", "off"), 0, 0, "GOMEMLIMIT=700MiB"},
		{"empty variables", nil, env("GOMEMLIMIT", "", "GOGC", ""), 3 << 30, 400, "75%"},
		{"the flags over them", []string{"-memory-limit", "1GiB", "-gc-percent", "150"}, env("GOMEMLIMIT", "700MiB", "GOGC", "50"), 1 << 30, 150, "over GOMEMLIMIT=700MiB"},
		{"left alone", []string{"-memory-limit", "0", "-gc-percent", "0"}, env(), 0, 0, "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			var f Flags
			f.Register(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if err := f.Parsed(fs); err != nil {
				t.Fatal(err)
			}
			s, err := f.Resolve(tc.env, sys("4294967296", "max"))
			if err != nil {
				t.Fatal(err)
			}
			if s.limit != int64(tc.limit) || s.gc != tc.gc || !strings.Contains(s.limitFrom, tc.from) {
				t.Errorf("limit %d (%s), gc %d (%s); want %d (%q), %d", s.limit, s.limitFrom, s.gc, s.gcFrom, tc.limit, tc.from, tc.gc)
			}
		})
	}

	var f Flags
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	f.Register(fs)
	if _, err := f.Resolve(env(), fstest.MapFS{}); err == nil || !strings.Contains(err.Error(), "-memory-limit 75%") {
		t.Errorf("a share with nothing to read: %v", err)
	}
	if _, err := f.Resolve(env(), sys("16777216", "max")); err == nil || !strings.Contains(err.Error(), "below the smallest") {
		t.Errorf("a share of 16MiB: %v", err)
	}
}

// TestApply: the runtime has the limit and GOGC applied, and Current
// reads them back.
func TestApply(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	e := Setting{limit: 300 << 20, gc: 250, limitFrom: "test"}.Apply()
	if got := debug.SetMemoryLimit(-1); got != 300<<20 || e.Limit != got || e.GCPercent != 250 || e.LimitFrom != "test" {
		t.Errorf("runtime limit %d; effect %+v; want 300MiB and GOGC 250", got, e)
	}
	e = Setting{}.Apply() // leaves both alone
	if e.Limit != 300<<20 || e.GCPercent != 250 {
		t.Errorf("left alone: %+v", e)
	}
	debug.SetMemoryLimit(math.MaxInt64)
	if f := Current().Fields(); f[0].String != "none" {
		t.Errorf("no limit logged as %q", f[0].String)
	}
}
