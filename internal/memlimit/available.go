package memlimit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// Available returns the memory the process may use, read from sys (the
// root file system: os.DirFS("/")), and what set it: the least of the
// memory.max and memory.high of the process's cgroup (v2) and of the
// cgroups above it, of memory.limit_in_bytes (v1) the same way, and of
// the machine's memory (MemTotal in /proc/meminfo). It fails only when
// none of them can be read (not Linux).
func Available(sys fs.FS) (int64, string, error) {
	var least int64
	var from string
	take := func(n int64, what string) {
		if n > 0 && (least == 0 || n < least) {
			least, from = n, what
		}
	}
	if n, err := memTotal(sys); err == nil {
		take(n, "the machine's memory")
	}
	for _, c := range cgroups(sys) {
		for dir := c.path; ; dir = path.Dir(dir) {
			for _, file := range c.files {
				if n, ok := readLimit(sys, path.Join(c.mount, dir, file)); ok {
					take(n, "cgroup "+path.Join(dir, file))
				}
			}
			if dir == "/" || dir == "." {
				break
			}
		}
	}
	if least == 0 {
		return 0, "", errors.New("the memory available is not known: no cgroup limit or /proc/meminfo to read")
	}
	return least, from, nil
}

// cgroup is where one hierarchy's limits are: the mount's folder (no
// leading slash, for fs.FS), the process's path in it, the files.
type cgroup struct {
	mount, path string
	files       []string
}

// cgroups reads /proc/self/cgroup: the unified hierarchy (v2, "0::/path")
// mounted at /sys/fs/cgroup, and v1's memory controller at
// /sys/fs/cgroup/memory.
func cgroups(sys fs.FS) []cgroup {
	b, err := fs.ReadFile(sys, "proc/self/cgroup")
	if err != nil {
		return nil
	}
	var out []cgroup
	for line := range strings.Lines(string(b)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) != 3 || !strings.HasPrefix(parts[2], "/") {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			out = append(out, cgroup{"sys/fs/cgroup", parts[2], []string{"memory.max", "memory.high"}})
		case strings.Contains(","+parts[1]+",", ",memory,"):
			out = append(out, cgroup{"sys/fs/cgroup/memory", parts[2], []string{"memory.limit_in_bytes"}})
		}
	}
	return out
}

// readLimit reads a cgroup limit file: a number of bytes, or "max" (v2)
// or a number near 2^63 (v1) for none.
func readLimit(sys fs.FS, name string) (int64, bool) {
	b, err := fs.ReadFile(sys, name)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil || n <= 0 || n >= 1<<62 {
		return 0, false
	}
	return n, true
}

// memTotal reads MemTotal from /proc/meminfo.
func memTotal(sys fs.FS) (int64, error) {
	f, err := sys.Open("proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo: MemTotal %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("/proc/meminfo: no MemTotal")
}
