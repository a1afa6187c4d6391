package handover

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) {
	if os.Getenv("HANDOVER_TEST_DIAL") != "" {
		dialAndExit(os.Getenv("HANDOVER_TEST_DIAL"))
	}
	goleak.VerifyTestMain(m)
}

// serveName answers every connection ln accepts with name, until ln closes.
func serveName(ln net.Listener, name string) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, name+"\n")
			c.Close()
		}
	})
	return &wg
}

func read(t *testing.T, c net.Conn) (string, error) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestQueuedConnectionsSurvive: connections the kernel queued on the old
// process's listening socket, which it never accepted, are accepted by
// its successor once the old one has closed its listener. With the
// successor binding a socket of its own (SO_REUSEPORT, what replproxy did
// before handovers), the same connections are reset when the old one
// closes: the second subtest shows it.
func TestQueuedConnectionsSurvive(t *testing.T) {
	for _, handover := range []bool{true, false} {
		name := "handed over"
		if !handover {
			name = "bound fresh (SO_REUSEPORT): queued connections reset"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "h.sock")
			old, err := New(ctx, path, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer old.Close()
			lnOld, err := old.Listen(ctx, "http", "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := lnOld.Addr().String()
			if err := old.Ready(ctx); err != nil {
				t.Fatal(err)
			}
			if old.Predecessor() != 0 {
				t.Fatalf("a first process has predecessor %d", old.Predecessor())
			}

			newPath := path
			if !handover {
				newPath = filepath.Join(t.TempDir(), "other.sock") // nobody there
			}
			next, err := New(ctx, newPath, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer next.Close()
			if handover && next.Predecessor() != os.Getpid() {
				t.Fatalf("predecessor %d, want this process %d", next.Predecessor(), os.Getpid())
			}
			// The listener is configured with the old one's bound port
			// when bound fresh, with the same configured address when
			// handed over (port 0 is the configured address there).
			cfgAddr := "127.0.0.1:0"
			if !handover {
				cfgAddr = addr
			}
			lnNew, err := next.Listen(ctx, "http", "tcp", cfgAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer lnNew.Close()
			if lnNew.Addr().String() != addr {
				t.Fatalf("the successor listens on %s, the old one on %s", lnNew.Addr(), addr)
			}

			// Neither accepts yet: the kernel queues these (on the old
			// socket, or spread over both when bound fresh).
			var conns []net.Conn
			for range 16 {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				conns = append(conns, c)
			}
			if err := next.Ready(ctx); err != nil {
				t.Fatal(err)
			}
			if handover {
				select {
				case <-old.Done():
				case <-time.After(5 * time.Second):
					t.Fatal("the old process was not told to drain")
				}
			}
			lnOld.Close() // the old process drains: it stops accepting
			wg := serveName(lnNew, "new")
			defer wg.Wait()
			defer lnNew.Close()

			reset := 0
			for _, c := range conns {
				got, err := read(t, c)
				switch {
				case err == nil && got == "new":
				case err != nil && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)):
					reset++
				default:
					t.Fatalf("read %q, %v", got, err)
				}
			}
			t.Logf("%d of %d queued connections reset", reset, len(conns))
			if handover && reset != 0 {
				t.Fatalf("%d of %d queued connections reset across the handover", reset, len(conns))
			}
			if !handover && reset == 0 {
				t.Fatalf("no queued connection was reset when the old socket closed: the test shows nothing")
			}
		})
	}
}

