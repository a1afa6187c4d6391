package wake_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/wake"
)

// backends opens a fresh store of each kind; a second open of the same
// address is another process's view of one store.
var backends = []struct {
	name string
	addr func(t *testing.T) string
}{
	{"embedded", func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "east.yaml")
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}},
	{"postgres", func(t *testing.T) string { return pgtest.Start(t).NewDatabase(t) }},
}

func open(t *testing.T, addr string) store.Store {
	t.Helper()
	s, err := cluster.Open(t.Context(), addr, cluster.OpenOptions{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func each(t *testing.T, test func(t *testing.T, addr string)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { test(t, b.addr(t)) })
	}
}

// run runs a Manager until the test ends.
func run(t *testing.T, st store.Store, cfg wake.Config) {
	t.Helper()
	if cfg.Poll == 0 {
		cfg.Poll = 50 * time.Millisecond
	}
	m, err := wake.New(st, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	})
}

func asleep(t *testing.T, s store.Store, ids ...string) {
	t.Helper()
	for i, id := range ids {
		if _, err := s.CreateRepl(t.Context(), store.Repl{ID: id, Owner: "alice", Slug: fmt.Sprintf("s%d", i), Asleep: true}); err != nil {
			t.Fatal(err)
		}
	}
}

func request(t *testing.T, s store.Store, id string) {
	t.Helper()
	if made, err := s.RequestWake(t.Context(), id, "test"); err != nil || !made {
		t.Fatalf("request wake of %s = %v, %v", id, made, err)
	}
}

// eventually polls cond for up to 20 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 20s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func awake(t *testing.T, s store.Store, id string) func() bool {
	return func() bool {
		r, err := s.GetRepl(t.Context(), id)
		return err == nil && !r.Asleep
	}
}

func TestNewChecksConfig(t *testing.T) {
	s := open(t, backends[0].addr(t))
	start := func(context.Context, store.Wake) ([]string, error) { return nil, nil }
	for _, tc := range []struct {
		st  store.Store
		cfg wake.Config
	}{
		{nil, wake.Config{Name: "m", Start: start}},
		{s, wake.Config{Start: start}},
		{s, wake.Config{Name: "m"}},
	} {
		if _, err := wake.New(tc.st, tc.cfg, nil); err == nil {
			t.Errorf("New(%v, %+v) succeeded", tc.st, tc.cfg)
		}
	}
}

// A wake is started with what the proxy asked, and answered: the repl is
// awake with Start's endpoints, the wake gone.
func TestManagerWakes(t *testing.T) {
	each(t, func(t *testing.T, addr string) {
		s := open(t, addr)
		asleep(t, s, "r1", "r2")
		request(t, s, "r1") // before Run: found by the first scan
		got := make(chan store.Wake, 10)
		run(t, open(t, addr), wake.Config{Name: "manager-1", Poll: time.Hour, // events only
			Start: func(_ context.Context, w store.Wake) ([]string, error) {
				got <- w
				return []string{"127.0.0.1:9001"}, nil
			}})
		eventually(t, "r1 awake", awake(t, s, "r1"))
		request(t, s, "r2") // while running: heard of by the watch
		eventually(t, "r2 awake", awake(t, s, "r2"))
		for _, id := range []string{"r1", "r2"} {
			w := <-got
			if w.ReplID != id || w.RequestedBy != "test" || w.ClaimedBy != "manager-1" {
				t.Fatalf("Start got %+v, want the wake of %s claimed by manager-1", w, id)
			}
			r, _ := s.GetRepl(t.Context(), id)
			if !slices.Equal(r.Endpoints, []string{"127.0.0.1:9001"}) {
				t.Fatalf("%s after the wake = %+v", id, r)
			}
			if _, err := s.GetWake(t.Context(), id); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("wake of %s after it was done: %v, want ErrNotFound", id, err)
			}
		}
	})
}

// Start's error, or bad endpoints, fail the wake with a reason.
func TestManagerFails(t *testing.T) {
	each(t, func(t *testing.T, addr string) {
		s := open(t, addr)
		asleep(t, s, "r1", "r2")
		run(t, s, wake.Config{Name: "manager-1",
			Start: func(_ context.Context, w store.Wake) ([]string, error) {
				if w.ReplID == "r1" {
					return nil, errors.New("no capacity in east")
				}
				return []string{"not an endpoint"}, nil
			}})
		request(t, s, "r1")
		request(t, s, "r2")
		for id, want := range map[string]string{"r1": "no capacity in east", "r2": "the container manager gave bad endpoints"} {
			var w store.Wake
			eventually(t, id+" failed", func() bool {
				var err error
				w, err = s.GetWake(t.Context(), id)
				return err == nil && w.Failed != ""
			})
			if len(w.Failed) < len(want) || w.Failed[:len(want)] != want {
				t.Fatalf("%s failed with %q, want %q...", id, w.Failed, want)
			}
			if r, _ := s.GetRepl(t.Context(), id); !r.Asleep {
				t.Fatalf("%s after a failed wake: %+v, want asleep", id, r)
			}
		}
	})
}

