package e2e

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/replproxy/replproxy/platformtest"
)

// TestDemo runs `make run`'s program the way a new user does: it follows
// the printed guide (dig, curl, a move, dig and curl again), then presses
// Ctrl-C and checks that nothing is left running or on disk.
func TestDemo(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:8080", "127.0.0.2:8080", "127.0.0.1:9090", "127.0.0.2:9090", "127.0.0.1:9153", "127.0.0.1:9101"} {
		if ln, err := net.Listen("tcp", addr); err != nil {
			t.Fatalf("the demo's address %s is taken (a `make run` still running?): %v", addr, err)
		} else {
			ln.Close()
		}
	}
	for _, name := range []string{"replproxy", "replns", "replctl"} {
		platformtest.Binary(t, name) // beside the demo's, where its -bin looks
	}
	demo := platformtest.Binary(t, "demo")
	cmd := exec.Command(demo, "-bin", filepath.Dir(demo))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() { exitErr = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Kill() // an error once it has exited
		<-exited
	}()

	// Read the guide up to its last line.
	lines := make(chan string, 200)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var guide strings.Builder
	timeout := time.After(60 * time.Second)
	for !strings.Contains(guide.String(), "Move it back with:") {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the demo ended before printing its guide:\n%s", guide.String())
			}
			guide.WriteString(l + "\n")
		case <-timeout:
			t.Fatalf("no guide after 60 s:\n%s", guide.String())
		}
	}
	go func() {
		for range lines { // keep the pipe drained
		}
	}()
	dir := regexp.MustCompile(`logs and files: (\S+)`).FindStringSubmatch(guide.String())
	move := regexp.MustCompile(`(?m)^\s+(\S+replctl -registry \S+ move blog1 --to west --endpoint 127\.0\.0\.2:9101)$`).FindStringSubmatch(guide.String())
	if dir == nil || move == nil {
		t.Fatalf("the guide lacks its folder or its move line:\n%s", guide.String())
	}

	resolve := func() string {
		m := new(dns.Msg)
		m.SetQuestion("blog.alice.repl.test.", dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, "127.0.0.1:5353")
		if err != nil || len(r.Answer) != 1 {
			t.Fatalf("dig blog.alice.repl.test: %v %v", r, err)
		}
		return r.Answer[0].(*dns.A).A.String()
	}
	get := func(proxy string) string {
		req, _ := http.NewRequest(http.MethodGet, "http://"+proxy+"/", nil)
		req.Host = "blog.alice.repl.test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if ip := resolve(); ip != "127.0.0.1" {
		t.Fatalf("before the move replns answers %s, want east's 127.0.0.1", ip)
	}
	if got := get("127.0.0.1:8080"); !strings.Contains(got, "served in cluster east") {
		t.Fatalf("before the move: %q", got)
	}
	args := strings.Fields(move[1])
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", move[1], err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for resolve() != "127.0.0.2" {
		if time.Now().After(deadline) {
			t.Fatal("replns still answers east 5 s after the move")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Through west, and through east (the stale address): east serves the
	// request itself until its store's change reaches it (replns may have
	// seen west's first), then forwards it to west.
	for _, proxy := range []string{"127.0.0.2:8080", "127.0.0.1:8080"} {
		deadline := time.Now().Add(5 * time.Second)
		for got := get(proxy); !strings.Contains(got, "served in cluster west"); got = get(proxy) {
			if !strings.Contains(got, "served in cluster east") || time.Now().After(deadline) {
				t.Fatalf("after the move, through %s: %q", proxy, got)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// Ctrl-C: everything stops, nothing is left.
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if exitErr != nil {
			t.Fatalf("the demo exited with %v after Ctrl-C", exitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the demo did not stop within 30 s of Ctrl-C")
	}
	for _, addr := range []string{"127.0.0.1:8080", "127.0.0.2:8080", "127.0.0.1:9153"} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still answers after Ctrl-C", addr)
		}
	}
	if _, err := os.Stat(dir[1]); !os.IsNotExist(err) {
		t.Errorf("the demo's folder %s is still there: %v", dir[1], err)
	}
}
