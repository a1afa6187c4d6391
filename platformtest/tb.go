package platformtest

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// TB is what a platform needs of the test that runs it. *testing.T and
// *testing.B are TBs; Run makes one for code that is not a test (an
// Example, a demo).
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	TempDir() string
}

// Run calls fn with a TB for code that is not a test, then runs the
// cleanups fn registered, last first. A Fatalf stops fn (by a panic Run
// recovers) and is returned as the error, after the cleanups; Logf goes to
// log (nil: nowhere).
func Run(log io.Writer, fn func(t TB)) (err error) {
	t := &standalone{log: log}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				t.cleanup()
				panic(r)
			}
			err = f
		}
		t.cleanup()
	}()
	fn(t)
	return nil
}

type fatal string

func (f fatal) Error() string { return string(f) }

// standalone is Run's TB.
type standalone struct {
	log      io.Writer
	mu       sync.Mutex
	cleanups []func()
}

func (s *standalone) Helper() {}

func (s *standalone) Cleanup(fn func()) {
	s.mu.Lock()
	s.cleanups = append(s.cleanups, fn)
	s.mu.Unlock()
}

func (s *standalone) Fatalf(format string, args ...any) {
	panic(fatal(fmt.Sprintf(format, args...)))
}

func (s *standalone) Logf(format string, args ...any) {
	if s.log != nil {
		fmt.Fprintf(s.log, format+"\n", args...)
	}
}

func (s *standalone) TempDir() string {
	dir, err := os.MkdirTemp("", "platformtest-")
	if err != nil {
		s.Fatalf("platformtest: temporary folder: %v", err)
	}
	s.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// cleanup runs the cleanups, last first, each once, even those a cleanup
// registers.
func (s *standalone) cleanup() {
	for {
		s.mu.Lock()
		n := len(s.cleanups)
		if n == 0 {
			s.mu.Unlock()
			return
		}
		fn := s.cleanups[n-1]
		s.cleanups = s.cleanups[:n-1]
		s.mu.Unlock()
		func() {
			defer func() { _ = recover() }() // a failing cleanup must not skip the others
			fn()
		}()
	}
}
