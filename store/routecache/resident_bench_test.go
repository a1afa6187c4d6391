package routecache_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

var (
	residentRoutes  = flag.Int("resident.routes", 1_000_000, "routes BenchmarkResident caches")
	residentGarbage = flag.Int("resident.garbage", 4096, "bytes of short-lived garbage BenchmarkResident makes per lookup, as a proxied request does")
)

// madeReader makes every repl's route from its key, so that the live heap
// is the cache's alone.
type madeReader struct{}

func (madeReader) Lookup(_ context.Context, k store.Key) (store.Route, error) {
	n, _ := strconv.Atoi(strings.TrimPrefix(k.Slug, "app"))
	return store.Route{Kind: store.RouteLocal, ReplID: fmt.Sprintf("r%08x", n), Owner: k.Owner, Slug: k.Slug, Generation: 1,
		Endpoints: []string{fmt.Sprintf("10.%d.%d.%d:8080", n>>16&255, n>>8&255, n&255)}}, nil
}

func (madeReader) Challenges(context.Context, string) ([]store.Challenge, error) { return nil, nil }

func (madeReader) Watch(ctx context.Context, fn func(store.Event)) error {
	fn(store.Event{Kind: store.EventResync})
	<-ctx.Done()
	return ctx.Err()
}

func residentKey(i int) store.Key {
	return store.ReplKey(fmt.Sprintf("user%d", i/3), fmt.Sprintf("app%d", i))
}

// BenchmarkResident fills a route cache with -resident.routes routes,
// then looks up random ones, making -resident.garbage bytes of garbage a
// lookup as a proxied request does, and reports resident memory against
// the live heap (after a forced collection at the end), and the
// process's CPU per lookup. It leaves the
// collector as the process has it: run it with GOGC and GOMEMLIMIT set
// (README, "Memory"), one setting per process.
func BenchmarkResident(b *testing.B) {
	n := *residentRoutes
	c := routecache.New(madeReader{}, routecache.Config{MaxEntries: n, TTL: time.Hour, KeepExpired: time.Hour}, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-c.Synced()
	for i := range n {
		if _, err := c.Lookup(ctx, residentKey(i)); err != nil {
			b.Fatal(err)
		}
	}
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(samples)
	cycles0 := samples[1].Value.Uint64()
	cpu0 := cpuTime()
	rng := rand.New(rand.NewPCG(1, 2))
	var sink []byte
	pieces := max(1, *residentGarbage/512)
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Lookup(ctx, residentKey(rng.IntN(n))); err != nil {
			b.Fatal(err)
		}
		for range pieces {
			sink = make([]byte, *residentGarbage/pieces)
		}
	}
	b.StopTimer()
	_ = sink
	rss := residentBytes(b)
	metrics.Read(samples)
	cycles := samples[1].Value.Uint64() - cycles0
	runtime.GC() // what is live: a collection's own count includes what was allocated while it marked
	metrics.Read(samples)
	live := float64(samples[0].Value.Uint64())
	runtime.KeepAlive(c)
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(cycles), "gcs")
	b.ReportMetric(live/(1<<20), "live-MiB")
	b.ReportMetric(rss/(1<<20), "resident-MiB")
	b.ReportMetric(rss/live, "resident/live")
	b.ReportMetric(rss/float64(n), "resident-B/route")
	b.ReportMetric(live/float64(n), "live-B/route")
}

// cpuTime is the process's user and system CPU so far, in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// residentBytes reads the process's resident set from /proc/self/statm.
func residentBytes(b *testing.B) float64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		b.Skip("no /proc/self/statm: ", err)
	}
	f := strings.Fields(string(data))
	pages, _ := strconv.ParseFloat(f[1], 64)
	return pages * float64(os.Getpagesize())
}
