package pgtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// preferredVersion is the major version picked among several installed ones.
const preferredVersion = "15"

// binaries are the server programs a cluster needs.
type binaries struct {
	initdb   string
	postgres string
}

// findBinaries looks for initdb and postgres on path (a PATH-style list),
// else in <libDir>/<version>/bin, preferring version 15, else the highest.
func findBinaries(path, libDir string) (binaries, error) {
	initdb, errInitdb := lookPath(path, "initdb")
	postgres, errPostgres := lookPath(path, "postgres")
	if errInitdb == nil && errPostgres == nil {
		return binaries{initdb: initdb, postgres: postgres}, nil
	}

	entries, _ := os.ReadDir(libDir) // a missing folder is no installation
	var best binaries
	var bestVersion []int
	for _, e := range entries {
		version, ok := parseVersion(e.Name())
		if !ok {
			continue
		}
		bin := filepath.Join(libDir, e.Name(), "bin")
		b := binaries{initdb: filepath.Join(bin, "initdb"), postgres: filepath.Join(bin, "postgres")}
		if !executable(b.initdb) || !executable(b.postgres) {
			continue
		}
		if e.Name() == preferredVersion {
			return b, nil
		}
		if bestVersion == nil || compareVersions(version, bestVersion) > 0 {
			best, bestVersion = b, version
		}
	}
	if bestVersion == nil {
		return binaries{}, fmt.Errorf("PostgreSQL server binaries (initdb, postgres) not found on PATH or in %s", filepath.Join(libDir, "VERSION", "bin"))
	}
	return best, nil
}

// lookPath is exec.LookPath over an explicit list of folders.
func lookPath(path, name string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue // an empty entry means the working directory: never wanted here
		}
		p := filepath.Join(dir, name)
		if executable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

func executable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// parseVersion parses a folder name such as "15" or "9.6".
func parseVersion(s string) ([]int, bool) {
	var v []int
	for part := range strings.SplitSeq(s, ".") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 {
			return nil, false
		}
		v = append(v, n)
	}
	return v, true
}

func compareVersions(a, b []int) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] - b[i]
		}
	}
	return len(a) - len(b)
}
