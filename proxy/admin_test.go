package proxy_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
)

// TestDebugRoute: the admin listener says where the proxy sends a name
// now: local with its endpoints, a tombstone with its destination, not
// found; a malformed name is a 400 saying what is wanted.
func TestDebugRoute(t *testing.T) {
	c := oneCluster(t, clusterOpts{server: func(s *proxy.ServerConfig) { s.AdminListen = "127.0.0.1:0" }})
	ctx := context.Background()
	if _, err := c.Store.CreateRepl(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:9001"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Store.CreateRepl(ctx, store.Repl{ID: "r2", Owner: "bob", Slug: "api", Endpoints: []string{"127.0.0.1:9002"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Store.Retire(ctx, "r2", "west", 2); err != nil {
		t.Fatal(err)
	}
	ask := func(host string) (int, proxy.RouteInfo, string) {
		resp, err := http.Get("http://" + c.Server.Addr("admin") + "/debug/route?host=" + host)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var info proxy.RouteInfo
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal(body, &info); err != nil {
				t.Fatalf("%s: %v: %s", host, err, body)
			}
		}
		return resp.StatusCode, info, string(body)
	}
	if code, info, body := ask("blog.alice.repl.test"); code != 200 || info.Route != "local" || info.ReplID != "r1" || len(info.Endpoints) != 1 || info.Endpoints[0] != "127.0.0.1:9001" {
		t.Errorf("a live repl: %d %s", code, body)
	}
	if code, info, body := ask("r2.id.repl.test"); code != 200 || info.Route != "tombstone" || info.Cluster != "west" || info.Generation != 2 {
		t.Errorf("a tombstone: %d %s", code, body)
	}
	if code, info, body := ask("nope.alice.repl.test"); code != 200 || info.Route != "not-found" {
		t.Errorf("an unknown name: %d %s", code, body)
	}
	if code, _, body := ask("a..b.repl.test"); code != http.StatusBadRequest {
		t.Errorf("a malformed name: %d %s", code, body)
	}
}
