package nameserver

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap/zaptest"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/embedded"
	"github.com/replproxy/replproxy/store/routecache"
)

// TestKnownNamesTouchNoStore: every name the indexes know — repls by name
// and by id, tombstoned ones, and _acme-challenge under each, with TXT
// records or without — is answered from memory. Water torture with
// existing names costs the stores nothing.
func TestKnownNamesTouchNoStore(t *testing.T) {
	cfg, count, _ := counting(nil)
	c := startClusters(t, defaultWorld(t), cfg)
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	l0, c0 := count()
	want := map[string]string{ // A answers
		"blog.alice.repl.test.": "192.0.2.10,192.0.2.11",
		"shop.alice.repl.test.": "192.0.2.10,192.0.2.11",
		"r2.id.repl.test.":      "192.0.2.10,192.0.2.11",
		"api.bob.repl.test.":    "198.51.100.10", // east's tombstone, west's row
		"r3.id.repl.test.":      "198.51.100.10",
		"app.carol.repl.test.":  "198.51.100.10", // generation 2 wins
	}
	txt := map[string][]string{ // TXT answers; nil: NXDOMAIN
		"_acme-challenge.alice.repl.test.":      {"tok-east", "tok-west"},
		"_acme-challenge.r3.id.repl.test.":      {"tok-r3"},
		"_acme-challenge.blog.alice.repl.test.": nil,
		"_acme-challenge.api.bob.repl.test.":    nil,
	}
	for range 100 {
		for name, a := range want {
			if got := answerA(ask(t, addr, name, dns.TypeA)); got != a {
				t.Fatalf("%s: %s, want %s", name, got, a)
			}
		}
		for name, values := range txt {
			r := ask(t, addr, name, dns.TypeTXT)
			if values == nil {
				if r.Rcode != dns.RcodeNameError {
					t.Fatalf("%s: %s, want NXDOMAIN", name, dns.RcodeToString[r.Rcode])
				}
				continue
			}
			var got []string
			for _, rr := range r.Answer {
				got = append(got, rr.(*dns.TXT).Txt...)
			}
			slices.Sort(got)
			if !slices.Equal(got, values) {
				t.Fatalf("%s: TXT %q, want %q", name, got, values)
			}
		}
	}
	if l, ch := count(); l != l0 || ch != c0 {
		t.Errorf("%d queries for known names made %d lookups and %d challenge reads; want none", 100*(len(want)+len(txt)), l-l0, ch-c0)
	}
}

