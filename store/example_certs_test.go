package store_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/replproxy/replproxy/cluster"
	"github.com/replproxy/replproxy/store"
)

// ListCertificates is what `replctl certs list` shows: each certificate
// of the cluster with its names and expiry.
func ExampleListCertificates() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "cluster.yaml")
	_ = os.WriteFile(path, nil, 0o644)
	st, err := cluster.Open(ctx, path, cluster.OpenOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer st.Close()
	certs, _ := store.CertsOf(st)

	// What a proxy stores: autocert's format, the key then the chain.
	notAfter := time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)
	_ = certs.PutCert(ctx, "*.alice.repl.co", exampleCert("*.alice.repl.co", notAfter))
	_ = certs.PutCert(ctx, "acme_account+key", []byte("-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n"))

	list, err := store.ListCertificates(ctx, certs)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, c := range list {
		fmt.Println(c.Key, c.Names, c.NotAfter.Format(time.RFC3339))
	}
	// Output:
	// *.alice.repl.co [*.alice.repl.co] 2027-03-01T12:00:00Z
}

func exampleCert(name string, notAfter time.Time) []byte {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{name}, NotBefore: notAfter.Add(-90 * 24 * time.Hour), NotAfter: notAfter}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	kb, _ := x509.MarshalECPrivateKey(key)
	return append(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
}
