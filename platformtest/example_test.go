package platformtest_test

import (
	"context"
	"fmt"

	"github.com/replproxy/replproxy/platformtest"
)

// A platform test: a repl moves from east to west under the load of a
// client that resolves through replns, and not one request fails. (In a
// test, pass the *testing.T to Start; Run stands in for one here.)
func Example_moveUnderLoad() {
	err := platformtest.Run(nil, func(t platformtest.TB) {
		p := platformtest.Start(t, platformtest.Options{})
		east := p.StartApp(t, "east", platformtest.AppOptions{})
		west := p.StartApp(t, "west", platformtest.AppOptions{})
		p.CreateRepl(t, platformtest.Repl{ID: "blog1", Owner: "alice", Slug: "blog", Endpoints: []string{east.Addr}})

		load := p.StartLoad(t, p.Client(t), "http://"+p.Host("alice", "blog")+"/", platformtest.LoadOptions{Workers: 4})
		if err := p.Move(context.Background(), "blog1", "west", []string{west.Addr}); err != nil {
			t.Fatalf("move: %v", err)
		}
		p.Settle(t, p.Host("alice", "blog"), "west")
		res := load.Stop()
		fmt.Println("requests:", res.Requests > 0, "failed:", len(res.Failures), "west served:", west.Served() > 0)
	})
	if err != nil {
		fmt.Println(err)
	}
	// Output: requests: true failed: 0 west served: true
}

// Faults are calls: the link from east's proxy to west's is cut, so a
// client that still goes to east for a repl that moved to west gets a 502
// from east, until the link heals.
func ExampleLink() {
	err := platformtest.Run(nil, func(t platformtest.TB) {
		p := platformtest.Start(t, platformtest.Options{NoDNS: true})
		east, west := p.StartApp(t, "east", platformtest.AppOptions{}), p.StartApp(t, "west", platformtest.AppOptions{})
		p.CreateRepl(t, platformtest.Repl{ID: "api1", Owner: "bob", Slug: "api", Endpoints: []string{east.Addr}})
		if err := p.Move(context.Background(), "api1", "west", []string{west.Addr}); err != nil {
			t.Fatalf("move: %v", err)
		}
		p.Settle(t, p.Host("bob", "api"), "west")
		status := func() int {
			resp, err := p.StaleClient(t, "east").Get("http://" + p.Host("bob", "api") + "/")
			if err != nil {
				t.Fatalf("get: %v", err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		link := p.Link(t, "east", "west")
		link.Cut()
		fmt.Println("cut:", status())
		link.Heal()
		fmt.Println("healed:", status())
	})
	if err != nil {
		fmt.Println(err)
	}
	// Output:
	// cut: 502
	// healed: 200
}
