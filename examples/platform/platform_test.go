// Package platform is a platform team's test, outside the replproxy
// module, that uses only the public test platform (platformtest): it shows
// another project can import it, and runs both modes.
package platform

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/platformtest"
)

func TestDeployAndMove(t *testing.T) {
	for _, mode := range []platformtest.Mode{platformtest.InProcess, platformtest.Binaries} {
		t.Run(mode.String(), func(t *testing.T) {
			p := platformtest.Start(t, platformtest.Options{Mode: mode})
			east := p.StartApp(t, "east", platformtest.AppOptions{Name: "dashboard"})
			west := p.StartApp(t, "west", platformtest.AppOptions{Name: "dashboard"})
			p.CreateRepl(t, platformtest.Repl{Owner: "team", Slug: "dashboard", Endpoints: []string{east.Addr}})
			url := "http://" + p.Host("team", "dashboard") + "/"

			load := p.StartLoad(t, p.Client(t), url, platformtest.LoadOptions{Workers: 2})
			if err := p.Move(context.Background(), "team-dashboard", "west", []string{west.Addr}); err != nil {
				t.Fatal(err)
			}
			p.Settle(t, p.Host("team", "dashboard"), "west")
			if res := load.Stop(); len(res.Failures) > 0 || res.Requests == 0 {
				t.Fatalf("%d requests, failures: %q", res.Requests, res.Failures)
			}

			resp, err := p.StaleClient(t, "east").Get(url)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "served in west by dashboard") {
				t.Errorf("a stale client after the move: %s %q", resp.Status, body)
			}
		})
	}
}
