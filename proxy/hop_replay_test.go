package proxy_test

import (
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/proxy"
)

// TestReplayedMarkIsRefusedAndCounted: a mark east signed
// for GET / is captured and replayed, by a holder of east's certificate,
// on POST /admin/delete with a body: the mark is refused, counted
// (reason signature), and the request is served as an untrusted
// client's. Replayed as it was: refused, counted (reason replay).
func TestReplayedMarkIsRefusedAndCounted(t *testing.T) {
	west, fwd, client := asEast(t)
	mark := proxy.SignHop(testSecret, time.Now(), "east", "GET", "/", "blog.alice.repl.test", "203.0.113.7", "https", "blog.alice.repl.test", "id-1")
	send := func(method, target, body string) testbed.Echoed {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, "https://"+fwd+target, rd)
		req.Host = "blog.alice.repl.test"
		req.Header = http.Header{proxy.HopHeader: {mark}, "X-Forwarded-For": {"203.0.113.7"},
			"X-Forwarded-Proto": {"https"}, "X-Forwarded-Host": {"blog.alice.repl.test"}, "X-Request-Id": {"id-1"}}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %s", method, target, resp.StatusCode, b)
		}
		return testbed.Decode(t, string(b))
	}
	if e := send("GET", "/", ""); e.Header.Get("X-Forwarded-For") != "203.0.113.7" {
		t.Fatalf("the original GET / was not trusted: %v", e.Header)
	}
	e := send("POST", "/admin/delete", "delete-everything")
	t.Logf("replayed on POST /admin/delete: container saw X-Forwarded-For %q, X-Request-Id %q, body %d bytes",
		e.Header.Get("X-Forwarded-For"), e.Header.Get("X-Request-Id"), e.BodyLen)
	if e.Header.Get("X-Forwarded-For") == "203.0.113.7" || e.Header.Get("X-Request-Id") == "id-1" {
		t.Errorf("a GET / mark replayed on POST /admin/delete was trusted: %v", e.Header)
	}
	sig := counterWith(t, west, "replproxy_hop_marks_refused_total", "signature")
	t.Logf("refused for their signature: %v", sig)
	if sig != 1 {
		t.Errorf("marks refused for their signature = %v, want 1", sig)
	}
	send("GET", "/", "")
	rep := counterWith(t, west, "replproxy_hop_marks_refused_total", "replay")
	t.Logf("refused as replays: %v", rep)
	if rep != 1 {
		t.Errorf("marks refused as replays = %v, want 1", rep)
	}
}

// TestMarkOnOtherMethodOrTargetIsRefused: a fresh GET / mark (captured, the
// original never arriving) put on DELETE / and on GET /admin/delete, with no
// body, so that neither the body length nor the replay cache can be what
// refuses it: only the method and the target in the signature can.
func TestMarkOnOtherMethodOrTargetIsRefused(t *testing.T) {
	west, fwd, client := asEast(t)
	for _, tc := range []struct{ method, target string }{{"DELETE", "/"}, {"GET", "/admin/delete"}} {
		mark := proxy.SignHop(testSecret, time.Now(), "east", "GET", "/", "blog.alice.repl.test", "203.0.113.7", "https", "blog.alice.repl.test", "id-"+tc.method+tc.target)
		req, _ := http.NewRequest(tc.method, "https://"+fwd+tc.target, nil)
		req.Host = "blog.alice.repl.test"
		req.Header = http.Header{proxy.HopHeader: {mark}, "X-Forwarded-For": {"203.0.113.7"},
			"X-Forwarded-Proto": {"https"}, "X-Forwarded-Host": {"blog.alice.repl.test"}, "X-Request-Id": {"id-" + tc.method + tc.target}}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		e := testbed.Decode(t, string(b))
		t.Logf("GET / mark on %s %s: container saw X-Forwarded-For %q", tc.method, tc.target, e.Header.Get("X-Forwarded-For"))
		if e.Header.Get("X-Forwarded-For") == "203.0.113.7" {
			t.Errorf("a GET / mark on %s %s was trusted", tc.method, tc.target)
		}
	}
	sig := counterWith(t, west, "replproxy_hop_marks_refused_total", "signature")
	t.Logf("refused for their signature: %v", sig)
	if sig != 2 {
		t.Errorf("marks refused for their signature = %v, want 2", sig)
	}
}

// TestMarkOnPublicListenerIsRefusedWithMTLS: with mutual TLS on, a valid
// mark sent to the public plain listener (no peer certificate) is refused.
func TestMarkOnPublicListenerIsRefusedWithMTLS(t *testing.T) {
	_, west, _, _, _ := mtlsClusters(t)
	testbed.CreateRepl(t, west.Store, "r1", "alice", "blog", testbed.HostOf(testbed.EchoServer(t, "blog").URL))
	mark := proxy.SignHop(testSecret, time.Now(), "east", "GET", "/page?q=1", "blog.alice.repl.test", "203.0.113.7", "https", "blog.alice.repl.test", "id-9")
	_, body := do(t, clientFrom("127.0.0.3"), west.Addr, "blog.alice.repl.test", http.Header{proxy.HopHeader: {mark}, "X-Forwarded-For": {"203.0.113.7"},
		"X-Forwarded-Proto": {"https"}, "X-Forwarded-Host": {"blog.alice.repl.test"}, "X-Request-Id": {"id-9"}})
	e := testbed.Decode(t, body)
	t.Logf("public listener: X-Forwarded-For %q; refused for peer: %v", e.Header.Get("X-Forwarded-For"), counterWith(t, west, "replproxy_hop_marks_refused_total", "peer"))
	if e.Header.Get("X-Forwarded-For") == "203.0.113.7" {
		t.Error("a mark on the public listener was trusted with mutual TLS on")
	}
}

// asEast starts two clusters over mutual TLS with a repl in west, and
// returns west, its forward listener's address and a client holding
// east's certificate: a peer able to bring marks to west's forward
// listener (as one who captured them on the way and holds a cluster's key).
func asEast(t *testing.T) (*testCluster, string, *http.Client) {
	t.Helper()
	_, west, _, ca, _ := mtlsClusters(t)
	testbed.CreateRepl(t, west.Store, "r1", "alice", "blog", testbed.HostOf(testbed.EchoServer(t, "blog").URL))
	c, k, err := ca.Issue("east", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}}, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return west, west.Server.Addr("forward"), &http.Client{Transport: tr, Timeout: 10 * time.Second}
}
