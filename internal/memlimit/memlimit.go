package memlimit

import (
	"flag"
	"fmt"
	"io/fs"
	"math"
	"runtime/debug"
	"runtime/metrics"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// DefaultGCPercent is -gc-percent's default. The daemons' live heap is
// small next to what they allocate per request, so collecting when the
// heap has grown by 4 times what was live saves CPU on the hot path;
// near the limit the limit paces the collector instead, so that headroom
// shrinks to what the limit leaves.
const DefaultGCPercent = 400

// Flags are -memory-limit and -gc-percent.
type Flags struct {
	Limit     Limit // -memory-limit
	GCPercent int   // -gc-percent; 0: leave GOGC alone

	limitGiven, gcGiven bool // on the command line or through the daemon's variables
}

// Register adds -memory-limit and -gc-percent, with their defaults, to
// fs; call Parsed once fs is parsed.
func (f *Flags) Register(fs *flag.FlagSet) {
	f.Limit, _ = ParseLimit(DefaultLimit)
	fs.Var(limitValue{&f.Limit}, "memory-limit", "Go's soft memory limit: a `size` (512MiB, 2GiB, 1.5GB), or a share of the memory the process may use (its cgroup's\n"+
		"memory.max, else the machine's); the collector works harder near it, so resident memory stays near it and not\n"+
		"at -gc-percent's multiple of the live heap; 0: none, or GOMEMLIMIT's (default: GOMEMLIMIT when set, else 75%)")
	fs.IntVar(&f.GCPercent, "gc-percent", DefaultGCPercent, "Go's GOGC under -memory-limit: collect when the heap has grown by this percentage of what was live\n"+
		"(the live heap is small, so collecting less often saves CPU); GOGC, when set, stands in for the default; 0 leaves Go's\n"+
		"setting alone")
}

// Parsed records which of the two flags fs was given (on the command line
// or through the daemon's variables: they then win over GOMEMLIMIT and
// GOGC), and refuses a negative -gc-percent.
func (f *Flags) Parsed(fs *flag.FlagSet) error {
	fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "memory-limit":
			f.limitGiven = true
		case "gc-percent":
			f.gcGiven = true
		}
	})
	if f.GCPercent < 0 {
		return fmt.Errorf("-gc-percent %d: %w", f.GCPercent, errGCPercent)
	}
	return nil
}

// Setting is what Resolve decided: which runtime settings to change, and
// why.
type Setting struct {
	limit     int64  // bytes to set; 0: leave the runtime's
	limitFrom string // where the limit comes from
	gc        int    // GOGC to set; 0: leave the runtime's
	gcFrom    string
}

// Resolve decides the setting: a flag given wins; else GOMEMLIMIT or GOGC
// in the environment (read through env: the runtime read it at start) is
// left in effect; else the default. A share is resolved against
// Available(sys). Its error names -memory-limit.
func (f *Flags) Resolve(env func(string) (string, bool), sys fs.FS) (Setting, error) {
	var s Setting
	goMem, hasGoMem := nonEmpty(env, "GOMEMLIMIT")
	switch {
	case f.limitGiven && f.Limit.None():
		s.limitFrom = "-memory-limit 0: none"
		if hasGoMem {
			s.limitFrom = "GOMEMLIMIT=" + goMem + " (-memory-limit 0)"
		}
	case !f.limitGiven && hasGoMem:
		s.limitFrom = "GOMEMLIMIT=" + goMem
	case f.Limit.Share():
		avail, from, err := Available(sys)
		if err != nil {
			return s, fmt.Errorf("-memory-limit %s: %w; give a size instead (e.g. -memory-limit 2GiB)", f.Limit, err)
		}
		s.limit = f.Limit.Of(avail)
		s.limitFrom = fmt.Sprintf("-memory-limit %s%s of %s (%s)", f.Limit, deflt(f.limitGiven), from, Bytes(avail))
		if s.limit < MinLimit {
			return s, fmt.Errorf("-memory-limit %s of %s (%s) is %s, below the smallest limit taken (%s): give a size instead",
				f.Limit, from, Bytes(avail), Bytes(s.limit), Bytes(MinLimit))
		}
	default:
		s.limit = f.Limit.Of(0)
		s.limitFrom = "-memory-limit " + f.Limit.String() + deflt(f.limitGiven)
	}
	if s.limit > 0 && hasGoMem {
		s.limitFrom += ", over GOMEMLIMIT=" + goMem
	}

	goGC, hasGoGC := nonEmpty(env, "GOGC")
	switch {
	case f.gcGiven && f.GCPercent == 0:
		s.gcFrom = "Go's (-gc-percent 0)"
		if hasGoGC {
			s.gcFrom = "GOGC=" + goGC + " (-gc-percent 0)"
		}
	case !f.gcGiven && hasGoGC:
		s.gcFrom = "GOGC=" + goGC
	default:
		s.gc = f.GCPercent
		s.gcFrom = fmt.Sprintf("-gc-percent %d%s", f.GCPercent, deflt(f.gcGiven))
		if hasGoGC {
			s.gcFrom += ", over GOGC=" + goGC
		}
	}
	return s, nil
}

