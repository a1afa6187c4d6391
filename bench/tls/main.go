// Command tlsbench measures full TLS handshakes per CPU-second of
// replproxy serving a cached ECDSA P-256 certificate on demand
// (-tls-on-demand, the certificate already in the cluster's store), as a
// ratio to nginx serving the same certificate, measured in the same run.
// As a reference it also measures replproxy given the same certificate
// statically (-tls-cert), which is crypto/tls with nothing in front.
//
// Each server runs alone on CPU 0 with one worker (nginx: one process,
// no master; replproxy: GOMAXPROCS=1 from the CPU mask); the handshake
// generator (this program, re-run as "tlsbench load") runs on CPU 1. Every
// connection is a full handshake — TLS 1.3, X25519, no session
// resumption — and is closed after it. The figure is handshakes divided
// by the server's user+sys CPU time (from /proc), so it does not depend
// on how fast the generator is. Servers are measured in turns, -rounds
// times; the table gives each round and the median ratio.
//
// Needs: nginx, taskset (util-linux).
// Run: go build -o bin/ ./cmd/replproxy && go run ./bench/tls -replproxy bin/replproxy
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/internal/benchproc"
	"github.com/replproxy/replproxy/store/embedded"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "load" {
		if err := load(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "tlsbench load:", err)
			os.Exit(1)
		}
		return
	}
	var o opts
	flag.StringVar(&o.replproxy, "replproxy", "bin/replproxy", "the replproxy binary")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long each measurement runs")
	flag.IntVar(&o.conns, "conns", 16, "handshakes in flight at once")
	flag.IntVar(&o.rounds, "rounds", 3, "measurements of each server, in turns")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "tlsbench:", err)
		os.Exit(1)
	}
}

type opts struct {
	replproxy string
	duration  time.Duration
	conns     int
	rounds    int
}

// The name every handshake asks for, and the certificate that serves it.
const (
	sni      = "bench.alice.repl.test"
	certName = "*.alice.repl.test"
)

// server is one server under test.
type server struct {
	name string
	addr string
	proc *benchproc.Proc
}

