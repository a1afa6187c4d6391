package move_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/internal/pgtest"
	"github.com/replproxy/replproxy/move"
	"github.com/replproxy/replproxy/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fleet is the clusters of a test: a registry and one store per cluster,
// each behind a faulty wrapper that can make its calls fail.
type fleet struct {
	reg    *cluster.Registry
	names  []string
	addrs  map[string]string // store addresses
	stores map[string]store.Store
	faults map[string]*faulty
	pg     map[string]*pgtest.Server // PostgreSQL backends only
	logger *zap.Logger
}

// backend makes a fleet of clusters with the given names.
type backend func(t *testing.T, names ...string) *fleet

// forEachBackend runs fn as a subtest against each backend: embedded
// store files, and PostgreSQL databases on three servers (one per
// cluster, so that one can be stopped) started for the subtest.
func forEachBackend(t *testing.T, fn func(t *testing.T, newFleet backend)) {
	t.Run("embedded", func(t *testing.T) {
		fn(t, func(t *testing.T, names ...string) *fleet {
			return newFleet(t, names, embeddedAddrs(t, names...), nil)
		})
	})
	t.Run("postgres", func(t *testing.T) {
		servers := pgtest.StartN(t, 3)
		fn(t, func(t *testing.T, names ...string) *fleet {
			if len(servers) < len(names) {
				t.Fatalf("%d clusters, %d servers", len(names), len(servers))
			}
			addrs := map[string]string{}
			pg := map[string]*pgtest.Server{}
			for i, n := range names {
				addrs[n] = servers[i].NewDatabase(t)
				pg[n] = servers[i]
			}
			return newFleet(t, names, addrs, pg)
		})
	})
}

// embeddedAddrs makes an empty embedded store file for each cluster.
func embeddedAddrs(t *testing.T, names ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	addrs := map[string]string{}
	for _, n := range names {
		path := filepath.Join(dir, n+".yaml")
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		addrs[n] = path
	}
	return addrs
}

