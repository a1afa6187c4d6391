package ctl_test

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// What -o json prints, as far as the tests read it.
type (
	replOut struct {
		Cluster    string   `json:"cluster"`
		ID         string   `json:"id"`
		Owner      string   `json:"owner"`
		Slug       string   `json:"slug"`
		Endpoints  []string `json:"endpoints"`
		Generation int64    `json:"generation"`
		Names      []string `json:"names"`
	}
	statusOut struct {
		Cluster    string `json:"cluster"`
		Backend    string `json:"backend"`
		Reachable  bool   `json:"reachable"`
		Schema     int32  `json:"schema_version"`
		SchemaWant int32  `json:"schema_version_wanted"`
		Repls      int    `json:"repls"`
		Tombstones int    `json:"tombstones"`
		Domains    int    `json:"domains"`
		Error      string `json:"error"`
	}
	migrateOut struct {
		Cluster string `json:"cluster"`
		Before  int32  `json:"schema_before"`
		After   int32  `json:"schema_after"`
		Result  string `json:"result"`
	}
	domainOut struct {
		Name       string     `json:"name"`
		ReplID     string     `json:"repl_id"`
		Token      string     `json:"token"`
		VerifiedAt *time.Time `json:"verified_at"`
		Clusters   []string   `json:"clusters"`
	}
	moveOut struct {
		ReplID      string `json:"repl_id"`
		From        string `json:"from"`
		To          string `json:"to"`
		Generation  int64  `json:"generation"`
		DryRun      bool   `json:"dry_run"`
		AlreadyDone bool   `json:"already_done"`
		Actions     []struct {
			Step    int    `json:"step"`
			Cluster string `json:"cluster"`
			Status  string `json:"status"`
		} `json:"actions"`
	}
	showOut struct {
		ID       string `json:"id"`
		Owner    string `json:"owner"`
		Slug     string `json:"slug"`
		Clusters []struct {
			Cluster    string `json:"cluster"`
			State      string `json:"state"`
			Generation int64  `json:"generation"`
			To         string `json:"to"`
		} `json:"clusters"`
		LiveIn   []string `json:"live_in"`
		Serving  string   `json:"serving"`
		Settled  bool     `json:"settled"`
		Problems []string `json:"problems"`
	}
	tombOut struct {
		Cluster    string `json:"cluster"`
		ReplID     string `json:"repl_id"`
		To         string `json:"to"`
		Generation int64  `json:"generation"`
	}
	gcOut struct {
		Cluster string `json:"cluster"`
		Removed int    `json:"removed"`
	}
)

