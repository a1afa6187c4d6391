package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replproxy/replproxy/platformtest"
	"github.com/replproxy/replproxy/proxy"
)

// TestHopSecretRotationUnderLoad rotates the hop secret of both clusters
// with the README's procedure (add the new secret second, then first,
// then alone; each step written to east, then west, as two deployments
// would) while requests for a repl moved from east to west go through
// east's tombstone: no request fails, and west refuses no hop mark, so
// every forwarded request kept its client's headers. Then, as a control,
// a rotation done in one step: west refuses east's marks until it has the
// new secret too.
func TestHopSecretRotationUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("15 s of load")
	}
	const (
		oldKey = "the e2e move test's shared hop secret, 32+ bytes"
		newKey = "the secret every cluster moves to, 32+ bytes long"
	)
	// Each cluster's proxy reads a hop secret file of its own, as two
	// deployments would: the same secret at first.
	dir := t.TempDir()
	secrets := map[string]string{}
	flags := map[string][]string{}
	for _, cluster := range []string{"east", "west"} {
		secrets[cluster] = filepath.Join(dir, cluster+".secret")
		if err := os.WriteFile(secrets[cluster], []byte(oldKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		flags[cluster] = []string{"-hop-secret-file", secrets[cluster]}
	}
	p := startPlatform(t, platformtest.Options{ClusterProxyFlags: flags})
	p.ctl(t, false, "repl", "create", "alice/blog", "--id", "blog1", "--cluster", "east", "--endpoint", p.apps["east"])
	p.ctl(t, false, "move", "blog1", "--to", "west", "--endpoint", p.apps["west"])
	east, host := p.proxy(t, "east"), "blog.alice.repl.test"
	get := func(client *http.Client, method string, body io.Reader) error {
		req, _ := http.NewRequest(method, "http://"+east+"/", body)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(b), "served in west") {
			return fmt.Errorf("%s: status %d %q", method, resp.StatusCode, b)
		}
		return nil
	}
	for deadline := time.Now().Add(5 * time.Second); get(http.DefaultClient, "GET", nil) != nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("east does not forward to west after the move")
		}
	}

	var sent, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	client := &http.Client{Timeout: 10 * time.Second}
	wait := paced(4, 20*time.Millisecond, stop, func(w, i int) { // 4 × 50 requests/s
		method, body := "GET", io.Reader(nil)
		if (w+i)%2 == 1 {
			method, body = "POST", strings.NewReader(strings.Repeat("p", 2048))
		}
		sent.Add(1)
		if err := get(client, method, body); err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, err)
		}
	})
	defer func() { // on a failure too
		select {
		case <-stop:
		default:
			close(stop)
		}
		wait()
	}()

	// write replaces cluster's secret file and waits until its proxy has
	// reloaded it: until the last "hop secrets reloaded" it logged names
	// the new content's keys (each write changes them; the proxy's log
	// keeps only its last MiB, so counting the lines would not do).
	write := func(cluster, content string) {
		t.Helper()
		path := secrets[cluster]
		if err := os.WriteFile(path+".new", []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
		keys, err := proxy.ParseHopKeys([]byte(content))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(keys.IDs())
		want = append([]byte(`"keys":`), want...)
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(lastLine(p.Logs(t, cluster), "hop secrets reloaded"), string(want)); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not reload its hop secrets (%s) in 5 s:\n%s", cluster, want, grep(p.Logs(t, cluster), "hop secret"))
			}
		}
	}
	step := func(content string) {
		write("east", content)
		time.Sleep(500 * time.Millisecond) // the other deployment comes later
		write("west", content)
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	step(oldKey + "\n" + newKey + "\n") // every cluster verifies the new secret
	step(newKey + "\n" + oldKey + "\n") // every cluster signs with it
	step(newKey + "\n")                 // the old one is retired
	time.Sleep(500 * time.Millisecond)
	refused := hopMarksRefused(t, p.Cluster(t, "west").AdminAddr)
	t.Logf("%d requests through east's tombstone during the rotation: %d failed; west refused %v hop marks", sent.Load(), failed.Load(), refused)
	if failed.Load() != 0 || refused != 0 || sent.Load() < 500 {
		t.Fatalf("%d of %d requests failed (first: %v), west refused %v hop marks; want none, none", failed.Load(), sent.Load(), firstErr.Load(), refused)
	}

	// The control: the secret replaced in one step. East signs with a key
	// west does not know yet; west serves those requests as untrusted
	// (they still succeed) and counts the marks it refused.
	write("east", "a third secret, swapped in without the procedure\n")
	time.Sleep(time.Second)
	write("west", "a third secret, swapped in without the procedure\n")
	close(stop)
	wait()
	if n := hopMarksRefused(t, p.Cluster(t, "west").AdminAddr); n == 0 {
		t.Error("a one-step rotation: west refused no hop mark; the test cannot tell a safe rotation from an unsafe one")
	} else {
		t.Logf("the one-step rotation: west refused %v hop marks", n)
	}
}

// hopMarksRefused sums replproxy_hop_marks_refused_total over its reasons.
func hopMarksRefused(t *testing.T, admin string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "replproxy_hop_marks_refused_total{"); ok {
			_, v, _ := strings.Cut(rest, "} ")
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			sum += f
		}
	}
	return sum
}

// lastLine returns the last line of s that contains substr ("" if none).
func lastLine(s, substr string) string {
	if i := strings.LastIndex(s, substr); i >= 0 {
		start := strings.LastIndexByte(s[:i], '\n') + 1
		end, _, _ := strings.Cut(s[start:], "\n")
		return end
	}
	return ""
}