func newFleet(t *testing.T, names []string, addrs map[string]string, pg map[string]*pgtest.Server) *fleet {
	t.Helper()
	var b strings.Builder
	b.WriteString("clusters:\n")
	for i, n := range names {
		fmt.Fprintf(&b, "  - name: %s\n    proxy_ipv4: [192.0.2.%d]\n    forward: 10.0.0.%d:8443\n    store: %q\n", n, i+1, i+1, addrs[n])
	}
	reg, err := cluster.Parse(filepath.Join(t.TempDir(), "clusters.yaml"), []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{reg: reg, names: names, addrs: addrs, pg: pg, logger: zaptest.NewLogger(t)}
	f.open(t)
	return f
}

// open (re)opens every cluster's store, as a new replctl process would.
func (f *fleet) open(t *testing.T) {
	t.Helper()
	f.stores = map[string]store.Store{}
	f.faults = map[string]*faulty{}
	for _, n := range f.names {
		s, err := cluster.Open(t.Context(), f.addrs[n], cluster.OpenOptions{Migrate: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		fs := &faulty{Store: s}
		f.faults[n], f.stores[n] = fs, fs
	}
}

func (f *fleet) mover(t *testing.T, hooks move.Hooks) *move.Mover {
	t.Helper()
	m, err := move.New(f.reg, f.stores, hooks, f.logger)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// create makes repl id (owner alice, slug <id>) live in cluster c, with
// a verified custom domain <id>.example.com.
func (f *fleet) create(t *testing.T, c, id string) {
	t.Helper()
	ctx := t.Context()
	s := f.stores[c]
	if _, err := s.CreateRepl(ctx, store.Repl{ID: id, Owner: "alice", Slug: id, Endpoints: []string{"10.0.0.1:8080"}}); err != nil {
		t.Fatal(err)
	}
	d, err := s.LinkDomain(ctx, store.Domain{Name: id + ".example.com", ReplID: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.MarkDomainVerified(ctx, d.Name, d.CreatedAt); err != nil {
		t.Fatal(err)
	}
}

// move moves repl id to cluster to, and fails the test on an error.
func (f *fleet) move(t *testing.T, id, to string) move.Plan {
	t.Helper()
	p, err := f.mover(t, move.Hooks{}).Move(t.Context(), move.Request{Repl: id, To: to, Endpoints: endpointsIn(to)})
	if err != nil {
		t.Fatalf("move %s to %s: %v", id, to, err)
	}
	return p
}

// endpointsIn is the endpoint a test gives a repl in cluster c.
func endpointsIn(c string) []string {
	return []string{"10.0.1." + fmt.Sprint(len(c)) + ":" + fmt.Sprint(8000+int(c[0]))}
}

// settled checks that the repl is live in cluster want at generation gen
// and that the fleet is settled around it.
func (f *fleet) settled(t *testing.T, id, want string, gen int64) {
	t.Helper()
	ctx := t.Context()
	if err := move.CheckSettled(ctx, f.reg, f.stores, id); err != nil {
		t.Fatalf("not settled:\n%v\n%s", err, f.dump(t))
	}
	r, err := f.stores[want].GetRepl(ctx, id)
	if err != nil {
		t.Fatalf("repl %s in %s: %v\n%s", id, want, err, f.dump(t))
	}
	if r.Generation != gen || !slices.Equal(r.Endpoints, endpointsIn(want)) {
		t.Fatalf("repl %s in %s: generation %d endpoints %v, want %d %v", id, want, r.Generation, r.Endpoints, gen, endpointsIn(want))
	}
	d, err := f.stores[want].GetDomain(ctx, id+".example.com")
	if err != nil || d.ReplID != id || d.VerifiedAt.IsZero() {
		t.Fatalf("domain in %s: %+v, %v; want linked to %s and verified", want, d, err, id)
	}
}

// dump lists every cluster's data, times included, to compare states.
func (f *fleet) dump(t *testing.T) string {
	t.Helper()
	ctx := context.WithoutCancel(t.Context())
	var b strings.Builder
	for _, n := range f.names {
		s := f.faults[n].Store
		rs, err1 := s.ListRepls(ctx, "")
		ts, err2 := s.ListTombstones(ctx)
		ds, err3 := s.ListDomains(ctx, "")
		if err := errors.Join(err1, err2, err3); err != nil {
			t.Fatalf("dump %s: %v", n, err)
		}
		fmt.Fprintf(&b, "%s:\n", n)
		for _, r := range rs {
			fmt.Fprintf(&b, "  live %s %s/%s gen %d %v updated %s\n", r.ID, r.Owner, r.Slug, r.Generation, r.Endpoints, r.UpdatedAt)
		}
		for _, t := range ts {
			fmt.Fprintf(&b, "  tombstone %s %s/%s -> %s gen %d at %s\n", t.ReplID, t.Owner, t.Slug, t.Cluster, t.Generation, t.MovedAt)
		}
		for _, d := range ds {
			fmt.Fprintf(&b, "  domain %s -> %s token %s verified %s\n", d.Name, d.ReplID, d.Token, d.VerifiedAt)
		}
	}
	return b.String()
}

// errInjected is what a faulty store returns when told to fail.
var errInjected = fmt.Errorf("injected fault: %w", store.ErrUnavailable)

// faulty is a store whose calls by method name can be made to fail, as
// an unreachable database would.
type faulty struct {
	store.Store
	mu   sync.Mutex
	fail map[string]bool
}

func (f *faulty) failOn(methods ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = map[string]bool{}
	for _, m := range methods {
		f.fail[m] = true
	}
}

func (f *faulty) err(method string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail[method] || f.fail["*"] {
		return fmt.Errorf("%s: %w", method, errInjected)
	}
	return nil
}

func (f *faulty) GetRepl(ctx context.Context, id string) (store.Repl, error) {
	if err := f.err("GetRepl"); err != nil {
		return store.Repl{}, err
	}
	return f.Store.GetRepl(ctx, id)
}

func (f *faulty) GetTombstone(ctx context.Context, id string) (store.Tombstone, error) {
	if err := f.err("GetTombstone"); err != nil {
		return store.Tombstone{}, err
	}
	return f.Store.GetTombstone(ctx, id)
}

func (f *faulty) ListDomains(ctx context.Context, id string) ([]store.Domain, error) {
	if err := f.err("ListDomains"); err != nil {
		return nil, err
	}
	return f.Store.ListDomains(ctx, id)
}

func (f *faulty) Lookup(ctx context.Context, k store.Key) (store.Route, error) {
	if err := f.err("Lookup"); err != nil {
		return store.Route{}, err
	}
	return f.Store.Lookup(ctx, k)
}

func (f *faulty) Activate(ctx context.Context, r store.Repl) (store.Repl, error) {
	if err := f.err("Activate"); err != nil {
		return store.Repl{}, err
	}
	return f.Store.Activate(ctx, r)
}

func (f *faulty) ActivateWithDomains(ctx context.Context, r store.Repl, domains []store.Domain) (store.Repl, error) {
	if err := f.err("Activate"); err != nil {
		return store.Repl{}, err
	}
	return f.Store.ActivateWithDomains(ctx, r, domains)
}

func (f *faulty) LinkDomain(ctx context.Context, d store.Domain) (store.Domain, error) {
	if err := f.err("LinkDomain"); err != nil {
		return store.Domain{}, err
	}
	return f.Store.LinkDomain(ctx, d)
}

func (f *faulty) Repoint(ctx context.Context, id, cluster string, gen int64) error {
	if err := f.err("Repoint"); err != nil {
		return err
	}
	return f.Store.Repoint(ctx, id, cluster, gen)
}

func (f *faulty) Retire(ctx context.Context, id, cluster string, gen int64) (store.Tombstone, error) {
	if err := f.err("Retire"); err != nil {
		return store.Tombstone{}, err
	}
	return f.Store.Retire(ctx, id, cluster, gen)
}