func TestUsage(t *testing.T) {
	f := newFleet(t, "embedded", "east")
	for _, tc := range []struct {
		name string
		args []string
		code int
		says string // on stderr
	}{
		{"help", []string{"-h"}, 0, "Exit status:"},
		{"help lists env", []string{"-h"}, 0, "REPLCTL_REGISTRY"},
		{"command help", []string{"move", "-h"}, 0, "--endpoint HOST:PORT"},
		{"subcommand help", []string{"repl", "create", "-h"}, 0, "Usage: replctl repl create OWNER/SLUG"},
		{"no command", nil, 2, "no command given"},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"group without subcommand", []string{"repl"}, 2, "want a subcommand: create, delete, list, show, sleep, wake"},
		{"unknown subcommand", []string{"domain", "own"}, 2, `unknown subcommand "own"`},
		{"bad global flag", []string{"-nope", "repl", "list"}, 2, "flag provided but not defined: -nope"},
		{"bad command flag", []string{"repl", "list", "--nope"}, 2, "flag provided but not defined: -nope"},
		{"missing argument", []string{"repl", "show"}, 2, "want REPL, got 0 argument(s)"},
		{"extra argument", []string{"repl", "list", "x"}, 2, `unexpected argument "x"`},
		{"bad output", []string{"-o", "yaml", "repl", "list"}, 2, `-o "yaml": want table or json`},
		{"bad timeout", []string{"repl", "list", "-timeout", "-1s"}, 2, "want a positive duration"},
		{"bad log level", []string{"repl", "list", "-log-level", "loud"}, 2, "-log-level"},
		{"bad zone", []string{"-zone", "-x-", "repl", "list"}, 2, "-zone"},
		{"migrate needs a choice", []string{"migrate"}, 2, "give --cluster NAME or --all"},
		{"migrate both", []string{"migrate", "--all", "--cluster", "east"}, 2, "give --cluster NAME or --all"},
		{"move without --to", []string{"move", "r1", "--endpoint", "10.0.0.1:80"}, 2, "give --to CLUSTER"},
		{"move without --endpoint", []string{"move", "r1", "--to", "east"}, 2, "give --endpoint HOST:PORT"},
		{"move bad --stop-after", []string{"move", "r1", "--to", "east", "--endpoint", "10.0.0.1:80", "--stop-after", "4"}, 2, "want a step from 1 to 3"},
		{"bad repl", []string{"repl", "show", "Not_A_Label"}, 2, "want a repl id, OWNER/SLUG or a name"},
		{"bad owner", []string{"repl", "show", "id/blog"}, 2, "owner"},
		{"repl create without slash", []string{"repl", "create", "blog", "--cluster", "east", "--endpoint", "10.0.0.1:80"}, 2, "want OWNER/SLUG"},
		{"bad domain", []string{"domain", "unlink", "not a domain"}, 2, "domain"},
		{"domain in the zone", []string{"domain", "unlink", "blog.alice.repl.test"}, 2, "is under the zone"},
		{"gc bad age", []string{"tombstones", "gc", "--older-than", "0s"}, 2, "want a positive duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := f.run(t, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.says) {
				t.Errorf("want exit %d saying %q; %v", tc.code, tc.says, r)
			}
		})
	}

	t.Run("no registry", func(t *testing.T) {
		t.Setenv("REPLCTL_REGISTRY", "")
		r := runCtl(t, "repl", "list")
		if r.code != 2 || !strings.Contains(r.stderr, "give -registry FILE or set REPLCTL_REGISTRY") {
			t.Errorf("%v", r)
		}
	})
	t.Run("registry from the environment", func(t *testing.T) {
		t.Setenv("REPLCTL_REGISTRY", f.registry)
		t.Setenv("REPLCTL_O", "json")
		r := runCtl(t, "repl", "list")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
			t.Errorf("%v", r)
		}
		t.Setenv("REPLCTL_TIMEOUT", "soon")
		if r := runCtl(t, "repl", "list"); r.code != 2 || !strings.Contains(r.stderr, "REPLCTL_TIMEOUT") {
			t.Errorf("%v", r)
		}
	})
	t.Run("an empty variable counts as not set", func(t *testing.T) {
		t.Setenv("REPLCTL_REGISTRY", f.registry)
		t.Setenv("REPLCTL_O", "")
		t.Setenv("REPLCTL_TIMEOUT", "")
		r := runCtl(t, "repl", "list")
		if r.code != 0 || !strings.HasPrefix(r.stdout, "CLUSTER") {
			t.Errorf("want the default table output; %v", r)
		}
	})
	t.Run("bad registry", func(t *testing.T) {
		r := runCtl(t, "-registry", f.registry+".missing", "repl", "list")
		if r.code != 1 || !strings.Contains(r.stderr, "load registry") {
			t.Errorf("%v", r)
		}
	})
}

