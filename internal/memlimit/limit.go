// Package memlimit sets the Go runtime's soft memory limit and GOGC for
// the daemons, from their flags -memory-limit and -gc-percent, and leaves
// GOMEMLIMIT and GOGC from the environment in effect when those flags are
// not given.
//
// A limit is a size (512MiB, 2GiB, 1.5GB, or bytes) or a share of the
// memory the process may use (75%): the least of its cgroup's memory.max
// and memory.high and those of the cgroups above it (cgroup v1:
// memory.limit_in_bytes), and of the machine's memory (MemTotal). Under
// the limit the collector paces itself by GOGC; near it, by the limit.
package memlimit

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// DefaultLimit is -memory-limit's default: three quarters of the memory
// available, the rest left to what the limit does not count (the kernel's
// socket buffers and page cache charged to the cgroup, the binary) and to
// the limit being soft.
const DefaultLimit = "75%"

// MinLimit is the smallest limit taken: below it an idle daemon's own
// heap would keep the collector running.
const MinLimit = 16 << 20

// Limit is a value of -memory-limit: so many bytes, a share of the memory
// available, or none. The zero Limit is none.
type Limit struct {
	bytes   int64   // > 0: so many bytes
	percent float64 // > 0: this share of the memory available, in percent
}

// ParseLimit reads a limit: "512MiB", "2GiB", "1.5GB", "1073741824"
// (bytes), "75%", or "0" / "off" for none.
func ParseLimit(s string) (Limit, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "0", "off", "none":
		return Limit{}, nil
	}
	if num, ok := strings.CutSuffix(s, "%"); ok {
		p, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || !(p > 0 && p <= 100) {
			return Limit{}, fmt.Errorf("%q: a share must be more than 0%% and at most 100%% (e.g. 75%%)", s)
		}
		return Limit{percent: p}, nil
	}
	n, err := parseSize(s)
	if err != nil {
		return Limit{}, err
	}
	if n < MinLimit {
		return Limit{}, fmt.Errorf("%q is %s, below the smallest limit taken (%s): the daemon would spend its time collecting", s, Bytes(n), Bytes(MinLimit))
	}
	return Limit{bytes: n}, nil
}

// units are the suffixes a size may carry, longest first among those
// that end alike.
var units = []struct {
	suffix string
	size   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

const wantSize = "want a size such as 512MiB, 2GiB or 1.5GB (or bytes), a share of the memory available such as 75%, or 0 for none"

func parseSize(s string) (int64, error) {
	num, mult := s, 1.0
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.size
			break
		}
	}
	if mult == 1 {
		if n, err := strconv.ParseInt(num, 10, 64); err == nil && n >= 0 {
			return n, nil
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || num == "" || strings.ContainsAny(num, "eEpPxX_") || !(f >= 0) {
		return 0, fmt.Errorf("%q: %s", s, wantSize)
	}
	b := f * mult
	if b >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is more than any memory", s)
	}
	return int64(b), nil
}

// None reports whether l sets no limit.
func (l Limit) None() bool { return l.bytes == 0 && l.percent == 0 }

// Of returns the limit in bytes when available bytes are what the process
// may use (0: not known; then a share is none).
func (l Limit) Of(available int64) int64 {
	if l.percent > 0 {
		return int64(float64(available) * l.percent / 100)
	}
	return l.bytes
}

// Share reports whether l is a share of the memory available.
func (l Limit) Share() bool { return l.percent > 0 }

// String is l as ParseLimit reads it.
func (l Limit) String() string {
	switch {
	case l.percent > 0:
		return strconv.FormatFloat(l.percent, 'f', -1, 64) + "%"
	case l.bytes > 0:
		return Bytes(l.bytes)
	}
	return "0"
}

// Bytes writes n in the largest binary unit that keeps it readable:
// 805306368 is "768MiB", 1610612736 "1.5GiB".
func Bytes(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.size {
			v := float64(n) / float64(u.size)
			if n%u.size == 0 {
				return strconv.FormatInt(n/u.size, 10) + u.suffix
			}
			return strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// limitValue is the flag.Value of -memory-limit.
type limitValue struct{ l *Limit }

func (v limitValue) Set(s string) error {
	l, err := ParseLimit(s)
	if err != nil {
		return err
	}
	*v.l = l
	return nil
}

func (v limitValue) String() string {
	if v.l == nil {
		return DefaultLimit
	}
	return v.l.String()
}

var errGCPercent = errors.New("want a percentage above 0 (400: collect when the heap has grown by 4 times what was live), or 0 to leave GOGC alone")