func run(o opts) error {
	for _, tool := range []string{"taskset", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is missing: apt-get install -y nginx util-linux", tool)
		}
	}
	if _, err := os.Stat(o.replproxy); err != nil {
		return fmt.Errorf("replproxy binary: %w (go build -o bin/ ./cmd/replproxy)", err)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "tlsbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var procs []*benchproc.Proc
	defer func() {
		for _, p := range procs {
			p.Stop()
		}
	}()
	launch := func(name string, env []string, args ...string) (*benchproc.Proc, error) {
		p, err := benchproc.Start(dir, name, "0", env, args...)
		if err == nil {
			procs = append(procs, p)
		}
		return p, err
	}

	// One ECDSA P-256 certificate for *.alice.repl.test, signed by a
	// throw-away CA: the same bytes for every server.
	certPEM, keyPEM, err := makeCert()
	if err != nil {
		return err
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return err
	}

	// The cluster: an embedded store with the repl, and the certificate
	// already stored, as another proxy of the cluster would have left it.
	storeFile := filepath.Join(dir, "east.yaml")
	ports := make([]int, 5)
	for i := range ports {
		if ports[i], err = benchproc.FreePort(); err != nil {
			return err
		}
	}
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	files := map[string]string{
		"clusters.yaml": fmt.Sprintf("clusters:\n  - {name: east, proxy_ipv4: [192.0.2.1], forward: %q, store: east.yaml}\n", addr(0)),
		"east.yaml":     "repls:\n  - {id: r1, owner: alice, slug: bench, endpoints: [\"127.0.0.1:9\"]}\n",
		"hop.secret":    "bench-secret-bench-secret-bench-secret-0123456789",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if err := storeCert(storeFile, append(keyPEM, certPEM...)); err != nil {
		return err
	}
	rp := func(listen, listenTLS string, extra ...string) []string {
		return append([]string{o.replproxy, "-zone", "repl.test", "-cluster", "east", "-registry", filepath.Join(dir, "clusters.yaml"),
			"-hop-secret-file", filepath.Join(dir, "hop.secret"), "-forward-plaintext", "-listen", listen, "-listen-tls", listenTLS,
			"-admin-listen", "", "-access-log=false", "-log-level", "error"}, extra...)
	}
	onDemand, err := launch("replproxy-on-demand", nil, rp(addr(0), addr(1), "-tls-on-demand",
		"-acme-directory", "https://127.0.0.1:9/never-contacted")...)
	if err != nil {
		return err
	}
	static, err := launch("replproxy-static", nil, rp(addr(2), addr(3), "-tls-cert", certFile, "-tls-key", keyFile)...)
	if err != nil {
		return err
	}
	nginxConf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx.error.log error;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[1]s/tmp; proxy_temp_path %[1]s/tmp; fastcgi_temp_path %[1]s/tmp; uwsgi_temp_path %[1]s/tmp; scgi_temp_path %[1]s/tmp;
	server {
		listen %[2]s ssl;
		ssl_certificate %[3]s;
		ssl_certificate_key %[4]s;
		ssl_protocols TLSv1.3;
		ssl_ecdh_curve X25519;
		ssl_session_cache off;
		ssl_session_tickets off;
		location / { return 200 "ok\n"; }
	}
}
`, dir, addr(4), certFile, keyFile)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(nginxConf), 0o644); err != nil {
		return err
	}
	nginx, err := launch("nginx", nil, "nginx", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	if err != nil {
		return err
	}
	servers := []server{
		{"nginx", addr(4), nginx},
		{"replproxy on demand", addr(1), onDemand},
		{"replproxy static", addr(3), static},
	}
	for _, s := range servers {
		if err := benchproc.WaitListening(s.addr); err != nil {
			return fmt.Errorf("%s: %w\n%s", s.name, err, s.proc.Log())
		}
		// One handshake to check it works, and to load the certificate
		// from the store into the on-demand proxy's memory.
		if _, err := runLoad(self, s.addr, time.Second, 1); err != nil {
			return fmt.Errorf("%s: %w\n%s", s.name, err, s.proc.Log())
		}
	}

	fmt.Printf("full TLS 1.3 handshakes (ECDSA P-256 certificate, X25519), %d in flight, %v per measurement, server on CPU 0, generator on CPU 1\n\n",
		o.conns, o.duration)
	fmt.Printf("%-6s %-22s %12s %10s %14s %10s\n", "round", "server", "handshakes", "cpu s", "per cpu-s", "vs nginx")
	ratios := map[string][]float64{}
	for round := 1; round <= o.rounds; round++ {
		var base float64
		for _, s := range servers {
			before := s.proc.CPUTicks()
			n, err := runLoad(self, s.addr, o.duration, o.conns)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			after := s.proc.CPUTicks()
			cpu := float64(after-before) / 100 // USER_HZ
			per := float64(n) / cpu
			if s.name == "nginx" {
				base = per
			}
			ratios[s.name] = append(ratios[s.name], per/base)
			fmt.Printf("%-6d %-22s %12d %10.2f %14.0f %9.2fx\n", round, s.name, n, cpu, per, per/base)
		}
	}
	fmt.Println()
	for _, s := range servers[1:] {
		r := ratios[s.name]
		slices.Sort(r)
		fmt.Printf("median handshakes per CPU-second, %s / nginx: %.2f\n", s.name, r[len(r)/2])
	}
	return nil
}

// storeCert puts the certificate into the embedded store's certificate
// storage through the store package, as a proxy would.
func storeCert(storeFile string, data []byte) error {
	ctx := context.Background()
	st, err := embedded.Open(ctx, storeFile, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	return st.PutCert(ctx, certName, data)
}

// runLoad runs "tlsbench load" on CPU 1 and returns the handshakes done.
func runLoad(self, addr string, d time.Duration, conns int) (int, error) {
	cmd := exec.Command("taskset", "-c", "1", self, "load", addr, d.String(), strconv.Itoa(conns))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("load: %v: %s", err, errb.String())
	}
	return strconv.Atoi(strings.TrimSpace(out.String()))
}

// load is the handshake generator: "load ADDR DURATION CONNS" prints the
// full handshakes completed. Any failed handshake is an error.
func load(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: tlsbench load ADDR DURATION CONNS")
	}
	d, err := time.ParseDuration(args[1])
	if err != nil {
		return err
	}
	conns, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	cfg := &tls.Config{
		ServerName:         sni,
		InsecureSkipVerify: true, // the served name is checked once below; verifying the chain every time would only slow the generator
		MinVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
		ClientSessionCache: nil, // no resumption: every handshake is full
	}
	first, err := tls.Dial("tcp", args[0], cfg)
	if err != nil {
		return err
	}
	if got := first.ConnectionState().PeerCertificates[0].DNSNames; len(got) != 1 || got[0] != certName {
		return fmt.Errorf("served %v, want %s", got, certName)
	}
	first.Close()
	var (
		done     atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	deadline := time.Now().Add(d)
	for range conns {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				c, err := tls.Dial("tcp", args[0], cfg)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				c.Close()
				done.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	fmt.Println(done.Load())
	return nil
}

// makeCert returns a certificate for *.alice.repl.test and its key, PEM.
func makeCert() (certPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tlsbench CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: certName}, DNSNames: []string{certName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(90 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}
