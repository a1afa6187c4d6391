package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/platformtest"
	"github.com/replproxy/replproxy/store"
)

// TestReplproxyBinary runs two clusters, each with its own PostgreSQL and
// its own replproxy process, and talks to them with curl and net/http.
func TestReplproxyBinary(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is missing: apt-get install -y curl")
	}
	ctx := context.Background()
	p := start(t, platformtest.Options{Store: platformtest.Postgres})
	eastAddr := p.Cluster(t, "east").ProxyAddr

	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	app := p.StartApp(t, "west", platformtest.AppOptions{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			<-release
		}
		fmt.Fprintf(w, "app saw %s %s for %s\n", r.Method, r.URL.Path, r.Header.Get("X-Forwarded-For"))
	})})
	var once sync.Once
	releaseApp := func() { once.Do(func() { close(release) }) }
	defer releaseApp()
	// alice/blog lives in west; east has its tombstone.
	east, west := p.Cluster(t, "east").Store, p.Cluster(t, "west").Store
	if _, err := west.Activate(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{app.Addr}, Generation: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := east.Activate(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{app.Addr}, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := east.Retire(ctx, "r1", "west", 2); err != nil {
		t.Fatal(err)
	}
	p.Settle(t, "blog.alice.repl.test", "west")

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
	metrics, err := http.Get("http://" + p.Cluster(t, "east").AdminAddr + "/metrics")
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
	// The request is released 300 ms after SIGTERM; StopProxy returns once
	// the process has exited, and fails the test unless it exited 0
	// within 15 s.
	signalled := time.Now()
	go func() {
		time.Sleep(300 * time.Millisecond)
		releaseApp()
	}()
	p.StopProxy(t, "east")
	if d := time.Since(signalled); d < 300*time.Millisecond {
		t.Fatalf("replproxy exited %v after SIGTERM, with a request in flight:\n%s", d, p.Logs(t, "east"))
	}
	if got := <-inflight; !strings.HasPrefix(got, "app saw GET /slow") {
		t.Fatalf("in-flight request during the drain: %q", got)
	}
}

func TestReplproxyFlags(t *testing.T) {
	bin := platformtest.Binary(t, "replproxy")
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