// TestUDPAndSeveralSockets: datagram sockets and several sockets of one
// name are passed in order; a socket the successor does not ask for is
// closed at Ready, and one it asks for anew is bound fresh.
func TestUDPAndSeveralSockets(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "h.sock")
	old, err := New(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	var oldAddrs []string
	for _, name := range []string{"udp 0", "udp 1", "gone"} {
		pc, err := old.ListenPacket(ctx, name, "udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		oldAddrs = append(oldAddrs, pc.LocalAddr().String())
	}
	if err := old.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	next, err := New(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	for i, name := range []string{"udp 0", "udp 1"} {
		pc, err := next.ListenPacket(ctx, name, "udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		if got := pc.LocalAddr().String(); got != oldAddrs[i] {
			t.Fatalf("%s: %s, want the old one's %s", name, got, oldAddrs[i])
		}
	}
	fresh, err := next.ListenPacket(ctx, "udp 2", "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	for _, a := range oldAddrs {
		if fresh.LocalAddr().String() == a {
			t.Fatalf("a socket never passed (udp 2) has an old one's address %s", a)
		}
	}
	if err := next.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	<-old.Done()
}

// TestSuccessorGoneBeforeReady: a successor that takes the sockets and
// exits without saying it is ready leaves the old process serving and
// handing over to the next one.
func TestSuccessorGoneBeforeReady(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "h.sock")
	old, err := New(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	ln, err := old.Listen(ctx, "http", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := old.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	failed, err := New(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	failed.Close() // exits before Ready
	select {
	case <-old.Done():
		t.Fatal("the old process drains for a successor that never was ready")
	case <-time.After(100 * time.Millisecond):
	}
	next, err := New(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	if next.Predecessor() == 0 {
		t.Fatal("the old process stopped handing over after a failed successor")
	}
	ln2, err := next.Listen(ctx, "http", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	if ln2.Addr().String() != ln.Addr().String() {
		t.Fatalf("got %s, want %s", ln2.Addr(), ln.Addr())
	}
	if err := next.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	<-old.Done()
	// The successor now serves the path; the old one's Close leaves it.
	old.Close()
	third, err := New(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	if third.Predecessor() == 0 {
		t.Fatal("the path was removed by the process that handed it over")
	}
}

// TestStoppedProcessHandsNothingOver: after Close (a process stopping,
// not upgrading) the path is gone and a new process binds fresh.
func TestStoppedProcessHandsNothingOver(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "h.sock")
	old, err := New(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	old.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the handover socket outlives its process: %v", err)
	}
	next, err := New(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	if next.Predecessor() != 0 {
		t.Fatal("a stopped process handed over")
	}
	var none *Sockets
	if s, err := New(ctx, "", nil); s != nil || err != nil {
		t.Fatalf("New without a path: %v, %v", s, err)
	}
	ln, err := none.Listen(ctx, "http", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if err := none.Ready(ctx); err != nil || none.Done() != nil {
		t.Fatal("a nil Sockets does something")
	}
	none.Close()
}

// TestOtherUsersCannotTakeTheSockets: the handover socket is the owner's
// only; a process of another user cannot connect to it. (Run as root,
// which CI does: the child drops to nobody.)
func TestOtherUsersCannotTakeTheSockets(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to start a process as another user")
	}
	ctx := context.Background()
	// A folder user nobody may enter, with a copy of this test binary it
	// may run: a denied connection is then the socket's mode.
	dir, err := os.MkdirTemp("", "handover-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	child := filepath.Join(dir, "child")
	if err := os.WriteFile(child, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "h.sock")
	old, err := New(ctx, path, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("handover socket mode %v, want 0600", fi.Mode().Perm())
	}
	cmd := exec.Command(child)
	cmd.Env = append(os.Environ(), "HANDOVER_TEST_DIAL="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); !strings.Contains(got, "permission denied") {
		t.Fatalf("a process of user nobody dialling the handover socket: %q, want permission denied", got)
	}
}

// dialAndExit is the child of TestOtherUsersCannotTakeTheSockets.
func dialAndExit(path string) {
	_, err := New(context.Background(), path, nil)
	if err == nil {
		os.Stdout.WriteString("taken over\n")
	} else {
		os.Stdout.WriteString(err.Error() + "\n")
	}
	os.Exit(0)
}

// TestBadPaths: a path in no folder, or too long for a Unix socket, is
// refused at start with what to do.
func TestBadPaths(t *testing.T) {
	for _, c := range []struct{ path, want string }{
		{filepath.Join(t.TempDir(), "missing", "h.sock"), "create it"},
		{"/tmp/" + strings.Repeat("x", 100), "choose a shorter path"},
	} {
		s, err := New(context.Background(), c.path, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%q): %v, %v; want an error saying %q", c.path, s, err, c.want)
		}
	}
}
