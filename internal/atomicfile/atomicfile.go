// Package atomicfile replaces a file whole or not at all: readers see the
// old content or the new, never a part, and a crash leaves one of the two.
// The embedded store's data file and its certificate files use it.
//
// (github.com/google/renameio names its temporary file after the target,
// which fails for the 255-byte names certificate files may have; this
// one is short and the same in every other way that matters here.)
package atomicfile

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Write puts data at path through a temporary file in the same folder,
// fsynced, renamed into place, then the folder fsynced. The file gets
// perm; when like is not nil (the file being replaced) it keeps like's
// owner and group where the process may give files away (as root).
// A temporary file is never left behind.
func Write(path string, data []byte, perm fs.FileMode, like fs.FileInfo) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*") // short: the target's name may be 255 bytes
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if like != nil {
		if st, ok := like.Sys().(*syscall.Stat_t); ok && (int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid()) {
			_ = f.Chown(int(st.Uid), int(st.Gid)) // best effort: only root may give files away
		}
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	syncDir(dir)
	return nil
}

// syncDir makes a rename in dir durable, where the folder can be opened:
// the file is in place either way, only its durability is in doubt.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}
