package move_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/move"
	"github.com/replproxy/replproxy/store"
)

// A move from east to west on embedded stores, stopped after step 1 as a
// crash would stop it, then run again to finish it.
func ExampleMover_Move() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "move-example-")
	defer os.RemoveAll(dir)
	for _, f := range []string{"east.yaml", "west.yaml"} {
		_ = os.WriteFile(filepath.Join(dir, f), nil, 0o644)
	}
	reg, err := cluster.Parse(filepath.Join(dir, "clusters.yaml"), []byte(`
clusters:
  - {name: east, proxy_ipv4: [192.0.2.10], forward: "10.0.0.10:8443", store: east.yaml}
  - {name: west, proxy_ipv4: [198.51.100.10], forward: "10.1.0.10:8443", store: west.yaml}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	stores := map[string]store.Store{}
	for _, c := range reg.Clusters {
		s, err := cluster.Open(ctx, c.Store, cluster.OpenOptions{})
		if err != nil {
			fmt.Println(err)
			return
		}
		defer s.Close()
		stores[c.Name] = s
	}
	_, _ = stores["east"].CreateRepl(ctx, store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"10.0.0.5:8080"}})

	req := move.Request{Repl: "r1", To: "west", Endpoints: []string{"10.1.0.5:8080"}}
	crash := move.Hooks{AfterStep: func(_ context.Context, s move.Step) error {
		return errors.New("killed")
	}}
	m, _ := move.New(reg, stores, crash, nil)
	_, err = m.Move(ctx, req)
	fmt.Println(err)
	fmt.Println("check:", move.Check(ctx, reg, stores, "r1"))

	m, _ = move.New(reg, stores, move.Hooks{}, nil)
	p, err := m.Move(ctx, req)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, a := range p.Actions {
		fmt.Printf("step %d in %s: %s: %s\n", a.Step, a.Cluster, a.What, a.Status)
	}
	fmt.Println("settled:", move.CheckSettled(ctx, reg, stores, "r1"))
	// Output:
	// move repl r1 to west stopped: after step 1 (activate): killed
	//   done: step 1 (activate in west)
	//   not done: step 2 (repoint: nothing to do), step 3 (retire in east)
	// Every step is idempotent: run the same move again, once the cause is fixed, to finish it.
	// check: <nil>
	// step 1 in west: make live at generation 2 with endpoints 10.1.0.5:8080: already done
	// step 3 in east: replace the live row (generation 1) with a tombstone to west at generation 2: done
	// settled: <nil>
}
