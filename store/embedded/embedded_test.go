package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/store"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// noLeaks fails the test if it leaves goroutines behind. Call it first:
// cleanups run last-registered first, so the check runs after every
// Close registered later.
func noLeaks(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// writeByRename replaces the file the way careful writers (and the store
// itself) do.
func writeByRename(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds, failing the test after a few seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// openEmbedded writes content to a fresh file and opens it.
func openEmbedded(t *testing.T, content string, logger *zap.Logger) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "east.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Open(t.Context(), path, logger)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

// watch runs Watch in the background and hands out its events.
func watch(t *testing.T, s *Store) <-chan store.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	events := make(chan store.Event, 100)
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, func(ev store.Event) { events <- ev }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("watch returned %v, want context.Canceled", err)
		}
	})
	wantResync(t, events)
	return events
}

func wantResync(t *testing.T, events <-chan store.Event) {
	t.Helper()
	select {
	case ev := <-events:
		if ev.Kind != store.EventResync {
			t.Fatalf("event %+v, want %v", ev, store.EventResync)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no EventResync")
	}
}

// drain empties events, so that the next wantResync sees a new one.
func drain(events <-chan store.Event) {
	for {
		select {
		case <-events:
		default:
			return
		}
	}
}

func TestEmbeddedExampleFile(t *testing.T) {
	noLeaks(t)
	raw, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := openEmbedded(t, string(raw), nil)
	s.now = func() time.Time { return time.Date(2026, 11, 29, 10, 30, 0, 0, time.UTC) }
	ctx := t.Context()

	blog := store.Route{Kind: store.RouteLocal, ReplID: "r1a2b3", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:9001"}, Generation: 1}
	shop := store.Route{Kind: store.RouteLocal, ReplID: "r4d5e6", Owner: "alice", Slug: "shop", Endpoints: []string{"127.0.0.1:9002", "[::1]:9003"}, Generation: 3}
	moved := store.Route{Kind: store.RouteTombstone, ReplID: "r9", Owner: "bob", Slug: "shop", Cluster: "west", Generation: 2}
	old := store.Route{Kind: store.RouteTombstone, ReplID: "r0ld", Owner: "alice", Slug: "blog", Cluster: "west", Generation: 5}
	for _, tc := range []struct {
		name string
		key  store.Key
		want store.Route
		err  error
	}{
		{"live by name", store.ReplKey("alice", "blog"), blog, nil},
		{"live by name, two endpoints", store.ReplKey("alice", "shop"), shop, nil},
		{"live by id", store.ReplIDKey("r1a2b3"), blog, nil},
		{"tombstone by name", store.ReplKey("bob", "shop"), moved, nil},
		{"tombstone by id", store.ReplIDKey("r9"), moved, nil},
		{"older tombstone by id", store.ReplIDKey("r0ld"), old, nil},
		{"domain of a live repl", store.DomainKey("www.example.com"), blog, nil},
		{"domain of a tombstone", store.DomainKey("shop.example.org"), moved, nil},
		{"unknown name", store.ReplKey("carol", "blog"), store.Route{}, store.ErrNotFound},
		{"unknown id", store.ReplIDKey("r404"), store.Route{}, store.ErrNotFound},
		{"unknown domain", store.DomainKey("example.net"), store.Route{}, store.ErrNotFound},
		{"owner", store.Key{Kind: store.KeyOwner, Owner: "alice"}, store.Route{}, store.ErrInvalid},
		{"apex", store.Key{Kind: store.KeyApex}, store.Route{}, store.ErrInvalid},
		{"challenge", store.Key{Kind: store.KeyChallenge, Name: "_acme-challenge.alice.repl.test"}, store.Route{}, store.ErrInvalid},
		{"zero key", store.Key{}, store.Route{}, store.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Lookup(ctx, tc.key)
			if !errors.Is(err, tc.err) {
				t.Fatalf("lookup %s: error %v, want %v", tc.key, err, tc.err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("lookup %s = %+v, want %+v", tc.key, got, tc.want)
			}
		})
	}

	stats, _ := s.Stats(ctx)
	if want := (store.Stats{Repls: 2, Tombstones: 2, Domains: 2, Challenges: 3}); stats != want {
		t.Errorf("stats = %+v, want %+v", stats, want)
	}
	r, err := s.GetRepl(ctx, "r4d5e6")
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 11, 29, 10, 0, 0, 123456000, time.UTC); !r.CreatedAt.Equal(want) {
		t.Errorf("created_at = %v, want %v", r.CreatedAt, want)
	}
	if want := time.Date(2026, 11, 29, 10, 30, 0, 0, time.UTC); !r.UpdatedAt.Equal(want) {
		t.Errorf("updated_at = %v, want %v", r.UpdatedAt, want)
	}
	if r, _ := s.GetRepl(ctx, "r1a2b3"); r.Generation != 1 || !r.UpdatedAt.IsZero() {
		t.Errorf("r1a2b3 = %+v: want the default generation 1 and no updated_at", r)
	}
	d, err := s.GetDomain(ctx, "www.example.com")
	if err != nil || d.VerifiedAt.IsZero() || d.Token != "0123456789abcdef0123456789abcdef" {
		t.Errorf("domain = %+v, %v", d, err)
	}

	cs, _ := s.Challenges(ctx, "_acme-challenge.alice.repl.test")
	var values []string
	for _, c := range cs {
		values = append(values, c.Value)
	}
	if want := []string{"aaa-first", "zzz-later"}; !slices.Equal(values, want) {
		t.Errorf("challenges = %q, want the unexpired ones by value, %q", values, want)
	}
	s.now = func() time.Time { return time.Date(2026, 11, 29, 11, 0, 0, 0, time.UTC) }
	if cs, _ := s.Challenges(ctx, "_acme-challenge.alice.repl.test"); len(cs) != 0 {
		t.Errorf("at their expiry, challenges = %+v, want none", cs)
	}
}

func TestEmbeddedEmptyFiles(t *testing.T) {
	noLeaks(t)
	for _, tc := range []struct{ name, content string }{
		{"empty", ""},
		{"blank lines", "\n\n"},
		{"comments only", "# nothing yet\n"},
		{"document marker", "---\n"},
		{"null", "~\n"},
		{"empty mapping", "{}\n"},
		{"empty sections", "repls: []\ntombstones:\ndomains: []\nchallenges: []\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openEmbedded(t, tc.content, nil)
			if st, _ := s.Stats(t.Context()); st != (store.Stats{}) {
				t.Fatalf("stats = %+v, want an empty store", st)
			}
			if _, err := s.Lookup(t.Context(), store.ReplKey("alice", "blog")); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("lookup: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestEmbeddedMissingFile(t *testing.T) {
	noLeaks(t)
	for _, path := range []string{
		filepath.Join(t.TempDir(), "east.yaml"),
		filepath.Join(t.TempDir(), "no-such-folder", "east.yaml"),
	} {
		_, err := Open(t.Context(), path, nil)
		if err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "touch "+path) {
			t.Errorf("open %s: %v; want an error that says how to create the file", path, err)
		}
	}
}

// fileErrors are broken files and the problems each must give, in
// order, as "line: message" with the message abridged.
var fileErrors = []struct {
	name    string
	content string
	want    []string
}{
	{"syntax error", `
repls:
  - id: r1
   owner: alice
`, []string{`4: not valid YAML: did not find expected '-' indicator`}},
	{"tab", "repls:\n\t- id: r1\n", []string{`2: not valid YAML: found character that cannot start any token`}},
	{"unclosed list", `
repls:
  - id: r1
    owner: alice
    slug: blog
    endpoints: [127.0.0.1:9001
`, []string{`6: not valid YAML: did not find expected ',' or ']'`}},
	{"second document", "repls: []\n---\nrepls: []\n", []string{`2: a second YAML document`}},
	{"not a mapping", "- id: r1\n", []string{`1: the file must be a mapping with repls, tombstones, domains, challenges and wakes, not a list`}},
	{"unknown section", "repls: []\nreplz: []\n", []string{`2: replz: unknown field; the top level has repls, tombstones, domains, challenges and wakes`}},
	{"section not a list", "repls:\n  id: r1\n", []string{`2: repls: must be a list`}},
	{"entry not a mapping", "repls:\n  - r1\n", []string{`2: repls[0]: must be a mapping with id, owner, slug, endpoints`}},
	{"unknown field", `
repls:
  - id: r1
    owner: alice
    slug: blog
    endpoints: [127.0.0.1:9001]
    endpoint: 127.0.0.1:9002
`, []string{`7: repls[0].endpoint: unknown field; an entry of repls has id, owner, slug, endpoints, generation, asleep, created_at, updated_at`}},
	{"field twice", `
repls:
  - id: r1
    owner: alice
    owner: bob
    slug: blog
    endpoints: [127.0.0.1:9001]
`, []string{`5: repls[0].owner: given twice (first at line 4); keep one`}},
	{"missing fields", `
repls:
  - id: r1
    owner:
`, []string{
		`3: repls[0].owner: missing`,
		`3: repls[0].slug: missing`,
		`3: repls[0].endpoints: missing`,
	}},
	{"bad labels", `
repls:
  - id: R1
    owner: id
    slug: -blog
    endpoints: [127.0.0.1:9001]
`, []string{
		`3: repls[0].id: invalid label "R1": label "R1": upper-case 'R'`,
		`4: repls[0].owner: invalid owner "id": "id" is reserved`,
		`5: repls[0].slug: invalid label "-blog"`,
	}},
	{"bad endpoints", `
repls:
  - id: r1
    owner: alice
    slug: blog
    endpoints:
      - 127.0.0.1:9001
      - 127.0.0.1
      - "127.0.0.1:0"
  - id: r2
    owner: alice
    slug: shop
    endpoints: []
  - id: r3
    owner: alice
    slug: wiki
    endpoints: 127.0.0.1:9001
`, []string{
		`17: repls[2].endpoints: must be a list of host:port`,
		`8: repls[0].endpoints[1]: endpoint "127.0.0.1": invalid: want host:port`,
		`9: repls[0].endpoints[2]: endpoint "127.0.0.1:0": invalid: port must be a number from 1 to 65535`,
		`13: repls[1].endpoints: endpoints: invalid: a repl needs at least one host:port`,
	}},
	{"bad generations", `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001], generation: 0}
  - {id: r2, owner: alice, slug: shop, endpoints: [127.0.0.1:9001], generation: two}
tombstones:
  - {repl_id: r3, owner: bob, slug: blog, cluster: west, moved_at: 2026-11-29T10:00:00Z}
`, []string{
		`4: repls[1].generation: "two" is not a whole number`,
		`3: repls[0].generation: 0: must be 1 or more`,
		`6: tombstones[0].generation: missing; give the repl's generation in that cluster`,
	}},
	{"bad times", `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001], created_at: yesterday}
tombstones:
  - {repl_id: r3, owner: bob, slug: blog, cluster: west, generation: 2}
challenges:
  - {name: _acme-challenge.alice.repl.test, value: v, expires_at: "2026-11-29 11:00"}
`, []string{
		`3: repls[0].created_at: "yesterday" is not an RFC 3339 time`,
		`7: challenges[0].expires_at: "2026-11-29 11:00" is not an RFC 3339 time`,
		`5: tombstones[0].moved_at: missing`,
	}},
	{"duplicate id", `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001]}
  - {id: r1, owner: alice, slug: shop, endpoints: [127.0.0.1:9001]}
`, []string{`4: repls[1]: id r1 is already used by repls[0] (line 3)`}},
	{"duplicate owner/slug", `
repls:
  - id: r1
    owner: alice
    slug: blog
    endpoints: [127.0.0.1:9001]
  - id: r2
    owner: alice
    slug: blog
    endpoints: [127.0.0.1:9002]
`, []string{`7: repls[1]: owner/slug alice/blog is already used by repls[0] (line 3)`}},
	{"duplicate tombstone", `
tombstones:
  - {repl_id: r9, owner: bob, slug: shop, cluster: west, generation: 2, moved_at: 2026-11-29T10:00:00Z}
  - {repl_id: r9, owner: bob, slug: shop, cluster: north, generation: 3, moved_at: 2026-11-29T10:00:00Z}
`, []string{`4: tombstones[1]: repl r9 already has a tombstone, tombstones[0] (line 3); keep one`}},
	{"bad tombstone", `
tombstones:
  - {repl_id: r9, owner: id, slug: shop, cluster: West, generation: -1, moved_at: 2026-11-29T10:00:00Z}
`, []string{
		`3: tombstones[0].owner: invalid owner "id"`,
		`3: tombstones[0].cluster: invalid label "West"`,
		`3: tombstones[0].generation: -1: must be 1 or more`,
	}},
	{"live and tombstoned", `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001]}
tombstones:
  - {repl_id: r1, owner: alice, slug: blog, cluster: west, generation: 2, moved_at: 2026-11-29T10:00:00Z}
`, []string{`5: tombstones[0]: repl r1 is both live, as repls[0] (line 3), and tombstoned; remove one of them`}},
	{"bad domains", `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001]}
domains:
  - {name: WWW.example.com, repl_id: r1, token: t1}
  - {name: localhost, repl_id: r1, token: t1}
  - {name: www.example.com, repl_id: r1, token: "not a token"}
  - {name: www.example.net, repl_id: r1}
`, []string{
		`5: domains[0].name: invalid domain "WWW.example.com"`,
		`6: domains[1].name: invalid domain "localhost": a custom domain needs at least two labels`,
		`7: domains[2].token: token "not a token": invalid: want 1 to 128 of A-Z, a-z, 0-9, '_' and '-'`,
		`8: domains[3].token: missing; give a verification token`,
	}},
	{"duplicate domain", `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001]}
  - {id: r2, owner: alice, slug: shop, endpoints: [127.0.0.1:9001]}
domains:
  - {name: www.example.com, repl_id: r1, token: t1}
  - {name: www.example.com, repl_id: r2, token: t2}
`, []string{`7: domains[1]: domain www.example.com is already linked by domains[0] (line 6); keep one`}},
	{"domain of an unknown repl", `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001]}
domains:
  - name: www.example.com
    repl_id: r2
    token: t1
`, []string{`6: domains[0]: repl r2 is neither live nor tombstoned here`}},
	{"bad challenges", `
challenges:
  - {name: alice.repl.test, value: v1, expires_at: 2026-11-29T11:00:00Z}
  - name: _acme-challenge.Alice.repl.test
    value: has space
    expires_at: 2026-11-29T11:00:00Z
  - {name: _acme-challenge.alice.repl.test, value: "", expires_at: 2026-11-29T11:00:00Z}
  - {name: _acme-challenge.alice.repl.test, value: 'say"hi"', expires_at: 2026-11-29T11:00:00Z}
`, []string{
		`3: challenges[0].name: challenge name "alice.repl.test": invalid: must start with "_acme-challenge."`,
		`4: challenges[1].name: challenge name "_acme-challenge.Alice.repl.test": invalid label "Alice"`,
		`5: challenges[1].value: challenge value "has space": invalid: only printable ASCII without spaces or quotes`,
		`7: challenges[2].value: challenge value: invalid: must be 1 to 255 characters`,
		`8: challenges[3].value: challenge value "say\"hi\"": invalid: only printable ASCII`,
	}},
	{"duplicate challenge", `
challenges:
  - {name: _acme-challenge.alice.repl.test, value: v1, expires_at: 2026-11-29T11:00:00Z}
  - {name: _acme-challenge.alice.repl.test, value: v1, expires_at: 2026-11-29T12:00:00Z}
`, []string{`4: challenges[1]: the record _acme-challenge.alice.repl.test "v1" is already given as challenges[0] (line 3); keep one`}},
	{"everything at once", `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001]}
  - {id: r2, owner: alice, slug: blog, endpoints: [nowhere]}
tombstones:
  - {repl_id: r1, owner: alice, slug: blog, cluster: west, generation: 2, moved_at: 2026-11-29T10:00:00Z}
domains:
  - {name: www.example.com, repl_id: r7, token: t1}
`, []string{
		`4: repls[1].endpoints[0]: endpoint "nowhere"`,
		`4: repls[1]: owner/slug alice/blog is already used by repls[0] (line 3)`,
		`6: tombstones[0]: repl r1 is both live`,
		`8: domains[0]: repl r7 is neither live nor tombstoned here`,
	}},
}

func TestEmbeddedFileErrors(t *testing.T) {
	for _, tc := range fileErrors {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load("east.yaml", []byte(tc.content))
			if err == nil {
				t.Fatal("loaded; want errors")
			}
			if !errors.Is(err, store.ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			got := strings.Split(err.Error(), "\n")
			if len(got) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%s", len(got), len(tc.want), err)
			}
			for i, want := range tc.want {
				if !strings.HasPrefix(got[i], "east.yaml:"+want) {
					t.Errorf("problem %d:\n got %s\nwant east.yaml:%s...", i, got[i], want)
				}
			}
		})
	}
}

func TestEmbeddedOpenBrokenFile(t *testing.T) {
	noLeaks(t)
	path := filepath.Join(t.TempDir(), "east.yaml")
	tc := fileErrors[len(fileErrors)-1]
	if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(t.Context(), path, nil)
	if err == nil {
		t.Fatal("opened a broken file")
	}
	for _, want := range tc.want {
		if !strings.Contains(err.Error(), path+":"+want) {
			t.Errorf("error lacks %q:\n%v", path+":"+want, err)
		}
	}
}

// FuzzEmbeddedLoad checks that no file makes the parser panic, and that a
// file that loads comes out of a write and a new load the same.
func FuzzEmbeddedLoad(f *testing.F) {
	seed, _ := os.ReadFile("testdata/example.yaml")
	f.Add(string(seed))
	for _, tc := range fileErrors {
		f.Add(tc.content)
	}
	f.Fuzz(func(t *testing.T, content string) {
		snap, err := load("east.yaml", []byte(content))
		if err != nil {
			return
		}
		again, err := load("east.yaml", snap.canon)
		if err != nil {
			t.Fatalf("the canonical form does not load: %v\n%s", err, snap.canon)
		}
		if !bytes.Equal(again.canon, snap.canon) {
			t.Fatalf("canonical form changed:\n%s\n---\n%s", snap.canon, again.canon)
		}
	})
}

const oneRepl = `
repls:
  - {id: r1, owner: alice, slug: blog, endpoints: [127.0.0.1:9001]}
`

const twoRepls = oneRepl + `  - {id: r2, owner: alice, slug: shop, endpoints: [127.0.0.1:9002]}
`

func TestEmbeddedReload(t *testing.T) {
	noLeaks(t)
	for _, tc := range []struct {
		name  string
		write func(t *testing.T, path, content string)
	}{
		{"rename", writeByRename},
		{"in place", func(t *testing.T, path, content string) {
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, path := openEmbedded(t, oneRepl, nil)
			events := watch(t, s)
			if _, err := s.Lookup(t.Context(), store.ReplKey("alice", "shop")); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("before: %v, want ErrNotFound", err)
			}
			tc.write(t, path, twoRepls)
			waitFor(t, "the new repl", func() bool {
				_, err := s.Lookup(t.Context(), store.ReplKey("alice", "shop"))
				return err == nil
			})
			wantResync(t, events)

			tc.write(t, path, "")
			waitFor(t, "an empty store", func() bool {
				st, _ := s.Stats(t.Context())
				return st.Repls == 0
			})
			wantResync(t, events)
		})
	}
}

