package ctl_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/replproxy/replproxy/ctl"
	"github.com/replproxy/replproxy/internal/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fleet is a registry of clusters for replctl to work on.
type fleet struct {
	registry string
	stores   map[string]string // cluster → store address
	srv      *pgtest.Server    // PostgreSQL only
}

// newFleet writes a registry of the named clusters with empty stores:
// embedded files, or PostgreSQL databases on one server (not migrated).
func newFleet(t *testing.T, backend string, names ...string) *fleet {
	t.Helper()
	dir := t.TempDir()
	f := &fleet{stores: map[string]string{}}
	if backend == "postgres" {
		f.srv = pgtest.Start(t)
	}
	var b strings.Builder
	b.WriteString("clusters:\n")
	for i, n := range names {
		addr := filepath.Join(dir, n+".yaml")
		if f.srv != nil {
			addr = f.srv.NewDatabase(t)
		} else if err := os.WriteFile(addr, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		f.stores[n] = addr
		fmt.Fprintf(&b, "  - name: %s\n    proxy_ipv4: [192.0.2.%d]\n    forward: 10.0.0.%d:8443\n    store: %q\n", n, i+1, i+1, addr)
	}
	f.registry = filepath.Join(dir, "clusters.yaml")
	if err := os.WriteFile(f.registry, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// result is what one run of replctl did.
type result struct {
	args           []string
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("replctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// run runs replctl in-process with the fleet's registry and zone repl.test.
func (f *fleet) run(t *testing.T, args ...string) result {
	t.Helper()
	return runCtl(t, append([]string{"-registry", f.registry, "-zone", "repl.test"}, args...)...)
}

func runCtl(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := ctl.Main(t.Context(), args, &out, &errb)
	return result{args: args, code: code, stdout: out.String(), stderr: errb.String()}
}

// ok runs replctl and fails the test unless it exits 0.
func (f *fleet) ok(t *testing.T, args ...string) result {
	t.Helper()
	r := f.run(t, args...)
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	return r
}

// fails runs replctl and checks its exit status and that stderr says
// each of says.
func (f *fleet) fails(t *testing.T, code int, says []string, args ...string) result {
	t.Helper()
	r := f.run(t, args...)
	if r.code != code {
		t.Fatalf("want exit %d; %v", code, r)
	}
	for _, s := range says {
		if !strings.Contains(r.stderr, s) {
			t.Errorf("stderr does not say %q; %v", s, r)
		}
	}
	return r
}

// jsonOf runs replctl with -o json, checks it exits 0 and decodes stdout.
func jsonOf[T any](t *testing.T, f *fleet, args ...string) T {
	t.Helper()
	r := f.ok(t, append([]string{"-o", "json"}, args...)...)
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("decode %T: %v\n%v", v, err, r)
	}
	return v
}

func forEachBackend(t *testing.T, fn func(t *testing.T, backend string)) {
	for _, b := range []string{"embedded", "postgres"} {
		t.Run(b, func(t *testing.T) { fn(t, b) })
	}
}
