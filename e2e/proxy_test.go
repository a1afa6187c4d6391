package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/store"
)

// replproxyProc is a running replproxy binary.
type replproxyProc struct {
	addr, admin string
	cmd         *exec.Cmd
	out         *syncBuffer
	exited      chan struct{}
	exitErr     error
}

// startReplproxy starts replproxy for cluster with -listen on addr (the
// registry's forward address, in plaintext, unless extra has the
// -forward-* flags of mutual TLS) and -admin on a free port, waits for
// /readyz, and at the end of the test stops it (SIGTERM) unless the test
// did.
func startReplproxy(t *testing.T, cluster, addr, registry, secret string, extra ...string) *replproxyProc {
	t.Helper()
	p := &replproxyProc{addr: addr, admin: fmt.Sprintf("127.0.0.1:%d", freePort(t)), out: &syncBuffer{}, exited: make(chan struct{})}
	args := append([]string{"-zone", "repl.test", "-cluster", cluster, "-registry", registry, "-hop-secret-file", secret,
		"-listen", addr, "-admin-listen", p.admin, "-shutdown-timeout", "10s"}, extra...)
	if !slices.Contains(extra, "-forward-cert") {
		args = append(args, "-forward-plaintext") // the registry's forward addresses are the -listen ones
	}
	p.cmd = exec.Command(buildBinary(t, "replproxy"), args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exitErr = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
			t.Errorf("replproxy %s did not stop on SIGTERM; output:\n%s", cluster, p.out)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + p.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("replproxy %s exited: %v\n%s", cluster, p.exitErr, p.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("replproxy %s not ready after 20s:\n%s", cluster, p.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReplproxyBinary runs two clusters, each with its own PostgreSQL and
// its own replproxy process, and talks to them with curl and net/http.
func TestReplproxyBinary(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is missing: apt-get install -y curl")
	}
	ctx := context.Background()
	servers := pgtest.StartN(t, 2)
	dsns := []string{servers[0].NewDatabase(t), servers[1].NewDatabase(t)}
	stores := make([]store.Store, 2)
	for i, dsn := range dsns {
		s, err := cluster.Open(ctx, dsn, cluster.OpenOptions{Migrate: true})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		stores[i] = s
	}
	eastAddr, westAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := writeFiles(t, map[string]string{
		"clusters.yaml": fmt.Sprintf("clusters:\n  - {name: east, proxy_ipv4: [192.0.2.1], forward: %q, store: %q}\n  - {name: west, proxy_ipv4: [192.0.2.2], forward: %q, store: %q}\n",
			eastAddr, dsns[0], westAddr, dsns[1]),
		"hop.secret": "an e2e secret that is long enough to sign with\n",
	})
	registry, secret := filepath.Join(dir, "clusters.yaml"), filepath.Join(dir, "hop.secret")

	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			<-release
		}
		fmt.Fprintf(w, "app saw %s %s for %s\n", r.Method, r.URL.Path, r.Header.Get("X-Forwarded-For"))
	}))
	defer app.Close()
	defer close(release)
	appAddr := strings.TrimPrefix(app.URL, "http://")
	// alice/blog lives in west; east has its tombstone.
	if _, err := stores[1].Activate(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{appAddr}, Generation: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := stores[0].Activate(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{appAddr}, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := stores[0].Retire(ctx, "r1", "west", 2); err != nil {
		t.Fatal(err)
	}

	east := startReplproxy(t, "east", eastAddr, registry, secret)
	startReplproxy(t, "west", westAddr, registry, secret)

	// curl through east: forwarded to west in one hop.
	out, err := exec.Command("curl", "-sS", "-i", "-H", "Host: blog.alice.repl.test", "http://"+eastAddr+"/hello").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "200 OK") || !strings.Contains(string(out), "app saw GET /hello for 127.0.0.1") ||
		!strings.Contains(strings.ToLower(string(out)), "x-request-id: ") {
		t.Fatalf("curl through east:\n%s", out)
	}
	out, _ = exec.Command("curl", "-sS", "-i", "-H", "Host: nope.alice.repl.test", "http://"+eastAddr+"/").CombinedOutput()
	if !strings.Contains(string(out), "404") || !strings.Contains(string(out), "nope.alice.repl.test") {
		t.Fatalf("curl for an unknown repl:\n%s", out)
	}
	out, _ = exec.Command("curl", "-sS", "-i", "-H", "Host: bad_name.repl.test", "http://"+eastAddr+"/").CombinedOutput()
	if !strings.Contains(string(out), "400") {
		t.Fatalf("curl with a malformed host:\n%s", out)
	}
	metrics, err := http.Get("http://" + east.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(metrics.Body)
	metrics.Body.Close()
	if !strings.Contains(string(body), `replproxy_requests_total{code="200",route="forwarded"} 1`) {
		t.Errorf("east's metrics do not count the forwarded request:\n%s", grep(string(body), "replproxy_requests_total"))
	}

	// SIGTERM with a request in flight: it completes, then the process
	// exits 0.
	inflight := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, "http://"+eastAddr+"/slow", nil)
		req.Host = "blog.alice.repl.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			inflight <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		inflight <- string(b)
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request did not reach the app")
	}
	if err := east.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-east.exited:
		t.Fatalf("replproxy exited with a request in flight:\n%s", east.out)
	case <-time.After(300 * time.Millisecond): // it waits for the request
	}
	release <- struct{}{}
	if got := <-inflight; !strings.HasPrefix(got, "app saw GET /slow") {
		t.Fatalf("in-flight request during the drain: %q", got)
	}
	select {
	case <-east.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("replproxy did not exit after the drain")
	}
	if east.exitErr != nil {
		t.Fatalf("replproxy exited with %v after SIGTERM, want 0:\n%s", east.exitErr, east.out)
	}
}