func TestEmbeddedBadReloadKeepsServing(t *testing.T) {
	noLeaks(t)
	core, logs := observer.New(zapcore.DebugLevel)
	s, path := openEmbedded(t, oneRepl, zap.New(core))
	events := watch(t, s)
	reads := func() int { return logs.FilterMessage("read the file again").Len() }
	broken := func() int {
		return logs.FilterMessage("embedded store file is broken; still serving the last good data").Len()
	}

	bad := twoRepls + "  - {id: r1, owner: bob, slug: blog, endpoints: [127.0.0.1:9003]}\n"
	writeByRename(t, path, bad)
	waitFor(t, "the broken file to be logged", func() bool { return broken() == 1 })
	entry := logs.FilterMessage("embedded store file is broken; still serving the last good data").All()[0]
	if err := entry.ContextMap()["error"]; !strings.Contains(fmt.Sprint(err), path+":5: repls[2]: id r1 is already used by repls[0] (line 3)") {
		t.Errorf("logged error = %v, want the problem with its line", err)
	}
	if _, err := s.Lookup(t.Context(), store.ReplKey("alice", "blog")); err != nil {
		t.Fatalf("the last good data is not served: %v", err)
	}
	if _, err := s.Lookup(t.Context(), store.ReplKey("alice", "shop")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("part of the broken file is served: %v", err)
	}

	// The same problem again is not logged again.
	n := reads()
	writeByRename(t, path, bad)
	waitFor(t, "the file to be read again", func() bool { return reads() > n })
	if broken() != 1 {
		t.Errorf("the same problem was logged %d times, want once", broken())
	}
	select {
	case ev := <-events:
		t.Fatalf("a broken file sent %+v", ev)
	default:
	}

	writeByRename(t, path, twoRepls)
	waitFor(t, "the fixed file", func() bool {
		_, err := s.Lookup(t.Context(), store.ReplKey("alice", "shop"))
		return err == nil
	})
	wantResync(t, events)
	if logs.FilterMessage("embedded store file is good again").Len() != 1 {
		t.Error("the recovery was not logged")
	}
}

