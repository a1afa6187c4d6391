package ctl_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/wake"
)

type (
	sleptOut struct {
		Cluster   string   `json:"cluster"`
		ID        string   `json:"id"`
		Asleep    bool     `json:"asleep"`
		Endpoints []string `json:"endpoints"`
	}
	wakeOut struct {
		Cluster   string   `json:"cluster"`
		ID        string   `json:"id"`
		Requested bool     `json:"requested"`
		Asleep    bool     `json:"asleep"`
		Endpoints []string `json:"endpoints"`
		Wake      *struct {
			State       string `json:"state"`
			RequestedBy string `json:"requested_by"`
			Failed      string `json:"failed"`
		} `json:"wake"`
	}
	showWakeOut struct {
		Clusters []struct {
			Cluster string `json:"cluster"`
			State   string `json:"state"`
			Asleep  bool   `json:"asleep"`
			Wake    *struct {
				State       string `json:"state"`
				RequestedBy string `json:"requested_by"`
			} `json:"wake"`
		} `json:"clusters"`
		Settled bool `json:"settled"`
	}
)

// manager runs a container manager on a cluster's store until stop.
func manager(t *testing.T, addr string, start func(context.Context, store.Wake) ([]string, error)) (stop func()) {
	t.Helper()
	s, err := cluster.Open(t.Context(), addr, cluster.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := wake.New(s, wake.Config{Name: "manager-1", Poll: 50 * time.Millisecond, Start: start}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	return func() {
		cancel()
		<-done
		s.Close()
	}
}

// TestSleepWake: repl sleep and repl wake, and the state in list and show.
func TestSleepWake(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		f := newFleet(t, backend, "east", "west")
		f.ok(t, "migrate", "--all")
		f.ok(t, "repl", "create", "alice/blog", "--cluster", "east", "--endpoint", "10.0.0.5:8080", "--id", "r1")

		if l := jsonOf[[]sleptOut](t, f, "repl", "list"); len(l) != 1 || l[0].Asleep {
			t.Fatalf("list before sleep: %+v", l)
		}
		if w := jsonOf[wakeOut](t, f, "repl", "wake", "r1"); w.Requested || w.Asleep || w.Wake != nil {
			t.Fatalf("wake of an awake repl: %+v", w)
		}
		slept := jsonOf[sleptOut](t, f, "repl", "sleep", "alice/blog")
		if slept.Cluster != "east" || slept.ID != "r1" || !slept.Asleep || len(slept.Endpoints) != 0 {
			t.Fatalf("sleep: %+v", slept)
		}
		r := f.ok(t, "repl", "list")
		if !strings.Contains(r.stdout, "STATE") || !strings.Contains(r.stdout, "asleep") {
			t.Errorf("list table after sleep: %v", r)
		}
		if l := jsonOf[[]sleptOut](t, f, "repl", "list"); len(l) != 1 || !l[0].Asleep {
			t.Fatalf("list after sleep: %+v", l)
		}
		f.fails(t, 3, []string{"repl nope is not live"}, "repl", "sleep", "nope", "--cluster", "east")
		f.fails(t, 3, []string{"no repl bob/x"}, "repl", "wake", "bob/x")
		f.fails(t, 2, []string{"--wait"}, "repl", "wake", "r1", "--wait", "-1s")

		// Wake without a manager: requested, then pending.
		w := jsonOf[wakeOut](t, f, "repl", "wake", "r1")
		if !w.Requested || !w.Asleep || w.Wake == nil || w.Wake.State != "requested" || !strings.HasPrefix(w.Wake.RequestedBy, "replctl") {
			t.Fatalf("wake: %+v", w)
		}
		if w := jsonOf[wakeOut](t, f, "repl", "wake", "r1"); w.Requested || w.Wake == nil {
			t.Fatalf("wake again: %+v; want the pending one", w)
		}
		s := jsonOf[showWakeOut](t, f, "repl", "show", "r1")
		if c := s.Clusters[0]; c.Cluster != "east" || c.State != "live" || !c.Asleep || c.Wake == nil || c.Wake.State != "requested" || !s.Settled {
			t.Fatalf("show asleep: %+v", s)
		}
		r = f.ok(t, "repl", "show", "r1")
		if !strings.Contains(r.stdout, "live, asleep") || !strings.Contains(r.stdout, "wake in east: requested by replctl") {
			t.Errorf("show table: %v", r)
		}
		f.fails(t, 1, []string{"still asleep after 200ms"}, "repl", "wake", "r1", "--wait", "200ms")

		// A manager wakes it.
		stop := manager(t, f.stores["east"], func(context.Context, store.Wake) ([]string, error) {
			return []string{"10.0.0.9:8080"}, nil
		})
		r = f.ok(t, "repl", "wake", "r1", "--wait", "20s")
		if !strings.Contains(r.stdout, "repl r1 is awake in east, endpoints 10.0.0.9:8080") {
			t.Errorf("wake --wait: %v", r)
		}
		stop()

		// A manager that fails: wake --wait says why.
		f.ok(t, "repl", "sleep", "r1")
		stop = manager(t, f.stores["east"], func(context.Context, store.Wake) ([]string, error) {
			return nil, errors.New("no capacity in east")
		})
		defer stop()
		f.fails(t, 1, []string{"the wake of repl r1 in east failed: no capacity in east"}, "repl", "wake", "r1", "--wait", "20s")
		r = f.ok(t, "repl", "show", "r1")
		if !strings.Contains(r.stdout, "FAILED") || !strings.Contains(r.stdout, "no capacity in east") {
			t.Errorf("show after a failed wake: %v", r)
		}
	})
}
