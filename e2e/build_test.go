package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// binaries builds each command at most once per test process, into one
// temporary folder that TestMain removes at the end.
var binaries struct {
	mu     sync.Mutex
	dir    string
	builds map[string]*build
}

type build struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// buildBinary builds ./cmd/<name> of this module (once per test process)
// and returns the path of the executable.
func buildBinary(t testing.TB, name string) string {
	t.Helper()
	binaries.mu.Lock()
	if binaries.builds == nil {
		binaries.builds = make(map[string]*build)
	}
	if binaries.dir == "" {
		dir, err := os.MkdirTemp("", "replproxy-e2e-bin-")
		if err != nil {
			binaries.mu.Unlock()
			t.Fatalf("build %s: %v", name, err)
		}
		binaries.dir = dir
	}
	b := binaries.builds[name]
	if b == nil {
		b = &build{}
		binaries.builds[name] = b
	}
	dir := binaries.dir
	binaries.mu.Unlock()

	b.once.Do(func() {
		b.path = filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", b.path, "./cmd/"+name)
		cmd.Dir = ".." // the module's root
		b.out, b.err = cmd.CombinedOutput()
	})
	if b.err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, b.err, b.out)
	}
	return b.path
}

// removeBinaries removes what buildBinary built.
func removeBinaries() {
	binaries.mu.Lock()
	defer binaries.mu.Unlock()
	if binaries.dir != "" {
		os.RemoveAll(binaries.dir)
		binaries.dir = ""
		binaries.builds = nil
	}
}