// TestWorkflow drives every command through a repl's life on both
// backends: schema, create, domains, moves, tombstones, delete.
func TestWorkflow(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		f := newFleet(t, backend, "east", "west", "north")

		// Schema.
		if backend == "postgres" {
			f.fails(t, 1, []string{"replctl migrate"}, "repl", "list") // not migrated yet
			r := f.run(t, "-o", "json", "clusters", "status")
			var st []statusOut
			if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 1 {
				t.Fatalf("status: %v; %v", err, r)
			}
			if len(st) != 3 || st[0].Schema != 0 || st[0].SchemaWant < 1 || !strings.Contains(st[0].Error, "replctl migrate") {
				t.Errorf("status before migrate: %+v", st)
			}
			m := jsonOf[[]migrateOut](t, f, "migrate", "--cluster", "east")
			if len(m) != 1 || m[0].Before != 0 || m[0].After < 1 || m[0].Result != "migrated" {
				t.Errorf("migrate east: %+v", m)
			}
		}
		r := f.ok(t, "migrate", "--all")
		want := "nothing to migrate"
		if backend == "postgres" {
			want = "up to date" // east
		}
		if !strings.Contains(r.stdout, want) {
			t.Errorf("migrate --all: %v", r)
		}
		f.ok(t, "migrate", "--all") // again: nothing to do

		// Create.
		created := jsonOf[replOut](t, f, "repl", "create", "Alice/Blog", "--cluster", "east", "--endpoint", "10.0.0.5:8080", "--id", "r1")
		if created.ID != "r1" || created.Owner != "alice" || created.Slug != "blog" || created.Generation != 1 || created.Cluster != "east" ||
			!slices.Equal(created.Names, []string{"blog.alice.repl.test", "r1.id.repl.test"}) {
			t.Errorf("created %+v", created)
		}
		r = f.ok(t, "repl", "create", "alice/shop", "--cluster", "west", "--endpoint", "10.1.0.5:8080,10.1.0.6:8080")
		if !strings.Contains(r.stdout, "created repl r") || !strings.Contains(r.stdout, "10.1.0.5:8080, 10.1.0.6:8080") {
			t.Errorf("%v", r)
		}
		f.fails(t, 4, []string{"alice/blog is live in cluster east as repl r1"}, "repl", "create", "alice/blog", "--cluster", "west", "--endpoint", "10.0.0.5:8080")
		f.fails(t, 4, []string{"id r1 is live in cluster east"}, "repl", "create", "bob/blog", "--cluster", "west", "--endpoint", "10.0.0.5:8080", "--id", "r1")
		f.fails(t, 2, []string{"host:port"}, "repl", "create", "bob/blog", "--cluster", "west", "--endpoint", "10.0.0.5")
		f.fails(t, 2, []string{"host:port"}, "repl", "create", "bob/blog", "--cluster", "west")
		f.fails(t, 3, []string{`cluster "south" is not in the registry`, "east, west, north"}, "repl", "create", "bob/blog", "--cluster", "south", "--endpoint", "10.0.0.5:80")

		// List and show.
		list := jsonOf[[]replOut](t, f, "repl", "list")
		if len(list) != 2 || list[0].ID != "r1" || list[1].Cluster != "west" {
			t.Errorf("list: %+v", list)
		}
		if l := jsonOf[[]replOut](t, f, "repl", "list", "--cluster", "west", "--owner", "alice"); len(l) != 1 || l[0].Slug != "shop" {
			t.Errorf("list west: %+v", l)
		}
		r = f.ok(t, "repl", "list")
		if !strings.Contains(r.stdout, "CLUSTER") || !strings.Contains(r.stdout, "10.0.0.5:8080") {
			t.Errorf("list table: %v", r)
		}
		for _, name := range []string{"r1", "alice/blog", "blog.alice.repl.test", "r1.id.repl.test."} {
			s := jsonOf[showOut](t, f, "repl", "show", name)
			if s.ID != "r1" || s.Owner != "alice" || !s.Settled || s.Serving != "east" || len(s.Clusters) != 3 || s.Clusters[0].State != "live" {
				t.Errorf("show %s: %+v", name, s)
			}
		}
		f.fails(t, 3, []string{"no cluster has a repl nope"}, "repl", "show", "nope")
		f.fails(t, 3, []string{"no repl bob/blog in any cluster"}, "repl", "show", "bob/blog")

		// Domains.
		d := jsonOf[domainOut](t, f, "domain", "link", "WWW.Example.com.", "alice/blog")
		if d.Name != "www.example.com" || d.ReplID != "r1" || len(d.Token) < 16 || !slices.Equal(d.Clusters, []string{"east"}) {
			t.Errorf("link: %+v", d)
		}
		r = f.ok(t, "domain", "link", "shop.example.com", "alice/shop")
		if !strings.Contains(r.stdout, `_replproxy.shop.example.com.`) || !strings.Contains(r.stdout, "CNAME") || !strings.Contains(r.stdout, "replctl domain verify shop.example.com") {
			t.Errorf("link table: %v", r)
		}
		if again := jsonOf[domainOut](t, f, "domain", "link", "www.example.com", "r1"); again.Token != d.Token {
			t.Errorf("linking again changed the token: %+v", again)
		}
		f.fails(t, 4, []string{"linked to repl r1 in cluster east", "unlink it first"}, "domain", "link", "www.example.com", "alice/shop")
		f.fails(t, 3, []string{"no repl bob/x"}, "domain", "link", "x.example.com", "bob/x")
		if ds := jsonOf[[]domainOut](t, f, "domain", "list"); len(ds) != 2 || ds[0].Name != "shop.example.com" || ds[1].ReplID != "r1" {
			t.Errorf("domain list: %+v", ds)
		}
		if ds := jsonOf[[]domainOut](t, f, "domain", "list", "--repl", "r1"); len(ds) != 1 || ds[0].Name != "www.example.com" {
			t.Errorf("domain list --repl: %+v", ds)
		}

		// Moves.
		plan := jsonOf[moveOut](t, f, "move", "r1", "--to", "west", "--endpoint", "10.1.0.7:8080", "--dry-run")
		if !plan.DryRun || plan.Generation != 2 || plan.Actions[0].Status != "to do" {
			t.Errorf("dry run: %+v", plan)
		}
		if s := jsonOf[showOut](t, f, "repl", "show", "r1"); s.Serving != "east" {
			t.Errorf("the dry run moved it: %+v", s)
		}
		r = f.fails(t, 1, []string{"stopped by --stop-after", "done: step 1 (activate in west)", "run the same move again"},
			"move", "blog.alice.repl.test", "--to", "west", "--endpoint", "10.1.0.7:8080", "--stop-after", "1")
		if !strings.Contains(r.stdout, "stopped part way") {
			t.Errorf("stopped move: %v", r)
		}
		if s := jsonOf[showOut](t, f, "repl", "show", "r1"); s.Settled || s.Serving != "west" || !slices.Equal(s.LiveIn, []string{"east", "west"}) ||
			len(s.Problems) != 1 || !strings.Contains(s.Problems[0], "a move is not finished") {
			t.Errorf("show of a stopped move: %+v", s)
		}
		r = f.ok(t, "repl", "show", "r1")
		if !strings.Contains(r.stdout, "routing: NOT SETTLED (served by west)") || !strings.Contains(r.stdout, "replctl move r1 --to west") {
			t.Errorf("show table of a stopped move: %v", r)
		}
		f.fails(t, 4, []string{"stopped after step 1", "run the move again with those endpoints"}, "move", "r1", "--to", "west", "--endpoint", "10.1.0.8:8080")
		r = f.ok(t, "move", "blog.alice.repl.test", "--to", "west", "--endpoint", "10.1.0.7:8080")
		if !strings.Contains(r.stdout, "moved repl r1 (alice/blog) from east to west at generation 2") || !strings.Contains(r.stderr, "move done") {
			t.Errorf("move: %v", r)
		}
		again := jsonOf[moveOut](t, f, "move", "r1", "--to", "west", "--endpoint", "10.1.0.7:8080")
		if !again.AlreadyDone || again.Generation != 2 {
			t.Errorf("move again: %+v", again)
		}
		f.fails(t, 4, []string{"live in west already", "does not change endpoints"}, "move", "r1", "--to", "west", "--endpoint", "10.9.9.9:1")
		f.fails(t, 4, []string{"already live in the destination", "nothing to move"}, "move", "alice/shop", "--to", "west", "--endpoint", "10.1.0.5:8080,10.1.0.6:8080")
		f.fails(t, 3, []string{"no cluster has a repl r9"}, "move", "r9", "--to", "west", "--endpoint", "10.1.0.7:8080")
		f.fails(t, 3, []string{`cluster "south" is not in the registry`}, "move", "r1", "--to", "south", "--endpoint", "10.1.0.7:8080")
		f.fails(t, 2, []string{"port must be a number"}, "move", "r1", "--to", "north", "--endpoint", "10.1.0.7:x")
		moved := jsonOf[moveOut](t, f, "move", "r1", "--to", "north", "--endpoint", "10.2.0.7:8080")
		if moved.From != "west" || moved.Generation != 3 || len(moved.Actions) != 4 {
			t.Errorf("move to north: %+v", moved)
		}
		s := jsonOf[showOut](t, f, "repl", "show", "r1")
		if !s.Settled || s.Serving != "north" || s.Clusters[0].To != "north" || s.Clusters[1].To != "north" || s.Clusters[0].Generation != 3 {
			t.Errorf("show after two moves: %+v", s)
		}
		if ds := jsonOf[[]domainOut](t, f, "domain", "list", "--repl", "r1"); len(ds) != 1 || !slices.Equal(ds[0].Clusters, []string{"east", "west", "north"}) {
			t.Errorf("the domain did not follow the repl: %+v", ds)
		}
		r = f.ok(t, "repl", "show", "r1")
		for _, w := range []string{"east     tombstone  3", "-> north", "routing: ok: served by north"} {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("show table lacks %q: %v", w, r)
			}
		}

		// Tombstones.
		ts := jsonOf[[]tombOut](t, f, "tombstones", "list")
		if len(ts) != 2 || ts[0].Cluster != "east" || ts[0].To != "north" || ts[1].Generation != 3 {
			t.Errorf("tombstones: %+v", ts)
		}
		if gc := jsonOf[[]gcOut](t, f, "tombstones", "gc"); len(gc) != 3 || gc[0].Removed+gc[1].Removed+gc[2].Removed != 0 {
			t.Errorf("gc of young tombstones: %+v", gc)
		}
		if dry := jsonOf[[]tombOut](t, f, "tombstones", "gc", "--older-than", "1ns", "--dry-run"); len(dry) != 2 {
			t.Errorf("gc --dry-run: %+v", dry)
		}
		if ts := jsonOf[[]tombOut](t, f, "tombstones", "list", "--cluster", "west"); len(ts) != 1 {
			t.Errorf("the dry run removed tombstones: %+v", ts)
		}
		r = f.ok(t, "tombstones", "gc", "--older-than", "1ns", "--cluster", "west")
		if !strings.Contains(r.stdout, "west     1") || !strings.Contains(r.stderr, "--older-than is short") {
			t.Errorf("gc west: %v", r)
		}
		if ds := jsonOf[[]domainOut](t, f, "domain", "list", "--repl", "r1"); len(ds) != 1 || !slices.Equal(ds[0].Clusters, []string{"east", "north"}) {
			t.Errorf("gc did not drop the domain of the collected tombstone: %+v", ds)
		}

		// Unlink and delete.
		r = f.ok(t, "domain", "unlink", "www.example.com")
		if !strings.Contains(r.stdout, "unlinked www.example.com in east, north") {
			t.Errorf("unlink: %v", r)
		}
		f.ok(t, "domain", "link", "www.example.com", "r1")
		unlinked := jsonOf[struct {
			Clusters []string `json:"unlinked_in"`
		}](t, f, "domain", "unlink", "www.example.com")
		if !slices.Equal(unlinked.Clusters, []string{"north"}) {
			t.Errorf("unlink: %+v", unlinked)
		}
		f.fails(t, 3, []string{"not linked in any cluster"}, "domain", "unlink", "www.example.com")
		r = f.ok(t, "repl", "delete", "alice/shop")
		if !strings.Contains(r.stdout, "deleted repl r") || !strings.Contains(r.stdout, "(alice/shop) from west") {
			t.Errorf("delete: %v", r)
		}
		del := jsonOf[struct {
			Deleted replOut `json:"deleted"`
		}](t, f, "repl", "delete", "alice/blog")
		if del.Deleted.ID != "r1" || del.Deleted.Cluster != "north" || del.Deleted.Generation != 3 {
			t.Errorf("delete: %+v", del)
		}
		f.fails(t, 3, []string{"repl r1 is not live"}, "repl", "delete", "r1")
		st := jsonOf[[]statusOut](t, f, "clusters", "status")
		if len(st) != 3 || st[1].Repls != 0 || st[0].Tombstones != 1 || st[1].Domains != 0 || st[2].Repls != 0 || !st[2].Reachable {
			t.Errorf("status: %+v", st)
		}
		r = f.ok(t, "clusters", "status")
		if !strings.Contains(r.stdout, "REACHABLE") || !strings.Contains(r.stdout, backend) {
			t.Errorf("status table: %v", r)
		}
	})
}

