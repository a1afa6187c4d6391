package platformtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/internal/childproc"
	"github.com/replproxy/replproxy/internal/replnsd"
	"github.com/replproxy/replproxy/internal/replproxyd"
)

// daemon is one replproxy or replns, in-process or a process, that can be
// stopped, killed and started again with the same flags.
type daemon struct {
	kind     string // "replproxy" or "replns"
	name     string // for messages: "replproxy east"
	args     []string
	readyURL string
	addr     string // replns: its DNS address
	admin    string // replns: its admin listener (/metrics, /readyz)
	mode     Mode
	bin      string // Binaries: the executable
	logs     *logBuffer
	timeout  time.Duration

	mu      sync.Mutex
	running bool
	cancel  context.CancelFunc // InProcess
	reload  chan struct{}      // InProcess: its Hooks.Reload (reload.go)
	cmd     *exec.Cmd          // Binaries
	done    chan struct{}      // closed when it has exited
	err     error              // why it exited; read after done
}

func (p *Platform) newDaemon(t TB, kind, name string, args []string, readyURL string) *daemon {
	t.Helper()
	d := &daemon{kind: kind, name: name, args: args, readyURL: readyURL, mode: p.opts.Mode,
		logs: &logBuffer{tee: p.opts.Logs}, timeout: p.opts.ReadyTimeout}
	if p.opts.LogFiles {
		f, err := os.Create(filepath.Join(p.dir, strings.ReplaceAll(name, " ", "-")+".log"))
		if err != nil {
			t.Fatalf("platformtest: log file of %s: %v", name, err)
		}
		t.Cleanup(func() { f.Close() }) // after the daemon's stop, registered below
		if d.logs.tee != nil {
			d.logs.tee = io.MultiWriter(d.logs.tee, f)
		} else {
			d.logs.tee = f
		}
	}
	if d.mode == Binaries {
		d.bin = binary(t, p.opts.Bin, kind)
	}
	t.Cleanup(func() {
		if err := d.stop(); err != nil {
			t.Logf("platformtest: %s: %v", d.name, err)
		}
	})
	return d
}

// start starts the daemon; waitReady waits for it.
func (d *daemon) start(t TB) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running {
		t.Fatalf("platformtest: %s is running already", d.name)
	}
	done := make(chan struct{})
	switch d.mode {
	case InProcess:
		ctx, cancel := context.WithCancel(context.Background())
		d.cancel = cancel
		reload := make(chan struct{}, 1)
		d.reload = reload
		noEnv := func(string) (string, bool) { return "", false }
		go func() {
			defer close(done)
			var err error
			if d.kind == "replns" {
				err = replnsd.MainWith(ctx, d.args, noEnv, d.logs, replnsd.Hooks{Reload: reload})
			} else {
				err = replproxyd.MainWith(ctx, d.args, noEnv, d.logs, replproxyd.Hooks{Reload: reload})
			}
			d.err = err
		}()
	case Binaries:
		cmd := exec.Command(d.bin, d.args...)
		cmd.Env = cleanEnv()
		cmd.Stdout, cmd.Stderr = d.logs, d.logs
		// childproc: killed with the test process (Pdeathsig), from a
		// thread that lives as long as the child.
		p, err := childproc.Start(cmd)
		if err != nil {
			t.Fatalf("platformtest: start %s: %v", d.name, err)
		}
		d.cmd = cmd
		go func() {
			defer close(done)
			<-p.Done()
			d.err = p.Err()
		}()
	}
	d.done, d.running = done, true
}

// waitReady polls the daemon's /readyz until it says 200.
func (d *daemon) waitReady(t TB) {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(d.timeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		resp, err := client.Get(d.readyURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-d.done:
			t.Fatalf("platformtest: %s exited at start: %v\n%s", d.name, d.err, d.logs.tail(40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("platformtest: %s not ready after %v (%s)\n%s", d.name, d.timeout, d.readyURL, d.logs.tail(40))
		}
		time.Sleep(delay)
	}
}

// stop stops the daemon gracefully (SIGTERM, or its context cancelled)
// and waits until it has exited; stopping a daemon that is not running
// does nothing.
func (d *daemon) stop() error { return d.end(syscall.SIGTERM) }

// kill stops it at once: SIGKILL for a process; in-process, its context
// is cancelled and its listeners close, but requests in flight still get
// the daemon's -shutdown-timeout (a goroutine cannot be killed).
func (d *daemon) kill() error { return d.end(syscall.SIGKILL) }

func (d *daemon) end(sig syscall.Signal) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.running {
		return nil
	}
	d.running = false
	if d.mode == InProcess {
		d.cancel()
	} else {
		_ = d.cmd.Process.Signal(sig)
	}
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		if d.cmd != nil {
			_ = d.cmd.Process.Kill()
			<-d.done
			return fmt.Errorf("did not stop within 15 s of %v: killed\n%s", sig, d.logs.tail(40))
		}
		return fmt.Errorf("did not stop within 15 s\n%s", d.logs.tail(40))
	}
	switch err := d.err; {
	case err == nil, sig == syscall.SIGKILL:
		return nil
	default:
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signaled() {
			return nil
		}
		return fmt.Errorf("exited: %v\n%s", err, d.logs.tail(20))
	}
}

