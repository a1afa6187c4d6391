package peertls_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/peertls"
	"github.com/replproxy/replproxy/store"
)

func setup(t *testing.T) (store.Zone, *cluster.Registry, *peertls.CA, string) {
	t.Helper()
	zone, err := store.NewZone("repl.test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	regFile := filepath.Join(dir, "clusters.yaml")
	if err := os.WriteFile(regFile, []byte("clusters:\n  - {name: east, proxy_ipv4: [192.0.2.1], forward: \"127.0.0.1:1\", store: e.yaml}\n"+
		"  - {name: west, proxy_ipv4: [192.0.2.2], forward: \"127.0.0.1:2\", store: w.yaml}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, err := cluster.Load(regFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := peertls.NewCA(zone, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return zone, reg, ca, dir
}

// TestLoadRefusesWhatCannotWork: a certificate that names no registry
// cluster, or another CA's, is refused at start with what to do.
func TestLoadRefusesWhatCannotWork(t *testing.T) {
	zone, reg, ca, dir := setup(t)
	files, err := ca.WriteFiles(dir, "north")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := peertls.Load(files, zone, reg); err == nil || !strings.Contains(err.Error(), "names no cluster of the registry") {
		t.Errorf("a certificate for north: %v", err)
	}
	files, _ = ca.WriteFiles(dir, "east")
	other, _ := peertls.NewCA(zone, time.Hour)
	_ = os.WriteFile(files.CA, other.CertPEM(), 0o600)
	if _, err := peertls.Load(files, zone, reg); err == nil || !strings.Contains(err.Error(), "does not verify against -forward-ca") {
		t.Errorf("another CA: %v", err)
	}
	if _, err := peertls.Load(peertls.Files{Cert: files.Cert}, zone, reg); err == nil || !strings.Contains(err.Error(), "-forward-key is not set") {
		t.Errorf("no key: %v", err)
	}
}

// TestWatchReloads: a renewed certificate is used once its files change;
// a broken one is refused and the one in use kept.
func TestWatchReloads(t *testing.T) {
	zone, reg, ca, dir := setup(t)
	files, err := ca.WriteFiles(dir, "east")
	if err != nil {
		t.Fatal(err)
	}
	p, err := peertls.Load(files, zone, reg)
	if err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		c, err := p.ServerConfig().GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.SerialNumber.String()
	}
	first := serial()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Watch(ctx, 20*time.Millisecond, zap.NewNop()) }()
	defer func() { cancel(); <-done }()

	if _, err := ca.WriteFiles(dir, "east"); err != nil { // renewed
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for serial() == first && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	renewed := serial()
	if renewed == first {
		t.Fatal("the renewed certificate was not loaded")
	}
	if err := os.WriteFile(files.Cert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if serial() != renewed {
		t.Error("a broken certificate file replaced the one in use")
	}
	b, _ := pem.Decode(ca.CertPEM())
	if c, _ := x509.ParseCertificate(b.Bytes); !c.IsCA {
		t.Error("the CA certificate is no CA")
	}
}

// A certificate never outlives the CA that issued it: the demo's CA and
// its proxies' certificates end together instead of the proxies failing
// every handshake once the CA has expired under them.
func TestIssueStopsAtTheCAsEnd(t *testing.T) {
	_, _, ca, dir := setup(t) // the CA is valid for an hour
	files, err := ca.WriteFiles(dir, "east")
	if err != nil {
		t.Fatal(err)
	}
	read := func(path string) *x509.Certificate {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		if block == nil {
			t.Fatalf("%s: no PEM block", path)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	leaf, root := read(files.Cert), read(files.CA)
	if leaf.NotAfter.After(root.NotAfter) {
		t.Errorf("east's certificate ends %v, after its CA (%v)", leaf.NotAfter, root.NotAfter)
	}
	if leaf.NotAfter.Before(root.NotAfter.Add(-time.Minute)) {
		t.Errorf("east's certificate ends %v, well before its CA (%v): the cap cut too much", leaf.NotAfter, root.NotAfter)
	}
}
