package pgtest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/internal/childproc"
)

// stopPostgres asks postgres for a fast shutdown (SIGINT), which
// disconnects clients and checkpoints, and kills it if it has not exited
// within timeout. Either way the child has been reaped when it returns.
func stopPostgres(p *childproc.Process, timeout time.Duration) error {
	if p.Stop(syscall.SIGINT, timeout) {
		return fmt.Errorf("postgres (pid %d) did not shut down within %v: killed it", p.Pid(), timeout)
	}
	return nil
}

// sysProcAttr makes a child run as cred (nil: as we do) and get killed when
// we die, crashed tests included.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
}

// children returns the processes whose parent is pid, from /proc. (The
// postmaster's children call setsid: its process group does not hold them.)
func children(pid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		rest := stat[bytes.LastIndexByte(stat, ')')+1:]
		var state string
		var ppid int
		if _, err := fmt.Sscan(string(rest), &state, &ppid); err == nil && ppid == pid {
			out = append(out, child)
		}
	}
	return out, nil
}

// childEnv is the environment of initdb and postgres: our PATH and time
// zone, the C locale, and none of the PG* variables that could redirect them.
func childEnv() []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C"}
	if tz, ok := os.LookupEnv("TZ"); ok {
		env = append(env, "TZ="+tz)
	}
	return env
}
