package ondemand

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
)

// encodeCertPEM writes autocert's format: the EC private key, then the
// chain, leaf first.
func encodeCertPEM(key *ecdsa.PrivateKey, chain [][]byte) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	_ = pem.Encode(&b, &pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	for _, c := range chain {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c})
	}
	return b.Bytes(), nil
}

// parseCertPEM reads autocert's format and checks that the certificate
// matches its key, is valid at now and covers host.
func parseCertPEM(data []byte, host string, now time.Time) (*tls.Certificate, error) {
	var certPEM, keyPEM []byte
	for rest := data; len(rest) > 0; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE":
			certPEM = append(certPEM, pem.EncodeToMemory(b)...)
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			keyPEM = pem.EncodeToMemory(b)
		}
	}
	if certPEM == nil || keyPEM == nil {
		return nil, errors.New("want a private key and a certificate in PEM")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err // says nothing of the key's value
	}
	leaf := cert.Leaf
	if now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
		return nil, fmt.Errorf("certificate valid from %s to %s, not now", leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339))
	}
	if err := leaf.VerifyHostname(host); err != nil {
		return nil, err
	}
	return &cert, nil
}

// parseKeyPEM reads a PEM private key (SEC 1, PKCS #8 or PKCS #1).
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(data)
	if b == nil || !strings.Contains(b.Type, "PRIVATE KEY") {
		return nil, errors.New("not a PEM private key")
	}
	if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
	}
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	return nil, errors.New("unknown private key format")
}
