package e2e

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/platformtest"
)

// replns is a running replns process.
type replns struct {
	addr  string // host:port answered on, UDP and TCP
	admin string // host:port of the admin listener
	cmd   *exec.Cmd
	out   *syncBuffer
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startReplns starts the replns binary with args plus -listen and -admin-listen
// on free ports, waits until /readyz says ready, and stops it (SIGTERM,
// then checking it exited cleanly) when the test ends: replns alone, over
// a registry of the test's own (the tests that want the whole platform
// use platformtest, by start).
func startReplns(t testing.TB, args ...string) *replns {
	t.Helper()
	bin := platformtest.Binary(t, "replns")
	r := &replns{
		addr:  platformtest.FreeAddr(t, "127.0.0.1"),
		admin: platformtest.FreeAddr(t, "127.0.0.1"),
		out:   &syncBuffer{},
	}
	r.cmd = exec.Command(bin, append([]string{"-listen", r.addr, "-admin-listen", r.admin, "-log-format", "console"}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- r.cmd.Wait() }()
	t.Cleanup(func() {
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("replns did not exit cleanly on SIGTERM: %v\n%s", err, r.out)
			}
		case <-time.After(15 * time.Second):
			_ = r.cmd.Process.Kill()
			<-exited
			t.Errorf("replns did not stop within 15 s of SIGTERM\n%s", r.out)
		}
	})

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("replns exited at start: %v\n%s", err, r.out)
		default:
		}
		if resp, err := client.Get("http://" + r.admin + "/readyz?all=1"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("replns not ready after 20 s\n%s", r.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reply is what dig or kdig printed, reduced to what the tests compare.
type reply struct {
	status  string
	flags   []string
	records []string // answer, authority and additional, normalised and sorted
	raw     string
}

var (
	statusRE = regexp.MustCompile(`status: ([A-Z]+)`)
	flagsRE  = regexp.MustCompile(`(?i);; flags: ([a-z ]*);`)
)

// query runs dig or kdig against addr with args and parses the output.
func query(t testing.TB, tool, addr string, args ...string) reply {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	all := []string{"@" + host, "-p", port, "+norec", "+time=2", "+tries=1"}
	if tool == "kdig" {
		all = []string{"@" + host, "-p", port, "+norec", "+timeout=2", "+retry=0"}
	}
	all = append(all, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, tool, all...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(all, " "), err, out)
	}
	r := reply{raw: string(out)}
	if m := statusRE.FindStringSubmatch(r.raw); m != nil {
		r.status = m[1]
	}
	if m := flagsRE.FindStringSubmatch(r.raw); m != nil {
		r.flags = strings.Fields(m[1])
	}
	for line := range strings.SplitSeq(r.raw, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, ";") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		f[0] = strings.ToLower(f[0])
		r.records = append(r.records, strings.Join(f, " "))
	}
	slices.Sort(r.records)
	return r
}

func (r reply) hasFlag(f string) bool { return slices.Contains(r.flags, f) }

// have checks for a tool; a missing one fails the test under CI.
func have(t testing.TB, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		if os.Getenv(pgtest.EnvRequire) != "" { // CI installs them
			t.Fatalf("%s is missing; install it with: apt-get install -y %s", tool, pkg)
		}
		t.Skipf("%s is missing; install it with: apt-get install -y %s", tool, pkg)
	}
}

// writeFiles writes files into a temporary folder and returns it.
func writeFiles(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
