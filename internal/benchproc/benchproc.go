// Package benchproc starts and measures the processes of the comparative
// benchmarks (bench/proxy, bench/tls): each pinned to a CPU, in a process
// group of its own, its CPU time and resident memory read from /proc.
package benchproc

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is a process a benchmark started.
type Proc struct {
	Name    string
	Cmd     *exec.Cmd
	logFile string
}

// Start runs args pinned to cpu (taskset -c), with env added to the
// environment and its output in dir/name.log. It dies with the benchmark
// (Pdeathsig).
func Start(dir, name, cpu string, env []string, args ...string) (*Proc, error) {
	cmd := exec.Command("taskset", append([]string{"-c", cpu}, args...)...)
	logFile := filepath.Join(dir, name+".log")
	logf, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &Proc{Name: name, Cmd: cmd, logFile: logFile}, nil
}

// Log returns what the process printed.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.logFile)
	return string(b)
}

// Stop sends SIGTERM to the process group, and SIGKILL after 10 s, and
// waits for the process.
func (p *Proc) Stop() {
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.Cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// groupStats returns the fields after the command name of /proc/PID/stat
// for every process of the group (nginx and its workers), by pid.
func (p *Proc) groupStats() map[string][]string {
	pgid := strconv.Itoa(p.Cmd.Process.Pid)
	ents, _ := os.ReadDir("/proc")
	stats := map[string][]string{}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name is in parentheses and may hold spaces.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		if len(f) >= 13 && f[2] == pgid { // f[2] is pgrp
			stats[e.Name()] = f
		}
	}
	return stats
}

// CPUTicks sums utime+stime of the process group, in clock ticks
// (USER_HZ, 100 per second on Linux).
func (p *Proc) CPUTicks() int64 {
	var total int64
	for _, f := range p.groupStats() {
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += ut + st
	}
	return total
}

// RSSKiB sums VmRSS of the process group.
func (p *Proc) RSSKiB() int64 {
	var total int64
	for pid := range p.groupStats() {
		st, _ := os.ReadFile("/proc/" + pid + "/status")
		for _, l := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				total += n
			}
		}
	}
	return total
}

// FreePort returns a TCP port of 127.0.0.1 unused a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// WaitListening waits up to 10 s for something to accept connections on
// addr.
func WaitListening(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("nothing listens on %s after 10s", addr)
}
