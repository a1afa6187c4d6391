// Command abusebench measures what client abuse costs a replproxy binary,
// on loopback:
//
//   - HTTP/2 rapid reset: a client that opens streams and resets them at
//     once, reconnecting each time it is cut off, for a bounded number of
//     streams, in the clear (h2c) and over TLS; the proxy's CPU against
//     the attacker's, and the streams the proxy read per cut connection
//     (the GOAWAY's last stream);
//   - a random-name flood: the p99 latency of a steady legitimate client
//     alone, then while other clients send requests for random names as
//     fast as they can, and the store calls the flood caused.
//
// The proxy runs on CPU 0 (taskset); this program, the attacker and the
// backend, on CPU 1.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/replproxy/replproxy/internal/benchproc"
)

type options struct {
	replproxy string
	streams   int
	duration  time.Duration
	flooders  int
}

func main() {
	var o options
	flag.StringVar(&o.replproxy, "replproxy", "bin/replproxy", "the replproxy binary")
	flag.IntVar(&o.streams, "streams", 100_000, "reset streams the rapid-reset attacker sends in all")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "how long each phase of the flood runs")
	flag.IntVar(&o.flooders, "flooders", 8, "clients sending random names")
	flag.Parse()
	runtime.GOMAXPROCS(1)
	if err := run(o); err != nil {
		log.Fatal(err)
	}
}

func run(o options) error {
	dir, err := os.MkdirTemp("", "abusebench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello from the backend\n")
	})}
	bln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = backend.Serve(bln) }()
	defer backend.Close()

	port, _ := benchproc.FreePort()
	tlsPort, _ := benchproc.FreePort()
	adminPort, _ := benchproc.FreePort()
	addr, admin := fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", adminPort)
	tlsAddr := fmt.Sprintf("127.0.0.1:%d", tlsPort)
	certPEM, keyPEM, err := selfSigned("bench.alice.repl.test")
	if err != nil {
		return err
	}
	files := map[string]string{
		"clusters.yaml": fmt.Sprintf("clusters:\n  - {name: east, proxy_ipv4: [192.0.2.1], forward: %q, store: east.yaml}\n", addr),
		"east.yaml":     fmt.Sprintf("repls:\n  - {id: r1, owner: alice, slug: bench, endpoints: [%q]}\n", bln.Addr()),
		"hop.secret":    "bench-secret-bench-secret-bench-secret-0123456789",
		"cert.pem":      certPEM,
		"key.pem":       keyPEM,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	proxy, err := benchproc.Start(dir, "replproxy", "0", nil, o.replproxy, "-zone", "repl.test", "-cluster", "east",
		"-registry", filepath.Join(dir, "clusters.yaml"), "-hop-secret-file", filepath.Join(dir, "hop.secret"), "-forward-plaintext",
		"-listen", addr, "-admin-listen", admin, "-h2c",
		"-listen-tls", tlsAddr, "-tls-cert", filepath.Join(dir, "cert.pem"), "-tls-key", filepath.Join(dir, "key.pem"), "-access-log=false", "-log-level", "error")
	if err != nil {
		return err
	}
	defer proxy.Stop()
	if err := benchproc.WaitListening(addr); err != nil {
		return fmt.Errorf("%w\n%s", err, proxy.Log())
	}
	time.Sleep(500 * time.Millisecond) // the cache and index are built

	for _, overTLS := range []bool{false, true} {
		cutBefore, _ := metric(admin, "replproxy_connections_closed_for_resets_total")
		earlyBefore, _ := metric(admin, "replproxy_requests_cancelled_early_total")
		target := addr
		if overTLS {
			target = tlsAddr
		}
		if err := rapidReset(o, target, overTLS, proxy); err != nil {
			return err
		}
		early, _ := metric(admin, "replproxy_requests_cancelled_early_total")
		cut, _ := metric(admin, "replproxy_connections_closed_for_resets_total")
		fmt.Printf("  %.0f connections cut for resets; %.0f reset streams reached a handler\n", cut-cutBefore, early-earlyBefore)
	}
	return flood(o, addr, admin)
}