// deflt marks a value the flag was not given.
func deflt(given bool) string {
	if given {
		return ""
	}
	return " (default)"
}

func nonEmpty(env func(string) (string, bool), name string) (string, bool) {
	v, ok := env(name)
	return v, ok && v != ""
}

// Apply changes the runtime's settings as s says and returns what is in
// effect.
func (s Setting) Apply() Effect {
	if s.limit > 0 {
		debug.SetMemoryLimit(s.limit)
	}
	if s.gc > 0 {
		debug.SetGCPercent(s.gc)
	}
	e := Current()
	e.LimitFrom, e.GCFrom = s.limitFrom, s.gcFrom
	return e
}

// Effect is the runtime's memory limit and GOGC, as runtime/metrics has
// them, and where they come from.
type Effect struct {
	Limit     int64 // bytes; math.MaxInt64: none
	GCPercent int   // -1: off
	LimitFrom string
	GCFrom    string
}

// Current reads the runtime's memory limit and GOGC.
func Current() Effect {
	samples := []metrics.Sample{{Name: "/gc/gomemlimit:bytes"}, {Name: "/gc/gogc:percent"}}
	metrics.Read(samples)
	e := Effect{Limit: math.MaxInt64, GCPercent: 100}
	if samples[0].Value.Kind() == metrics.KindUint64 {
		e.Limit = int64(min(samples[0].Value.Uint64(), math.MaxInt64))
	}
	if samples[1].Value.Kind() == metrics.KindUint64 {
		e.GCPercent = int(samples[1].Value.Uint64())
	}
	return e
}

// Fields are e for the start log: memory_limit (e.g. "768MiB", "none"),
// memory_limit_bytes, memory_limit_from, gc_percent (-1: off) and
// gc_percent_from.
func (e Effect) Fields() []zap.Field {
	limit := "none"
	if e.Limit < math.MaxInt64 {
		limit = Bytes(e.Limit)
	}
	return []zap.Field{zap.String("memory_limit", limit), zap.Int64("memory_limit_bytes", e.Limit), zap.String("memory_limit_from", e.LimitFrom),
		zap.Int("gc_percent", e.GCPercent), zap.String("gc_percent_from", e.GCFrom)}
}

// Register adds <prefix>_memory_limit_bytes to reg: the runtime's soft
// memory limit read at each scrape (go_gc_gomemlimit_bytes is the same
// figure; this one is named with the daemon's metrics, for alerts on
// process_resident_memory_bytes against it).
func Register(reg prometheus.Registerer, prefix string) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: prefix + "_memory_limit_bytes",
		Help: "Go's soft memory limit in effect (-memory-limit, or GOMEMLIMIT), in bytes; 9.223372036854776e+18 (math.MaxInt64): none.",
	}, func() float64 { return float64(Current().Limit) }))
}
