package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestDatabasesAreSeparate(t *testing.T) {
	begin := time.Now()
	srv := Start(t)
	t.Logf("server ready in %v", time.Since(begin))
	if !srv.external && !strings.HasPrefix(srv.DSN(), "postgres://postgres@127.0.0.1:") {
		t.Errorf("DSN() = %q, want postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable", srv.DSN())
	}

	a, b := srv.NewDatabase(t), srv.NewDatabase(t)
	if a == b {
		t.Fatalf("NewDatabase returned %q twice", a)
	}
	ctx := context.Background()
	ca, cb := connect(t, a), connect(t, b)
	if _, err := ca.Exec(ctx, "CREATE TABLE names (name text PRIMARY KEY); INSERT INTO names VALUES ('a')"); err != nil {
		t.Fatal(err)
	}

	var dbA, dbB string
	var table *string
	if err := ca.QueryRow(ctx, "SELECT current_database()").Scan(&dbA); err != nil {
		t.Fatal(err)
	}
	if err := cb.QueryRow(ctx, "SELECT current_database(), to_regclass('names')::text").Scan(&dbB, &table); err != nil {
		t.Fatal(err)
	}
	if dbA == dbB {
		t.Errorf("both DSNs reach database %s", dbA)
	}
	if table != nil {
		t.Errorf("table names, made in %s, exists in %s", dbA, dbB)
	}
}

func TestStartN(t *testing.T) {
	servers := StartN(t, 2)
	if len(servers) != 2 {
		t.Fatalf("StartN(t, 2) returned %d servers", len(servers))
	}
	ports := make(map[uint16]bool)
	for _, srv := range servers {
		cfg, err := pgconn.ParseConfig(srv.DSN())
		if err != nil {
			t.Fatal(err)
		}
		ports[cfg.Port] = true
		var one int
		if err := connect(t, srv.DSN()).QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil {
			t.Errorf("%s: %v", srv.DSN(), err)
		}
	}
	if !servers[0].external && len(ports) != 2 {
		t.Errorf("both servers listen on port %v", ports)
	}
}

