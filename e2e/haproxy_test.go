package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/replproxy/replproxy/internal/acmetest"
	"github.com/replproxy/replproxy/internal/testbed"
	"github.com/replproxy/replproxy/platformtest"
)

// The addresses of TestHAProxyInFront: the load balancer's source toward
// the proxies (the one range they trust with the PROXY protocol), and a
// client's.
const (
	haproxySource = "127.0.0.10"
	haproxyClient = "127.0.0.77"
)

// TestHAProxyInFront: HAProxy, as the cluster's load balancer (TCP mode),
// in front of the cluster's two replproxy processes, opens every
// connection to them with a PROXY v2 header (send-proxy-v2), its health
// checks too (a LOCAL header, then an HTTP request: both proxies UP). A
// client's requests through it reach the container with the client's
// address in X-Forwarded-For and in both proxies' access logs; both
// proxies serve; the health checks' requests are the load balancer's
// own. A client that reaches a proxy directly is served as itself, but not
// when it sends a PROXY header: that connection is refused and counted.
func TestHAProxyInFront(t *testing.T) {
	haproxy := haproxyPath(t)
	p := start(t, platformtest.Options{Clusters: []string{"east"}, NoDNS: true, LogFiles: true,
		ProxyFlags: []string{"-proxy-protocol-from", haproxySource + "/32"}})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get("X-Forwarded-For"))
	}))
	t.Cleanup(app.Close)
	host := p.Host("alice", "blog")
	p.CreateRepl(t, platformtest.Repl{ID: "blog1", Owner: "alice", Slug: "blog", Endpoints: []string{strings.TrimPrefix(app.URL, "http://")}})
	east := p.Cluster(t, "east")
	addr2, admin2 := p.AddProxy(t, "east")
	proxies := []struct{ addr, admin, log string }{
		{east.ProxyAddr, east.AdminAddr, filepath.Join(p.Dir(), "replproxy-east.log")},
		{addr2, admin2, filepath.Join(p.Dir(), "replproxy-east-(2).log")},
	}

	front, stats := platformtest.FreeAddr(t, "127.0.0.1"), platformtest.FreeAddr(t, "127.0.0.1")
	cfg := fmt.Sprintf(`global
	log stderr format short local0 info
defaults
	log global
	timeout connect 2s
	timeout client 10s
	timeout server 10s
	timeout check 2s
frontend web
	mode tcp
	bind %s
	default_backend proxies
backend proxies
	mode tcp
	balance roundrobin
	source %s
	option httpchk
	http-check send meth GET uri /healthcheck ver HTTP/1.1 hdr Host %s
	http-check expect status 200
	server p1 %s check inter 200ms send-proxy-v2 check-send-proxy
	server p2 %s check inter 200ms send-proxy-v2 check-send-proxy
frontend stats
	mode http
	bind %s
	stats enable
	stats uri /stats
`, front, haproxySource, host, proxies[0].addr, proxies[1].addr, stats)
	startHAProxy(t, haproxy, cfg)

	// Both proxies UP, their last health check passed (HAProxy starts
	// with its servers UP).
	testbed.WaitFor(t, 15*time.Second, "HAProxy's health checks of both proxies to pass (L7OK)", func() bool {
		csv, err := httpGet("http://" + stats + "/stats;csv")
		return err == nil && csvField(csv, "p1", "status") == "UP" && csvField(csv, "p2", "status") == "UP" &&
			csvField(csv, "p1", "check_status") == "L7OK" && csvField(csv, "p2", "check_status") == "L7OK"
	})

	// A client's requests through HAProxy.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(haproxyClient)}, Timeout: 5 * time.Second}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	const n = 20
	for i := range n {
		req, _ := http.NewRequest(http.MethodGet, "http://"+front+"/through-haproxy", nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d through HAProxy: %v", i, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != haproxyClient {
			t.Fatalf("request %d through HAProxy: %s, X-Forwarded-For %q; want 200 and the client, %s", i, resp.Status, body, haproxyClient)
		}
	}
	for i, px := range proxies {
		logs, err := os.ReadFile(px.log)
		if err != nil {
			t.Fatal(err)
		}
		var served, checks int
		for line := range strings.SplitSeq(string(logs), "\n") {
			switch {
			case strings.Contains(line, "/through-haproxy") && strings.Contains(line, `"remote":"`+haproxyClient+":"):
				served++
			case strings.Contains(line, "/healthcheck") && strings.Contains(line, `"remote":"`+haproxySource+":"):
				checks++
			}
		}
		t.Logf("replproxy %d: %d requests from %s through HAProxy, %d health checks as HAProxy's own", i+1, served, haproxyClient, checks)
		if served == 0 {
			t.Errorf("replproxy %d: no access-log line of a request from %s through HAProxy", i+1, haproxyClient)
		}
		if checks == 0 {
			t.Errorf("replproxy %d: no access-log line of a health check from HAProxy's own address, %s (a LOCAL header)", i+1, haproxySource)
		}
	}

	// Straight to a proxy: served as itself without a header, refused
	// with one.
	for i, px := range proxies {
		conn, err := net.DialTimeout("tcp", px.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got, err := rawGet(conn, host, nil)
		if err != nil || !strings.HasSuffix(got, "\r\n\r\n127.0.0.1") {
			t.Errorf("replproxy %d: a direct request: %q, %v; want 200 with X-Forwarded-For 127.0.0.1", i+1, got, err)
		}
		header, err := proxyproto.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.IPv4(203, 0, 113, 7), Port: 4000},
			&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}).Format()
		if err != nil {
			t.Fatal(err)
		}
		conn, err = net.DialTimeout("tcp", px.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := rawGet(conn, host, header); err == nil {
			t.Errorf("replproxy %d: a direct connection with a PROXY header got %q, want it refused", i+1, got)
		}
		if v := proxyMetric(t, px.admin, `replproxy_proxy_protocol_refused_total{reason="untrusted_header"}`); v != 1 {
			t.Errorf("replproxy %d: untrusted_header refusals %v, want 1", i+1, v)
		}
	}
}

