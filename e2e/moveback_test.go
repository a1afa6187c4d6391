package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replproxy/replproxy/platformtest"
)

// TestMovesWithBodiesAndALostFeed moves a repl back and forth 20 times
// under 300 requests/s, half of them POSTs with bodies (1 KiB, held for a
// second dispatch, and 40 KiB, sent after 100 Continue), sent to both
// clusters' proxies as clients with stale addresses do; during every
// other move the destination's change feed is cut again and again
// (pg_terminate_backend on its LISTEN connections), so its proxy keeps a
// tombstone its own store has replaced. Not one request may fail, and each
// POST's body arrives whole.
func TestMovesWithBodiesAndALostFeed(t *testing.T) {
	if testing.Short() {
		t.Skip("30 s of load")
	}
	p := startPlatform(t, platformtest.Options{})
	p.createRepl(t)
	host := "blog.alice.repl.test"
	// A first move, before the load: requests go to both clusters' proxies
	// from the start, and west knows nothing of a repl that was never
	// there (a 404 that is right).
	p.ctl(t, false, "move", "blog1", "--to", "west", "--endpoint", p.apps["west"])
	stop := make(chan struct{})
	var sent, failed, posts atomic.Int64
	failures := make(chan string, 100)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	proxies := []string{p.proxy(t, "east"), p.proxy(t, "west")}
	wait := paced(6, 20*time.Millisecond, stop, func(w, i int) { // 6 × 50 requests/s
		proxy := proxies[w%2]
		method, size := "GET", 0
		if i%2 == 1 {
			method, size = "POST", []int{1 << 10, 40 << 10}[(i/2)%2]
			posts.Add(1)
		}
		req, _ := http.NewRequest(method, "http://"+proxy+"/", strings.NewReader(strings.Repeat("p", size)))
		req.Host = host
		sent.Add(1)
		err := func() error {
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := fmt.Sprintf("(%s, %d bytes)", method, size); resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
				return fmt.Errorf("%s of %d bytes to %s: %d %q", method, size, proxy, resp.StatusCode, b)
			}
			return nil
		}()
		if err != nil {
			failed.Add(1)
			select {
			case failures <- err.Error():
			default:
			}
		}
	})

	var kills atomic.Int64
	to := "east"
	start := time.Now()
	for i := range 20 {
		if i%2 == 0 {
			p.ctl(t, false, "move", "blog1", "--to", to, "--endpoint", p.apps[to])
			time.Sleep(time.Second)
		} else {
			// The destination's feed is cut every 100 ms from 150 ms
			// before the move until 500 ms after it; the move runs
			// meanwhile.
			done := make(chan struct{})
			moved := make(chan string, 1)
			go func() {
				defer close(done)
				time.Sleep(150 * time.Millisecond) // the feed is down before the move starts
				out, err := p.command("move", "blog1", "--to", to, "--endpoint", p.apps[to]).CombinedOutput()
				if err != nil {
					moved <- fmt.Sprintf("%v\n%s", err, out)
				}
				time.Sleep(500 * time.Millisecond)
			}()
			for cutting := true; cutting; {
				kills.Add(int64(p.CutFeed(t, to)))
				select {
				case <-done:
					cutting = false
				case <-time.After(100 * time.Millisecond):
				}
			}
			select {
			case err := <-moved:
				t.Fatalf("replctl move blog1 --to %s: %s", to, err)
			default:
			}
			time.Sleep(500 * time.Millisecond)
		}
		to = map[string]string{"west": "east", "east": "west"}[to]
	}
	close(stop)
	wait()
	close(failures)
	var first []string
	for f := range failures {
		first = append(first, f)
	}
	t.Logf("%d requests (%d POSTs) in %v across 20 moves after a first one, %d LISTEN connections terminated: %d failed",
		sent.Load(), posts.Load(), time.Since(start).Round(time.Second), kills.Load(), failed.Load())
	if failed.Load() != 0 {
		for _, c := range p.Clusters() {
			for _, line := range strings.Split(p.Logs(t, c.Name), "\n") {
				if strings.Contains(line, `"status":4`) || strings.Contains(line, `"status":5`) || strings.Contains(line, "index") {
					t.Logf("%s (%s): %.400s", c.Name, c.ProxyAddr, line)
				}
			}
		}
		t.Fatalf("%d of %d requests failed, e.g. %q", failed.Load(), sent.Load(), first)
	}
	if sent.Load() < 5000 || kills.Load() < 10 {
		t.Fatalf("only %d requests made and %d feeds cut", sent.Load(), kills.Load())
	}
	if out := p.ctl(t, false, "repl", "show", "blog1"); strings.Contains(out, "NOT SETTLED") {
		t.Fatalf("after 20 moves the repl is not settled:\n%s", out)
	}
}