// TestUnreachable: a cluster that cannot be reached is a line of clusters
// status, and stops commands that need every cluster before they change
// anything.
func TestUnreachable(t *testing.T) {
	f := newFleet(t, "embedded", "east", "west")
	f.ok(t, "repl", "create", "alice/blog", "--cluster", "east", "--endpoint", "10.0.0.5:8080", "--id", "r1")
	// west's store goes missing; a third cluster's database is down.
	reg := strings.Replace(readFile(t, f.registry), f.stores["west"], f.stores["west"]+".gone", 1) +
		"  - name: south\n    proxy_ipv4: [192.0.2.9]\n    forward: 10.0.0.9:8443\n    store: postgres://app:s3cret@127.0.0.1:1/db?connect_timeout=2\n"
	writeFile(t, f.registry, reg)

	r := f.run(t, "clusters", "status")
	if r.code != 1 || !strings.Contains(r.stderr, "west, south not reachable") {
		t.Fatalf("%v", r)
	}
	for _, w := range []string{"east     embedded  yes", "west     embedded  no", "south    postgres  no", "xxxxx", "does not exist"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("status lacks %q: %v", w, r)
		}
	}
	if strings.Contains(r.stdout+r.stderr, "s3cret") {
		t.Errorf("status shows the password: %v", r)
	}
	r = f.run(t, "-o", "json", "clusters", "status")
	if r.code != 1 || !strings.Contains(r.stdout, `"reachable": false`) {
		t.Errorf("%v", r)
	}

	before := readFile(t, f.stores["east"])
	f.fails(t, 1, []string{"cluster west", "a move needs every cluster", "nothing was changed"}, "move", "r1", "--to", "south", "--endpoint", "10.0.0.6:80")
	f.fails(t, 1, []string{"repl create", "needs every cluster"}, "repl", "create", "bob/x", "--cluster", "east", "--endpoint", "10.0.0.6:80")
	if after := readFile(t, f.stores["east"]); after != before {
		t.Errorf("east changed:\n%s\n%s", before, after)
	}
	r = f.fails(t, 1, []string{"repl list is incomplete", "cluster west"}, "repl", "list")
	if !strings.Contains(r.stdout, "r1") {
		t.Errorf("list does not show the reachable cluster: %v", r)
	}
	r = f.fails(t, 1, []string{"repl show is incomplete"}, "repl", "show", "r1")
	if !strings.Contains(r.stdout, "unreachable") || !strings.Contains(r.stdout, "routing: not checked") {
		t.Errorf("%v", r)
	}
	f.fails(t, 1, []string{"migrate: west, south failed"}, "migrate", "--all")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
