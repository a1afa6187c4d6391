package e2e

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/platformtest"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/wake"
)

// BenchmarkWake measures what a wake adds to the manager's own start time:
// a request for a sleeping repl, answered once package wake's manager has
// "started" its container (at once), minus the time the manager's Start
// took. One wake per iteration; run with -benchtime 200x for the figures
// (median and p99, ms).
func BenchmarkWake(b *testing.B) {
	for _, bc := range []struct {
		name string
		o    platformtest.Options
	}{
		{"in-process/postgres", platformtest.Options{Store: platformtest.Postgres}},
		{"binaries/postgres", platformtest.Options{Mode: platformtest.Binaries, Store: platformtest.Postgres, NoLinks: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			bc.o.NoDNS = true
			bc.o.ProxyFlags = []string{"-access-log=false", "-wake-rate", "1000", "-wake-burst", "1000"} // one wake after another: not what the rate limit is for
			p := platformtest.Start(b, bc.o)
			app := p.StartApp(b, "east", platformtest.AppOptions{})
			p.CreateRepl(b, platformtest.Repl{ID: "bench1", Owner: "bench", Slug: "app", Endpoints: []string{app.Addr}})
			east := p.Cluster(b, "east")
			var mu sync.Mutex
			var startTook time.Duration
			m, err := wake.New(east.Store, wake.Config{Name: "bench", Poll: 100 * time.Millisecond,
				Start: func(context.Context, store.Wake) ([]string, error) {
					t0 := time.Now()
					eps := []string{app.Addr}
					mu.Lock()
					startTook = time.Since(t0)
					mu.Unlock()
					return eps, nil
				}}, nil)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = m.Run(ctx) }()
			defer func() { cancel(); <-done }()
			client := &http.Client{Timeout: 30 * time.Second}
			defer client.CloseIdleConnections()
			host := p.Host("bench", "app")
			var added []time.Duration
			for b.Loop() {
				b.StopTimer()
				p.Sleep(b, "bench1")
				waitAsleep(b, host, east.AdminAddr)
				b.StartTimer()
				t0 := time.Now()
				code, _, err := getVia(client, east.ProxyAddr, host)
				took := time.Since(t0)
				if err != nil || code != 200 {
					b.Fatalf("request through a wake: %d %v", code, err)
				}
				mu.Lock()
				added = append(added, took-startTook)
				mu.Unlock()
			}
			slices.Sort(added)
			b.ReportMetric(float64(added[len(added)/2].Microseconds())/1000, "median-ms")
			b.ReportMetric(float64(added[len(added)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
