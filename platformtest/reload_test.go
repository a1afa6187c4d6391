package platformtest_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/replproxy/replproxy/platformtest"
)

// TestReloadInProcess: in-process daemons reload on their own trigger
// (one ReloadProxy reloads that proxy, not the others of the process);
// a registry without the proxy's own cluster is refused saying a restart
// is needed, and the proxy keeps forwarding with the one in use; the log
// level set through /loglevel holds until a reload puts -log-level back,
// for replproxy and replns alike; and nothing is left running.
func TestReloadInProcess(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t, goleak.IgnoreCurrent()) })
	dnsAdmin := platformtest.FreeAddr(t, "127.0.0.1")
	p := platformtest.Start(t, platformtest.Options{DNSAdmin: dnsAdmin})
	east, west := p.Cluster(t, "east"), p.Cluster(t, "west")
	westApp := p.StartApp(t, "west", platformtest.AppOptions{})
	eastApp := p.StartApp(t, "east", platformtest.AppOptions{})
	p.CreateRepl(t, platformtest.Repl{ID: "r1", Owner: "bob", Slug: "api", Cluster: "east", Endpoints: []string{eastApp.Addr}})
	if err := p.Move(context.Background(), "r1", "west", []string{westApp.Addr}); err != nil {
		t.Fatal(err)
	}
	p.Settle(t, p.Host("bob", "api"), "west")

	if err := p.ReloadProxy(t, "east"); err != nil {
		t.Fatalf("a reload with nothing changed: %v", err)
	}
	if ok, failed := reloads(t, west.AdminAddr, "replproxy"); ok != "0" || failed != "0" {
		t.Fatalf("west's proxy counted reloads %s ok, %s failed after east's: an in-process reload reached another daemon", ok, failed)
	}

	p.WriteProxyRegistry(t, "east", "west")
	err := p.ReloadProxy(t, "east")
	if err == nil || !strings.Contains(err.Error(), "own cluster east") || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("a registry without east: %v, want a refusal saying a restart is needed", err)
	}
	if ok, failed := reloads(t, east.AdminAddr, "replproxy"); ok != "1" || failed != "1" {
		t.Errorf("east's reloads: %s ok, %s failed; want 1 and 1", ok, failed)
	}
	resp, err := p.StaleClient(t, "east").Get("http://" + p.Host("bob", "api") + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "served in west") {
		t.Fatalf("through east after the refused registry: %d %q, want west's container (the registry in use)", resp.StatusCode, body)
	}
	p.WriteProxyRegistry(t, "east", "east", "west")

	for _, d := range []struct {
		name, admin string
		reload      func() error
	}{
		{"replproxy", east.AdminAddr, func() error { return p.ReloadProxy(t, "east") }},
		{"replns", dnsAdmin, func() error { return p.ReloadDNS(t) }},
	} {
		url := "http://" + d.admin + "/loglevel"
		req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader(`{"level":"debug"}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := logLevel(t, url); got != "debug" {
			t.Fatalf("%s: level %q after PUT debug", d.name, got)
		}
		if err := d.reload(); err != nil {
			t.Fatalf("%s: reload: %v", d.name, err)
		}
		if got := logLevel(t, url); got != "info" {
			t.Errorf("%s: level %q after a reload, want -log-level's (info)", d.name, got)
		}
	}
	if err := os.WriteFile(p.Registry(), []byte("clusters: nope\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.ReloadDNS(t); err == nil || !strings.Contains(err.Error(), p.Registry()) {
		t.Errorf("replns with a registry that does not parse: %v, want a refusal naming the file", err)
	}
	if _, err := p.Resolve(context.Background(), p.Host("bob", "api")); err != nil {
		t.Errorf("replns after the refused registry: %v", err)
	}
}

func logLevel(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	_, level, _ := strings.Cut(string(body), `"level":"`)
	level, _, _ = strings.Cut(level, `"`)
	return level
}

// reloads reads a daemon's reload counters from its /metrics.
func reloads(t *testing.T, admin, prefix string) (ok, failed string) {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ok, failed = "?", "?"
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, found := strings.CutPrefix(sc.Text(), prefix+`_reload_total{result="ok"} `); found {
			ok = v
		}
		if v, found := strings.CutPrefix(sc.Text(), prefix+`_reload_total{result="error"} `); found {
			failed = v
		}
	}
	return ok, failed
}
