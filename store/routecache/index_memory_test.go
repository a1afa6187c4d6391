package routecache_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/routecache"
)

var indexRepls = flag.Int("index.repls", 1_000_000, "repls in BenchmarkIndexMemory's index (10M takes several GiB)")

// syntheticSnapshot is n rows shaped like a real cluster's: ids of 8 to 12
// characters, owners of 3 to 15 (about three repls each, unevenly), slugs
// of 3 to 20; 5 % of the rows are tombstones (a third of them under the
// name of a live repl that took it), 2 % of the repls have a custom domain.
func syntheticSnapshot(n int, seed uint64) store.Snapshot {
	rng := rand.New(rand.NewPCG(seed, 1))
	const alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	word := func(lo, hi int) string {
		b := make([]byte, lo+rng.IntN(hi-lo+1))
		for i := range b {
			b[i] = alnum[rng.IntN(26)]
			if i > 0 {
				b[i] = alnum[rng.IntN(len(alnum))]
			}
		}
		return string(b)
	}
	owners := make([]string, max(1, n/3))
	for i := range owners {
		owners[i] = word(3, 15)
	}
	clusters := []string{"east", "west", "north", "south"}
	var snap store.Snapshot
	snap.Repls = make([]store.Repl, 0, n-n/20)
	snap.Tombstones = make([]store.Tombstone, 0, n/20+1)
	for i := range n {
		// A skew: half the rows go to a tenth of the owners.
		o := rng.IntN(len(owners))
		if rng.IntN(2) == 0 {
			o = rng.IntN(max(1, len(owners)/10))
		}
		// The index makes ids unique; the suffix keeps random ones apart.
		id := fmt.Sprintf("%s%x", word(4, 6), i)
		owner, slug := owners[o], word(3, 20)
		if i%20 == 0 {
			if i%60 == 0 && len(snap.Repls) > 0 {
				r := snap.Repls[rng.IntN(len(snap.Repls))]
				owner, slug = r.Owner, r.Slug
			}
			snap.Tombstones = append(snap.Tombstones, store.Tombstone{ReplID: id, Owner: owner, Slug: slug,
				Cluster: clusters[rng.IntN(len(clusters))], Generation: int64(2 + rng.IntN(5))})
			continue
		}
		snap.Repls = append(snap.Repls, store.Repl{ID: id, Owner: owner, Slug: slug, Generation: int64(1 + rng.IntN(3))})
		if i%50 == 1 {
			snap.Domains = append(snap.Domains, store.Domain{Name: "www." + slug + "-" + owner + ".example.com", ReplID: id})
		}
	}
	return snap
}

// churned is a copy of snap (sharing no string with it) with a tenth of its repls changed the ways a resync finds
// them: renamed, moved away (tombstones), deleted, and as many new ones.
func churned(snap store.Snapshot, seed uint64) store.Snapshot {
	rng := rand.New(rand.NewPCG(seed, 2))
	c := strings.Clone
	var out store.Snapshot
	for _, d := range snap.Domains {
		out.Domains = append(out.Domains, store.Domain{Name: c(d.Name), ReplID: c(d.ReplID)})
	}
	for _, t := range snap.Tombstones {
		out.Tombstones = append(out.Tombstones, store.Tombstone{ReplID: c(t.ReplID), Owner: c(t.Owner), Slug: c(t.Slug), Cluster: t.Cluster, Generation: t.Generation})
	}
	out.Repls = make([]store.Repl, 0, len(snap.Repls))
	for i, r := range snap.Repls {
		r = store.Repl{ID: c(r.ID), Owner: c(r.Owner), Slug: c(r.Slug), Generation: r.Generation}
		switch i % 40 {
		case 0: // renamed
			r.Slug = fmt.Sprintf("%s-%d", r.Slug, i)
		case 1: // moved away
			out.Tombstones = append(out.Tombstones, store.Tombstone{ReplID: r.ID, Owner: r.Owner, Slug: r.Slug, Cluster: "west", Generation: r.Generation + 1})
			continue
		case 2: // deleted, and a new one
			r = store.Repl{ID: fmt.Sprintf("n%x%d", rng.Uint32(), i), Owner: r.Owner, Slug: r.Slug + "n", Generation: 1}
		case 3: // moved back: a higher generation
			r.Generation++
		}
		out.Repls = append(out.Repls, r)
	}
	return out
}