func TestStopRestart(t *testing.T) {
	srv := Start(t)
	dsn := srv.NewDatabase(t)
	ctx := context.Background()

	conn := connect(t, dsn)
	if _, err := conn.Exec(ctx, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before the outage')"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}

	srv.Stop(t)
	if pid := srv.pid(); pid != 0 {
		t.Errorf("pid() = %d after Stop, want 0", pid)
	}
	down, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if c, err := pgx.Connect(down, dsn); err == nil {
		_ = c.Close(ctx)
		t.Fatal("connected to a stopped server")
	}

	srv.Restart(t)
	var v string
	if err := connect(t, dsn).QueryRow(ctx, "SELECT v FROM kept").Scan(&v); err != nil {
		t.Fatalf("after Restart: %v", err)
	}
	if v != "before the outage" {
		t.Errorf("after Restart: v = %q", v)
	}
}

func TestFailedStartShowsLog(t *testing.T) {
	srv := Start(t)
	srv.Stop(t) // skips with EnvURL
	conf, err := os.OpenFile(filepath.Join(srv.data, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conf.WriteString("\nno_such_setting = on\n")
	if cerr := conf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}

	r := &recorder{TB: t}
	r.run(func(t testing.TB) { srv.Restart(t) })
	if !r.failed || !strings.Contains(r.msg, `unrecognized configuration parameter "no_such_setting"`) {
		t.Errorf("Restart: failed %v, message %q; want a failure quoting the server's log", r.failed, r.msg)
	}
	t.Log(r.msg)
	if pid := srv.pid(); pid != 0 {
		t.Errorf("pid() = %d after a failed start, want 0", pid)
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	var root string
	var pid int
	t.Run("server", func(t *testing.T) {
		srv := Start(t)
		if srv.external {
			t.Skip("needs a server the test started")
		}
		root, pid = srv.folder(), srv.pid()
		srv.NewDatabase(t) // dropped before the server stops
		socket := filepath.Join(srv.data, ".s.PGSQL."+strconv.Itoa(srv.port))
		if _, err := os.Stat(socket); err != nil {
			t.Errorf("socket: %v", err)
		}
	})
	if root == "" {
		t.Skip("no server started")
	}
	checkGone(t, root, pid)
}

func TestCleanupAfterFatal(t *testing.T) {
	var root string
	var pid int
	t.Run("fails", func(t *testing.T) {
		r := &recorder{TB: t}
		r.run(func(tb testing.TB) {
			srv := Start(tb)
			root, pid = srv.folder(), srv.pid()
			srv.NewDatabase(tb)
			tb.Fatal("midway")
		})
		if root != "" && !r.failed {
			t.Errorf("the test did not fail")
		}
	})
	if root == "" {
		t.Skip("no server started")
	}
	checkGone(t, root, pid)
}

func checkGone(t *testing.T, root string, pid int) {
	t.Helper()
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("folder %s after cleanup: %v, want not found", root, err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process %d after cleanup: kill(0) = %v, want ESRCH", pid, err)
	}
}

func TestPortTakenMeanwhile(t *testing.T) {
	cfg := configFromEnv()
	if cfg.url != "" {
		t.Skip("needs a server the test started")
	}
	var lc net.ListenConfig
	taken, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	var tried []int
	cfg.freePort = func() (int, error) {
		port, err := takenPort, error(nil)
		if len(tried) > 0 {
			port, err = freePort()
		}
		tried = append(tried, port)
		return port, err
	}

	srv := startN(t, cfg, 1)[0]
	if len(tried) != 2 || srv.port != tried[1] {
		t.Errorf("tried ports %v, serving on %d; want the taken port %d, then another", tried, srv.port, takenPort)
	}
	var one int
	if err := connect(t, srv.DSN()).QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil {
		t.Error(err)
	}
}

func TestExternalServer(t *testing.T) {
	srv := Start(t)
	ext := startN(t, config{url: srv.DSN()}, 1)[0]
	ctx := context.Background()

	var name string
	t.Run("database", func(t *testing.T) {
		dsn := ext.NewDatabase(t)
		if err := connect(t, dsn).QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
	})
	var n int
	if err := connect(t, srv.DSN()).QueryRow(ctx, "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if name == "" || n != 0 {
		t.Errorf("database %q: %d left after cleanup", name, n)
	}

	for _, f := range []func(testing.TB){func(t testing.TB) { ext.Stop(t) }, func(t testing.TB) { ext.Restart(t) }} {
		r := &recorder{TB: t}
		r.run(f)
		if !r.skipped || r.msg != "needs a server the test started" {
			t.Errorf("skipped %v (%q), want a skip saying it needs a server the test started", r.skipped, r.msg)
		}
	}
}

func TestMissingBinaries(t *testing.T) {
	for _, tc := range []struct {
		name    string
		require bool
	}{
		{"skips", false},
		{"fails when required", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config{require: tc.require, path: t.TempDir(), libDir: t.TempDir()}
			r := &recorder{TB: t}
			r.run(func(tb testing.TB) { startN(tb, cfg, 1) })
			if r.skipped == tc.require || r.failed != tc.require {
				t.Errorf("skipped %v, failed %v; want failed %v", r.skipped, r.failed, tc.require)
			}
			if !strings.Contains(r.msg, "apt-get install -y postgresql") {
				t.Errorf("message %q does not say how to install", r.msg)
			}
		})
	}
}

func TestFindBinaries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		path  []string // executables made in the PATH folder
		lib   []string // executables made under libDir
		want  string   // folder of the chosen binaries, relative; "" for an error
		other []string // files made under libDir that are not executables
	}{
		{name: "nothing"},
		{name: "path", path: []string{"initdb", "postgres"}, lib: []string{"15/bin/initdb", "15/bin/postgres"}, want: "path"},
		{name: "path lacks postgres", path: []string{"initdb"}, lib: []string{"16/bin/initdb", "16/bin/postgres"}, want: "lib/16/bin"},
		{name: "prefers 15", lib: []string{"14/bin/initdb", "14/bin/postgres", "15/bin/initdb", "15/bin/postgres", "16/bin/initdb", "16/bin/postgres"}, want: "lib/15/bin"},
		{name: "else the highest", lib: []string{"9.6/bin/initdb", "9.6/bin/postgres", "16/bin/initdb", "16/bin/postgres", "13/bin/initdb", "13/bin/postgres"}, want: "lib/16/bin"},
		{name: "complete versions only", lib: []string{"14/bin/initdb", "14/bin/postgres", "16/bin/initdb"}, want: "lib/14/bin"},
		{name: "not executable", other: []string{"15/bin/initdb", "15/bin/postgres"}},
		{name: "not a version", lib: []string{"common/bin/initdb", "common/bin/postgres"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path, lib := filepath.Join(dir, "path"), filepath.Join(dir, "lib")
			makeFiles(t, path, tc.path, 0o755)
			makeFiles(t, lib, tc.lib, 0o755)
			makeFiles(t, lib, tc.other, 0o644)

			got, err := findBinaries(path+string(filepath.ListSeparator)+filepath.Join(dir, "missing"), lib)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("found %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := binaries{initdb: filepath.Join(dir, tc.want, "initdb"), postgres: filepath.Join(dir, tc.want, "postgres")}
			if got != want {
				t.Errorf("found %+v, want %+v", got, want)
			}
		})
	}
}

func makeFiles(t *testing.T, dir string, names []string, mode os.FileMode) {
	t.Helper()
	for _, name := range names {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, mode); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWithDatabase(t *testing.T) {
	for _, tc := range []struct{ dsn, want string }{
		{"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "postgres://postgres@127.0.0.1:5432/db?sslmode=disable"},
		{"postgresql://u:p%40ss@db.example:5433?sslmode=require", "postgresql://u:p%40ss@db.example:5433/db?sslmode=require"},
		{"host=/run/postgresql user=me dbname=mine", "host=/run/postgresql user=me dbname=mine dbname=db"},
	} {
		got, err := withDatabase(tc.dsn, "db")
		if err != nil || got != tc.want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", tc.dsn, got, err, tc.want)
		}
	}
	if _, err := withDatabase("postgres://u:secret@host:port/x", "db"); err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("malformed URL: error %v, want one without the password", err)
	}
}

func TestDatabaseName(t *testing.T) {
	seen := make(map[string]bool)
	for _, test := range []string{"TestX", "TestX", "", "TestA/sub_test#01", strings.Repeat("TestVeryLong/", 20)} {
		name := databaseName(test)
		if len(name) > 63 || seen[name] || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
			t.Errorf("databaseName(%q) = %q", test, name)
		}
		seen[name] = true
	}
}