// TestChallengesFollowTheStore: a challenge record put or deleted shows
// within a second, from memory.
func TestChallengesFollowTheStore(t *testing.T) {
	path := defaultWorld(t)
	c := startClusters(t, path, ClustersConfig{})
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	east, err := embedded.Open(context.Background(), filepath.Join(filepath.Dir(path), "east.yaml"), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer east.Close()
	const name = "_acme-challenge.blog.alice.repl.test"
	ch := store.Challenge{Name: name, Value: "tok-blog", ExpiresAt: time.Now().Add(time.Hour)}
	if err := east.PutChallenge(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "the challenge record answered", func() bool {
		r := ask(t, addr, name+".", dns.TypeTXT)
		return len(r.Answer) == 1 && r.Answer[0].(*dns.TXT).Txt[0] == "tok-blog"
	})
	if err := east.DeleteChallenge(context.Background(), name, "tok-blog"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "the deleted challenge record gone", func() bool {
		return ask(t, addr, name+".", dns.TypeTXT).Rcode == dns.RcodeNameError
	})
}

// TestExpiredChallengesAreNotAnswered: a record past its expiry is not
// answered, though the index still holds it.
func TestExpiredChallengesAreNotAnswered(t *testing.T) {
	path := defaultWorld(t)
	now := time.Now()
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	c := startClustersAt(t, path, ClustersConfig{}, func() time.Time { return time.Unix(0, clock.Load()) })
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	const name = "_acme-challenge.r3.id.repl.test."
	if r := ask(t, addr, name, dns.TypeTXT); len(r.Answer) != 1 {
		t.Fatalf("before expiry: %v", r)
	}
	clock.Store(time.Date(2099, 1, 1, 0, 0, 1, 0, time.UTC).UnixNano()) // past every fixture record
	if r := ask(t, addr, name, dns.TypeTXT); r.Rcode != dns.RcodeNameError {
		t.Errorf("after expiry: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
}

// gatedStore blocks every read (ListAll, Lookup, Challenges) while its gate
// is shut, until the read's context ends.
type gatedStore struct {
	store.Store
	mu       sync.Mutex
	open     chan struct{} // closed while reads may pass
	inFlight atomic.Int64
	maxSeen  atomic.Int64
}

func newGatedStore(st store.Store) *gatedStore {
	g := &gatedStore{Store: st, open: make(chan struct{})}
	close(g.open)
	return g
}

func (g *gatedStore) shut() {
	g.mu.Lock()
	g.open = make(chan struct{})
	g.mu.Unlock()
}

func (g *gatedStore) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

func (g *gatedStore) wait(ctx context.Context) error {
	n := g.inFlight.Add(1)
	defer g.inFlight.Add(-1)
	for {
		if m := g.maxSeen.Load(); n <= m || g.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", store.ErrUnavailable, ctx.Err())
	}
}

func (g *gatedStore) ListAll(ctx context.Context) (store.Snapshot, error) {
	if err := g.wait(ctx); err != nil {
		return store.Snapshot{}, err
	}
	return g.Store.ListAll(ctx)
}

func (g *gatedStore) Lookup(ctx context.Context, k store.Key) (store.Route, error) {
	if err := g.wait(ctx); err != nil {
		return store.Route{}, err
	}
	return g.Store.Lookup(ctx, k)
}

func (g *gatedStore) Challenges(ctx context.Context, name string) ([]store.Challenge, error) {
	if err := g.wait(ctx); err != nil {
		return nil, err
	}
	return g.Store.Challenges(ctx, name)
}

// TestNoReaderWaitsOnAStore: with east's store hanging while its index is
// behind (a change came and the rebuild cannot read), every query is
// answered at once: known names from memory, the apex, west's names, and
// SERVFAIL for the names only a look-up could tell — and the look-ups
// started for those are bounded. Once the store answers, so do they.
func TestNoReaderWaitsOnAStore(t *testing.T) {
	path := defaultWorld(t)
	var east *gatedStore
	open := func(ctx context.Context, addr string) (store.Store, error) {
		st, err := cluster.Open(ctx, addr, cluster.OpenOptions{})
		if err != nil || filepath.Base(addr) != "east.yaml" {
			return st, err
		}
		east = newGatedStore(st)
		return east, nil
	}
	const maxBackground = 8
	c := startClusters(t, path, ClustersConfig{Open: open, Cache: routecache.Config{LoadTimeout: time.Minute, MaxBackground: maxBackground}})
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)

	east.shut()
	defer east.release() // before the clusters stop: their Run waits for the reads
	writer, err := embedded.Open(context.Background(), filepath.Join(filepath.Dir(path), "east.yaml"), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	if _, err := writer.CreateRepl(context.Background(), store.Repl{ID: "r8", Owner: "alice", Slug: "late", Endpoints: []string{"127.0.0.1:9008"}}); err != nil {
		t.Fatal(err)
	}
	// The embedded store signals the change as a resync: east's index is
	// no longer current, and its rebuild hangs on the gate.
	waitFor(t, 5*time.Second, "east's index behind", func() bool { return !c.Status()[0].Current })

	type probe struct {
		name  string
		qtype uint16
		want  string // answerA, or an rcode name
	}
	probes := []probe{
		{"repl.test.", dns.TypeSOA, "NODATA"},                         // the apex (answerA of an SOA answer)
		{"blog.alice.repl.test.", dns.TypeA, "192.0.2.10,192.0.2.11"}, // east's index, as it was
		{"api.bob.repl.test.", dns.TypeA, "198.51.100.10"},
		{"late.alice.repl.test.", dns.TypeA, "SERVFAIL"}, // only a look-up can tell
	}
	for i := range 50 {
		probes = append(probes, probe{fmt.Sprintf("x%d.alice.repl.test.", i), dns.TypeA, "SERVFAIL"})
	}
	start := time.Now()
	for _, p := range probes {
		if got := answerA(ask(t, addr, p.name, p.qtype)); got != p.want {
			t.Errorf("%s while east hangs: %s, want %s", p.name, got, p.want)
		}
	}
	// Each answer came at once: 54 answers in far less than one LoadTimeout
	// (a minute) — one wait and the test would time out.
	t.Logf("%d answers while east hangs in %v", len(probes), time.Since(start))
	if n := east.maxSeen.Load(); n > maxBackground+1 {
		t.Errorf("%d reads of east at once; want at most %d look-ups and the rebuild", n, maxBackground)
	}
	if s := c.Status()[0].Cache; s.Refused == 0 {
		t.Errorf("no look-up refused (%+v); want the ones past MaxBackground refused", s)
	}

	east.release()
	waitAnswer(t, addr, "late.alice.repl.test.", "192.0.2.10,192.0.2.11", 5*time.Second)
	if got := answerA(ask(t, addr, "x1.alice.repl.test.", dns.TypeA)); got != "NXDOMAIN" {
		t.Errorf("a random name once east answers: %s", got)
	}
}