// selfCPU returns this process's user+system time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rapidReset(o options, addr string, overTLS bool, proxy *benchproc.Proc) error {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "bench.alice.repl.test"}, {":path", "/"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := hb.Bytes()
	proxyBefore, selfBefore, start := proxy.CPUTicks(), selfCPU(), time.Now()
	sent, conns, goAways, read := 0, 0, 0, 0
	for sent < o.streams && time.Since(start) < time.Minute {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		if overTLS {
			// A bench client: the proxy's certificate is not checked.
			tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, ServerName: "bench.alice.repl.test"})
			if err := tc.Handshake(); err != nil {
				return fmt.Errorf("TLS handshake with %s: %w", addr, err)
			}
			conn = tc
		}
		conns++
		_, _ = io.WriteString(conn, http2.ClientPreface)
		fr := http2.NewFramer(conn, conn)
		_ = fr.WriteSettings()
		done := make(chan uint32, 1)
		go func() {
			last := uint32(0)
			defer func() { done <- last }()
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				if g, ok := f.(*http2.GoAwayFrame); ok && g.ErrCode == http2.ErrCodeEnhanceYourCalm {
					last = g.LastStreamID
				}
			}
		}()
		for id := uint32(1); sent < o.streams; id += 2 {
			if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}) != nil ||
				fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				break
			}
			sent++
		}
		_ = conn.Close()
		if last := <-done; last > 0 {
			goAways++
			read += int(last+1) / 2
		}
	}
	elapsed := time.Since(start)
	time.Sleep(200 * time.Millisecond) // the proxy finishes what it read
	proxyCPU := time.Duration(proxy.CPUTicks()-proxyBefore) * 10 * time.Millisecond
	selfCPUUsed := selfCPU() - selfBefore
	over := map[bool]string{false: "h2c", true: "TLS"}[overTLS]
	fmt.Printf("HTTP/2 rapid reset over %s: %d HEADERS+RST_STREAM pairs written on %d connections in %v (the sockets' buffers, and the drain after a cut, take them faster than the proxy reads)\n",
		over, sent, conns, elapsed.Round(time.Millisecond))
	if goAways > 0 {
		fmt.Printf("  %d GOAWAY(ENHANCE_YOUR_CALM), after %d streams read per connection on average\n", goAways, read/goAways)
	}
	fmt.Printf("  CPU: proxy %v, attacker %v: %.2fx the attacker's\n", proxyCPU, selfCPUUsed.Round(time.Millisecond),
		proxyCPU.Seconds()/selfCPUUsed.Seconds())
	return nil
}

// selfSigned returns a PEM certificate and key for name.
func selfSigned(name string) (certPEM, keyPEM string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})), nil
}

func flood(o options, addr, admin string) error {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 10 * time.Second}
	legit := func(d time.Duration) ([]time.Duration, int) {
		var lat []time.Duration
		failed := 0
		tick := time.NewTicker(5 * time.Millisecond) // 200 requests/s
		defer tick.Stop()
		for end := time.Now().Add(d); time.Now().Before(end); {
			<-tick.C
			req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
			req.Host = "bench.alice.repl.test"
			t0 := time.Now()
			resp, err := client.Do(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if err != nil || resp.StatusCode != 200 {
				failed++
				continue
			}
			lat = append(lat, time.Since(t0))
		}
		return lat, failed
	}
	base, baseFailed := legit(o.duration)

	loadsBefore, err := metric(admin, `replproxy_route_cache_events_total{cluster="east",event="load"}`)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range o.flooders {
		wg.Go(func() {
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
				req.Host = fmt.Sprintf("a%x.u%x.repl.test", mrand.Uint64(), mrand.Uint32())
				resp, err := client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					sent.Add(1)
				}
			}
		})
	}
	start := time.Now()
	flooded, floodFailed := legit(o.duration)
	elapsed := time.Since(start)
	stop()
	wg.Wait()
	loadsAfter, err := metric(admin, `replproxy_route_cache_events_total{cluster="east",event="load"}`)
	if err != nil {
		return err
	}
	fmt.Printf("random-name flood: %d requests for random names in %v (%.0f/s) beside 200 legitimate requests/s\n",
		sent.Load(), elapsed.Round(time.Millisecond), float64(sent.Load())/elapsed.Seconds())
	fmt.Printf("  store calls during the flood: %.0f (%.2f/s)\n", loadsAfter-loadsBefore, (loadsAfter-loadsBefore)/elapsed.Seconds())
	p99 := func(l []time.Duration) time.Duration {
		if len(l) == 0 {
			return 0
		}
		slices.Sort(l)
		return l[len(l)*99/100]
	}
	fmt.Printf("  legitimate p99: %v alone, %v during the flood: %.2fx (failed: %d alone, %d during)\n",
		p99(base), p99(flooded), p99(flooded).Seconds()/p99(base).Seconds(), baseFailed, floodFailed)
	return nil
}

// metric reads one sample from the proxy's /metrics.
func metric(admin, sample string) (float64, error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, errors.New("no sample " + sample)
}