func TestReplproxyFlags(t *testing.T) {
	bin := buildBinary(t, "replproxy")
	out, err := exec.Command(bin, "-h").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Usage: replproxy") || !strings.Contains(string(out), "REPLPROXY_HOP_SECRET_FILE") {
		t.Fatalf("replproxy -h: %v\n%s", err, out)
	}
	dir := writeFiles(t, map[string]string{"bad.yaml": "clusters:\n  - name: East_1\n"})
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"missing flags", nil, nil, "missing -"},
		{"bad zone", []string{"-zone", "a..b", "-cluster", "east", "-registry", "x", "-hop-secret-file", "y", "-forward-plaintext"}, nil, "-zone"},
		{"bad registry", []string{"-zone", "repl.test", "-cluster", "east", "-registry", filepath.Join(dir, "bad.yaml"), "-hop-secret-file", "y", "-forward-plaintext"}, nil, "bad.yaml:2"},
		{"no forward TLS", []string{"-zone", "repl.test", "-cluster", "east", "-registry", "x", "-hop-secret-file", "y"}, nil, "or -forward-plaintext on a private network"},
		{"forward TLS and plaintext", []string{"-zone", "repl.test", "-cluster", "east", "-registry", "x", "-hop-secret-file", "y", "-forward-plaintext", "-forward-cert", "c"}, nil, "exclude each other"},
		{"forward TLS without its listener", []string{"-zone", "repl.test", "-cluster", "east", "-registry", "x", "-hop-secret-file", "y", "-forward-cert", "c"}, nil, "-forward-cert needs -forward-listen"},
		{"bad env", []string{"-zone", "repl.test"}, []string{"REPLPROXY_DIAL_TIMEOUT=soon"}, "REPLPROXY_DIAL_TIMEOUT"},
		{"unknown flag", []string{"-colour"}, nil, "flag provided but not defined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			cmd.Env = append(cmd.Environ(), tc.env...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 || !strings.Contains(string(out), tc.want) {
				t.Fatalf("exit %v, output %q; want a failure mentioning %q", err, out, tc.want)
			}
		})
	}
}

func grep(s, substr string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