// waitExit waits up to timeout for a daemon that stops by itself (after a
// handover) to exit, and says why it did when not cleanly; past the
// timeout it is stopped.
func (d *daemon) waitExit(timeout time.Duration) error {
	d.mu.Lock()
	done := d.done
	d.mu.Unlock()
	select {
	case <-done:
	case <-time.After(timeout):
		if err := d.stop(); err != nil {
			return fmt.Errorf("still running %v after it was replaced, then: %w", timeout, err)
		}
		return fmt.Errorf("still running %v after it was replaced\n%s", timeout, d.logs.tail(20))
	}
	return d.stop() // it has exited: stop reports how
}

// restart starts a stopped daemon again with the same flags and waits for
// it.
func (d *daemon) restart(t TB) {
	t.Helper()
	if err := d.stop(); err != nil {
		t.Logf("platformtest: %s: %v", d.name, err)
	}
	d.start(t)
	d.waitReady(t)
}

// cleanEnv is the environment for the binaries: the test's, without the
// REPLPROXY_* and REPLNS_* variables that would stand in for flags.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REPLPROXY_") && !strings.HasPrefix(kv, "REPLNS_") {
			env = append(env, kv)
		}
	}
	return env
}

// builds caches the binaries built for this test process, by name: one
// `go build` each, however many platforms start.
var builds struct {
	mu   sync.Mutex
	dir  string
	done map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
}

// binary returns the path of the named binary: in dir when given, else
// Binary's.
func binary(t TB, dir, name string) string {
	t.Helper()
	if dir != "" {
		path := filepath.Join(dir, name)
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("platformtest: %s: %v (build it with `make build`, or leave Options.Bin empty to build it here)", path, err)
		}
		return path
	}
	return Binary(t, name)
}

// Binary returns the path of this module's cmd/<name> binary (replproxy,
// replns, replctl, demo), built once per test process with `go build`, run
// from the test's folder so that it builds the version the test's module
// uses. Every binary it builds is in the same folder (the one Mode
// Binaries runs, unless Options.Bin names another), so that a program
// that wants the others beside it (the demo's -bin) finds them there.
// RemoveBinaries removes them.
func Binary(t TB, name string) string {
	t.Helper()
	builds.mu.Lock()
	if builds.done == nil {
		builds.done = map[string]*build{}
	}
	if builds.dir == "" {
		d, err := os.MkdirTemp("", "platformtest-bin-")
		if err != nil {
			builds.mu.Unlock()
			t.Fatalf("platformtest: %v", err)
		}
		builds.dir = d
	}
	b := builds.done[name]
	if b == nil {
		b = &build{path: filepath.Join(builds.dir, name)}
		builds.done[name] = b
	}
	builds.mu.Unlock()
	b.once.Do(func() {
		out, err := exec.Command("go", "build", "-o", b.path, "github.com/replproxy/replproxy/cmd/"+name).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build github.com/replproxy/replproxy/cmd/%s: %v\n%s", name, err, out)
		}
	})
	if b.err != nil {
		t.Fatalf("platformtest: %v", b.err)
	}
	return b.path
}

// RemoveBinaries removes the folder of the binaries Binary (and Mode
// Binaries) built, which outlives the tests: call it from TestMain once
// m.Run has returned. A later Binary builds them again.
func RemoveBinaries() {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" {
		_ = os.RemoveAll(builds.dir)
		builds.dir, builds.done = "", nil
	}
}

// logBuffer keeps a daemon's output (the last 1 MiB) and copies it to tee.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	tee io.Writer
}

const maxLog = 1 << 20

func (l *logBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len()+len(b) > maxLog {
		keep := l.buf.Bytes()[min(l.buf.Len(), l.buf.Len()+len(b)-maxLog/2):]
		rest := append([]byte(nil), keep...)
		l.buf.Reset()
		l.buf.Write(rest)
	}
	l.buf.Write(b)
	if l.tee != nil {
		_, _ = l.tee.Write(b)
	}
	return len(b), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// tail returns the last n lines.
func (l *logBuffer) tail(n int) string {
	lines := strings.Split(strings.TrimRight(l.String(), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
