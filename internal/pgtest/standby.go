package pgtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/replproxy/replproxy/internal/childproc"
)

// StartStandby starts a hot standby of s: a new server made from a base
// backup of s (pg_basebackup -R: it streams s's WAL from then on) and
// removed at the test's end like s. Databases of s are on it under the
// same names (DatabaseDSN); it answers reads only. It skips the test when
// s is EnvURL's server.
func (s *Server) StartStandby(t testing.TB) *Server {
	t.Helper()
	if s.external {
		t.Skipf("pgtest: a standby needs a server of our own, not %s's", EnvURL)
	}
	standby := &Server{bin: s.bin, cred: s.cred}
	t.Cleanup(func() { standby.close(t) })
	if err := standby.bootStandby(s); err != nil {
		t.Fatalf("pgtest: start a standby of %s: %v", s.dsn, err)
	}
	return standby
}

// DatabaseDSN returns the DSN of the database name on s (for a database
// NewDatabase made on a standby's primary).
func (s *Server) DatabaseDSN(t testing.TB, name string) string {
	t.Helper()
	dsn, err := withDatabase(s.dsn, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return dsn
}

// bootStandby makes the standby's folder from a base backup of primary and
// starts it.
func (s *Server) bootStandby(primary *Server) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	root, data, err := makeFolder(s.cred)
	if err != nil {
		return err
	}
	s.root, s.data, s.logPath = root, data, filepath.Join(root, "postgres.log")
	ctx, cancel := context.WithTimeout(context.Background(), initdbTimeout)
	defer cancel()
	basebackup, err := lookPath(os.Getenv("PATH"), "pg_basebackup")
	if err != nil { // beside the real initdb (PATH may hold a link to it)
		initdb, lerr := filepath.EvalSymlinks(s.bin.initdb)
		if lerr != nil {
			return fmt.Errorf("find pg_basebackup: %w", lerr)
		}
		basebackup = filepath.Join(filepath.Dir(initdb), "pg_basebackup")
	}
	cmd := exec.CommandContext(ctx, basebackup,
		"-D", s.data, "-R", "-X", "stream", "-c", "fast", "--no-sync",
		"-h", "127.0.0.1", "-p", strconv.Itoa(primary.port), "-U", superuser)
	cmd.Dir = s.root
	cmd.Env = childEnv()
	cmd.SysProcAttr = sysProcAttr(s.cred)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	p, err := childproc.Start(cmd)
	if err != nil {
		return fmt.Errorf("pg_basebackup: %w", err)
	}
	<-p.Done()
	if p.Err() != nil {
		return fmt.Errorf("pg_basebackup: %w\n%s", p.Err(), out.Bytes())
	}
	return s.launchOnFreePort(freePort)
}