// haproxyPath returns the haproxy binary, skipping t (or failing it, with
// REPLPROXY_REQUIRE_TOOLS) when it is not installed. Debian puts it in
// /usr/sbin, which a user's PATH may lack.
func haproxyPath(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
			return "/usr/sbin/haproxy"
		}
	}
	return acmetest.NeedTool(t, "haproxy", "haproxy")
}

// startHAProxy runs haproxy in the foreground on cfg until t ends, when it
// is stopped by its PID.
func startHAProxy(t *testing.T, bin, cfg string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, cfg)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-f", path, "-db")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("haproxy's log:\n%s", logs.String())
		}
	})
}

// csvField returns column col of server sv of the backend "proxies" in
// HAProxy's stats CSV.
func csvField(csv, sv, col string) string {
	lines := strings.Split(csv, "\n")
	cols := strings.Split(strings.TrimPrefix(lines[0], "# "), ",")
	for _, line := range lines[1:] {
		if f := strings.Split(line, ","); len(f) == len(cols) && f[0] == "proxies" && f[1] == sv {
			for i, name := range cols {
				if name == col {
					return f[i]
				}
			}
		}
	}
	return ""
}

// rawGet writes pre and a GET for host on conn, and returns the response
// as it came (up to 64 KiB), or an error when the connection ended
// without one.
func rawGet(conn net.Conn, host string, pre []byte) (string, error) {
	defer conn.Close()
	req := "GET /direct HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n"
	if _, err := conn.Write(append(pre, req...)); err != nil {
		return "", err
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(io.LimitReader(conn, 64<<10))
	if len(b) == 0 {
		if err == nil {
			err = io.EOF
		}
		return "", err
	}
	return string(b), nil
}

// proxyMetric returns the value of a sample (name and labels, as
// exposed) from a proxy's /metrics, or -1.
func proxyMetric(t *testing.T, admin, sample string) float64 {
	t.Helper()
	text, err := httpGet("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return -1
}

func httpGet(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
