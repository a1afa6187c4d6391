package wake_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/wake"
)

// A container manager in a few lines: it wakes alice/blog, asleep, when
// asked (here by replctl's call; in production by a proxy that got a
// request for it).
func ExampleManager() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, _ := os.MkdirTemp("", "wake-example-")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "east.yaml")
	_ = os.WriteFile(path, []byte("repls:\n  - {id: r1a2b3, owner: alice, slug: blog, asleep: true}\n"), 0o644)
	s, err := cluster.Open(ctx, path, cluster.OpenOptions{}) // or a postgres:// DSN
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()

	m, err := wake.New(s, wake.Config{
		Name: "manager-1",
		Start: func(ctx context.Context, w store.Wake) ([]string, error) {
			// Start the container of w.ReplID here; return where it listens.
			return []string{"127.0.0.1:9001"}, nil
		},
	}, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()

	made, err := s.RequestWake(ctx, "r1a2b3", "replctl example")
	fmt.Println("wake requested:", made, err)
	for {
		r, _ := s.GetRepl(ctx, "r1a2b3")
		if !r.Asleep {
			fmt.Println("awake at", r.Endpoints)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	fmt.Println("manager:", <-done)
	// Output:
	// wake requested: true <nil>
	// awake at [127.0.0.1:9001]
	// manager: context canceled
}
