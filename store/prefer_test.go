package store_test

import (
	"testing"

	"github.com/replproxy/replproxy/store"
)

func TestPrefer(t *testing.T) {
	live := store.Claim{Live: true, Generation: 1, ReplID: "z"}
	tomb := func(gen int64, id string) store.Claim { return store.Claim{Generation: gen, ReplID: id} }
	for _, tc := range []struct {
		name string
		a, b store.Claim
		want bool
	}{
		{"live over a tombstone of a higher generation", live, tomb(9, "a"), true},
		{"a tombstone under a live row", tomb(9, "a"), live, false},
		{"the higher generation", tomb(3, "z"), tomb(2, "a"), true},
		{"the lower generation", tomb(2, "a"), tomb(3, "z"), false},
		{"a tie goes to the smaller id", tomb(2, "a"), tomb(2, "b"), true},
		{"and not the larger", tomb(2, "b"), tomb(2, "a"), false},
		{"a row does not beat itself", tomb(2, "a"), tomb(2, "a"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := store.Prefer(tc.a, tc.b); got != tc.want {
				t.Errorf("Prefer(%+v, %+v) = %v, want %v", tc.a, tc.b, got, tc.want)
			}
		})
	}
}
