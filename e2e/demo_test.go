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
// the printed guide (dig, curl, a move, dig and curl again; the wake of a
// sleeping repl, and its sleep when idle), then presses Ctrl-C and checks
// that nothing is left running or on disk.
func TestDemo(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:8080", "127.0.0.2:8080", "127.0.0.1:9090", "127.0.0.2:9090", "127.0.0.1:9153", "127.0.0.1:9101", "127.0.0.1:9104"} {
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
	const idle = 4 * time.Second // the demo's -idle (20 s by default)
	cmd := exec.Command(demo, "-bin", filepath.Dir(demo), "-idle", idle.String())
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
	for !strings.Contains(guide.String(), "repl wake docs1 --wait") {
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
	wakeCurl := regexp.MustCompile(`(?m)^\s+curl -s -o /dev/null -w '%\{http_code\} in %\{time_total\}s\\n' -H 'Host: (\S+)' http://(\S+)/$`).FindStringSubmatch(guide.String())
	show := regexp.MustCompile(`(?m)^\s+(\S+replctl -registry \S+ repl show docs1)\s`).FindStringSubmatch(guide.String())
	list := regexp.MustCompile(`(?m)^\s+(\S+replctl -registry \S+ repl list)\s`).FindStringSubmatch(guide.String())
	if dir == nil || move == nil || wakeCurl == nil || show == nil || list == nil {
		t.Fatalf("the guide lacks its folder, its move line, or its wake, show or list line:\n%s", guide.String())
	}
	replctl := func(line string) string {
		t.Helper()
		args := strings.Fields(line)
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, out)
		}
		return string(out)
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
	replctl(move[1])
	deadline := time.Now().Add(5 * time.Second)
	for resolve() != "127.0.0.2" {
		if time.Now().After(deadline) {
			t.Fatal("replns still answers east 5 s after the move")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Through west, and through east (the stale address). Each proxy hears
	// of the move through its own store's change feed, and replns may hear
	// first: until then west does not know the repl (404), and east serves
	// the request itself; then west serves it and east forwards it there.
	for _, tc := range []struct{ proxy, before string }{
		{"127.0.0.2:8080", "There is no repl at blog.alice.repl.test"},
		{"127.0.0.1:8080", "served in cluster east"},
	} {
		proxy := tc.proxy
		deadline := time.Now().Add(5 * time.Second)
		for got := get(proxy); !strings.Contains(got, "served in cluster west"); got = get(proxy) {
			if !strings.Contains(got, tc.before) || time.Now().After(deadline) {
				t.Fatalf("after the move, through %s: %q", proxy, got)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// dave's docs is asleep: its first request waits for the manager to
	// start its app (1 s), the next ones do not, and repl show has it
	// awake at its app.
	host, proxyAddr := wakeCurl[1], wakeCurl[2]
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	timed := func(what string) time.Duration {
		t.Helper()
		start := time.Now()
		code, body, err := getVia(client, proxyAddr, host)
		if err != nil || code != http.StatusOK || !strings.Contains(body, "hello from dave/docs (repl docs1), served in cluster east") {
			t.Fatalf("%s: %d %q %v", what, code, body, err)
		}
		return time.Since(start)
	}
	if took := timed("the first request, a wake"); took < time.Second {
		t.Errorf("the first request took %v: less than the app's 1 s start, so it woke nothing", took)
	}
	if took := timed("the second request"); took >= time.Second {
		t.Errorf("the second request took %v: another wake?", took)
	}
	if out := replctl(show[1]); !regexp.MustCompile(`(?m)^east\s+live\s+\d+\s+127\.0\.0\.1:9104\s`).MatchString(out) {
		t.Fatalf("after the wake, %s says:\n%s", show[1], out)
	}
	// Requests keep it awake past the idle time (the manager reads the
	// proxies' activity)...
	var lastAt time.Time
	for end := time.Now().Add(idle + 2*time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if took := timed("a request while in use"); took >= time.Second {
			t.Fatalf("a request while the repl is in use took %v: it was put to sleep", took)
		}
		lastAt = time.Now()
	}
	// ...and then, idle, it goes to sleep and its app stops.
	asleep := regexp.MustCompile(`(?m)^east\s+docs1\s+dave\s+docs\s+\d+\s+asleep\s`)
	for out := replctl(list[1]); !asleep.MatchString(out); out = replctl(list[1]) {
		if time.Since(lastAt) > idle+15*time.Second {
			t.Fatalf("docs1 is not asleep %v after its last request:\n%s", time.Since(lastAt), out)
		}
		time.Sleep(250 * time.Millisecond)
	}
	slept := time.Since(lastAt)
	if slept < idle-time.Second {
		t.Errorf("docs1 went to sleep %v after its last request, before the idle time %v", slept, idle)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", "127.0.0.1:9104", time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("docs1's app still answers 10 s after it went to sleep")
		}
	}
	if took := timed("the first request after the sleep"); took < time.Second {
		t.Errorf("the first request after the sleep took %v: it woke nothing", took)
	}
	t.Logf("docs1 woke, stayed awake while in use, went to sleep %v after its last request, woke again", slept.Round(100*time.Millisecond))

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
	for _, addr := range []string{"127.0.0.1:8080", "127.0.0.2:8080", "127.0.0.1:9153", "127.0.0.1:9104"} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still answers after Ctrl-C", addr)
		}
	}
	if _, err := os.Stat(dir[1]); !os.IsNotExist(err) {
		t.Errorf("the demo's folder %s is still there: %v", dir[1], err)
	}
}
