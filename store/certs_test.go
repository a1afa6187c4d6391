package store_test

import (
	"testing"

	"github.com/replproxy/replproxy/store"
)

func TestCheckCertName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"www.example.com", true},
		{"*.alice.repl.co", true},
		{"acme_account+key", true},
		{"a", true},
		{"", false},
		{".x", false},
		{"a/b", false},
		{"a:b", false},
	} {
		if err := store.CheckCertName(tc.name); (err == nil) != tc.ok {
			t.Errorf("CheckCertName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}
