package embedded_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/replproxy/replproxy/store"
	"github.com/replproxy/replproxy/store/embedded"
	"github.com/replproxy/replproxy/store/storetest"
)

// openEmpty opens a store on a new, empty file.
func openEmpty(t *testing.T) (*embedded.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := embedded.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatalf("open embedded store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openEmpty(t)
		return s
	})
}

// TestCerts gives each case two stores on one file, as two proxies of a
// cluster have.
func TestCerts(t *testing.T) {
	storetest.RunCerts(t, func(t *testing.T) (store.Certs, store.Certs) {
		a, path := openEmpty(t)
		b, err := embedded.Open(t.Context(), path, nil)
		if err != nil {
			t.Fatalf("open embedded store again: %v", err)
		}
		t.Cleanup(func() { b.Close() })
		return a, b
	})
}

func TestEmbeddedCertFilesArePrivate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := embedded.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.PutCert(t.Context(), "www.example.com", []byte("secret key")); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{path + ".certs": 0o700 | os.ModeDir, path + ".certs/www.example.com": 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s mode %v, want %v", p, fi.Mode(), want)
		}
	}
	// The store file itself is untouched and still loads.
	if b, _ := os.ReadFile(path); len(b) != 0 {
		t.Fatalf("the store file changed: %q", b)
	}
}