// A Start that hangs, ignoring its ctx, is given up after StartTimeout
// and the wake failed.
func TestManagerStartTimeout(t *testing.T) {
	each(t, func(t *testing.T, addr string) {
		s := open(t, addr)
		asleep(t, s, "r1")
		release := make(chan struct{})
		defer close(release)
		run(t, s, wake.Config{Name: "manager-1", StartTimeout: 300 * time.Millisecond,
			Start: func(context.Context, store.Wake) ([]string, error) {
				<-release // hangs, whatever ctx says
				return []string{"127.0.0.1:1"}, nil
			}})
		begin := time.Now()
		request(t, s, "r1")
		var w store.Wake
		eventually(t, "r1 failed", func() bool {
			var err error
			w, err = s.GetWake(t.Context(), "r1")
			return err == nil && w.Failed != ""
		})
		if took := time.Since(begin); took < 300*time.Millisecond {
			t.Fatalf("failed after %v, before StartTimeout", took)
		}
		if w.Failed != "starting the container took longer than 300ms" {
			t.Fatalf("reason %q", w.Failed)
		}
	})
}

// Two Managers on one store, 50 wakes: each wake is started once, and
// all are done.
func TestTwoManagers(t *testing.T) {
	each(t, func(t *testing.T, addr string) {
		s := open(t, addr)
		ids := make([]string, 50)
		for i := range ids {
			ids[i] = fmt.Sprintf("r%d", i)
		}
		asleep(t, s, ids...)
		var (
			mu     sync.Mutex
			starts = map[string][]string{}
		)
		for _, name := range []string{"manager-1", "manager-2"} {
			run(t, open(t, addr), wake.Config{Name: name, Poll: 20 * time.Millisecond,
				Start: func(_ context.Context, w store.Wake) ([]string, error) {
					mu.Lock()
					starts[w.ReplID] = append(starts[w.ReplID], name)
					mu.Unlock()
					return []string{"127.0.0.1:9001"}, nil
				}})
		}
		for _, id := range ids {
			request(t, s, id)
		}
		for _, id := range ids {
			eventually(t, id+" awake", awake(t, s, id))
		}
		time.Sleep(200 * time.Millisecond) // a double start would show now
		mu.Lock()
		defer mu.Unlock()
		by := map[string]int{}
		for _, id := range ids {
			if len(starts[id]) != 1 {
				t.Errorf("%s started %d times: %v; want once", id, len(starts[id]), starts[id])
			}
			if len(starts[id]) > 0 {
				by[starts[id][0]]++
			}
		}
		t.Logf("wakes by manager: %v", by)
	})
}

// A Start that takes longer than ClaimTTL keeps its claim fresh: the
// other Manager does not take the wake over.
func TestManagerRefreshesClaim(t *testing.T) {
	each(t, func(t *testing.T, addr string) {
		s := open(t, addr)
		asleep(t, s, "r1")
		var (
			mu     sync.Mutex
			starts []string
		)
		for _, name := range []string{"manager-1", "manager-2"} {
			run(t, open(t, addr), wake.Config{Name: name, ClaimTTL: 400 * time.Millisecond, Poll: 20 * time.Millisecond,
				Start: func(ctx context.Context, w store.Wake) ([]string, error) {
					mu.Lock()
					starts = append(starts, name)
					mu.Unlock()
					time.Sleep(1500 * time.Millisecond) // over 3 ClaimTTLs
					return []string{"127.0.0.1:9001"}, nil
				}})
		}
		request(t, s, "r1")
		eventually(t, "r1 awake", awake(t, s, "r1"))
		mu.Lock()
		defer mu.Unlock()
		if len(starts) != 1 {
			t.Fatalf("r1 started by %v; want once", starts)
		}
	})
}

// A claim of a Manager that died is taken over once it is stale.
func TestManagerTakesOverStaleClaim(t *testing.T) {
	each(t, func(t *testing.T, addr string) {
		s := open(t, addr)
		asleep(t, s, "r1")
		request(t, s, "r1")
		if _, err := s.ClaimWake(t.Context(), "r1", "dead-manager", time.Now().Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		claimed := time.Now()
		var took time.Duration
		run(t, s, wake.Config{Name: "manager-1", ClaimTTL: 400 * time.Millisecond,
			Start: func(_ context.Context, w store.Wake) ([]string, error) {
				took = time.Since(claimed)
				return []string{"127.0.0.1:9001"}, nil
			}})
		eventually(t, "r1 awake", awake(t, s, "r1"))
		if took < 400*time.Millisecond {
			t.Fatalf("took over after %v, before the claim was stale", took)
		}
	})
}
