// Package pgtest starts throw-away PostgreSQL servers for tests.
//
// Each server is a fresh cluster in its own temporary folder, listening on a
// free port of 127.0.0.1 and started with durability turned off, so that it
// is ready in about a second. The server and its folder are removed when the
// test that started it ends, whether it passed or failed.
//
//	func TestSomething(t *testing.T) {
//		srv := pgtest.Start(t)
//		dsn := srv.NewDatabase(t) // an empty database, dropped at cleanup
//		pool, err := pgxpool.New(ctx, dsn)
//		...
//	}
//
// The tests skip, saying how to install PostgreSQL, when the server binaries
// are missing; with REPLPROXY_REQUIRE_POSTGRES=1 (as .ci/run sets it) they
// fail instead. With TEST_DATABASE_URL set no server is started: databases
// are created on that server, and tests that need to stop their server skip.
package pgtest

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
)

// EnvRequire is the variable .ci/run sets ("1") to turn a skip for missing
// server binaries into a failure.
const EnvRequire = "REPLPROXY_REQUIRE_POSTGRES"

// EnvURL points tests at an existing server instead (TEST_DATABASE_URL).
const EnvURL = "TEST_DATABASE_URL"

// libDir is where Debian installs the server binaries, one folder per major version.
const libDir = "/usr/lib/postgresql"

// config is what Start reads from the environment; tests build their own.
type config struct {
	url     string // EnvURL: use this server instead of starting one
	require bool   // EnvRequire: fail rather than skip without binaries
	path    string // PATH-style list searched first for initdb and postgres
	libDir  string // then <libDir>/<version>/bin

	// freePort picks a port to try; nil means an unused port of 127.0.0.1.
	freePort func() (int, error)
}

func configFromEnv() config {
	return config{
		url:     os.Getenv(EnvURL),
		require: os.Getenv(EnvRequire) != "" && os.Getenv(EnvRequire) != "0",
		path:    os.Getenv("PATH"),
		libDir:  libDir,
	}
}

// Start starts one server for the test and registers its removal with
// t.Cleanup. It skips the test, saying how to install PostgreSQL, when the
// server binaries are missing, unless EnvRequire is set, in which case it
// fails the test.
func Start(t testing.TB) *Server {
	t.Helper()
	return startN(t, configFromEnv(), 1)[0]
}

// StartN starts n servers (separate clusters on separate ports) concurrently,
// as Start does. With EnvURL set, the n servers are all that one server.
func StartN(t testing.TB, n int) []*Server {
	t.Helper()
	return startN(t, configFromEnv(), n)
}

func startN(t testing.TB, cfg config, n int) []*Server {
	t.Helper()
	if n < 1 {
		t.Fatalf("pgtest: StartN(%d): need at least one server", n)
	}
	servers := make([]*Server, n)
	if cfg.url != "" {
		for i := range servers {
			servers[i] = &Server{dsn: cfg.url, external: true}
		}
		return servers
	}

	bin, err := findBinaries(cfg.path, cfg.libDir)
	if err != nil {
		missingBinaries(t, cfg.require, err)
		return nil
	}
	cred, err := serverCredential()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if cfg.freePort == nil {
		cfg.freePort = freePort
	}

	// Cleanups first, so that whatever part of a start succeeds is undone.
	for i := range servers {
		s := &Server{bin: bin, cred: cred}
		t.Cleanup(func() { s.close(t) })
		servers[i] = s
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Go(func() { errs[i] = s.boot(cfg.freePort) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return servers
}

// Launch starts n servers outside of any test, for the demo's
// `make run-postgres`. stop stops them and removes their folders; call it
// even when Launch failed part-way.
func Launch(n int) (servers []*Server, stop func() error, err error) {
	return LaunchWith(n, LaunchOptions{})
}

// LaunchOptions are the choices of LaunchWith. The zero value is Launch's.
type LaunchOptions struct {
	// MaxConnections is the servers' max_connections; 0 means
	// defaultMaxConnections (200).
	MaxConnections int
}

// LaunchWith is Launch with options, for benchmarks that connect more
// clients than a test does (bench/fanout).
func LaunchWith(n int, o LaunchOptions) (servers []*Server, stop func() error, err error) {
	bin, err := findBinaries(os.Getenv("PATH"), libDir)
	if err != nil {
		return nil, func() error { return nil }, fmt.Errorf("%w; install them with: apt-get install -y postgresql", err)
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, func() error { return nil }, err
	}
	servers = make([]*Server, n)
	for i := range servers {
		servers[i] = &Server{bin: bin, cred: cred, maxConns: o.MaxConnections}
	}
	stop = func() error {
		var errs []error
		for _, s := range servers {
			stopErr, removeErr := s.shutdown()
			errs = append(errs, stopErr, removeErr)
		}
		return errors.Join(errs...)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Go(func() { errs[i] = s.boot(freePort) })
	}
	wg.Wait()
	return servers, stop, errors.Join(errs...)
}

// missingBinaries reports err, the failure to find the server binaries, as a
// skip, or as a failure when they are required.
func missingBinaries(t testing.TB, require bool, err error) {
	t.Helper()
	msg := fmt.Sprintf("pgtest: %v; install them with: apt-get install -y postgresql", err)
	if require {
		t.Fatalf("%s (%s is set, so this is a failure, not a skip)", msg, EnvRequire)
	}
	t.Skip(msg)
}

// Available reports why no server can be started here (the server
// binaries are missing: the error says how to install them), or nil.
func Available() error {
	if _, err := findBinaries(os.Getenv("PATH"), libDir); err != nil {
		return fmt.Errorf("%w; install them with: apt-get install -y postgresql", err)
	}
	return nil
}

// Required reports whether EnvRequire asks for a failure, not a skip,
// when no server can be started.
func Required() bool { return configFromEnv().require }
