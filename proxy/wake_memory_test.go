package proxy_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/store"
)

// asleepRoutes routes every name to one sleeping repl.
type asleepRoutes struct{}

func (asleepRoutes) Lookup(context.Context, store.Key) (store.Route, error) {
	return store.Route{Kind: store.RouteLocal, ReplID: "r1", Owner: "alice", Slug: "app", Asleep: true, Generation: 1}, nil
}

func (r asleepRoutes) Refresh(ctx context.Context, k store.Key) (store.Route, error) {
	return r.Lookup(ctx, k)
}

// TestHeldRequestMemory measures what a request held for a sleeping repl
// costs in the handler: 1,000 requests held at once (each on its own
// goroutine, as net/http serves them), against 1,000 requests blocked in
// a handler that does nothing, and checks the held ones leave nothing
// behind. Run it without -race for the figures (the race detector
// inflates every allocation).
func TestHeldRequestMemory(t *testing.T) {
	const n = 1000
	reg := testbed.Registry(t, map[string][2]string{"east": {"127.0.0.1:1", "east.yaml"}})
	metrics := prometheus.NewRegistry()
	f := newFakeWakes("r1")
	cfg := proxy.Config{Zone: testZone, Cluster: "east", Registry: reg, HopSecret: testSecret, Wakes: f, WakeTimeout: time.Minute}
	h, err := proxy.NewHandler(cfg, asleepRoutes{}, proxy.NewMetrics(metrics, "east", nil), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	heldNow := func() float64 {
		mfs, _ := metrics.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "replproxy_wake_held_requests" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		return -1
	}

	// hold runs n requests through handler until the returned stop.
	hold := func(handler http.Handler, ready func() bool) (bytes float64, stop func()) {
		before := memInUse()
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				defer func() { _ = recover() }() // http.ErrAbortHandler when cancelled
				req := httptest.NewRequest(http.MethodGet, "http://app.alice.repl.test/", nil).WithContext(ctx)
				handler.ServeHTTP(httptest.NewRecorder(), req)
			})
		}
		testbed.WaitFor(t, 10*time.Second, "the requests to be held", ready)
		after := memInUse()
		return float64(after-before) / n, func() { cancel(); wg.Wait() }
	}

	release := make(chan struct{})
	var blocked sync.WaitGroup
	blocked.Add(n)
	control, stop := hold(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		blocked.Done()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), func() bool { blocked.Wait(); return true })
	stop()
	close(release)

	base := runtime.NumGoroutine()
	perHeld, stop := hold(h, func() bool { return heldNow() == n })
	if made, _ := f.madeTotal(); made != 1 {
		t.Errorf("%d wakes made for %d held requests, want 1", made, n)
	}
	stop()
	if got := heldNow(); got != 0 {
		t.Errorf("held gauge %v after the requests went, want 0", got)
	}
	testbed.WaitFor(t, 5*time.Second, "the waiter to end", func() bool { return runtime.NumGoroutine() <= base })
	t.Logf("%d held requests: %.0f B each (heap and stacks), against %.0f B for a request blocked in an empty handler: %.0f B for holding it",
		n, perHeld, control, perHeld-control)
}

// memInUse returns the heap in use and the goroutine stacks, after a GC.
func memInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}
