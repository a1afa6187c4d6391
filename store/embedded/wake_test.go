package embedded

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/store"
)

// An asleep repl and its wake, written by hand, load and survive the
// canonical form.
func TestEmbeddedWakeFormat(t *testing.T) {
	snap, err := load("east.yaml", []byte(`repls:
  - id: r1
    owner: alice
    slug: blog
    asleep: true            # no endpoints while asleep
  - id: r2
    owner: alice
    slug: shop
    endpoints: [127.0.0.1:9002]
wakes:
  - repl_id: r1
    requested_at: 2026-11-29T10:00:00Z
    requested_by: east/host-a/42
    claimed_by: manager-1
    claimed_at: 2026-11-29T10:00:01Z
`))
	if err != nil {
		t.Fatal(err)
	}
	r := snap.repls[snap.replByID["r1"]]
	if !r.Asleep || len(r.Endpoints) != 0 || snap.routeByID["r1"].Asleep != true || snap.routeByID["r2"].Asleep {
		t.Fatalf("r1 = %+v, routes %+v %+v", r, snap.routeByID["r1"], snap.routeByID["r2"])
	}
	w := snap.wakes[snap.wakeByID["r1"]]
	want := store.Wake{ReplID: "r1", RequestedAt: time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC), RequestedBy: "east/host-a/42",
		ClaimedBy: "manager-1", ClaimedAt: time.Date(2026, 11, 29, 10, 0, 1, 0, time.UTC)}
	if w != want {
		t.Fatalf("wake = %+v, want %+v", w, want)
	}
	again, err := load("east.yaml", snap.canon)
	if err != nil || string(again.canon) != string(snap.canon) {
		t.Fatalf("canonical form does not round-trip: %v\n%s", err, snap.canon)
	}
	if !strings.Contains(string(snap.canon), "asleep: true") || !strings.Contains(string(snap.canon), "wakes:") {
		t.Fatalf("canonical form lacks the asleep field or the wakes section:\n%s", snap.canon)
	}
	// A file without wakes writes no wakes section (files from before stay as they were).
	plain, err := load("east.yaml", []byte("repls:\n  - {id: r2, owner: alice, slug: shop, endpoints: [127.0.0.1:9002]}\n"))
	if err != nil || strings.Contains(string(plain.canon), "wakes") || strings.Contains(string(plain.canon), "asleep") {
		t.Fatalf("plain file: %v\n%s", err, plain.canon)
	}
}

func TestEmbeddedWakeFileErrors(t *testing.T) {
	_, err := load("east.yaml", []byte(`repls:
  - id: r1
    owner: alice
    slug: blog
    asleep: maybe
  - id: r2
    owner: alice
    slug: shop
wakes:
  - repl_id: r9
    requested_at: 2026-11-29T10:00:00Z
    requested_by: me
  - repl_id: r1
    requested_by: me
    claimed_by: manager-1
`))
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("load = %v, want problems", err)
	}
	for _, want := range []string{
		`east.yaml:5: repls[0].asleep: "maybe" is not true or false`,
		`east.yaml:6: repls[1].endpoints: missing`,
		`east.yaml:10: wakes[0]: repl r9 is not live here`,
		`east.yaml:13: wakes[1].requested_at: missing`,
		`east.yaml:13: wakes[1]: give claimed_by and claimed_at together`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("problems lack %q:\n%v", want, err)
		}
	}
}
