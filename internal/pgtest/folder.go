package pgtest

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// serverCredential returns who initdb and postgres run as: nil (ourselves)
// unless we are root, which PostgreSQL refuses to run as; then the postgres
// user, else nobody.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	var errs []error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		uid, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %s: uid %q: %w", name, u.Uid, err)
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %s: gid %q: %w", name, u.Gid, err)
		}
		// No supplementary groups: root's must not be inherited.
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
	}
	return nil, fmt.Errorf("running as root, and no user to run postgres as: %v", errs)
}

// makeFolder creates the server's folder: root-owned and world-readable when
// we are root, holding the data folder owned by cred's user.
func makeFolder(cred *syscall.Credential) (root, data string, err error) {
	base, err := tempBase(cred)
	if err != nil {
		return "", "", err
	}
	root, err = os.MkdirTemp(base, "pgtest-")
	if err != nil {
		return "", "", fmt.Errorf("make folder: %w", err)
	}
	data = filepath.Join(root, "data")
	err = os.Chmod(root, 0o755) // MkdirTemp makes it 0700: the server's user must pass through
	if err == nil {
		err = os.Mkdir(data, 0o700)
	}
	if err == nil && cred != nil {
		err = os.Chown(data, int(cred.Uid), int(cred.Gid))
	}
	if err != nil {
		_ = os.RemoveAll(root)
		return "", "", fmt.Errorf("make folder: %w", err)
	}
	return root, data, nil
}

// tempBase returns the folder to make the server's folder in: the usual
// temporary folder, or /tmp when cred's user cannot reach that one.
func tempBase(cred *syscall.Credential) (string, error) {
	base := os.TempDir()
	if cred == nil || traversable(base, cred) {
		return base, nil
	}
	if traversable("/tmp", cred) {
		return "/tmp", nil
	}
	return "", fmt.Errorf("user %d cannot reach the temporary folder %s: set TMPDIR to a folder it can", cred.Uid, base)
}

// traversable reports whether cred's user may search dir and each of its parents.
func traversable(dir string, cred *syscall.Credential) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return false
		}
		perm := fi.Mode().Perm()
		switch {
		case st.Uid == cred.Uid:
			perm &= 0o100
		case st.Gid == cred.Gid:
			perm &= 0o010
		default:
			perm &= 0o001
		}
		if perm == 0 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}
