package pgtest

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/replproxy/replproxy/internal/childproc"
)

const (
	startTimeout  = 30 * time.Second      // until a started postgres accepts connections
	stopTimeout   = 10 * time.Second      // for a fast shutdown before SIGKILL
	initdbTimeout = 60 * time.Second      // for initdb
	pollInterval  = 20 * time.Millisecond // between connection attempts while starting
	pingTimeout   = 2 * time.Second       // per connection attempt while starting
	portAttempts  = 5                     // ports tried when the chosen one is taken meanwhile
	logTailLines  = 40                    // of the server's log in error messages
	sharedBuffers = "32MB"                // enough for tests, small enough for many clusters
	superuser     = "postgres"            // made by initdb; the DSNs' user

	defaultMaxConnections = 200 // a test's; LaunchOptions may ask for more
)

// errPortInUse means postgres could not listen on its port, which another
// process took between our choosing it and postgres binding it.
var errPortInUse = errors.New("port already in use")

// Server is a PostgreSQL server for tests: one started by Start or StartN and
// removed at the end of the test, or the existing server named by EnvURL.
// Its methods may be called from several goroutines.
type Server struct {
	dsn      string // of the default database
	external bool   // EnvURL's server, not ours to stop
	maxConns int    // max_connections; 0 means defaultMaxConnections

	// Set by boot, before the Server is shared.
	bin     binaries
	cred    *syscall.Credential // who the server runs as; nil for ourselves
	root    string              // our folder, removed at cleanup
	data    string              // the data folder and the unix socket's, in root
	logPath string              // the server's stderr, in root
	port    int

	mu   sync.Mutex         // held while starting or stopping the server
	proc *childproc.Process // nil while stopped
}

// DSN returns the address of the server's default "postgres" database, in
// postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable form; with
// EnvURL set, that URL.
func (s *Server) DSN() string { return s.dsn }

// T is what the server's methods need of a test: testing.TB is one, and so
// is the test platform's (package platformtest).
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// skip skips a test that t can skip, and fails any other.
func skip(t T, why string) {
	t.Helper()
	if s, ok := t.(interface{ Skip(args ...any) }); ok {
		s.Skip(why)
	}
	t.Fatalf("%s", why)
}

// Stop stops the server with a fast shutdown, keeping its data folder, for
// tests of outages. With EnvURL set it skips the test.
func (s *Server) Stop(t T) {
	t.Helper()
	if s.external {
		skip(t, "needs a server the test started")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		t.Fatalf("pgtest: Stop: the server on port %d is not running", s.port)
	}
	p := s.proc
	s.proc = nil
	if err := stopPostgres(p, stopTimeout); err != nil {
		t.Fatalf("pgtest: %v\n%s", err, childproc.Tail(s.logPath, logTailLines))
	}
}

// Restart starts the server again after Stop, on the same port and with the
// same data, so that DSNs stay valid. With EnvURL set it skips the test.
func (s *Server) Restart(t T) {
	t.Helper()
	if s.external {
		skip(t, "needs a server the test started")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		t.Fatalf("pgtest: Restart: the server on port %d is running", s.port)
	}
	if err := s.launch(); err != nil {
		t.Fatalf("pgtest: restart: %v", err)
	}
}

// Pause freezes the server and every backend (SIGSTOP to the postmaster
// and each of its children): connections stay open and nothing answers, as
// when the database's host hangs. Resume undoes it; the test's cleanup does too, so the server
// can be stopped. A server of EnvURL cannot be paused: the test is skipped.
func (s *Server) Pause(t T) {
	t.Helper()
	s.signalGroup(t, syscall.SIGSTOP)
	t.Cleanup(func() { s.signalGroup(t, syscall.SIGCONT) })
}

// Resume lets a paused server run again.
func (s *Server) Resume(t T) {
	t.Helper()
	s.signalGroup(t, syscall.SIGCONT)
}

func (s *Server) signalGroup(t T, sig syscall.Signal) {
	t.Helper()
	if s.external {
		skip(t, fmt.Sprintf("pgtest: cannot send %v to a server of %s", sig, EnvURL))
	}
	pid := s.pid()
	if pid == 0 {
		t.Fatalf("pgtest: cannot send %v: the server is stopped", sig)
	}
	// The postmaster first: stopped, it forks no new backend.
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("pgtest: send %v to postgres (pid %d): %v", sig, pid, err)
	}
	kids, err := children(pid)
	if err != nil {
		t.Fatalf("pgtest: list the backends of postgres (pid %d): %v", pid, err)
	}
	for _, k := range kids {
		_ = syscall.Kill(k, sig) // one may have exited meanwhile
	}
}