// snapLister is a Lister whose ListAll answers snap.
type snapLister struct {
	*gatedLister
	mu   sync.Mutex
	snap store.Snapshot
}

func (l *snapLister) ListAll(context.Context) (store.Snapshot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.snap, nil
}

func (l *snapLister) set(s store.Snapshot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.snap = s
}

func newSnapLister(s store.Snapshot) *snapLister {
	return &snapLister{gatedLister: &gatedLister{countingReader: newCountingReader(), release: make(chan struct{}), held: make(chan struct{})}, snap: s}
}

// liveHeap is the heap's live bytes after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// peakHeap runs fn with the collector made eager (GOGC=5, so the heap
// stays within about 5 % of what is live) and returns the most heap
// seen while it ran, sampled every millisecond.
func peakHeap(fn func()) uint64 {
	old := debug.SetGCPercent(5)
	defer debug.SetGCPercent(old)
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		peak := read()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				done <- max(peak, read())
				return
			case <-t.C:
				peak = max(peak, read())
			}
		}
	}()
	fn()
	close(stop)
	return <-done
}

// BenchmarkIndexMemory builds an index of -index.repls synthetic repls
// (default 1M) through a rebuild, as Run does, and reports the live heap
// the index holds per repl once built and its snapshot dropped (B/repl),
// the most it held beyond the snapshot while built from nothing
// (peak-build-B/repl) and while rebuilt over itself from a snapshot with
// a tenth of its repls changed (peak-rebuild-B/repl, and over the steady
// size: peak-rebuild/steady), the snapshot itself (snapshot-B/repl: the
// Lister's, not the index's), and how long each took. Run it once:
//
//	go test ./store/routecache -run '^$' -bench BenchmarkIndexMemory -benchtime 1x -index.repls 10000000
func BenchmarkIndexMemory(b *testing.B) {
	n := *indexRepls
	next := churned(syntheticSnapshot(n, 1), 1)
	l := newSnapLister(store.Snapshot{})
	ctx := context.Background()
	rebuild := func(x *routecache.Index) time.Duration {
		start := time.Now()
		if err := x.Rebuild(ctx); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	for b.Loop() {
		base := liveHeap() // next, which shares nothing with snap
		snap := syntheticSnapshot(n, 1)
		snapBytes := liveHeap() - base
		l.set(snap)
		x := routecache.NewIndex(l, nil)
		build := rebuild(x)
		l.set(store.Snapshot{})
		snap = store.Snapshot{}
		steady := liveHeap() - base
		l.set(next)
		rebuilt := rebuild(x)
		runtime.KeepAlive(x)
		x = nil

		// The peaks, measured apart: the eager collector slows the builds.
		snap = syntheticSnapshot(n, 1)
		l.set(snap)
		withSnap := liveHeap()
		x = routecache.NewIndex(l, nil)
		peakBuild := peakHeap(func() { rebuild(x) }) - withSnap
		l.set(store.Snapshot{})
		snap = store.Snapshot{}
		steady2 := liveHeap() - base
		l.set(next)
		peakRebuild := peakHeap(func() { rebuild(x) }) - base
		if st := x.Stats(); st.Repls == 0 {
			b.Fatal("empty index")
		}
		runtime.KeepAlive(x)

		per := func(v uint64) float64 { return float64(v) / float64(n) }
		b.ReportMetric(per(steady), "B/repl")
		b.ReportMetric(per(peakBuild), "peak-build-B/repl")
		b.ReportMetric(per(peakRebuild), "peak-rebuild-B/repl")
		b.ReportMetric(float64(peakRebuild)/float64(steady2), "peak-rebuild/steady")
		b.ReportMetric(per(snapBytes), "snapshot-B/repl")
		b.ReportMetric(build.Seconds(), "build-s")
		b.ReportMetric(rebuilt.Seconds(), "rebuild-s")
	}
}
