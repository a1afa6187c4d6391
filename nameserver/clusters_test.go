package nameserver

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
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

// countingStore counts the lookups that reach a store, and keeps their
// keys.
type countingStore struct {
	store.Store
	lookups, challenges atomic.Int64

	mu   sync.Mutex
	keys []store.Key // looked up, challenge names as KeyChallenge
}

func (c *countingStore) Lookup(ctx context.Context, k store.Key) (store.Route, error) {
	c.lookups.Add(1)
	c.record(k)
	return c.Store.Lookup(ctx, k)
}

func (c *countingStore) Challenges(ctx context.Context, name string) ([]store.Challenge, error) {
	c.challenges.Add(1)
	c.record(store.Key{Kind: store.KeyChallenge, Name: name})
	return c.Store.Challenges(ctx, name)
}

func (c *countingStore) record(k store.Key) {
	c.mu.Lock()
	c.keys = append(c.keys, k)
	c.mu.Unlock()
}

// counting returns a ClustersConfig whose stores count lookups, and the
// counters by store address.
func counting(open func(ctx context.Context, addr string) (store.Store, error)) (ClustersConfig, func() (lookups, challenges int64), func() []store.Key) {
	if open == nil {
		open = func(ctx context.Context, addr string) (store.Store, error) {
			return cluster.Open(ctx, addr, cluster.OpenOptions{})
		}
	}
	var (
		mu  sync.Mutex
		all []*countingStore
	)
	cfg := ClustersConfig{Open: func(ctx context.Context, addr string) (store.Store, error) {
		st, err := open(ctx, addr)
		if err != nil {
			return nil, err
		}
		cs := &countingStore{Store: st}
		mu.Lock()
		all = append(all, cs)
		mu.Unlock()
		return cs, nil
	}}
	count := func() (l, c int64) {
		mu.Lock()
		defer mu.Unlock()
		for _, cs := range all {
			l += cs.lookups.Load()
			c += cs.challenges.Load()
		}
		return l, c
	}
	keys := func() []store.Key {
		mu.Lock()
		defer mu.Unlock()
		var out []store.Key
		for _, cs := range all {
			cs.mu.Lock()
			out = append(out, cs.keys...)
			cs.mu.Unlock()
		}
		return out
	}
	return cfg, count, keys
}

// ask sends one question over UDP and returns the reply.
func ask(t testing.TB, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return exchange(t, "udp", addr, m)
}

// answerA returns the A addresses of a reply, or its rcode name.
func answerA(r *dns.Msg) string {
	if r.Rcode != dns.RcodeSuccess {
		return dns.RcodeToString[r.Rcode]
	}
	s := ""
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			if s != "" {
				s += ","
			}
			s += a.A.String()
		}
	}
	if s == "" {
		return "NODATA"
	}
	return s
}