// running reports whether the server is up, as far as we know.
func (s *Server) running() bool {
	if s.external {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// PID returns the postmaster's process id, or 0 while stopped or for a
// server of EnvURL; benchmarks read its children's CPU time from /proc.
func (s *Server) PID() int { return s.pid() }

// LogPath returns the file the server logs to (its stderr, appended to by
// each backend itself), or "" for a server of EnvURL, whose log is not ours.
func (s *Server) LogPath() string {
	if s.external {
		return ""
	}
	return s.logPath
}

// pid returns the postmaster's process id, or 0 while stopped; for tests.
func (s *Server) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.Pid()
}

// folder returns the folder removed at cleanup; for tests.
func (s *Server) folder() string { return s.root }

// boot makes the server's folder and cluster, and starts it on a free port
// taken from freePort.
func (s *Server) boot(freePort func() (int, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	root, data, err := makeFolder(s.cred)
	if err != nil {
		return err
	}
	s.root, s.data, s.logPath = root, data, filepath.Join(root, "postgres.log")
	if err := s.initdb(); err != nil {
		return err
	}
	return s.launchOnFreePort(freePort)
}

// launchOnFreePort launches the server on a port from freePort, and on
// another when that one turns out to be taken (portAttempts in all).
// s.mu is held.
func (s *Server) launchOnFreePort(freePort func() (int, error)) error {
	var err error
	for range portAttempts {
		port, perr := freePort()
		if perr != nil {
			return fmt.Errorf("pick a port: %w", perr)
		}
		s.port = port
		s.dsn = fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", superuser, port)
		if err = s.launch(); !errors.Is(err, errPortInUse) {
			return err
		}
	}
	return err
}

func (s *Server) initdb() error {
	ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin.initdb,
		"-D", s.data, "-A", "trust", "-U", superuser, "-E", "UTF8", "--locale=C", "--no-sync")
	cmd.Dir = s.root // ours may be closed to the server's user
	cmd.Env = childEnv()
	cmd.SysProcAttr = sysProcAttr(s.cred)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	p, err := childproc.Start(cmd)
	if err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	<-p.Done()
	if p.Err() != nil {
		return fmt.Errorf("initdb %s: %w\n%s", s.data, p.Err(), out.Bytes())
	}
	return nil
}

// launch starts postgres on s.port and waits until it accepts connections.
// On failure nothing is left running. s.mu is held.
func (s *Server) launch() error {
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	fi, err := logFile.Stat()
	if err != nil {
		_ = logFile.Close()
		return fmt.Errorf("open log: %w", err)
	}
	logStart := fi.Size()

	cmd := exec.CommandContext(context.Background(), s.bin.postgres, // stopped by stop, not by a context
		"-D", s.data,
		"-p", strconv.Itoa(s.port),
		"-k", s.data,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections="+strconv.Itoa(cmp.Or(s.maxConns, defaultMaxConnections)),
		"-c", "shared_buffers="+sharedBuffers,
	)
	cmd.Dir = s.root
	cmd.Env = childEnv()
	cmd.Stdout = logFile // an *os.File goes to the child as is: no copying goroutine
	cmd.Stderr = logFile
	cmd.SysProcAttr = sysProcAttr(s.cred)
	p, err := childproc.Start(cmd)
	_ = logFile.Close() // the child has its own descriptor
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}

	if err := s.waitReady(p); err != nil {
		_ = stopPostgres(p, stopTimeout) // and the log is complete
		if bindFailed(s.logPath, logStart) {
			return fmt.Errorf("postgres on port %d: %w", s.port, errPortInUse)
		}
		return fmt.Errorf("postgres on port %d: %w\nserver log (tail):\n%s", s.port, err, childproc.Tail(s.logPath, logTailLines))
	}
	s.proc = p
	return nil
}

// errOtherServer means a connection to our port reached some other server.
var errOtherServer = errors.New("another server answers on this port")

// waitReady waits until the server started as p accepts connections, p exits
// or startTimeout passes.
func (s *Server) waitReady(p *childproc.Process) error {
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	go func() { // end a connection attempt hanging on whatever else holds the port
		select {
		case <-p.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		err := s.ping(ctx)
		if err == nil || errors.Is(err, errOtherServer) {
			return err
		}
		select {
		case <-ctx.Done():
		case <-ticker.C:
			continue
		}
		select {
		case <-p.Done():
			return fmt.Errorf("exited before accepting connections (%v)", p.Err())
		default:
			return fmt.Errorf("not accepting connections after %v: %w", startTimeout, err)
		}
	}
}

// ping connects to the server and checks it is ours, not one that took our
// port while ours failed to.
func (s *Server) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dsn)
	if err != nil {
		return err
	}
	var dir string
	err = conn.QueryRow(ctx, "SHOW data_directory").Scan(&dir)
	if cerr := conn.Close(ctx); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if dir != s.data {
		return fmt.Errorf("%w: its data is in %s", errOtherServer, dir)
	}
	return nil
}

// bindFailed reports whether the log, from offset on, says postgres could
// not listen on its port.
func bindFailed(path string, offset int64) bool {
	b, err := os.ReadFile(path)
	if err != nil || offset > int64(len(b)) {
		return false
	}
	b = b[offset:]
	return bytes.Contains(b, []byte("could not bind")) || bytes.Contains(b, []byte("Address already in use"))
}

// close is the server's cleanup: it stops the server, waits for it to exit
// and removes its folder.
func (s *Server) close(t testing.TB) {
	stopErr, removeErr := s.shutdown()
	if stopErr != nil {
		t.Logf("pgtest: %v", stopErr)
	}
	if removeErr != nil {
		t.Errorf("pgtest: %v", removeErr)
	}
}

// shutdown stops the server, waits for it to exit and removes its folder.
func (s *Server) shutdown() (stopErr, removeErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil {
		if err := stopPostgres(s.proc, stopTimeout); err != nil {
			stopErr = fmt.Errorf("%w\n%s", err, childproc.Tail(s.logPath, logTailLines))
		}
		s.proc = nil
	}
	if s.root != "" {
		if err := os.RemoveAll(s.root); err != nil {
			removeErr = fmt.Errorf("remove %s: %w", s.root, err)
		}
	}
	return stopErr, removeErr
}

// freePort returns a TCP port of 127.0.0.1 unused a moment ago.
func freePort() (int, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}
