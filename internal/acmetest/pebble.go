// Package acmetest runs Let's Encrypt's test ACME server, Pebble (Debian
// package pebble), for tests, with real validation, and a small DNS server
// for it to validate against.
//
//	dns := acmetest.StartDNS(t, txt)          // TXT from the store, A for custom domains
//	p := acmetest.StartPebble(t, acmetest.PebbleConfig{DNSServer: dns.Addr, HTTPPort: h, TLSPort: s})
//	client := &acme.Client{DirectoryURL: p.Directory, HTTPClient: p.HTTPClient()}
//	roots := p.IssuerRoots(t)                 // verifies what Pebble issues
//
// Tests skip, saying how to install Pebble, when /usr/bin/pebble is
// missing, unless REPLPROXY_REQUIRE_TOOLS is set (CI sets it): then they
// fail. Every process started is killed when the test ends, and when the
// test binary dies (Pdeathsig).
package acmetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/internal/childproc"
)

// T is what this file's helpers need of a test: testing.TB is one, and so
// is the test platform's (package platformtest). One that cannot skip
// fails where a test would skip.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// EnvRequire turns a skip for a missing tool into a failure.
const EnvRequire = "REPLPROXY_REQUIRE_TOOLS"

// Required reports whether EnvRequire is set.
func Required() bool {
	v := os.Getenv(EnvRequire)
	return v != "" && v != "0"
}

// NeedTool skips (or, with EnvRequire set, fails) t when the program name
// is not installed; it returns the program's path.
func NeedTool(t T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s not found; install it with: apt-get install -y %s", name, pkg)
	if Required() {
		t.Fatalf("%s (%s is set, so this is a failure, not a skip)", msg, EnvRequire)
	}
	if s, ok := t.(interface{ Skip(args ...any) }); ok {
		s.Skip(msg)
	}
	t.Fatalf("%s", msg)
	return ""
}

// PebbleConfig says how to run Pebble.
type PebbleConfig struct {
	// DNSServer (host:port) is the only resolver Pebble uses, for DNS-01
	// records and for the addresses of names validated by HTTP-01 and
	// TLS-ALPN-01. Required.
	DNSServer string
	// HTTPPort and TLSPort are where Pebble connects for HTTP-01 and
	// TLS-ALPN-01, on the address DNSServer gives. Zero: an unused port
	// (such validations then fail).
	HTTPPort, TLSPort int
	// CertValidity is the lifetime of the certificates Pebble issues.
	// Zero: Pebble's default (5 years).
	CertValidity time.Duration
}

// Pebble is a running Pebble.
type Pebble struct {
	// Directory is the ACME directory URL.
	Directory string
	// CARootPEM verifies Pebble's HTTPS listener (the ACME API); CARoots
	// is the same as a pool.
	CARootPEM []byte
	CARoots   *x509.CertPool
	// Mgmt is the management listener (https://Mgmt/roots/0).
	Mgmt string

	proc *childproc.Process
	log  string
}

// StartPebble starts Pebble and waits until its directory answers.
func StartPebble(t T, cfg PebbleConfig) *Pebble {
	t.Helper()
	bin := NeedTool(t, "pebble", "pebble")
	dir := t.TempDir()
	ca, caKey := newCA(t, "acmetest CA for Pebble's listener")
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeLeaf(t, ca, caKey, certFile, keyFile)
	if cfg.HTTPPort == 0 {
		cfg.HTTPPort = FreePort(t)
	}
	if cfg.TLSPort == 0 {
		cfg.TLSPort = FreePort(t)
	}
	listen := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	mgmt := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	conf := map[string]any{"pebble": map[string]any{
		"listenAddress":                  listen,
		"managementListenAddress":        mgmt,
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       cfg.HTTPPort,
		"tlsPort":                        cfg.TLSPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}}
	if cfg.CertValidity > 0 {
		conf["pebble"].(map[string]any)["certificateValidityPeriod"] = uint64(cfg.CertValidity / time.Second)
	}
	confFile := filepath.Join(dir, "pebble.json")
	b, _ := json.Marshal(conf)
	if err := os.WriteFile(confFile, b, 0o600); err != nil {
		t.Fatalf("%v", err)
	}
	logFile := filepath.Join(dir, "pebble.log")
	out, err := os.Create(logFile)
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer out.Close()
	cmd := exec.Command(bin, "-config", confFile, "-dnsserver", cfg.DNSServer)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	// Real validation, no random sleeps, no rejected nonces, and no reuse
	// of earlier authorizations: every order is validated for real.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	proc, err := childproc.Start(cmd)
	if err != nil {
		t.Fatalf("start pebble: %v", err)
	}
	p := &Pebble{Directory: "https://" + listen + "/dir", Mgmt: mgmt, proc: proc, log: logFile}
	p.CARootPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	p.CARoots = x509.NewCertPool()
	p.CARoots.AddCert(ca)
	t.Cleanup(func() {
		var err error
		if proc.Stop(syscall.SIGTERM, 5*time.Second) {
			err = fmt.Errorf("%s (pid %d) did not stop within %v: killed it", bin, proc.Pid(), 5*time.Second)
		}
		if e, ok := t.(interface{ Errorf(string, ...any) }); ok && err != nil {
			e.Errorf("pebble: %v", err)
		} else if err != nil {
			t.Logf("pebble: %v", err)
		}
		if f, ok := t.(interface{ Failed() bool }); ok && f.Failed() {
			t.Logf("pebble log (%s):\n%s", logFile, childproc.Tail(logFile, 40))
		}
	})
	p.waitReady(t)
	return p
}

// HTTPClient trusts Pebble's listener.
func (p *Pebble) HTTPClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: p.CARoots},
		DisableKeepAlives: true,
	}}
}

func (p *Pebble) waitReady(t T) {
	t.Helper()
	c := p.HTTPClient()
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-p.proc.Done():
			t.Fatalf("pebble exited: %v\n%s", p.proc.Err(), childproc.Tail(p.log, 40))
		default:
		}
		resp, err := c.Get(p.Directory)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble's directory %s did not answer within 20s: %v\n%s", p.Directory, err, childproc.Tail(p.log, 40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// IssuerRoots fetches the root Pebble issues under (it changes at every
// start) from its management listener.
func (p *Pebble) IssuerRoots(t T) *x509.CertPool {
	t.Helper()
	resp, err := p.HTTPClient().Get("https://" + p.Mgmt + "/roots/0")
	if err != nil {
		t.Fatalf("pebble roots: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("pebble roots: %s %v", resp.Status, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(body) {
		t.Fatalf("pebble roots: no PEM certificate in %q", body)
	}
	return pool
}

// Log returns Pebble's output so far.
func (p *Pebble) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func FreePort(t T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// newCA makes a self-signed ECDSA CA.
func newCA(t T, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("%v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("%v", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return ca, key
}

// writeLeaf writes a certificate for 127.0.0.1 and localhost signed by ca.
func writeLeaf(t T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("%v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatalf("%v", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("%v", err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatalf("%v", err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatalf("%v", err)
	}
}