// waitAnswer polls until name's A answer is want, and returns how long it took.
func waitAnswer(t testing.TB, addr, name, want string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var got string
	for {
		got = answerA(ask(t, addr, name, dns.TypeA))
		if got == want {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("%s: A answer %s after %v, want %s", name, got, limit, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRandomNamesTouchNoStore floods the server with names that do not
// exist, of every shape: none may reach a store.
func TestRandomNamesTouchNoStore(t *testing.T) {
	cfg, count, _ := counting(nil)
	c := startClusters(t, defaultWorld(t), cfg)
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	l0, c0 := count()
	const n = 500
	for i := range n {
		r := rand.Uint64()
		for _, name := range []string{
			fmt.Sprintf("s%x.alice.repl.test.", r),               // a known owner's random slug
			fmt.Sprintf("s%x.o%x.repl.test.", r, i),              // a random owner
			fmt.Sprintf("r%x.id.repl.test.", r),                  // a random id
			fmt.Sprintf("_acme-challenge.o%x.repl.test.", r),     // a challenge under a random owner
			fmt.Sprintf("_acme-challenge.s%x.bob.repl.test.", r), // ... under a random slug
		} {
			if got := ask(t, addr, name, dns.TypeA); got.Rcode != dns.RcodeNameError {
				t.Fatalf("%s: %s, want NXDOMAIN", name, dns.RcodeToString[got.Rcode])
			}
		}
	}
	if l, ch := count(); l != l0 || ch != c0 {
		t.Errorf("%d random names made %d lookups and %d challenge reads in the stores; want none", 5*n, l-l0, ch-c0)
	}
	// And a known name is answered (from the index).
	if got := answerA(ask(t, addr, "blog.alice.repl.test.", dns.TypeA)); got != "192.0.2.10,192.0.2.11" {
		t.Errorf("blog.alice: %s", got)
	}
}

// TestCreatedReplResolves creates and deletes a repl in an embedded store
// (the embedded store signals every change as a resync) while replns runs.
func TestCreatedReplResolves(t *testing.T) {
	path := defaultWorld(t)
	c := startClusters(t, path, ClustersConfig{})
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	const name = "new.dave.repl.test."
	if got := answerA(ask(t, addr, name, dns.TypeA)); got != "NXDOMAIN" {
		t.Fatalf("before: %s", got)
	}
	if got := answerA(ask(t, addr, "dave.repl.test.", dns.TypeA)); got != "NXDOMAIN" {
		t.Fatalf("owner before: %s", got)
	}

	west, err := embedded.Open(context.Background(), filepath.Join(filepath.Dir(path), "west.yaml"), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer west.Close()
	if _, err := west.CreateRepl(context.Background(), store.Repl{ID: "r9", Owner: "dave", Slug: "new", Endpoints: []string{"127.0.0.1:9009"}}); err != nil {
		t.Fatal(err)
	}
	took := waitAnswer(t, addr, name, "198.51.100.10", time.Second)
	t.Logf("created repl resolved after %v", took)
	if got := answerA(ask(t, addr, "dave.repl.test.", dns.TypeA)); got != "NODATA" {
		t.Errorf("owner after: %s, want NODATA", got)
	}

	if err := west.DeleteRepl(context.Background(), "r9"); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, addr, name, "NXDOMAIN", time.Second)
}

// TestTombstonePointsTheWay: while a move's notifications arrive, the
// source's tombstone may be seen before the destination's live row. A name
// only a tombstone knows is not NXDOMAIN: it is answered with the cluster
// that holds the tombstone (its proxies forward) while the destination has
// not learned of the repl — its proxies would answer 404 — and with the
// destination once it has (and the hold after has passed).
func TestTombstonePointsTheWay(t *testing.T) {
	path := writeWorld(t, map[string]string{
		"clusters.yaml": testRegistry,
		// east retired r7 to west at generation 2; west does not show it
		// yet (its notification still on the way).
		"east.yaml": "tombstones:\n  - {repl_id: r7, owner: erin, slug: site, cluster: west, generation: 2, moved_at: 2026-01-01T00:00:00Z}\n",
		"west.yaml": "",
	})
	// West's row, once it comes, is held back for MoveHold (TestMoveHold):
	// a short one here.
	c := startClusters(t, path, ClustersConfig{MoveHold: 100 * time.Millisecond})
	h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	addr := startServer(t, h)
	for _, name := range []string{"site.erin.repl.test.", "r7.id.repl.test."} {
		if got := answerA(ask(t, addr, name, dns.TypeA)); got != "192.0.2.10,192.0.2.11" {
			t.Errorf("%s: %s, want east's addresses (its tombstone forwards) while west does not know the repl", name, got)
		}
	}
	west, err := embedded.Open(context.Background(), filepath.Join(filepath.Dir(path), "west.yaml"), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer west.Close()
	if _, err := west.Activate(context.Background(), store.Repl{ID: "r7", Owner: "erin", Slug: "site", Endpoints: []string{"127.0.0.1:9007"}, Generation: 2}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"site.erin.repl.test.", "r7.id.repl.test."} {
		waitAnswer(t, addr, name, "198.51.100.10", 5*time.Second)
	}
	if got := answerA(ask(t, addr, "erin.repl.test.", dns.TypeA)); got != "NODATA" {
		t.Errorf("the owner: %s, want NODATA (an empty non-terminal)", got)
	}
}

// TestMoveHold: a move's first step makes the repl live in the destination
// at a higher generation while the source still serves it. The
// destination's proxies follow its changes each on their own and may not
// know the repl yet, so for MoveHold replns goes on answering the source —
// through the retire too, whose tombstone forwards — and then the
// destination. With the hold off (the old behaviour) it answers the
// destination at once, the moment its proxies may still 404.
func TestMoveHold(t *testing.T) {
	const (
		east = "192.0.2.10,192.0.2.11"
		west = "198.51.100.10"
	)
	// move starts replns on r7 live in east, makes it live in west (a
	// move's step 1) and waits until replns's index of west has it. It
	// returns replns's address, the move's retire (step 3), and the time
	// just before the activate (replns cannot have learned of it earlier).
	move := func(t *testing.T, hold time.Duration) (addr string, retire func(), activated time.Time) {
		path := writeWorld(t, map[string]string{
			"clusters.yaml": testRegistry,
			"east.yaml":     "repls:\n  - {id: r7, owner: erin, slug: site, endpoints: [127.0.0.1:9007], generation: 1}\n",
			"west.yaml":     "",
		})
		c := startClusters(t, path, ClustersConfig{MoveHold: hold})
		h, err := NewHandler(testConfig(), c, nil, nil, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		addr = startServer(t, h)
		for _, name := range []string{"site.erin.repl.test.", "r7.id.repl.test."} {
			if got := answerA(ask(t, addr, name, dns.TypeA)); got != east {
				t.Fatalf("before the move %s: %s, want east's %s", name, got, east)
			}
		}
		stores := map[string]store.Store{}
		for _, name := range []string{"east", "west"} {
			s, err := embedded.Open(context.Background(), filepath.Join(filepath.Dir(path), name+".yaml"), zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			stores[name] = s
		}
		activated = time.Now()
		if _, err := stores["west"].Activate(context.Background(), store.Repl{ID: "r7", Owner: "erin", Slug: "site", Endpoints: []string{"127.0.0.1:9107"}, Generation: 2}); err != nil {
			t.Fatal(err)
		}
		westIndex := c.set.Load().cs[1].cache.Load().Index()
		waitFor(t, 10*time.Second, "west's index has r7", func() bool {
			known, gen, _, _ := westIndex.Where(store.ReplIDKey("r7"))
			return known == routecache.KnownYes && gen == 2
		})
		retire = func() {
			if _, err := stores["east"].Retire(context.Background(), "r7", "west", 2); err != nil {
				t.Fatal(err)
			}
			eastIndex := c.set.Load().cs[0].cache.Load().Index()
			waitFor(t, 10*time.Second, "east's index has r7's tombstone", func() bool {
				_, _, movedTo, _ := eastIndex.Where(store.ReplIDKey("r7"))
				return movedTo == "west"
			})
		}
		return addr, retire, activated
	}

	t.Run("held", func(t *testing.T) {
		addr, retire, _ := move(t, time.Hour)
		for _, name := range []string{"site.erin.repl.test.", "r7.id.repl.test."} {
			if got := answerA(ask(t, addr, name, dns.TypeA)); got != east {
				t.Errorf("activated in west, %s: %s, want east's %s while the repl arrives in west", name, got, east)
			}
		}
		retire()
		for _, name := range []string{"site.erin.repl.test.", "r7.id.repl.test."} {
			if got := answerA(ask(t, addr, name, dns.TypeA)); got != east {
				t.Errorf("retired in east, %s: %s, want east's %s (its tombstone forwards) while the repl arrives in west", name, got, east)
			}
		}
	})
	t.Run("released", func(t *testing.T) {
		const hold = 300 * time.Millisecond
		addr, retire, activated := move(t, hold)
		retire()
		took := waitAnswer(t, addr, "site.erin.repl.test.", west, 10*time.Second)
		if since := time.Since(activated); since < hold {
			t.Errorf("west answered %v after the activate, before the %v hold", since, hold)
		}
		t.Logf("west answered %v after the retire", took)
		if got := answerA(ask(t, addr, "r7.id.repl.test.", dns.TypeA)); got != west {
			t.Errorf("r7.id: %s, want west's %s", got, west)
		}
	})
	t.Run("off", func(t *testing.T) {
		addr, _, _ := move(t, -1)
		if got := answerA(ask(t, addr, "site.erin.repl.test.", dns.TypeA)); got != west {
			t.Errorf("with no hold: %s, want west's %s at once", got, west)
		}
	})
}