func TestEmbeddedWriteRefusedWhenBroken(t *testing.T) {
	noLeaks(t)
	s, path := openEmbedded(t, oneRepl, nil)
	bad := []byte(oneRepl + "extra: 1\n")
	if err := os.WriteFile(path, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := s.CreateRepl(t.Context(), store.Repl{ID: "r2", Owner: "alice", Slug: "shop", Endpoints: []string{"127.0.0.1:9002"}})
	if !errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "is broken and must be fixed first") ||
		!strings.Contains(err.Error(), path+":4: extra: unknown field") {
		t.Fatalf("create on a broken file: %v", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, bad) {
		t.Fatalf("the broken file was changed:\n%s", got)
	}
	if _, err := s.GetRepl(t.Context(), "r1"); err != nil {
		t.Fatalf("the last good data is not served: %v", err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRepl(t.Context(), "r1"); !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "create it again") {
		t.Fatalf("delete with the file gone: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a write recreated the removed file: %v", err)
	}
}

func TestEmbeddedWriteThrough(t *testing.T) {
	noLeaks(t)
	s, path := openEmbedded(t, "# my notes\n"+oneRepl, nil)
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 29, 10, 0, 0, 123456789, time.FixedZone("CET", 3600))
	s.now = func() time.Time { return now }
	events := watch(t, s)
	ctx := t.Context()

	// A write that changes nothing leaves the operator's file alone.
	before, _ := os.ReadFile(path)
	if err := s.DeleteChallenge(ctx, "_acme-challenge.alice.repl.test", "nope"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
		t.Fatalf("a write that changed nothing rewrote the file:\n%s", after)
	}

	r, err := s.CreateRepl(ctx, store.Repl{ID: "r2", Owner: "alice", Slug: "shop", Endpoints: []string{"127.0.0.1:9002"}})
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 11, 29, 9, 0, 0, 123456000, time.UTC)
	if !r.CreatedAt.Equal(want) || r.CreatedAt.Location() != time.UTC || !r.UpdatedAt.Equal(want) {
		t.Errorf("created_at, updated_at = %v, %v; want %v (UTC, in microseconds)", r.CreatedAt, r.UpdatedAt, want)
	}
	// Seen at once, without waiting for the file watcher.
	if _, err := s.Lookup(ctx, store.ReplKey("alice", "shop")); err != nil {
		t.Fatalf("lookup right after the write: %v", err)
	}
	wantResync(t, events)

	raw, _ := os.ReadFile(path)
	if !bytes.HasPrefix(raw, []byte(fileHeader)) || !bytes.Contains(raw, []byte(`created_at: "2026-11-29T09:00:00.123456Z"`)) {
		t.Errorf("file:\n%s\nwant the header and RFC 3339 UTC timestamps", raw)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o640 {
		t.Errorf("mode = %v, want the file's own 0640", info.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range entries {
		if name := e.Name(); name != "east.yaml" && name != "east.yaml.lock" {
			t.Errorf("left behind: %s", name)
		}
	}

	// A second instance reads back exactly what was written.
	other, err := Open(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if got, err := other.GetRepl(ctx, "r2"); err != nil || !got.CreatedAt.Equal(r.CreatedAt) || !slices.Equal(got.Endpoints, r.Endpoints) {
		t.Errorf("read back %+v, %v; want %+v", got, err, r)
	}

	// Errors wrap the interface's sentinels.
	_, err = s.CreateRepl(ctx, store.Repl{ID: "r3", Owner: "alice", Slug: "shop", Endpoints: []string{"127.0.0.1:9003"}})
	if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "owner/slug alice/shop") {
		t.Errorf("create with a taken owner/slug: %v", err)
	}
	if _, err := s.SetEndpoints(ctx, "r404", []string{"127.0.0.1:1"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("set endpoints of an unknown repl: %v", err)
	}
	if _, err := s.LinkDomain(ctx, store.Domain{Name: "www.example.com", ReplID: "r2", Token: "bad token"}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("link with a bad token: %v", err)
	}
	d, err := s.LinkDomain(ctx, store.Domain{Name: "www.example.com", ReplID: "r2"})
	if err != nil || len(d.Token) != 32 || store.CheckToken(d.Token) != nil {
		t.Errorf("link = %+v, %v; want a random hex token", d, err)
	}
}

// TestEmbeddedTwoProcesses writes from two instances on one file at once,
// as replctl and a daemon do: the lock serialises them and nothing is lost.
func TestEmbeddedTwoProcesses(t *testing.T) {
	noLeaks(t)
	a, path := openEmbedded(t, "", nil)
	b, err := Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	const each = 50
	var wg sync.WaitGroup
	errs := make(chan error, 2*each)
	for i := range each {
		for name, s := range map[string]*Store{"a": a, "b": b} {
			wg.Go(func() {
				_, err := s.CreateRepl(t.Context(), store.Repl{
					ID: fmt.Sprintf("%s%d", name, i), Owner: name, Slug: fmt.Sprintf("app%d", i),
					Endpoints: []string{fmt.Sprintf("127.0.0.1:%d", 9000+i)},
				})
				errs <- err
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}

	raw, _ := os.ReadFile(path)
	snap, err := load(path, raw)
	if err != nil {
		t.Fatalf("the file does not load: %v", err)
	}
	if len(snap.repls) != 2*each {
		t.Fatalf("the file holds %d repls, want %d", len(snap.repls), 2*each)
	}
	for name, s := range map[string]*Store{"a": a, "b": b} {
		waitFor(t, name+" to see every repl", func() bool {
			st, _ := s.Stats(t.Context())
			return st.Repls == 2*each
		})
	}
}

// TestEmbeddedWritesAtomic reads the file over and over while it is being
// written: every read must find a whole, good file.
func TestEmbeddedWritesAtomic(t *testing.T) {
	noLeaks(t)
	s, path := openEmbedded(t, "", nil)
	stop := make(chan struct{})
	var (
		reads    int
		readErrs []error
		done     = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			raw, err := os.ReadFile(path)
			if err == nil {
				_, err = load(path, raw)
			}
			if err != nil {
				readErrs = append(readErrs, err)
			}
			reads++
		}
	}()
	for i := range 30 {
		id := fmt.Sprintf("r%d", i)
		if _, err := s.CreateRepl(t.Context(), store.Repl{ID: id, Owner: "alice", Slug: id, Endpoints: []string{"127.0.0.1:9001"}}); err != nil {
			t.Fatal(err)
		}
		if err := s.PutChallenge(t.Context(), store.Challenge{Name: "_acme-challenge.alice.repl.test", Value: id, ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		raw, _ := os.ReadFile(path)
		snap, err := load(path, raw)
		if err != nil || len(snap.repls) != i+1 {
			t.Fatalf("after write %d the file does not hold it: %v", i, err)
		}
	}
	close(stop)
	<-done
	if len(readErrs) > 0 {
		t.Fatalf("%d of %d reads found a bad file, the first: %v", len(readErrs), reads, readErrs[0])
	}
}

func TestEmbeddedWatchAndClose(t *testing.T) {
	noLeaks(t)
	path := filepath.Join(t.TempDir(), "east.yaml")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	// Several watchers, each told at once, each told of a write.
	var (
		chans []chan store.Event
		dones []chan error
	)
	ctx, cancel := context.WithCancel(t.Context())
	for range 3 {
		events, done := make(chan store.Event, 10), make(chan error, 1)
		go func() { done <- s.Watch(ctx, func(ev store.Event) { events <- ev }) }()
		wantResync(t, events)
		chans, dones = append(chans, events), append(dones, done)
	}
	if _, err := s.CreateRepl(t.Context(), store.Repl{ID: "r1", Owner: "alice", Slug: "blog", Endpoints: []string{"127.0.0.1:9001"}}); err != nil {
		t.Fatal(err)
	}
	for _, events := range chans {
		wantResync(t, events)
	}
	// They stop with their context.
	cancel()
	for _, done := range dones {
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("watch returned %v, want context.Canceled", err)
		}
	}
	for _, events := range chans {
		drain(events)
	}

	// Close ends the Watch calls still running.
	done := make(chan error, 1)
	events := make(chan store.Event, 10)
	go func() { done <- s.Watch(t.Context(), func(ev store.Event) { events <- ev }) }()
	wantResync(t, events)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("watch across Close returned %v, want ErrUnavailable", err)
	}
	if err := s.Watch(t.Context(), func(store.Event) {}); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("watch after Close: %v", err)
	}
	if _, err := s.CreateRepl(t.Context(), store.Repl{ID: "r2", Owner: "alice", Slug: "shop", Endpoints: []string{"127.0.0.1:9001"}}); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("write after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func BenchmarkEmbeddedLookup(b *testing.B) {
	var content strings.Builder
	content.WriteString("repls:\n")
	for i := range 10000 {
		fmt.Fprintf(&content, "  - {id: r%d, owner: user%d, slug: app, endpoints: [127.0.0.1:9001]}\n", i, i)
	}
	path := filepath.Join(b.TempDir(), "east.yaml")
	if err := os.WriteFile(path, []byte(content.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	s, err := Open(b.Context(), path, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	k := store.ReplKey("user5000", "app")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Lookup(context.Background(), k); err != nil {
				b.Fatal(err)
			}
		}
	})
}