// BenchmarkStart measures making and starting a cluster (ns/op), without
// its shutdown and removal.
func BenchmarkStart(b *testing.B) {
	bin, err := findBinaries(os.Getenv("PATH"), libDir)
	if err != nil {
		b.Skip(err)
	}
	cred, err := serverCredential()
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		s := &Server{bin: bin, cred: cred}
		err := s.boot(freePort)
		b.StopTimer()
		s.close(b)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// recorder is a testing.TB whose Skip and Fatal end the calling goroutine, as
// the real ones do, but only record the outcome.
type recorder struct {
	testing.TB
	skipped, failed bool
	msg             string
}

// run calls f with r on a goroutine of its own, which Skip or Fatal can end.
func (r *recorder) run(f func(testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
}

func (r *recorder) Helper() {}

func (r *recorder) Skip(args ...any) { r.end(&r.skipped, fmt.Sprint(args...)) }
func (r *recorder) Skipf(format string, args ...any) {
	r.end(&r.skipped, fmt.Sprintf(format, args...))
}
func (r *recorder) SkipNow()          { r.end(&r.skipped, "") }
func (r *recorder) Fatal(args ...any) { r.end(&r.failed, fmt.Sprint(args...)) }
func (r *recorder) Fatalf(format string, args ...any) {
	r.end(&r.failed, fmt.Sprintf(format, args...))
}
func (r *recorder) FailNow() { r.end(&r.failed, "") }

func (r *recorder) end(outcome *bool, msg string) {
	*outcome, r.msg = true, msg
	runtime.Goexit()
}

func TestLaunchOutsideATest(t *testing.T) {
	if _, err := findBinaries(os.Getenv("PATH"), libDir); err != nil {
		missingBinaries(t, configFromEnv().require, err)
	}
	servers, stop, err := Launch(1)
	if err != nil {
		_ = stop()
		t.Fatal(err)
	}
	srv := servers[0]
	root, pid := srv.folder(), srv.pid()
	if err := srv.exec("SELECT 1"); err != nil {
		t.Errorf("query the launched server: %v", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkGone(t, root, pid)
}

func TestLaunchWithMaxConnections(t *testing.T) {
	if _, err := findBinaries(os.Getenv("PATH"), libDir); err != nil {
		missingBinaries(t, configFromEnv().require, err)
	}
	servers, stop, err := LaunchWith(1, LaunchOptions{MaxConnections: 321})
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if servers[0].PID() == 0 {
		t.Error("PID() = 0 for a running server")
	}
	conn := connect(t, servers[0].DSN())
	var got string
	if err := conn.QueryRow(context.Background(), "SHOW max_connections").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != "321" {
		t.Errorf("max_connections = %s, want 321", got)
	}
}
